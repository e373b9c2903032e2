<?php
declare(strict_types=1);

namespace Keyvault;

/** One key's answer. Never holds the key: only its public serial. */
final class Result
{
    /** The service's field name => this class's property (every field of the served Result schema). */
    public const FIELDS = [
        'status' => 'status', 'serial' => 'serial', 'batch' => 'batch', 'supplier' => 'supplier',
        'supplier_name' => 'supplierName', 'product' => 'product', 'order_id' => 'orderId',
        'redeemed_at' => 'redeemedAt', 'voided_at' => 'voidedAt', 'reason' => 'reason',
        'level' => 'level', 'group' => 'group', 'message' => 'message', 'receipt' => 'receipt',
        'uses_left' => 'usesLeft', 'expires_at' => 'expiresAt',
    ];

    public function __construct(
        public readonly string $status,
        public readonly ?string $serial = null,
        public readonly ?string $batch = null,
        public readonly ?string $supplier = null,
        public readonly ?string $supplierName = null,
        public readonly ?string $product = null,
        public readonly ?string $orderId = null,
        public readonly ?string $redeemedAt = null,
        public readonly ?string $voidedAt = null,
        public readonly ?string $reason = null,
        public readonly ?string $level = null,
        public readonly ?int $group = null,
        public readonly ?string $message = null,
        /** The engine-signed receipt (KVR1.…) of an accepted redeem that asked for one. */
        public readonly ?string $receipt = null,
        public readonly ?int $usesLeft = null,
        public readonly ?string $expiresAt = null,
        /** The service's id of the request that answered (its X-Request-Id); not a field of the answer. */
        public readonly ?string $requestId = null,
    ) {
    }

    /** A Result from the service's JSON object (and the request's id); anything else raises TransportException. */
    public static function fromArray(mixed $doc, ?string $requestId = null): self
    {
        if (!is_array($doc) || !isset($doc['status']) || !is_string($doc['status'])) {
            throw new TransportException('the service answered something that is not a result; check the URL',
                $requestId);
        }
        $args = [];
        foreach (self::FIELDS as $field => $property) {
            $value = $doc[$field] ?? null;
            $wanted = ($field === 'group' || $field === 'uses_left') ? 'is_int' : 'is_string';
            if ($value !== null && !$wanted($value)) {
                throw new TransportException("the service answered a result whose `$field` has the wrong type");
            }
            $args[$property] = $value;
        }
        return new self(...$args, requestId: $requestId);
    }

    /** True for `valid` and `accepted`: the only statuses that let a key through. */
    public function ok(): bool
    {
        return in_array($this->status, Status::OK, true);
    }
}
