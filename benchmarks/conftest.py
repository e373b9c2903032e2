"""Benchmark fixtures: one store of 1 M keys (10 M with --big), issued once per session.

Run with `make bench` (pytest-benchmark). Each benchmark records its own
rate in extra_info ("keys_per_s"); times are never asserted.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keyvault import Identity, Vault

SAMPLE = 400_000  # keys kept in memory for the workloads (a 10 M export is not loaded whole)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--keys", type=int, default=1_000_000, help="keys in the benchmark store (default 1 M)")
    parser.addoption("--big", action="store_true", help="benchmark a 10 M-key store instead")


@dataclass
class BenchStore:
    vault: Vault
    keys: list[str]  # a shuffled sample; redeem benchmarks take theirs from the end
    size: int
    root: Path

    def take(self, n: int) -> list[str]:
        """n keys never used by another benchmark."""
        if len(self.keys) < n:
            pytest.skip("the sample of unused keys is exhausted")
        out, self.keys[-n:] = self.keys[-n:], []
        return out


@pytest.fixture(scope="session")
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStore]:
    size = 10_000_000 if request.config.getoption("--big") else request.config.getoption("--keys")
    root = tmp_path_factory.mktemp("bench")
    vault = Vault.init(root / "store")
    vault.issue_batch(Identity.generate("Bench Supplier"), "BENCH", size, keys_out=root / "keys.csv",
                      manifest_out=root / "batch.kvm")
    rng = random.Random(2026)
    stride = max(1, size // SAMPLE)
    with open(root / "keys.csv", newline="") as fh:
        keys = [row["key"] for i, row in enumerate(csv.DictReader(fh)) if i % stride == 0]
    rng.shuffle(keys)
    (root / "keys.csv").unlink()  # the only plaintext copy: not kept past the sample
    yield BenchStore(vault, keys, size, root)
    vault.close()
