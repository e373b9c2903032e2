<?php
declare(strict_types=1);

namespace Keyvault;

/** What an order holds or held (GET /v1/orders/{order_id}): its keys (serials, never keys) and its events. */
final class Order
{
    /** The service's field name => this class's property. */
    public const FIELDS = ['order_id' => 'orderId', 'keys' => 'keys', 'events' => 'events'];

    /**
     * @param list<OrderKey>   $keys   one entry per key, in the order the order first touched them
     * @param list<OrderEvent> $events the order's checkout events, oldest first
     */
    public function __construct(
        public readonly string $orderId,
        public readonly array $keys,
        public readonly array $events,
        /** The service's id of the request that answered (its X-Request-Id); not a field of the answer. */
        public readonly ?string $requestId = null,
    ) {
    }

    /** An Order from the service's JSON object (and the request's id); anything else raises TransportException. */
    public static function fromArray(mixed $doc, ?string $requestId = null): self
    {
        if (!is_array($doc) || !is_string($doc['order_id'] ?? null) || !is_array($doc['keys'] ?? null)
            || !array_is_list($doc['keys']) || !is_array($doc['events'] ?? null) || !array_is_list($doc['events'])) {
            throw new TransportException('the service answered something that is not an order; check the URL',
                $requestId);
        }
        return new self($doc['order_id'], array_map(fn ($k) => OrderKey::fromArray($k, $requestId), $doc['keys']),
            array_map(fn ($e) => OrderEvent::fromArray($e, $requestId), $doc['events']), $requestId);
    }

    /** The entry of the key with this serial, or null when the order never held or used it. */
    public function key(string $serial): ?OrderKey
    {
        foreach ($this->keys as $entry) {
            if ($entry->serial === $serial) {
                return $entry;
            }
        }
        return null;
    }
}
