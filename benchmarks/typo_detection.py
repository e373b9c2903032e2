#!/usr/bin/env python
"""Measure how well the v1 check code catches and locates typing errors.

Not a pytest file: a standalone script whose printed figures are quoted in
docs/format.md ("Error detection, measured")::

    python benchmarks/typo_detection.py [--keys N] [--seed S] [--pair-keys K] [--samples M]

It generates keys with ``keyvault._fast.issue_keys`` (secrets from a seeded
RNG, so a run is reproducible), adds edge keys (serial 0 and 2**60-1, secret 0
and 2**80-1), damages them and asks ``keyvault._fast.parse_key`` (the compiled
core when it is built, else the pure-Python specification;
``KEYVAULT_NO_EXTENSIONS=1`` forces the latter) what it sees:

* every single substitution (each position, each other alphabet symbol);
* every adjacent transposition of two different symbols;
* every transposition of two different symbols at any distance;
* every pair of substitutions (all position pairs, all symbol pairs) on K keys,
  and M random pairs over all keys;
* M random triples of substitutions.

For the multi-error cases it also counts how often the input is *misreported*:
parse_key claims a single substitution or an adjacent swap (so the message
names a group) although two or three symbols are wrong, and how often the
named group(s) hold none of the errors at all.

Exit status 1 if a guarantee of the format fails (a single substitution not
located, an adjacent swap not located, two substitutions accepted).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

# Measure the checkout this script lives in, not whatever keyvault is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keyvault import _fast  # noqa: E402

ALPHABET = _fast.ALPHABET
N = _fast.KEY_SYMBOLS
GROUP = _fast.GROUP_SIZE
NAMES = {
    _fast.OK: "accepted",
    _fast.BAD_LENGTH: "bad length",
    _fast.BAD_SYMBOL: "bad symbol",
    _fast.BAD_VERSION: "bad version",
    _fast.CHECK_SUBSTITUTION: "located as 1 substitution",
    _fast.CHECK_TRANSPOSITION: "located as adjacent swap",
    _fast.CHECK_FAILED: "detected, not located",
}


def make_keys(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    salt = rng.randbytes(16)
    base = rng.randrange(0, (1 << 60) - count)
    keys, _ = _fast.issue_keys(base, count, salt, rng.randbytes(count * _fast.SECRET_BYTES))
    edges = [_fast.encode_key(s, x) for s in (0, (1 << 60) - 1) for x in (0, (1 << 80) - 1)]
    return list(keys) + edges


def named_groups(outcome: int, position: int) -> set[int]:
    """The 0-based groups a located report points at (empty if none)."""
    if outcome == _fast.CHECK_SUBSTITUTION:
        return {position // GROUP}
    if outcome == _fast.CHECK_TRANSPOSITION:
        return {position // GROUP, (position + 1) // GROUP}
    return set()


class Tally:
    """Outcomes of damaged inputs with errors at known positions."""

    def __init__(self) -> None:
        self.total = 0
        self.outcomes: Counter[int] = Counter()
        self.misleading = 0  # a located report whose named group(s) hold none of the errors

    def add(self, text: str, positions: tuple[int, ...]) -> tuple[int, int]:
        outcome, _, _, pos = _fast.parse_key(text)
        self.total += 1
        self.outcomes[outcome] += 1
        groups = named_groups(outcome, pos)
        if groups and not groups & {p // GROUP for p in positions}:
            self.misleading += 1
        return outcome, pos

    @property
    def detected(self) -> int:
        return self.total - self.outcomes[_fast.OK]

    @property
    def misreported(self) -> int:
        return self.outcomes[_fast.CHECK_SUBSTITUTION] + self.outcomes[_fast.CHECK_TRANSPOSITION]


def pct(part: int, whole: int) -> str:
    if whole == 0:
        return "n/a"
    value = 100.0 * part / whole
    if part in (0, whole):
        return f"{value:.0f} %"
    return f"{value:.4f} %"


def substitute(key: str, changes: dict[int, str]) -> str:
    chars = list(key)
    for p, c in changes.items():
        chars[p] = c
    return "".join(chars)


def other_symbol(rng: random.Random, current: str) -> str:
    return ALPHABET[(ALPHABET.index(current) + rng.randrange(1, 32)) % 32]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1000, help="generated keys (4 edge keys are added)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the key and sampling RNG")
    ap.add_argument("--pair-keys", type=int, default=3,
                    help="keys on which ALL pairs of substitutions are tried (476,656 inputs each)")
    ap.add_argument("--samples", type=int, default=1_000_000,
                    help="random inputs for the sampled two- and three-substitution figures")
    args = ap.parse_args(argv)
    if args.keys < 1 or args.pair_keys < 0 or args.samples < 0:
        ap.error("--keys must be at least 1, --pair-keys and --samples at least 0")

    print(f"command: python benchmarks/typo_detection.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} "
          f"{platform.machine()}; implementation: {'compiled core' if _fast.COMPILED else 'pure Python'}")
    rng = random.Random(args.seed)
    keys = make_keys(args.keys, args.seed)
    print(f"keys: {len(keys):,} ({args.keys:,} from issue_keys, seed {args.seed}, plus 4 edge keys)")
    print()
    rows: list[tuple[str, int, str, str, str, str]] = []
    failures: list[str] = []
    started = time.perf_counter()

    # Single substitutions: every position, every other symbol.
    single, located = Tally(), 0
    for key in keys:
        for p in range(N):
            for c in ALPHABET:
                if c != key[p]:
                    outcome, pos = single.add(key[:p] + c + key[p + 1:], (p,))
                    located += outcome == _fast.CHECK_SUBSTITUTION and pos == p
    rows.append(("1 substitution (all)", single.total, pct(single.detected, single.total),
                 pct(located, single.total), "-", "-"))
    if located != single.total:
        failures.append("a single substitution was not located")

    # Adjacent transpositions of different symbols.
    swaps, located = Tally(), 0
    for key in keys:
        for k in range(N - 1):
            if key[k] != key[k + 1]:
                outcome, pos = swaps.add(key[:k] + key[k + 1] + key[k] + key[k + 2:], (k, k + 1))
                located += outcome == _fast.CHECK_TRANSPOSITION and pos == k
    rows.append(("adjacent swap (all)", swaps.total, pct(swaps.detected, swaps.total),
                 pct(located, swaps.total), "-", "-"))
    if located != swaps.total:
        failures.append("an adjacent swap was not located")

    # Transpositions at distance 2 (abc -> cba) and at any distance > 1.
    jumps, far = Tally(), Tally()
    for key in keys:
        for i in range(N):
            for j in range(i + 2, N):
                if key[i] != key[j]:
                    text = substitute(key, {i: key[j], j: key[i]})
                    (jumps if j == i + 2 else far).add(text, (i, j))
    for label, t in (("swap at distance 2 (all)", jumps), ("swap at distance 3+ (all)", far)):
        rows.append((label, t.total, pct(t.detected, t.total), "-", pct(t.misreported, t.total),
                     pct(t.misleading, t.total)))
        if t.detected != t.total:
            failures.append(f"a {label} was accepted")

    # Two substitutions: exhaustive on a few keys.
    pairs = Tally()
    for key in keys[: args.pair_keys]:
        for p in range(N):
            for q in range(p + 1, N):
                for c1 in ALPHABET:
                    if c1 == key[p]:
                        continue
                    front = key[:p] + c1 + key[p + 1:q]
                    tail = key[q + 1:]
                    for c2 in ALPHABET:
                        if c2 != key[q]:
                            pairs.add(front + c2 + tail, (p, q))
    if pairs.total:
        rows.append((f"2 substitutions (all, {min(args.pair_keys, len(keys))} keys)", pairs.total,
                     pct(pairs.detected, pairs.total), "-", pct(pairs.misreported, pairs.total),
                     pct(pairs.misleading, pairs.total)))
        if pairs.detected != pairs.total:
            failures.append("two substitutions were accepted")

    # Two and three substitutions: sampled over all keys.
    sampled: dict[int, Tally] = {2: Tally(), 3: Tally()}
    for errors, t in sampled.items():
        for _ in range(args.samples):
            key = keys[rng.randrange(len(keys))]
            positions = tuple(rng.sample(range(N), errors))
            t.add(substitute(key, {p: other_symbol(rng, key[p]) for p in positions}), positions)
        if t.total:
            rows.append((f"{errors} substitutions (sampled)", t.total, pct(t.detected, t.total), "-",
                         pct(t.misreported, t.total), pct(t.misleading, t.total)))
    if sampled[2].detected != sampled[2].total:
        failures.append("two substitutions were accepted")

    elapsed = time.perf_counter() - started
    head = ("errors", "inputs", "detected", "located at the right place",
            "misreported as 1 substitution or 1 swap", "misreported, naming only groups with no error")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for row in rows:
        print(f"| {row[0]} | {row[1]:,} | " + " | ".join(row[2:]) + " |")
    print()
    print("outcome counts (multi-error rows):")
    for label, t in (("swap at distance 2", jumps), ("swap at distance 3+", far), ("2 substitutions (all)", pairs),
                     ("2 substitutions (sampled)", sampled[2]), ("3 substitutions (sampled)", sampled[3])):
        if t.total:
            parts = ", ".join(f"{NAMES[o]} {n:,}" for o, n in sorted(t.outcomes.items()))
            print(f"  {label}: {parts}")
    print()
    print(f"{sum(r[1] for r in rows):,} inputs parsed in {elapsed:.1f} s")
    for failure in failures:
        print(f"GUARANTEE BROKEN: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
