<?php
declare(strict_types=1);

namespace Keyvault;

/**
 * A client of the keyvault HTTP service (docs/service.md), over ext-curl with one keep-alive connection.
 *
 * Every method returns typed answers or throws: ProblemException for a problem document (match on `type`),
 * TransportException when the service cannot be reached or answers outside its API. Redeems, holds, confirms
 * and releases answered 503 (or lost on the way) are retried with the same order id, which the service makes safe.
 */
final class Client
{
    private \CurlHandle $curl;
    private string $baseUrl;
    /** The Retry-After of the last error answer, in seconds (0: none). */
    private float $retryAfter = 0.0;
    /** The X-Request-Id this client sends (withRequestId), or null: the service makes one. */
    private ?string $requestId = null;
    /** The X-Request-Id of the last answer. */
    private ?string $lastRequestId = null;

    /**
     * @param string $baseUrl         e.g. https://kv.example.net (no trailing /v1)
     * @param string $token           a bearer token (`keyvault token create`)
     * @param float  $timeout         seconds for a whole request
     * @param float  $connectTimeout  seconds to connect
     * @param int    $redeemRetries   retries of a redeem answered 503 or lost in transit (0: none)
     * @param float  $retryBackoff    seconds before the first retry; doubled each time
     * @param float  $maxBackoff      the longest wait between two tries (also caps Retry-After)
     */
    public function __construct(
        string $baseUrl,
        private readonly string $token,
        private readonly float $timeout = 10.0,
        private readonly float $connectTimeout = 3.0,
        private readonly int $redeemRetries = 4,
        private readonly float $retryBackoff = 0.2,
        private readonly float $maxBackoff = 5.0,
    ) {
        if (!preg_match('#^https?://[^/\s]+#', $baseUrl)) {
            throw new \InvalidArgumentException('baseUrl must be http(s)://HOST[:PORT]; pass the service\'s address');
        }
        if ($token === '' || preg_match('/[\x00-\x20\x7f]/', $token)) {
            throw new \InvalidArgumentException('token must be the printable token `keyvault token create` printed');
        }
        if ($timeout <= 0 || $connectTimeout <= 0 || $redeemRetries < 0 || $retryBackoff < 0 || $maxBackoff < 0) {
            throw new \InvalidArgumentException('timeouts must be positive, retries and backoffs not negative');
        }
        $this->baseUrl = rtrim($baseUrl, '/');
        $this->curl = curl_init();
    }

    /**
     * This client, sending `X-Request-Id: $id` with each request (retries too): the service logs it and returns
     * it in results (`requestId`) and problems. 1 to 128 visible ASCII characters; never put a key or a token
     * in it. The copy shares the connection.
     */
    public function withRequestId(string $id): self
    {
        if (!preg_match('/^[\x21-\x7e]{1,128}$/D', $id)) {
            throw new \InvalidArgumentException('a request id is 1 to 128 visible ASCII characters, no spaces');
        }
        $copy = clone $this;
        $copy->requestId = $id;
        return $copy;
    }

    /** The service's id of the last request answered (its X-Request-Id), or null before any answer. */
    public function lastRequestId(): ?string
    {
        return $this->lastRequestId;
    }

    /** Check one key without spending it; `$client` is the shopper's account or IP (throttling keys on it). */
    public function verify(string $key, ?string $client = null): Result
    {
        return $this->verifyMany([$key], $client)[0];
    }

    /**
     * Check many keys without spending them: one Result per key, in input order.
     * @param list<string> $keys
     * @return list<Result>
     */
    public function verifyMany(array $keys, ?string $client = null): array
    {
        return $this->results($this->call('verify', Requests::verify($keys, $client), 0), count($keys));
    }

    /**
     * Spend `$key` for `$orderId`, durably; a retry with the same order id gets the first answer.
     * `$receipt`: an accepted answer carries `receipt`, the redeem signed by the store's engine key.
     */
    public function redeem(string $key, string $orderId, ?string $client = null, bool $receipt = false): Result
    {
        return Result::fromArray($this->call('redeem', Requests::redeem($key, $orderId, $client, $receipt),
            $this->redeemRetries), $this->lastRequestId);
    }

    /**
     * Redeem many (key, order) pairs in one durable commit: one Result per item, in input order.
     * @param list<array{key: string, order_id: string}|array{0: string, 1: string}> $items
     * @return list<Result>
     */
    public function redeemMany(array $items, ?string $client = null): array
    {
        return $this->results($this->call('redeemMany', Requests::redeemMany($items, $client), $this->redeemRetries),
            count($items));
    }

    /**
     * Hold `$key` for `$orderId` for `$ttlSeconds` (1 to 604800) while its payment is pending: `held` with
     * `expiresAt`, answered once the hold is on disk. A retry with the same order id gets the same answer (the
     * first expiry); another order is answered `held` naming no order. Retried on 503 like a redeem.
     * `$client` is the shopper's account or IP whose refusal budget the hold is charged to, as on verify and redeem.
     */
    public function hold(string $key, string $orderId, int $ttlSeconds, ?string $client = null): Result
    {
        return Result::fromArray($this->call('hold', Requests::hold($key, $orderId, $ttlSeconds, $client),
            $this->redeemRetries), $this->lastRequestId);
    }

    /**
     * Redeem every key `$orderId` holds, in one durable commit: one Result per key (`accepted`, or `expired_hold`,
     * `released`, `void`, `blacklisted`). A retry gets the same answers. An order that held nothing: 404 not-found.
     * @return list<Result>
     */
    public function confirm(string $orderId): array
    {
        return $this->results($this->call('confirm', Requests::order($orderId), $this->redeemRetries), null);
    }

    /**
     * Give up every hold of `$orderId`: one Result per key (`released`); a retry answers the same, and a later
     * confirm of the order answers `released`. An order that held nothing: 404 not-found.
     * @return list<Result>
     */
    public function release(string $orderId): array
    {
        return $this->results($this->call('release', Requests::order($orderId), $this->redeemRetries), null);
    }

    /** Every key (its serial, never the key) `$orderId` holds or held, with states, times and the events. */
    public function order(string $orderId): Order
    {
        return Order::fromArray($this->send('GET', Requests::orderPath($orderId), null), $this->lastRequestId);
    }

    /** Withdraw an unused key (by the key or its serial), saying why. Needs an admin token. */
    public function void(string $keyOrSerial, string $reason): Result
    {
        return Result::fromArray($this->call('void', Requests::void($keyOrSerial, $reason), 0), $this->lastRequestId);
    }

    /** Blacklist a key, serial, batch or supplier (Level::*). Needs an admin token. */
    public function blacklist(string $level, string $target, string $reason): BlacklistEntry
    {
        return BlacklistEntry::fromArray($this->call('blacklist', Requests::blacklist($level, $target, $reason), 0));
    }

    /** Lift a blacklist entry; lifting needs a reason too. Needs an admin token. */
    public function lift(string $level, string $target, string $reason): BlacklistEntry
    {
        return BlacklistEntry::fromArray($this->call('lift', Requests::blacklist($level, $target, $reason), 0));
    }

    /** Where the key with this public serial came from and what happened to it (`$bundle`: the offline bundle). */
    public function trace(string $serial, bool $bundle = false): array
    {
        return $this->object($this->send('GET', Requests::tracePath($serial, $bundle), null));
    }

    /**
     * The engine-signed receipt (KVR1.…) of the redeem of the key with this public serial, the same text on every
     * call: `keyvault verify-receipt` checks it offline. A key not redeemed here: ProblemException not-found.
     */
    public function receipt(string $serial): string
    {
        $doc = $this->send('GET', Requests::receiptPath($serial), null);
        if (!is_array($doc) || !is_string($doc['receipt'] ?? null) || ($doc['serial'] ?? null) !== $serial) {
            throw new TransportException('the service did not answer a receipt of that serial; check the URL',
                $this->lastRequestId);
        }
        return $doc['receipt'];
    }

    /** Counts per supplier and batch. Needs an admin token. */
    public function stats(): array
    {
        return $this->object($this->send('GET', Requests::ROUTES['stats'][1], null));
    }

    /** The service's OpenAPI document. */
    public function openapi(): array
    {
        return $this->object($this->send('GET', Requests::ROUTES['openapi'][1], null));
    }

    /** One operation of Requests::ROUTES with `$body`, retried up to `$retries` times when that is safe. */
    private function call(string $operation, array $body, int $retries): mixed
    {
        [$method, $path] = Requests::ROUTES[$operation];
        for ($attempt = 0; ; $attempt++) {
            try {
                return $this->send($method, $path, $body);
            } catch (ProblemException|TransportException $exc) {
                $retryable = $exc instanceof TransportException || $exc->status === 503;
                if (!$retryable || $attempt >= $retries) {
                    throw $exc;
                }
                $wait = min($this->maxBackoff, max($this->retryBackoff * (2 ** $attempt), $this->retryAfter));
                usleep((int) round($wait * (1.0 + mt_rand() / mt_getrandmax() / 4) * 1e6));
            }
        }
    }

    /** One HTTP exchange: the decoded 200 answer, or an exception. */
    private function send(string $method, string $path, ?array $body): mixed
    {
        $headers = ['Authorization: Bearer ' . $this->token, 'Accept: application/json, application/problem+json',
                    'User-Agent: keyvault-php/1'];
        if ($this->requestId !== null) {
            $headers[] = 'X-Request-Id: ' . $this->requestId;
        }
        $data = null;
        if ($body !== null) {
            try {
                $data = json_encode($body, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
            } catch (\JsonException) {
                throw new \InvalidArgumentException('a key or text is not valid UTF-8; pass UTF-8 strings');
            }
            $headers[] = 'Content-Type: application/json';
        }
        $answerHeaders = [];
        $ch = $this->curl;
        curl_reset($ch);
        curl_setopt_array($ch, [
            CURLOPT_URL => $this->baseUrl . $path,
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_HTTPHEADER => $headers,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_TIMEOUT_MS => (int) ceil($this->timeout * 1000),
            CURLOPT_CONNECTTIMEOUT_MS => (int) ceil($this->connectTimeout * 1000),
            CURLOPT_PROTOCOLS => CURLPROTO_HTTP | CURLPROTO_HTTPS,
            CURLOPT_HEADERFUNCTION => static function ($ch, string $line) use (&$answerHeaders): int {
                $parts = explode(':', $line, 2);
                if (count($parts) === 2) {
                    $answerHeaders[strtolower(trim($parts[0]))] = trim($parts[1]);
                }
                return strlen($line);
            },
        ]);
        if ($data !== null) {
            curl_setopt($ch, CURLOPT_POSTFIELDS, $data);
        }
        $raw = curl_exec($ch);
        $this->retryAfter = 0.0;
        $this->lastRequestId = $answerHeaders['x-request-id'] ?? null;
        $rid = $this->lastRequestId;
        if ($raw === false) {
            throw new TransportException("keyvault at {$this->baseUrl} did not answer $method $path: "
                . curl_error($ch) . '; check the URL and the network, and retry (a redeem with the same order id)');
        }
        $code = (int) curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
        $type = strtolower($answerHeaders['content-type'] ?? '');
        $doc = json_decode((string) $raw, true, 512, JSON_BIGINT_AS_STRING);
        if ($code === 200 && str_starts_with($type, 'application/json') && $doc !== null) {
            return $doc;
        }
        if (isset($answerHeaders['retry-after']) && is_numeric($answerHeaders['retry-after'])) {
            $this->retryAfter = (float) $answerHeaders['retry-after'];
        }
        if (str_starts_with($type, 'application/problem+json') && is_array($doc)
            && is_string($doc['type'] ?? null) && is_string($doc['title'] ?? null)
            && is_int($doc['status'] ?? null) && is_string($doc['detail'] ?? null)) {
            $problemId = is_string($doc['request_id'] ?? null) ? $doc['request_id'] : $rid;
            throw new ProblemException($doc['type'], $doc['title'], $doc['status'], $doc['detail'], $problemId);
        }
        throw new TransportException("keyvault at {$this->baseUrl} answered $method $path with HTTP $code and no "
            . 'problem document; check the URL (a proxy in between?), and retry (a redeem with the same order id)', $rid);
    }

    /** A list of `$count` Results (null: any number) from a {"results": [...]} answer. */
    private function results(mixed $doc, ?int $count): array
    {
        if (!is_array($doc) || !is_array($doc['results'] ?? null) || !array_is_list($doc['results'])
            || ($count !== null && count($doc['results']) !== $count)) {
            throw new TransportException('the service did not answer one result per key; check the URL',
                $this->lastRequestId);
        }
        return array_map(fn ($one) => Result::fromArray($one, $this->lastRequestId), $doc['results']);
    }

    private function object(mixed $doc): array
    {
        if (!is_array($doc)) {
            throw new TransportException('the service answered something that is not a JSON object; check the URL');
        }
        return $doc;
    }
}
