<?php
declare(strict_types=1);

namespace Keyvault;

/** An RFC 9457 problem document from the service: match on `type` (stable), read `detail` (what to do). */
class ProblemException extends KeyvaultException
{
    public const PREFIX = 'urn:keyvault:problem:';

    public function __construct(
        public readonly string $type,
        public readonly string $title,
        public readonly int $status,
        public readonly string $detail,
        /** The service's id of the request (its X-Request-Id): quote it to the service's operator. */
        public readonly ?string $requestId = null,
    ) {
        parent::__construct("$status $title: $detail ($type" . ($requestId !== null ? ", request $requestId" : '') . ')',
            $status);
    }

    /** The problem's short name: `unauthorized` for `urn:keyvault:problem:unauthorized`. */
    public function name(): string
    {
        return str_starts_with($this->type, self::PREFIX) ? substr($this->type, strlen(self::PREFIX)) : $this->type;
    }
}
