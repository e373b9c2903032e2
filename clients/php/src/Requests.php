<?php
declare(strict_types=1);

namespace Keyvault;

/**
 * The routes the client calls and the JSON bodies it sends, one builder per operation.
 * Kept apart from the transport so the tests can check every body against the served OpenAPI document.
 */
final class Requests
{
    /** operation => [HTTP method, path, the request schema's name in /v1/openapi.json (null: no body)]. */
    public const ROUTES = [
        'verify' => ['POST', '/v1/verify', 'VerifyRequest'],
        'redeem' => ['POST', '/v1/redeem', 'RedeemRequest'],
        'redeemMany' => ['POST', '/v1/redeem-many', 'RedeemManyRequest'],
        'void' => ['POST', '/v1/void', 'VoidRequest'],
        'blacklist' => ['POST', '/v1/blacklist', 'BlacklistRequest'],
        'lift' => ['POST', '/v1/blacklist/lift', 'BlacklistRequest'],
        'hold' => ['POST', '/v1/hold', 'HoldRequest'],
        'confirm' => ['POST', '/v1/confirm', 'OrderRequest'],
        'release' => ['POST', '/v1/release', 'OrderRequest'],
        'order' => ['GET', '/v1/orders/{order_id}', null],
        'stats' => ['GET', '/v1/stats', null],
        'trace' => ['GET', '/v1/trace/{serial}', null],
        'receipt' => ['GET', '/v1/receipts/{serial}', null],
        'openapi' => ['GET', '/v1/openapi.json', null],
    ];

    private function __construct()
    {
    }

    /** The body of a verify of `$keys` (in order). */
    public static function verify(array $keys, ?string $client = null): array
    {
        foreach ($keys as $key) {
            if (!is_string($key)) {
                throw new \InvalidArgumentException('verifyMany takes a list of strings; pass each key as a string');
            }
        }
        return self::withClient(['keys' => array_values($keys)], $client);
    }

    /** The body of a redeem of `$key` for `$orderId` (`$receipt`: an accepted answer carries a signed receipt). */
    public static function redeem(string $key, string $orderId, ?string $client = null, bool $receipt = false): array
    {
        $body = self::withClient(['key' => $key, 'order_id' => $orderId], $client);
        if ($receipt) {
            $body['receipt'] = true;
        }
        return $body;
    }

    /**
     * The body of a redeem-many: `$items` is a list of ['key' => KEY, 'order_id' => ORDER] (or [KEY, ORDER]).
     */
    public static function redeemMany(array $items, ?string $client = null): array
    {
        $out = [];
        foreach (array_values($items) as $i => $item) {
            $key = is_array($item) ? ($item['key'] ?? $item[0] ?? null) : null;
            $order = is_array($item) ? ($item['order_id'] ?? $item[1] ?? null) : null;
            if (!is_string($key) || !is_string($order)) {
                throw new \InvalidArgumentException(
                    "redeemMany item $i is not ['key' => string, 'order_id' => string]; pass one per (key, order)");
            }
            $out[] = ['key' => $key, 'order_id' => $order];
        }
        return self::withClient(['items' => $out], $client);
    }

    /** The body of a void of a key or a serial. */
    public static function void(string $keyOrSerial, string $reason): array
    {
        return ['key' => $keyOrSerial, 'reason' => $reason];
    }

    /** The body of a blacklist add or lift (Level::* for `$level`). */
    public static function blacklist(string $level, string $target, string $reason): array
    {
        return ['level' => $level, 'target' => $target, 'reason' => $reason];
    }

    /** The body of a hold of `$key` for `$orderId`, lasting `$ttlSeconds` (1 to 604800), charged to `$client`. */
    public static function hold(string $key, string $orderId, int $ttlSeconds, ?string $client = null): array
    {
        return self::withClient(['key' => $key, 'order_id' => $orderId, 'ttl' => $ttlSeconds], $client);
    }

    /** The body of a confirm or a release of every key `$orderId` holds. */
    public static function order(string $orderId): array
    {
        return ['order_id' => $orderId];
    }

    /** The path of the lookup of `$orderId` (URL-encoded: an order id may hold `/`). */
    public static function orderPath(string $orderId): string
    {
        return str_replace('{order_id}', rawurlencode($orderId), self::ROUTES['order'][1]);
    }

    /** The path of a trace of `$serial` (a serial only: keys never travel in URLs). */
    public static function tracePath(string $serial, bool $bundle = false): string
    {
        return str_replace('{serial}', rawurlencode($serial), self::ROUTES['trace'][1]) . ($bundle ? '?bundle=1' : '');
    }

    /** The path of the receipt of `$serial`'s redeem (a serial only: keys never travel in URLs). */
    public static function receiptPath(string $serial): string
    {
        return str_replace('{serial}', rawurlencode($serial), self::ROUTES['receipt'][1]);
    }

    private static function withClient(array $body, ?string $client): array
    {
        if ($client !== null) {
            $body['client'] = $client;
        }
        return $body;
    }
}
