<?php
declare(strict_types=1);

namespace Keyvault;

/** A webhook refused by Webhook::verify: the message says why and what to check. */
class WebhookException extends KeyvaultException
{
}
