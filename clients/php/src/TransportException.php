<?php
declare(strict_types=1);

namespace Keyvault;

/**
 * The service could not be reached or did not answer in time, or answered something that is not its API.
 * A redeem that ends here may or may not have been committed: retry it with the same order id (that is safe).
 */
class TransportException extends KeyvaultException
{
    /** @param ?string $requestId the answer's X-Request-Id, when there was an answer that had one */
    public function __construct(string $message, public readonly ?string $requestId = null)
    {
        parent::__construct($message);
    }
}
