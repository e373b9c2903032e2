<?php
// One storefront buyer, in PHP, through the public API of clients/php only (tests/test_storefront.py runs several
// at once, beside the Go ones). It holds keys for orders, pays (confirms) some twice, releases others, lets holds
// expire, races a payment against an expiry, watches a void land during a hold, redeems with receipts, fights
// other buyers for shared keys and spends count-limited keys. Every answer a buyer was told is printed as one
// JSON line (serials and order ids, never a key) for the test to check against the server's own view.
declare(strict_types=1);

require __DIR__ . '/../../clients/php/src/autoload.php';

use Keyvault\Client;
use Keyvault\ProblemException;
use Keyvault\Result;
use Keyvault\Status;

$env = fn (string $name): string => getenv($name) === false ? throw new RuntimeException("$name is not set") : getenv($name);
$buyer = $env('SF_BUYER');
$own = explode(',', $env('SF_OWN'));
$contested = explode(',', $env('SF_CONTESTED'));
$kv = (new Client($env('SF_URL'), $env('SF_TOKEN'), timeout: 30.0))->withRequestId("sf-$buyer");
$admin = new Client($env('SF_URL'), $env('SF_ADMIN'), timeout: 30.0);
$order = fn (string $what): string => $env('SF_RUN') . "-$buyer-$what";

/** Print what the buyer was told: one line per answer. */
function told(string $step, string $op, string $orderId, Result|string $answer, ?string $receipt = null): void
{
    $line = ['buyer' => getenv('SF_BUYER'), 'step' => $step, 'op' => $op, 'order' => $orderId];
    if ($answer instanceof Result) {
        $line += ['status' => $answer->status, 'serial' => $answer->serial, 'order_id' => $answer->orderId,
                  'uses_left' => $answer->usesLeft, 'expires_at' => $answer->expiresAt,
                  'redeemed_at' => $answer->redeemedAt, 'voided_at' => $answer->voidedAt,
                  'receipt' => $receipt ?? $answer->receipt,
                  'has_uses_left' => $answer->usesLeft !== null];
    } else {
        $line['status'] = $answer; // a problem's short name (not-found, ...)
    }
    echo json_encode($line, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR), "\n";
}

/** @param list<Result> $results */
function one(array $results): Result
{
    if (count($results) !== 1) {
        throw new RuntimeException('an order of one key answered ' . count($results) . ' results');
    }
    return $results[0];
}

/** A problem's short name, or the answer. */
function problem(callable $call): string
{
    try {
        $call();
    } catch (ProblemException $problem) {
        return substr($problem->type, strlen('urn:keyvault:problem:'));
    }
    return 'answered';
}

// 1. A paid order: hold, then two payments confirm it (the second is a retry: same answer), then its receipt.
$o = $order('paid');
told('paid', 'hold', $o, $kv->hold($own[0], $o, 60, client: $buyer));
$first = one($kv->confirm($o));
told('paid', 'confirm', $o, $first);
told('paid', 'confirm', $o, one($kv->confirm($o)));
told('paid', 'receipt', $o, $first, $kv->receipt((string) $first->serial));

// 2. A payment that failed: released (twice), a late confirm answers released, another order then buys the key.
$o = $order('failed');
told('failed', 'hold', $o, $kv->hold($own[1], $o, 60));
told('failed', 'release', $o, one($kv->release($o)));
told('failed', 'release', $o, one($kv->release($o)));
told('failed', 'confirm', $o, one($kv->confirm($o)));
$o = $order('failed-again');
told('failed', 'hold', $o, $kv->hold($own[1], $o, 60));
told('failed', 'confirm', $o, one($kv->confirm($o)));

// 3. A hold left to expire: the payment comes too late (expired_hold); holding again and paying works.
$o = $order('late');
told('late', 'hold', $o, $kv->hold($own[2], $o, 1));
usleep(1_600_000);
told('late', 'confirm', $o, one($kv->confirm($o)));
$o = $order('late-again');
told('late', 'hold', $o, $kv->hold($own[2], $o, 60));
told('late', 'confirm', $o, one($kv->confirm($o)));

// 4. A payment racing the hold's expiry: either answer, as long as the server agrees.
$o = $order('race');
told('race', 'hold', $o, $kv->hold($own[3], $o, 2));
usleep(random_int(1_700_000, 2_300_000));
told('race', 'confirm', $o, one($kv->confirm($o)));

// 5. A void lands during the hold: the payment's confirm is refused `void`.
$o = $order('voided');
$held = $kv->hold($own[4], $o, 60);
told('voided', 'hold', $o, $held);
told('voided', 'void', $o, $admin->void((string) $held->serial, "fraud review $buyer"));
told('voided', 'confirm', $o, one($kv->confirm($o)));

// 6. A plain redeem with a receipt, retried (same answer, same receipt), then refused to another order.
$o = $order('direct');
told('direct', 'redeem', $o, $kv->redeem($own[5], $o, client: $buyer, receipt: true));
told('direct', 'redeem', $o, $kv->redeem($own[5], $o, client: $buyer, receipt: true));
told('direct', 'redeem', $order('direct-other'), $kv->redeem($own[5], $order('direct-other')));

// 7. A payment for an order that never held anything: not-found, and nothing changes.
$o = $order('ghost');
told('ghost', 'confirm', $o, problem(fn () => $kv->confirm($o)));
told('ghost', 'release', $o, problem(fn () => $kv->release($o)));

// 8. Keys every buyer wants at once: one order wins each, pays, and the others are refused.
foreach ($contested as $j => $key) {
    $o = $order("contested-$j");
    $held = $kv->hold($key, $o, 30);
    told('contested', 'hold', $o, $held);
    if ($held->status === Status::HELD && $held->orderId === $o) {
        told('contested', 'confirm', $o, one($kv->confirm($o)));
    }
}

// 9. This buyer's own count-limited key: five orders use it, the sixth is refused, a retry answers the same.
$limited = $env('SF_LIMITED_OWN');
for ($i = 1; $i <= 6; $i++) {
    $o = $order("pass-$i");
    told('pass', 'redeem', $o, $kv->redeem($limited, $o, receipt: true));
}
told('pass', 'redeem', $order('pass-1'), $kv->redeem($limited, $order('pass-1')));
told('pass', 'verify', '', $kv->verify($limited));

// 10. A count-limited key every buyer spends at once, some by hold and payment.
$shared = $env('SF_LIMITED_SHARED');
for ($i = 1; $i <= 3; $i++) {
    $o = $order("shared-pass-$i");
    if ($i === 2) {
        $held = $kv->hold($shared, $o, 30);
        told('shared-pass', 'hold', $o, $held);
        if ($held->status === Status::HELD && $held->orderId === $o) {
            told('shared-pass', 'confirm', $o, one($kv->confirm($o)));
        }
    } else {
        told('shared-pass', 'redeem', $o, $kv->redeem($shared, $o));
    }
}
echo json_encode(['buyer' => $buyer, 'done' => true]), "\n";
