<?php
declare(strict_types=1);

namespace Keyvault;

/** The root of every error this client raises. */
class KeyvaultException extends \RuntimeException
{
}
