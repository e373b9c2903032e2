<?php
declare(strict_types=1);

namespace Keyvault;

/**
 * Verifying webhooks signed the Standard Webhooks way (https://www.standardwebhooks.com): the headers
 * webhook-id, webhook-timestamp and webhook-signature ("v1,<base64 HMAC-SHA256 of id.timestamp.body>",
 * several space-separated during a secret's rotation), with the endpoint's "whsec_<base64>" secret.
 */
final class Webhook
{
    /** Seconds a timestamp may be from now, either way, by default (the spec's 5 minutes). */
    public const TOLERANCE = 300;
    /** Signatures in one header at most: a rotation has two or three; more is an attack on the verifier. */
    public const MAX_SIGNATURES = 32;

    /**
     * Check a received webhook; its id (the same on every retry of one message: ignore duplicates by it).
     *
     * @param string $secret    the endpoint's secret, "whsec_..." (the prefix may be left out)
     * @param array  $headers   the request's headers, name => value (or list of values), names in any case;
     *                          $_SERVER itself works too (HTTP_WEBHOOK_ID, ...)
     * @param string $body      the body as received (file_get_contents('php://input')), before any json_decode
     * @param int    $tolerance seconds the timestamp may be from now, either way
     * @param int|null $now     the current Unix time (null: time())
     * @throws WebhookException saying why it was refused (never with the secret or the body)
     */
    public static function verify(string $secret, array $headers, string $body, int $tolerance = self::TOLERANCE,
                                  ?int $now = null): string
    {
        $key = self::key($secret);
        $byName = [];
        foreach ($headers as $name => $value) {
            $name = strtolower(str_replace('_', '-', (string) $name));
            if (str_starts_with($name, 'http-')) {
                $name = substr($name, 5);
            }
            foreach ((array) $value as $one) {
                $byName[$name][] = trim((string) $one);
            }
        }
        $id = self::one($byName, 'webhook-id');
        $stamp = self::one($byName, 'webhook-timestamp');
        $sent = self::one($byName, 'webhook-signature');
        if (!preg_match('/^[0-9]{1,12}$/D', $stamp)) {
            throw new WebhookException('the webhook-timestamp header is not Unix seconds: the sender is not Standard Webhooks');
        }
        $now ??= time();
        if ((int) $stamp < $now - $tolerance) {
            throw new WebhookException("the timestamp is more than $tolerance s old: a replay, or this machine's clock is wrong (check NTP)");
        }
        if ((int) $stamp > $now + $tolerance) {
            throw new WebhookException("the timestamp is more than $tolerance s in the future: this machine's clock or the sender's is wrong (check NTP)");
        }
        $expected = hash_hmac('sha256', "$id.$stamp.$body", $key, true);
        $candidates = preg_split('/\s+/', $sent, -1, PREG_SPLIT_NO_EMPTY);
        if (count($candidates) > self::MAX_SIGNATURES) {
            throw new WebhookException('the webhook-signature header holds more than ' . self::MAX_SIGNATURES . ' signatures');
        }
        $matched = false;
        foreach ($candidates as $candidate) {
            $parts = explode(',', $candidate, 2);
            if (count($parts) !== 2 || $parts[0] !== 'v1') {
                continue; // other schemes (v1a: asymmetric) are not this method's to check
            }
            $given = base64_decode($parts[1], true);
            if ($given !== false && hash_equals($expected, $given)) { // constant time; every candidate compared
                $matched = true;
            }
        }
        if (!$matched) {
            throw new WebhookException('no signature matches: check that the secret is this endpoint\'s, and that the '
                . 'body is the bytes received, unparsed');
        }
        return $id;
    }

    /** The HMAC key of a "whsec_<base64>" secret. */
    private static function key(string $secret): string
    {
        $text = str_starts_with($secret, 'whsec_') ? substr($secret, 6) : $secret;
        $padded = $text . str_repeat('=', (4 - strlen($text) % 4) % 4);
        $key = preg_match('#^[A-Za-z0-9+/]*={0,2}$#D', $padded) ? base64_decode($padded, true) : false;
        if ($key === false) {
            throw new WebhookException('the secret is not \'whsec_\' followed by base64: copy it again from where it was made');
        }
        if ($key === '') {
            throw new WebhookException('the secret is empty: set the secret the sender signs with');
        }
        return $key;
    }

    /** The one non-empty value of a header. */
    private static function one(array $byName, string $name): string
    {
        $values = $byName[$name] ?? [];
        if (count($values) > 1) {
            throw new WebhookException("more than one $name header: a proxy or a client changed the request");
        }
        if ($values === [] || $values[0] === '') {
            throw new WebhookException("no $name header: the webhook was not signed by a Standard Webhooks sender");
        }
        return $values[0];
    }
}
