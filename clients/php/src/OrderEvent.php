<?php
declare(strict_types=1);

namespace Keyvault;

/** One checkout event of an order, as the store's signed event log holds it. */
final class OrderEvent
{
    /** The event types (`redeem`: each redeem of the order, held or plain). */
    public const TYPES = ['hold', 'confirm', 'use', 'release', 'expire', 'redeem'];

    /** The service's field name => this class's property. */
    public const FIELDS = [
        'index' => 'index', 'type' => 'type', 'at' => 'at', 'serial' => 'serial',
        'order_id' => 'orderId', 'expires_at' => 'expiresAt', 'uses_left' => 'usesLeft',
    ];

    public function __construct(
        /** The event's index in the store's log (`keyvault trace` shows the same). */
        public readonly int $index,
        public readonly string $type,
        /** When (ISO 8601 UTC). */
        public readonly string $at,
        public readonly string $serial,
        public readonly string $orderId,
        /** A hold's end (hold and expire events). */
        public readonly ?string $expiresAt = null,
        /** A count-limited key's uses left after this use (use events). */
        public readonly ?int $usesLeft = null,
    ) {
    }

    /** An event from the service's JSON object; anything else raises TransportException. */
    public static function fromArray(mixed $doc, ?string $requestId = null): self
    {
        if (!is_array($doc)) {
            throw new TransportException('the service answered an order event that is not an object', $requestId);
        }
        $args = [];
        foreach (self::FIELDS as $field => $property) {
            $value = $doc[$field] ?? null;
            $optional = $field === 'expires_at' || $field === 'uses_left';
            $wanted = in_array($field, ['index', 'uses_left'], true) ? 'is_int' : 'is_string';
            if (($value === null && !$optional) || ($value !== null && !$wanted($value))) {
                throw new TransportException("the service answered an order event whose `$field` is missing or "
                    . 'has the wrong type', $requestId);
            }
            $args[$property] = $value;
        }
        return new self(...$args);
    }
}
