<?php
declare(strict_types=1);

namespace Keyvault;

/** One key of an order: its serial (never the key), its state, and when each step happened (ISO 8601 UTC). */
final class OrderKey
{
    public const HELD = 'held';           // held for the order until `expiresAt`
    public const REDEEMED = 'redeemed';   // confirmed (or used, for a count-limited key) at `redeemedAt`
    public const RELEASED = 'released';   // the order gave its hold up at `releasedAt`
    public const EXPIRED = 'expired';     // the hold ended at `expiredAt` without a confirm
    public const VOID = 'void';           // the key was voided at `voidedAt` while the order held it: never confirmed

    /** Every state, in this order. */
    public const STATES = [self::HELD, self::REDEEMED, self::RELEASED, self::EXPIRED, self::VOID];

    /** The service's field name => this class's property. */
    public const FIELDS = [
        'serial' => 'serial', 'state' => 'state', 'held_at' => 'heldAt', 'expires_at' => 'expiresAt',
        'redeemed_at' => 'redeemedAt', 'released_at' => 'releasedAt', 'expired_at' => 'expiredAt',
        'uses_left' => 'usesLeft', 'voided_at' => 'voidedAt',
    ];

    public function __construct(
        public readonly string $serial,
        public readonly string $state,
        public readonly ?string $heldAt = null,
        public readonly ?string $expiresAt = null,
        public readonly ?string $redeemedAt = null,
        public readonly ?string $releasedAt = null,
        public readonly ?string $expiredAt = null,
        /** A count-limited key: the uses left after this order's use (null otherwise). */
        public readonly ?int $usesLeft = null,
        /** State `void`: when the key was voided while the order held it. */
        public readonly ?string $voidedAt = null,
    ) {
    }

    /** An entry from the service's JSON object; anything else raises TransportException. */
    public static function fromArray(mixed $doc, ?string $requestId = null): self
    {
        if (!is_array($doc) || !is_string($doc['serial'] ?? null) || !is_string($doc['state'] ?? null)) {
            throw new TransportException('the service answered an order entry without a serial and a state',
                $requestId);
        }
        $args = [];
        foreach (self::FIELDS as $field => $property) {
            $value = $doc[$field] ?? null;
            $wanted = $field === 'uses_left' ? 'is_int' : 'is_string';
            if ($value !== null && !$wanted($value)) {
                throw new TransportException("the service answered an order entry whose `$field` has the wrong type",
                    $requestId);
            }
            $args[$property] = $value;
        }
        return new self(...$args);
    }
}
