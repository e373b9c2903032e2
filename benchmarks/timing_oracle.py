"""Does the time of an answer tell more than its status? Per-call verify latency by class of key.

Classes of well-formed keys that do not exist (a forged secret on a real serial, a serial past the
batch's end, a serial of a batch the store does not hold) against keys that exist but are refused
(redeemed, void, blacklisted), plus valid keys for scale; and, for a throttled client, a real key
against a forged one. The classes are measured interleaved, in random order, on one store, so drift
and noise hit them alike. Prints medians and the difference of each class's median from the
"forged" class, with a bootstrap 95% interval: a difference whose interval holds 0 is not measurable.

    python benchmarks/timing_oracle.py [--keys 200000] [--samples 20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import tempfile
import time
from pathlib import Path

from keyvault import Identity, Status, ThrottlePolicy, Vault, _fast


def _forge(key: str, serial_delta: int = 0, secret: int = 987654321) -> str:
    _, serial, _, _ = _fast.parse_key(key)
    return _fast.encode_key(serial + serial_delta, secret)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vault = Vault.init(root / "store")
        acme = Identity.generate("Acme")
        vault.issue_batch(acme, "P", args.keys, keys_out=root / "k.csv", manifest_out=root / "b.kvm")
        with open(root / "k.csv", newline="") as fh:
            keys = [row["key"] for row in csv.DictReader(fh)]
        rng.shuffle(keys)
        n = min(args.samples, len(keys) // 8)
        redeemed, void, blocked, valid = keys[:n], keys[n:2 * n], keys[2 * n:3 * n], keys[3 * n:4 * n]
        for start in range(0, n, 1000):
            vault.redeem_many([(k, f"O-{start + i}") for i, k in enumerate(redeemed[start:start + 1000])])
        for k in void[:2000]:
            vault.void(k, "refund")
        void = void[:2000]
        for k in blocked[:2000]:
            vault.blacklist("key", k, "stolen")
        blocked = blocked[:2000]
        other = Identity.generate("Other", prefix="ZZZZ")
        classes = {
            "forged secret (unknown)": [_forge(k) for k in keys[4 * n:5 * n]],
            "serial past the batch (unknown)": [_forge(keys[0], 0, 1) for _ in range(1)],
            "batch not held (unknown)": [_fast.encode_key((other.prefix << 40) | (3 << 25) | i, 42) for i in range(n)],
            "redeemed": redeemed,
            "void": void,
            "blacklisted": blocked,
            "valid": valid,
        }
        first = _fast.parse_key(keys[0])[1] & ~((1 << 25) - 1)
        classes["serial past the batch (unknown)"] = [_fast.encode_key(first + args.keys + i, 7) for i in range(n)]
        expected = {"forged secret (unknown)": Status.UNKNOWN, "serial past the batch (unknown)": Status.UNKNOWN,
                    "batch not held (unknown)": Status.UNKNOWN, "redeemed": Status.REDEEMED, "void": Status.VOID,
                    "blacklisted": Status.BLACKLISTED, "valid": Status.VALID}
        times = _measure(vault, classes, expected, rng, args.samples)
        _report("verify, one call per key", times, "forged secret (unknown)")

        vault.set_throttle_policy(ThrottlePolicy(max_refused=0, window_seconds=3600, block_seconds=3600))
        vault.verify(classes["forged secret (unknown)"][0], client="guesser")
        throttled = {"throttled: real key": valid, "throttled: forged key": classes["forged secret (unknown)"]}
        times = _measure(vault, throttled, {name: Status.THROTTLED for name in throttled}, rng, args.samples,
                         client="guesser")
        _report("verify by a throttled client", times, "throttled: forged key")
        vault.close()


def _measure(vault: Vault, classes: dict[str, list[str]], expected: dict[str, Status], rng: random.Random,
             samples: int, client: str | None = None) -> dict[str, list[float]]:
    plan = [(name, rng.choice(keys)) for name, keys in classes.items() for _ in range(samples)]
    rng.shuffle(plan)
    for name, key in plan[:2000]:  # warm up
        vault.verify(key, client=client)
    times: dict[str, list[float]] = {name: [] for name in classes}
    clock = time.perf_counter_ns
    for name, key in plan:
        start = clock()
        result = vault.verify(key, client=client)
        elapsed = clock() - start
        if result.status is not expected[name]:
            raise SystemExit(f"{name}: expected {expected[name].value}, got {result.status.value}")
        times[name].append(elapsed / 1000)
    return times


def _report(title: str, times: dict[str, list[float]], base: str, rounds: int = 400) -> None:
    rng = random.Random(7)
    print(f"\n{title} (µs; median, and the difference of medians from '{base}' with a bootstrap 95% interval)")
    ref = times[base]
    for name, values in times.items():
        med = statistics.median(values)
        diffs = sorted(statistics.median(rng.choices(values, k=len(values))) -
                       statistics.median(rng.choices(ref, k=len(ref))) for _ in range(rounds))
        low, high = diffs[int(rounds * 0.025)], diffs[int(rounds * 0.975)]
        verdict = "" if name == base else ("  not measurable" if low <= 0 <= high else "  MEASURABLE")
        print(f"  {name:<34} {med:7.2f}   {med - statistics.median(ref):+6.2f} [{low:+.2f}, {high:+.2f}]{verdict}")


if __name__ == "__main__":
    main()
