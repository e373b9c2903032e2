<?php
declare(strict_types=1);

namespace Keyvault;

/** A blacklist entry as added or lifted. */
final class BlacklistEntry
{
    /** The service's field name => this class's property. */
    public const FIELDS = ['level' => 'level', 'target' => 'target', 'reason' => 'reason', 'at' => 'at'];

    public function __construct(
        public readonly string $level,
        public readonly string $target,
        public readonly string $reason,
        public readonly ?string $at = null,
    ) {
    }

    /** An entry from the service's JSON object; anything else raises TransportException. */
    public static function fromArray(mixed $doc): self
    {
        if (!is_array($doc) || !is_string($doc['level'] ?? null) || !is_string($doc['target'] ?? null)
            || !is_string($doc['reason'] ?? null) || !(is_string($doc['at'] ?? null) || ($doc['at'] ?? null) === null)) {
            throw new TransportException('the service answered something that is not a blacklist entry; check the URL');
        }
        return new self($doc['level'], $doc['target'], $doc['reason'], $doc['at'] ?? null);
    }
}
