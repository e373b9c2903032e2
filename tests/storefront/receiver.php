<?php
// A storefront's webhook receiver for `php -S HOST:PORT receiver.php`, verifying Standard Webhooks signatures
// with its own code, written from the specification (https://www.standardwebhooks.com): no keyvault code.
// It fails as the plan file says, one line per request (`500`, `slow`: answers 204 after the sender gave up),
// then answers 204. Every request is appended to $SF_HOOK_LOG as one JSON line: id, body, verified, answer.
declare(strict_types=1);

const TOLERANCE = 300; // seconds, either way

/** The webhook id when the headers sign the body with the secret; else why not. */
function verify(string $secret, array $headers, string $body): array
{
    $h = array_change_key_case($headers, CASE_LOWER);
    $id = $h['webhook-id'] ?? '';
    $ts = $h['webhook-timestamp'] ?? '';
    $signatures = $h['webhook-signature'] ?? '';
    if ($id === '' || !ctype_digit($ts) || $signatures === '') {
        return [null, 'missing headers'];
    }
    if (abs(time() - (int) $ts) > TOLERANCE) {
        return [null, 'timestamp too far from now'];
    }
    $key = base64_decode(str_starts_with($secret, 'whsec_') ? substr($secret, 6) : $secret, true);
    if ($key === false) {
        return [null, 'the secret is not base64'];
    }
    $expected = base64_encode(hash_hmac('sha256', "$id.$ts.$body", $key, true));
    foreach (explode(' ', $signatures) as $signature) {
        [$version, $value] = array_pad(explode(',', $signature, 2), 2, '');
        if ($version === 'v1' && hash_equals($expected, $value)) {
            return [$id, null];
        }
    }
    return [null, 'no signature matches'];
}

$plan = getenv('SF_HOOK_PLAN');
$action = 'ok';
$handle = fopen($plan, 'c+');
flock($handle, LOCK_EX);
$lines = array_values(array_filter(explode("\n", stream_get_contents($handle)), 'strlen'));
if ($lines) {
    $action = array_shift($lines);
    ftruncate($handle, 0);
    rewind($handle);
    fwrite($handle, implode("\n", $lines) . ($lines ? "\n" : ''));
}
flock($handle, LOCK_UN);
fclose($handle);

$body = file_get_contents('php://input');
[$id, $why] = verify(getenv('SF_HOOK_SECRET'), getallheaders(), $body);
$answer = $id === null ? 401 : ($action === '500' ? 500 : 204);
// Logged on arrival: a receiver stopped while it is slow has still received the request.
file_put_contents(getenv('SF_HOOK_LOG'), json_encode(['id' => $id, 'body' => $body, 'verified' => $id !== null,
    'why' => $why, 'answer' => $answer, 'action' => $action], JSON_UNESCAPED_SLASHES) . "\n", FILE_APPEND | LOCK_EX);
if ($action === 'slow') {
    sleep((int) getenv('SF_HOOK_SLOW'));
}
http_response_code($answer);
