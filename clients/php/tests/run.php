<?php
// The PHP client's tests: plain PHP, against the real service whose address and tokens the harness
// (tests/test_clients.py) passes in KEYVAULT_TEST_* variables, plus a stand-in server for retries.
// Prints one line per test and, last, "N passed, M failed"; exits 1 if any failed.
declare(strict_types=1);

require __DIR__ . '/../src/autoload.php';

use Keyvault\BlacklistEntry;
use Keyvault\Client;
use Keyvault\Level;
use Keyvault\Order;
use Keyvault\OrderEvent;
use Keyvault\OrderKey;
use Keyvault\ProblemException;
use Keyvault\Requests;
use Keyvault\Result;
use Keyvault\Status;
use Keyvault\TransportException;
use Keyvault\Webhook;
use Keyvault\WebhookException;

final class Failed extends \Exception
{
}

function check(bool $cond, string $what): void
{
    if (!$cond) {
        throw new Failed($what);
    }
}

function same(mixed $expected, mixed $actual, string $what = ''): void
{
    if ($expected !== $actual) {
        throw new Failed(($what ? "$what: " : '') . 'expected ' . var_export($expected, true)
            . ', got ' . var_export($actual, true));
    }
}

/** Run `$fn`, require it to throw `$class`, and return the exception. */
function throws(string $class, callable $fn): \Throwable
{
    try {
        $fn();
    } catch (\Throwable $exc) {
        if ($exc instanceof $class) {
            return $exc;
        }
        throw new Failed("expected $class, got " . get_class($exc) . ': ' . $exc->getMessage());
    }
    throw new Failed("expected $class, nothing was thrown");
}

function problem(string $name, int $status, callable $fn): ProblemException
{
    $exc = throws(ProblemException::class, $fn);
    same(ProblemException::PREFIX . $name, $exc->type, 'problem type');
    same($status, $exc->status, 'problem status');
    check($exc->title !== '' && $exc->detail !== '', 'a problem has a title and a detail');
    same($name, $exc->name());
    return $exc;
}

$tests = [];
function test(string $name, callable $fn): void
{
    global $tests;
    $tests[$name] = $fn;
}

function env(string $name): string
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        fwrite(STDERR, "$name is not set: run these tests with `make test-clients` (it starts a server)\n");
        exit(2);
    }
    return $value;
}

$url = env('KEYVAULT_TEST_URL');
$tokens = ['verify' => env('KEYVAULT_TEST_TOKEN_VERIFY'), 'redeem' => env('KEYVAULT_TEST_TOKEN_REDEEM'),
           'admin' => env('KEYVAULT_TEST_TOKEN_ADMIN')];
$keys = explode(',', env('KEYVAULT_TEST_KEYS'));
$serials = explode(',', env('KEYVAULT_TEST_SERIALS'));
$unknown = explode(',', env('KEYVAULT_TEST_UNKNOWN'));
$limited = ['key' => env('KEYVAULT_TEST_LIMITED'), 'serial' => env('KEYVAULT_TEST_LIMITED_SERIAL'),
            'uses' => (int) env('KEYVAULT_TEST_LIMITED_USES')];
$client = fn (string $scope = 'admin', array $opts = []): Client => new Client($url, $tokens[$scope], ...$opts);
$run = 'php-' . bin2hex(random_bytes(4));  // order ids unique to this run

// -- the served OpenAPI document: what the client sends and reads must be what the service declares ------

/** The served document: without a token if the service allows it, else with the verify token. */
function served_document(string $url, array $tokens): array
{
    try {
        return (new Client($url, 'kvt_none'))->openapi();
    } catch (ProblemException $exc) {
        same(401, $exc->status, 'openapi.json without a valid token');
        return (new Client($url, $tokens['verify']))->openapi();
    }
}

$doc = served_document($url, $tokens);
$schemas = $doc['components']['schemas'] ?? [];

function resolve(array $schema, array $schemas): array
{
    while (isset($schema['$ref'])) {
        $name = substr($schema['$ref'], strlen('#/components/schemas/'));
        check(isset($schemas[$name]), "the document refers to a schema it does not hold: $name");
        $schema = $schemas[$name];
    }
    return $schema;
}

/** Why `$value` does not match `$schema` (a small JSON Schema checker), or null when it does. */
function mismatch(mixed $value, array $schema, array $schemas, string $at = '$'): ?string
{
    $schema = resolve($schema, $schemas);
    $known = ['title', 'description', 'default', 'examples', 'type', 'enum', 'const', 'anyOf', 'oneOf',
              'properties', 'required', 'additionalProperties', 'items', 'minLength', 'maxLength', 'maxItems',
              'minItems', 'pattern', 'format', 'minimum', 'maximum'];
    $unknown = array_diff(array_keys($schema), $known);
    check($unknown === [], "the request schema at $at uses keywords this check does not know: "
        . implode(', ', $unknown) . ' (teach clients/php/tests/run.php)');
    foreach (['anyOf', 'oneOf'] as $word) {
        if (isset($schema[$word])) {
            $ok = array_filter($schema[$word], fn ($s) => mismatch($value, $s, $schemas, $at) === null);
            if (count($ok) === 0 || ($word === 'oneOf' && count($ok) !== 1)) {
                return "$at matches no branch of its $word";
            }
        }
    }
    if (isset($schema['type'])) {
        $types = (array) $schema['type'];
        $is = match (true) {
            $value === null => 'null', is_bool($value) => 'boolean', is_int($value) => 'integer',
            is_float($value) => 'number', is_string($value) => 'string',
            is_array($value) && array_is_list($value) && ($value !== [] || !in_array('object', $types, true)) => 'array',
            default => 'object',
        };
        if (!in_array($is, $types, true) && !($is === 'integer' && in_array('number', $types, true))) {
            return "$at is $is, the schema wants " . implode('|', $types);
        }
    }
    if (isset($schema['enum']) && !in_array($value, $schema['enum'], true)) {
        return "$at is not one of " . implode(', ', $schema['enum']);
    }
    if (array_key_exists('const', $schema) && $value !== $schema['const']) {
        return "$at is not " . json_encode($schema['const']);
    }
    if ((is_int($value) || is_float($value))
        && ($value < ($schema['minimum'] ?? -INF) || $value > ($schema['maximum'] ?? INF))) {
        return "$at is outside its minimum and maximum";
    }
    if (is_string($value)) {
        $len = (int) preg_match_all('/./us', $value);  // code points, as JSON Schema counts
        if ($len < ($schema['minLength'] ?? 0) || $len > ($schema['maxLength'] ?? PHP_INT_MAX)) {
            return "$at has a length outside its limits";
        }
        if (isset($schema['pattern']) && !preg_match('/' . str_replace('/', '\/', $schema['pattern']) . '/u', $value)) {
            return "$at does not match its pattern";
        }
    }
    if (is_array($value) && array_is_list($value) && isset($schema['items'])) {
        if (count($value) > ($schema['maxItems'] ?? PHP_INT_MAX) || count($value) < ($schema['minItems'] ?? 0)) {
            return "$at has a count outside its limits";
        }
        foreach ($value as $i => $item) {
            if (($why = mismatch($item, $schema['items'], $schemas, "{$at}[$i]")) !== null) {
                return $why;
            }
        }
    }
    if (is_array($value) && isset($schema['properties'])) {
        foreach ($schema['required'] ?? [] as $name) {
            if (!array_key_exists($name, $value)) {
                return "$at lacks the required field `$name`";
            }
        }
        foreach ($value as $name => $item) {
            if (!isset($schema['properties'][$name])) {
                if (($schema['additionalProperties'] ?? true) === false) {
                    return "$at has the field `$name`, which the schema does not name";
                }
                continue;
            }
            if (($why = mismatch($item, $schema['properties'][$name], $schemas, "$at.$name")) !== null) {
                return $why;
            }
        }
    }
    return null;
}

/** The request schema the served document names for `$operation` (Requests::ROUTES), checking the route. */
function request_schema(string $operation, array $doc): ?array
{
    [$method, $path, $name] = Requests::ROUTES[$operation];
    $op = $doc['paths'][$path][strtolower($method)] ?? null;
    check(is_array($op), "the service does not serve $method $path, which the client calls for $operation");
    $ref = $op['requestBody']['content']['application/json']['schema']['$ref'] ?? null;
    if ($name === null) {
        same(null, $op['requestBody'] ?? null, "$method $path takes no JSON body in the client");
        return null;
    }
    same("#/components/schemas/$name", $ref, "$method $path's request schema");
    return $doc['components']['schemas'][$name];
}

test('every Status constant is in the served Result status enum, and every served status has a constant', function () use ($schemas) {
    $served = $schemas['Result']['properties']['status']['enum'] ?? null;
    check(is_array($served), 'the served Result schema has a status enum');
    $constants = array_values((new \ReflectionClass(Status::class))->getConstants());
    $named = array_filter($constants, 'is_string');
    same(Status::ALL, array_values($named), 'Status::ALL lists every constant, in order');
    $a = Status::ALL;
    $b = $served;
    sort($a);
    sort($b);
    same($b, $a, 'the client\'s statuses against the served enum');
});

test('every Result property the client maps is in the served Result schema, and the other way round', function () use ($schemas) {
    $served = $schemas['Result']['properties'];
    $mapped = array_keys(Result::FIELDS);
    $names = array_keys($served);
    sort($mapped);
    sort($names);
    same($names, $mapped, 'Result::FIELDS against the served Result properties');
    foreach ($schemas['Result']['required'] as $name) {
        check(isset(Result::FIELDS[$name]), "the served Result requires `$name`");
    }
    // A document built from the served schema, every field present, reads into a Result.
    $sample = [];
    foreach ($served as $name => $schema) {
        $types = (array) ($schema['type'] ?? 'string');
        $sample[$name] = $name === 'status' ? $schema['enum'][0] : (in_array('integer', $types, true) ? 3 : 'x');
    }
    $result = Result::fromArray($sample);
    foreach (Result::FIELDS as $name => $property) {
        same($sample[$name], $result->$property, "Result->$property");
    }
    $props = array_map(fn ($p) => $p->getName(), (new \ReflectionClass(Result::class))->getProperties());
    same([...array_values(Result::FIELDS), 'requestId'], $props,
        'Result declares exactly the mapped properties, and the request id (a header, not a field)');
});

test('BlacklistEntry maps exactly the served BlacklistEntry schema', function () use ($schemas) {
    $names = array_keys($schemas['BlacklistEntry']['properties']);
    $mapped = array_keys(BlacklistEntry::FIELDS);
    sort($names);
    sort($mapped);
    same($names, $mapped);
});

test('every route the client calls is served, with the request schema the client builds for', function () use ($doc) {
    foreach (array_keys(Requests::ROUTES) as $operation) {
        request_schema($operation, $doc);
    }
    $levels = resolve($doc['components']['schemas']['BlacklistRequest']['properties']['level'], $doc['components']['schemas'])['enum'];
    sort($levels);
    $mine = Level::ALL;
    sort($mine);
    same($levels, $mine, 'Level::ALL against the served levels');
});

test('each request body the client sends has exactly the fields its served schema allows', function () use ($doc) {
    $schemas = $doc['components']['schemas'];
    $bodies = [
        'verify' => [Requests::verify(['K1', 'K2'], 'acct-1'), Requests::verify([])],
        'redeem' => [Requests::redeem('K', 'SO-1', 'acct-1', true), Requests::redeem('K', 'SO-1')],
        'redeemMany' => [Requests::redeemMany([['key' => 'K', 'order_id' => 'O'], ['K2', 'O2']], 'acct-1'),
                         Requests::redeemMany([])],
        'void' => [Requests::void('K', 'refund')],
        'blacklist' => [Requests::blacklist(Level::SERIAL, 'S', 'fraud')],
        'lift' => [Requests::blacklist(Level::SUPPLIER, 'S', 'cleared')],
        'hold' => [Requests::hold('K', 'SO-1', 900, 'acct-1'), Requests::hold('K', 'SO-1', 604800)],
        'confirm' => [Requests::order('SO-1')],
        'release' => [Requests::order('SO-1')],
    ];
    foreach ($bodies as $operation => $examples) {
        $schema = request_schema($operation, $doc);
        foreach ($examples as $body) {
            $why = mismatch($body, $schema, $schemas);
            check($why === null, "$operation body " . json_encode($body) . ": $why");
        }
        // With every optional argument given, the body holds every field the schema names: none is left unsent.
        $names = array_keys($schema['properties']);
        $full = array_keys($examples[0]);
        sort($names);
        sort($full);
        same($names, $full, "$operation's fields against the served schema");
    }
    check(mismatch(['keys' => ['K'], 'clinet' => 'x'], $schemas['VerifyRequest'], $schemas) !== null,
        'the checker itself refuses an unknown field');
    check(mismatch(['key' => 'K'], $schemas['RedeemRequest'], $schemas) !== null,
        'the checker itself refuses a missing field');
    check(mismatch(Requests::hold('K', 'SO-1', 0), $schemas['HoldRequest'], $schemas) !== null,
        'the checker itself refuses a ttl under its minimum');
    same('/v1/orders/SO%2F1%20x', Requests::orderPath('SO/1 x'), 'an order id is one URL-encoded path segment');
});

// -- against the real service ------------------------------------------------------------------------

test('verify: a valid key, an unknown key, a malformed one', function () use ($client, $keys, $serials, $unknown) {
    $kv = $client('verify');
    $valid = $kv->verify($keys[0]);
    same(Status::VALID, $valid->status);
    same($serials[0], $valid->serial);
    check($valid->ok() && $valid->batch !== null && $valid->supplier !== null && $valid->product !== null, 'a valid answer');
    $unk = $kv->verify($unknown[0], 'acct-php');
    same(Status::UNKNOWN, $unk->status);
    check(!$unk->ok(), 'unknown is not ok');
    $bad = $kv->verify('not-a-key');
    same(Status::MALFORMED, $bad->status);
    same(null, $bad->serial);
});

test('verifyMany answers in input order, one per key', function () use ($client, $keys, $serials, $unknown) {
    $answers = $client('verify')->verifyMany([$keys[1], 'junk', $unknown[1], $keys[0]]);
    same([Status::VALID, Status::MALFORMED, Status::UNKNOWN, Status::VALID], array_map(fn ($r) => $r->status, $answers));
    same($serials[1], $answers[0]->serial);
    same($serials[0], $answers[3]->serial);
    same([], $client('verify')->verifyMany([]));
});

test('redeem: accepted, the same order again accepted, another order redeemed', function () use ($client, $keys, $serials, $run) {
    $kv = $client('redeem');
    $first = $kv->redeem($keys[2], "$run-A", 'acct-php');
    same(Status::ACCEPTED, $first->status);
    same("$run-A", $first->orderId);
    same($serials[2], $first->serial);
    check($first->redeemedAt !== null, 'accepted carries redeemed_at');
    $again = $kv->redeem($keys[2], "$run-A");
    same(Status::ACCEPTED, $again->status);
    same($first->redeemedAt, $again->redeemedAt, 'a retry gets the first answer');
    $other = $kv->redeem($keys[2], "$run-B");
    same(Status::REDEEMED, $other->status);
    same("$run-A", $other->orderId, 'redeemed names the first order');
    same(Status::REDEEMED, $kv->verify($keys[2])->status);
    same(null, $first->receipt, 'no receipt unless asked');
    $signed = $kv->redeem($keys[2], "$run-A", null, true);
    check(str_starts_with((string) $signed->receipt, 'KVR1.'), 'an accepted redeem that asked carries its receipt');
    same($signed->receipt, $kv->receipt($serials[2]), 'receipt(serial) is the receipt the redeem carried');
    $missing = throws(ProblemException::class, fn () => $kv->receipt($serials[13]));
    same('urn:keyvault:problem:not-found', $missing->type, 'no receipt for a key nobody redeemed');
});

test('redeemMany: one answer per item in order, one bad key failing nothing else', function () use ($client, $keys, $serials, $run) {
    $answers = $client('redeem')->redeemMany([
        ['key' => $keys[3], 'order_id' => "$run-M3"], [$keys[4], "$run-M4"], ['key' => 'junk', 'order_id' => "$run-M5"],
    ], 'acct-php');
    same([Status::ACCEPTED, Status::ACCEPTED, Status::MALFORMED], array_map(fn ($r) => $r->status, $answers));
    same([$serials[3], $serials[4]], [$answers[0]->serial, $answers[1]->serial]);
    same("$run-M4", $answers[1]->orderId);
    throws(\InvalidArgumentException::class, fn () => $client('redeem')->redeemMany([['key' => $keys[5]]]));
});

test('void by serial: the key answers void with the reason', function () use ($client, $keys, $serials) {
    $kv = $client('admin');
    $voided = $kv->void($serials[5], 'refunded');
    same(Status::VOID, $voided->status);
    same($serials[5], $voided->serial);
    $after = $kv->verify($keys[5]);
    same(Status::VOID, $after->status);
    same('refunded', $after->reason);
});

test('blacklist then lift a serial', function () use ($client, $keys, $serials) {
    $kv = $client('admin');
    $entry = $kv->blacklist(Level::SERIAL, $serials[6], 'reported stolen');
    check($entry instanceof BlacklistEntry, 'an entry');
    // The entry is answered at the level asked; a serial names one key, so the key's answer says `key`.
    same(Level::SERIAL, $entry->level);
    same([$serials[6], 'reported stolen'], [$entry->target, $entry->reason]);
    $refused = $kv->verify($keys[6]);
    same(Status::BLACKLISTED, $refused->status);
    same(Level::KEY, $refused->level);
    same('reported stolen', $refused->reason);
    $lifted = $kv->lift(Level::SERIAL, $serials[6], 'found');
    same($serials[6], $lifted->target);
    same(Status::VALID, $kv->verify($keys[6])->status);
    problem('not-found', 404, fn () => $kv->lift(Level::SERIAL, $serials[6], 'again'));
});

test('trace and stats', function () use ($client, $serials) {
    $story = $client('redeem')->trace($serials[2]);
    check($story !== [], 'a trace');
    check(str_contains(json_encode($story), $serials[2]), 'the trace names its serial');
    check($client('admin')->stats() !== [], 'stats');
    problem('not-found', 404, fn () => $client('redeem')->trace('NOPE-000-99999'));
});

test('401: an unknown token is a ProblemException of type unauthorized', function () use ($url, $keys) {
    problem('unauthorized', 401, fn () => (new Client($url, 'kvt_' . str_repeat('A', 43)))->verify($keys[0]));
});

test('403: a verify token cannot redeem, nor a redeem token void', function () use ($client, $keys, $serials, $run) {
    $exc = problem('forbidden', 403, fn () => $client('verify')->redeem($keys[7], "$run-F"));
    check(str_contains($exc->detail, 'redeem'), 'the detail names the scope needed');
    problem('forbidden', 403, fn () => $client('redeem')->void($serials[7], 'no'));
    problem('forbidden', 403, fn () => $client('redeem')->stats());
    same(Status::VALID, $client('verify')->verify($keys[7])->status, 'nothing was redeemed');
});

test('422: bad input is a ProblemException of type invalid-request, and changes nothing', function () use ($client, $keys, $serials) {
    problem('invalid-request', 422, fn () => $client('redeem')->redeem($keys[8], ''));
    problem('invalid-request', 422, fn () => $client('redeem')->redeem($keys[8], 'SO-1', str_repeat('c', 64)));
    problem('invalid-request', 422, fn () => $client('admin')->blacklist('galaxy', $serials[8], 'x'));
    problem('invalid-request', 422, fn () => $client('admin')->void($serials[8], "   "));
    same(Status::VALID, $client('verify')->verify($keys[8])->status);
});

test('a refused 4xx is not retried', function () use ($client, $keys) {
    $started = microtime(true);
    problem('invalid-request', 422, fn () => $client('redeem', ['retryBackoff' => 2.0])->redeem($keys[8], ''));
    check(microtime(true) - $started < 1.5, 'no backoff was slept');
});

test('bad options and addresses are refused before any request', function () use ($url, $tokens) {
    throws(\InvalidArgumentException::class, fn () => new Client('localhost:8080', $tokens['verify']));
    throws(\InvalidArgumentException::class, fn () => new Client($url, "kvt_x\r\nX-Evil: 1"));
    throws(\InvalidArgumentException::class, fn () => new Client($url, $tokens['verify'], timeout: 0));
    throws(\InvalidArgumentException::class, fn () => new Client($url, $tokens['verify'], redeemRetries: -1));
    throws(\InvalidArgumentException::class, fn () => (new Client($url, $tokens['verify']))->verify("\xff\xfe"));
});

// -- checkout: holds, confirms, releases, orders ----------------------------------------------------

/** Seconds from now to an ISO 8601 UTC time the service answered. */
function seconds_until(?string $iso): float
{
    check($iso !== null, 'a time was answered');
    $at = \DateTimeImmutable::createFromFormat('Y-m-d\TH:i:s.vP', str_replace('Z', '+00:00', $iso));
    check($at !== false, "an ISO 8601 time: $iso");
    return (float) $at->format('U.u') - microtime(true);
}

/** The service's raw JSON answer to GET `$path` (to compare the typed classes with what is served). */
function raw_get(string $url, string $token, string $path): array
{
    $ctx = stream_context_create(['http' => ['header' => "Authorization: Bearer $token\r\n", 'ignore_errors' => true]]);
    $doc = json_decode((string) file_get_contents($url . $path, false, $ctx), true, 512, JSON_THROW_ON_ERROR);
    check(is_array($doc), "GET $path answers an object");
    return $doc;
}

test('hold, another order refused held, confirm accepted, a retry the same, the order lists the key', function () use ($client, $keys, $serials, $run) {
    $kv = $client('redeem')->withRequestId("$run-checkout");
    $order = "$run-hold/1 x";  // a '/' and a space: the lookup URL-encodes the id
    $held = $kv->hold($keys[10], $order, 900);
    same(Status::HELD, $held->status);
    same([$serials[10], $order, "$run-checkout"], [$held->serial, $held->orderId, $held->requestId]);
    $left = seconds_until($held->expiresAt);
    check($left > 850 && $left <= 900, "the hold ends in 900 s ($left)");
    $again = $kv->hold($keys[10], $order, 60);
    same(Status::HELD, $again->status);
    same($held->expiresAt, $again->expiresAt, 'a retry keeps the first expiry');
    $other = $kv->hold($keys[10], "$run-hold-2", 900);
    same(Status::HELD, $other->status);
    same(null, $other->orderId, 'another order is told held, naming no order');
    same($held->expiresAt, $other->expiresAt);
    same(Status::HELD, $kv->redeem($keys[10], "$run-hold-2")->status, 'a redeem by another order is refused');
    same(Status::HELD, $client('verify')->verify($keys[10])->status);
    $confirmed = $kv->confirm($order);
    same(1, count($confirmed));
    same([Status::ACCEPTED, $serials[10], $order], [$confirmed[0]->status, $confirmed[0]->serial, $confirmed[0]->orderId]);
    check($confirmed[0]->redeemedAt !== null && $confirmed[0]->requestId === "$run-checkout", 'accepted, with the request id');
    $retried = $kv->confirm($order);
    same([Status::ACCEPTED], array_map(fn ($r) => $r->status, $retried));
    same($confirmed[0]->redeemedAt, $retried[0]->redeemedAt, 'a retried confirm answers as the first did');
    $late = $kv->redeem($keys[10], "$run-hold-2");
    same([Status::REDEEMED, $order], [$late->status, $late->orderId]);
    $lookup = $kv->order($order);
    check($lookup instanceof Order, 'an Order');
    same([$order, "$run-checkout"], [$lookup->orderId, $lookup->requestId]);
    same([$serials[10]], array_map(fn (OrderKey $k) => $k->serial, $lookup->keys));
    $entry = $lookup->key($serials[10]);
    same(OrderKey::REDEEMED, $entry->state);
    same([$held->expiresAt, $confirmed[0]->redeemedAt, null, null],
         [$entry->expiresAt, $entry->redeemedAt, $entry->releasedAt, $entry->expiredAt]);
    check($entry->heldAt !== null && $entry->heldAt <= $entry->redeemedAt, 'held, then redeemed');
    same(['hold', 'confirm', 'redeem'], array_map(fn (OrderEvent $e) => $e->type, $lookup->events), 'a confirm redeems');
    foreach ($lookup->events as $event) {
        same([$serials[10], $order], [$event->serial, $event->orderId]);
        check(in_array($event->type, OrderEvent::TYPES, true) && $event->index >= 0 && $event->at !== '', 'an event');
    }
    same($held->expiresAt, $lookup->events[0]->expiresAt);
    same(null, $lookup->key($serials[11]), 'a key the order never held');
    check(!str_contains(json_encode($lookup), $keys[10]), 'the lookup never holds the key');
    $plain = $kv->order("$run-A");  // redeemed plainly (no hold) by the redeem test
    same(['redeem'], array_map(fn (OrderEvent $e) => $e->type, $plain->events), 'a plain redeem is listed');
    same([$serials[2], "$run-A"], [$plain->events[0]->serial, $plain->events[0]->orderId]);
});

test('release frees a held key; a later confirm answers released', function () use ($client, $keys, $serials, $run) {
    $kv = $client('redeem');
    $order = "$run-rel";
    same(Status::HELD, $kv->hold($keys[11], $order, 600)->status);
    $released = $kv->release($order);
    same([Status::RELEASED], array_map(fn ($r) => $r->status, $released));
    same([$serials[11], $order], [$released[0]->serial, $released[0]->orderId]);
    same([Status::RELEASED], array_map(fn ($r) => $r->status, $kv->release($order)), 'a retried release');
    same(Status::VALID, $client('verify')->verify($keys[11])->status, 'the key is free again');
    same([Status::RELEASED], array_map(fn ($r) => $r->status, $kv->confirm($order)), 'confirm after release');
    $next = $kv->hold($keys[11], "$run-rel-2", 600);
    same([Status::HELD, "$run-rel-2"], [$next->status, $next->orderId], 'another order may hold it now');
    $entry = $kv->order($order)->key($serials[11]);
    same(OrderKey::RELEASED, $entry->state);
    check($entry->releasedAt !== null && $entry->redeemedAt === null, 'released, never redeemed');
    same([Status::RELEASED], array_map(fn ($r) => $r->status, $kv->release("$run-rel-2")));
    same(Status::VALID, $client('verify')->verify($keys[11])->status);
});

test('checkout refusals: an order that held nothing is 404, a bad ttl or order id 422, and nothing changes', function () use ($client, $keys, $run) {
    $kv = $client('redeem');
    problem('not-found', 404, fn () => $kv->confirm("$run-never"));
    problem('not-found', 404, fn () => $kv->release("$run-never"));
    problem('not-found', 404, fn () => $kv->order("$run-never"));
    problem('invalid-request', 422, fn () => $kv->hold($keys[12], "$run-ttl", 0));
    problem('invalid-request', 422, fn () => $kv->hold($keys[12], "$run-ttl", 604801));
    problem('invalid-request', 422, fn () => $kv->hold($keys[12], '  ', 60));
    problem('invalid-request', 422, fn () => $kv->order(str_repeat('o', 129)));
    problem('forbidden', 403, fn () => $client('verify')->hold($keys[12], "$run-ttl", 60));
    problem('forbidden', 403, fn () => $client('verify')->order("$run-ttl"));
    same(Status::VALID, $client('verify')->verify($keys[12])->status, 'nothing was held');
    same(Status::MALFORMED, $kv->hold('not-a-key', "$run-ttl", 60)->status);
});

test('a count-limited key: each order once, holds count against the uses left, then exhausted', function () use ($client, $limited, $run) {
    $kv = $client('redeem');
    [$key, $serial, $uses] = [$limited['key'], $limited['serial'], $limited['uses']];
    same(3, $uses, 'the fixture issues 3 uses');
    $first = $kv->redeem($key, "$run-L1");
    same([Status::ACCEPTED, $serial, 2], [$first->status, $first->serial, $first->usesLeft]);
    same([Status::ACCEPTED, 2], [$kv->redeem($key, "$run-L1")->status, $kv->redeem($key, "$run-L1")->usesLeft],
        'a retry answers as the first time');
    same(Status::HELD, $kv->hold($key, "$run-L2", 600)->status);
    $second = $kv->redeem($key, "$run-L3");
    same([Status::ACCEPTED, 1], [$second->status, $second->usesLeft]);
    same(Status::HELD, $kv->redeem($key, "$run-L4")->status, 'the last use is held for another order');
    $confirmed = $kv->confirm("$run-L2");
    same([Status::ACCEPTED, 0], [$confirmed[0]->status, $confirmed[0]->usesLeft]);
    same(Status::EXHAUSTED, $kv->redeem($key, "$run-L4")->status);
    same(Status::EXHAUSTED, $client('verify')->verify($key)->status);
    $entry = $kv->order("$run-L3")->key($serial);
    same([OrderKey::REDEEMED, 1, null], [$entry->state, $entry->usesLeft, $entry->heldAt]);
    same(['use'], array_map(fn ($e) => $e->type, $kv->order("$run-L3")->events));
});

test('Order, OrderKey and OrderEvent map every field the service answers', function () use ($url, $tokens, $client, $keys, $run) {
    $kv = $client('redeem');
    $kv->hold($keys[13], "$run-shape", 300);
    $kv->release("$run-shape");
    $kv->hold($keys[13], "$run-shape", 300);
    $doc = raw_get($url, $tokens['redeem'], Requests::orderPath("$run-shape"));
    $names = fn (array $a): array => (function (array $k) { sort($k); return $k; })(array_keys($a));
    same($names(Order::FIELDS), $names($doc), 'Order::FIELDS against the answer');
    foreach ($doc['keys'] as $entry) {
        same([], array_diff(array_keys($entry), array_keys(OrderKey::FIELDS)), 'every answered key field is mapped');
        same([], array_diff(array_keys(OrderKey::FIELDS), [...array_keys($entry), 'uses_left', 'voided_at']),
            'every mapped field but uses_left and voided_at is always answered');
        check(in_array($entry['state'], OrderKey::STATES, true), "a known state: {$entry['state']}");
    }
    same(['hold', 'release', 'hold'], array_column($doc['events'], 'type'));
    foreach ($doc['events'] as $event) {
        same([], array_diff(array_keys($event), array_keys(OrderEvent::FIELDS)), 'every answered event field is mapped');
    }
    $typed = Order::fromArray($doc);
    same(OrderKey::HELD, $typed->keys[0]->state, 'held again after a release');
    same($doc['events'][2]['expires_at'], $typed->keys[0]->expiresAt);
    foreach ([['order_id' => 1, 'keys' => [], 'events' => []], ['order_id' => 'x', 'keys' => [['serial' => 'S']], 'events' => []],
              ['order_id' => 'x', 'keys' => [], 'events' => [['index' => '1']]], 'nope'] as $bad) {
        throws(TransportException::class, fn () => Order::fromArray($bad));
    }
    $kv->release("$run-shape");
});

// -- request ids -------------------------------------------------------------------------------------

test('a request id given is sent, and the service\'s id is on results and problems', function () use ($client, $keys, $url, $run) {
    $kv = $client('verify')->withRequestId("$run-verify");
    same("$run-verify", $kv->verify($keys[15])->requestId, 'the id sent comes back on the result');
    same("$run-verify", $kv->lastRequestId());
    $many = $kv->verifyMany([$keys[14], $keys[15]]);
    same(["$run-verify", "$run-verify"], [$many[0]->requestId, $many[1]->requestId]);
    $own = $client('verify')->verify($keys[15])->requestId;
    check(is_string($own) && preg_match('/^[0-9a-f]{16}$/', $own) === 1, "without one, the service's own: $own");
    $bad = (new Client($url, 'kvt_' . str_repeat('A', 43)))->withRequestId("$run-401");
    $exc = problem('unauthorized', 401, fn () => $bad->verify($keys[0]));
    same("$run-401", $exc->requestId);
    check(str_contains($exc->getMessage(), "request $run-401"), 'the message quotes the request id');
    foreach (["a\r\nX-Evil: 1", '', 'two words', str_repeat('x', 129), "caf\u{e9}"] as $wrong) {
        throws(\InvalidArgumentException::class, fn () => $client('verify')->withRequestId($wrong));
    }
});

test('ProblemException reads every member of the served Problem schema', function () use ($schemas) {
    $names = array_keys($schemas['Problem']['properties']);
    sort($names);
    same(['detail', 'request_id', 'status', 'title', 'type'], $names);
});

// -- webhooks ----------------------------------------------------------------------------------------

const SPEC_SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const SPEC_BODY = '{"test": 2432232314}';
const SPEC_HEADERS = ['webhook-id' => 'msg_p5jXN8AQM9LWM0D4loKWxJek', 'webhook-timestamp' => '1614265330',
                      'webhook-signature' => 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='];

test('the Standard Webhooks specification\'s vector verifies', function () {
    same('msg_p5jXN8AQM9LWM0D4loKWxJek', Webhook::verify(SPEC_SECRET, SPEC_HEADERS, SPEC_BODY, now: 1614265330 + 299));
    same('msg_p5jXN8AQM9LWM0D4loKWxJek', Webhook::verify(substr(SPEC_SECRET, 6), SPEC_HEADERS, SPEC_BODY, now: 1614265330));
    $server = ['HTTP_WEBHOOK_ID' => SPEC_HEADERS['webhook-id'], 'HTTP_WEBHOOK_TIMESTAMP' => '1614265330',
               'HTTP_WEBHOOK_SIGNATURE' => SPEC_HEADERS['webhook-signature'], 'REQUEST_METHOD' => 'POST'];
    same('msg_p5jXN8AQM9LWM0D4loKWxJek', Webhook::verify(SPEC_SECRET, $server, SPEC_BODY, now: 1614265330), '$_SERVER');
    throws(WebhookException::class, fn () => Webhook::verify(SPEC_SECRET, SPEC_HEADERS, SPEC_BODY)); // 2021: too old
});

test('a damaged webhook is refused, saying why, without the secret or the body', function () {
    $cases = [
        'no signature matches' => [[], SPEC_BODY . ' '],
        'not Unix seconds' => [['webhook-timestamp' => '1614265330.0'], SPEC_BODY],
        'no webhook-id header' => [['webhook-id' => ''], SPEC_BODY],
        'more than 32 signatures' => [['webhook-signature' => str_repeat(SPEC_HEADERS['webhook-signature'] . ' ', 33)], SPEC_BODY],
    ];
    foreach ($cases as $why => [$change, $body]) {
        $exc = throws(WebhookException::class, fn () => Webhook::verify(SPEC_SECRET, array_merge(SPEC_HEADERS, $change), $body, now: 1614265330));
        check(str_contains($exc->getMessage(), $why), "$why: " . $exc->getMessage());
        check(!str_contains($exc->getMessage(), 'MfKQ9r8') && !str_contains($exc->getMessage(), '2432232314'), 'no secret or body');
    }
    $two = SPEC_HEADERS + ['Webhook-Id' => 'msg_p5jXN8AQM9LWM0D4loKWxJek'];
    throws(WebhookException::class, fn () => Webhook::verify(SPEC_SECRET, $two, SPEC_BODY, now: 1614265330));
    foreach ([-301, 301] as $offset) {
        throws(WebhookException::class, fn () => Webhook::verify(SPEC_SECRET, SPEC_HEADERS, SPEC_BODY, now: 1614265330 - $offset));
    }
    foreach (['', 'whsec_', 'whsec_not*base64'] as $bad) {
        $exc = throws(WebhookException::class, fn () => Webhook::verify($bad, SPEC_HEADERS, SPEC_BODY, now: 1614265330));
        check(str_contains($exc->getMessage(), 'secret'), $exc->getMessage());
    }
    $mac = base64_decode(substr(SPEC_HEADERS['webhook-signature'], 3));
    for ($i = 0; $i < strlen($mac) * 8; $i++) {
        $flipped = $mac;
        $flipped[intdiv($i, 8)] = chr(ord($flipped[intdiv($i, 8)]) ^ (1 << ($i % 8)));
        $headers = array_merge(SPEC_HEADERS, ['webhook-signature' => 'v1,' . base64_encode($flipped)]);
        throws(WebhookException::class, fn () => Webhook::verify(SPEC_SECRET, $headers, SPEC_BODY, now: 1614265330));
    }
});

test('webhooks signed by keyvault\'s Python signer verify exactly as keyvault says', function () {
    $vectors = json_decode((string) file_get_contents(env('KEYVAULT_TEST_WEBHOOKS')), true, 512, JSON_THROW_ON_ERROR);
    check(count($vectors) >= 8, 'the vectors file holds the cases');
    foreach ($vectors as $v) {
        $body = base64_decode($v['body_base64'], true);
        try {
            $id = Webhook::verify($v['secret'], $v['headers'], $body, $v['tolerance'], $v['now']);
            check($v['valid'] && $id === $v['headers']['webhook-id'], "{$v['name']}: keyvault refuses it, PHP accepted it");
        } catch (WebhookException $exc) {
            check(!$v['valid'], "{$v['name']}: keyvault signed it, PHP refused it: " . $exc->getMessage());
        }
    }
});

// -- transport and retries, against a stand-in server ------------------------------------------------

final class Fake
{
    public string $dir;
    public string $url;
    /** @var resource */
    private $proc;

    public function __construct()
    {
        $this->dir = sys_get_temp_dir() . '/kv-php-fake-' . bin2hex(random_bytes(4));
        mkdir($this->dir);
        $sock = stream_socket_server('tcp://127.0.0.1:0');
        $port = (int) substr(strrchr(stream_socket_get_name($sock, false), ':'), 1);
        fclose($sock);
        $this->url = "http://127.0.0.1:$port";
        $env = ['FAKE_DIR' => $this->dir, 'PATH' => getenv('PATH')];
        $this->proc = proc_open([PHP_BINARY, '-S', "127.0.0.1:$port", __DIR__ . '/fake_server.php'],
            [0 => ['pipe', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes, null, $env);
        for ($i = 0; $i < 200; $i++) {
            $conn = @fsockopen('127.0.0.1', $port, $errno, $errstr, 0.1);
            if ($conn) {
                fclose($conn);
                return;
            }
            usleep(25000);
        }
        throw new Failed('the stand-in server did not start');
    }

    public function plan(string ...$steps): void
    {
        file_put_contents($this->dir . '/plan', implode("\n", $steps) . "\n");
        @unlink($this->dir . '/log');
    }

    /** @return list<string> the requests it received */
    public function log(): array
    {
        return is_file($this->dir . '/log') ? file($this->dir . '/log', FILE_IGNORE_NEW_LINES) : [];
    }

    public function stop(): void
    {
        proc_terminate($this->proc);
        proc_close($this->proc);
        array_map('unlink', glob($this->dir . '/*'));
        rmdir($this->dir);
    }
}

$fake = null;
test('a redeem answered 503 is retried with the same order id, then answered', function () use (&$fake) {
    $fake ??= new Fake();
    $fake->plan('503', '503', '200');
    $result = (new Client($fake->url, 'kvt_t', retryBackoff: 0.01))->redeem('K-1', 'SO-77');
    same(Status::ACCEPTED, $result->status);
    $log = $fake->log();
    same(3, count($log), 'three tries');
    foreach ($log as $line) {
        check(str_contains($line, '"order_id":"SO-77"') && str_starts_with($line, 'POST /v1/redeem '), $line);
    }
});

test('retries are bounded: the last 503 is thrown after 1 + redeemRetries tries', function () use (&$fake) {
    $fake ??= new Fake();
    $fake->plan('503');
    problem('store-unavailable', 503, fn () => (new Client($fake->url, 'kvt_t', redeemRetries: 2, retryBackoff: 0.01))
        ->redeemMany([['K', 'SO-1']]));
    same(3, count($fake->log()));
    $fake->plan('503');
    problem('store-unavailable', 503, fn () => (new Client($fake->url, 'kvt_t', redeemRetries: 0))->redeem('K', 'SO-1'));
    same(1, count($fake->log()), 'redeemRetries: 0 tries once');
});

test('retries send the same request id', function () use (&$fake) {
    $fake ??= new Fake();
    $fake->plan('503', '503', '200');
    (new Client($fake->url, 'kvt_t', retryBackoff: 0.01))->withRequestId('retry-me')->redeem('K-1', 'SO-1');
    $log = $fake->log();
    same(3, count($log), 'three tries');
    foreach ($log as $line) {
        check(str_ends_with($line, ' id=retry-me'), $line);
    }
});

test('a hold, a confirm and a release answered 503 are retried with the same order id', function () use (&$fake) {
    $fake ??= new Fake();
    $kv = new Client($fake->url, 'kvt_t', retryBackoff: 0.01);
    $fake->plan('503', '200');
    same(Status::ACCEPTED, $kv->hold('K-1', 'SO-H', 900)->status);
    same(2, count($fake->log()));
    foreach ($fake->log() as $line) {
        check(str_starts_with($line, 'POST /v1/hold ') && str_contains($line, '"order_id":"SO-H","ttl":900'), $line);
    }
    foreach (['confirm', 'release'] as $op) {
        $fake->plan('503', '503', '200');
        same('SO-C', $kv->$op('SO-C')[0]->orderId);
        $log = $fake->log();
        same(3, count($log), "$op: three tries");
        foreach ($log as $line) {
            check(str_starts_with($line, "POST /v1/$op ") && str_contains($line, '{"order_id":"SO-C"}'), $line);
        }
    }
    $fake->plan('503');
    problem('store-unavailable', 503, fn () => $kv->order('SO-C'));
    same(1, count($fake->log()), 'an order lookup is not retried (the caller decides)');
});

test('a verify answered 503 is not retried (the caller decides)', function () use (&$fake) {
    $fake ??= new Fake();
    $fake->plan('503');
    problem('store-unavailable', 503, fn () => (new Client($fake->url, 'kvt_t', retryBackoff: 0.01))->verify('K'));
    same(1, count($fake->log()));
});

test('a proxy\'s HTML error is a TransportException, and a redeem retries through it', function () use (&$fake) {
    $fake ??= new Fake();
    $fake->plan('html');
    throws(TransportException::class, fn () => (new Client($fake->url, 'kvt_t'))->verify('K'));
    $fake->plan('html', '200');
    same(Status::ACCEPTED, (new Client($fake->url, 'kvt_t', retryBackoff: 0.01))->redeem('K', 'SO-9')->status);
    same(2, count($fake->log()));
});

test('a timeout is a TransportException, after the configured time', function () use (&$fake) {
    $fake ??= new Fake();
    $fake->plan('sleep');
    $started = microtime(true);
    throws(TransportException::class, fn () => (new Client($fake->url, 'kvt_t', timeout: 0.5))->verify('K'));
    $took = microtime(true) - $started;
    check($took < 2.5, "the 0.5 s timeout held ($took s)");
});

test('nothing listening is a TransportException that names no key and no token', function () use ($tokens, $keys) {
    $sock = stream_socket_server('tcp://127.0.0.1:0');
    $addr = stream_socket_get_name($sock, false);
    fclose($sock);
    $exc = throws(TransportException::class, fn () => (new Client("http://$addr", $tokens['redeem'], redeemRetries: 1, retryBackoff: 0.01))
        ->redeem($keys[9], 'SO-1'));
    check(!str_contains($exc->getMessage(), $keys[9]) && !str_contains($exc->getMessage(), $tokens['redeem']),
        'no secret in the message');
});

// -- run --------------------------------------------------------------------------------------------

$passed = 0;
$failed = 0;
foreach ($tests as $name => $fn) {
    try {
        $fn();
        $passed++;
        echo "ok   $name\n";
    } catch (\Throwable $exc) {
        $failed++;
        echo "FAIL $name\n     " . get_class($exc) . ': ' . $exc->getMessage() . "\n";
    }
}
$fake?->stop();
echo "$passed passed, $failed failed\n";
exit($failed === 0 ? 0 : 1);
