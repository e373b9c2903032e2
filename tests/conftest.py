"""Shared fixtures: stores, identities and small issued batches on temporary directories."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keyvault import BatchInfo, Identity, Vault


@dataclass
class Issued:
    """A batch issued by a supplier store and imported by a platform store."""

    supplier: Identity
    batch: BatchInfo
    keys: list[str]
    serials: list[str]
    keys_csv: Path
    manifest: Path


def eventually(check: Callable[[], bool], what: str, seconds: float = 30, step: float = 0.01) -> None:
    """Wait until ``check()`` holds, failing with ``what`` after ``seconds`` (another thread or process acts)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(step)


def read_export(path: Path) -> tuple[list[str], list[str]]:
    """(keys, serials) from a printable CSV export."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["key"] for r in rows], [r["serial"] for r in rows]


@pytest.fixture
def supplier() -> Identity:
    return Identity.generate("Acme Games")


@pytest.fixture
def supplier_store(tmp_path: Path) -> Iterator[Vault]:
    with Vault.init(tmp_path / "supplier-store") as vault:
        yield vault


@pytest.fixture
def platform(tmp_path: Path, supplier: Identity) -> Iterator[Vault]:
    """A platform store that pins the supplier (pinning itself is tested in test_provenance.py)."""
    with Vault.init(tmp_path / "platform-store") as vault:
        vault.trust(supplier.public)
        yield vault


def issue(vault: Vault, identity: Identity, out: Path, count: int = 200, product: str = "POINTS-100",
          **window: int | None) -> Issued:
    """Issue a batch from ``vault`` into files under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    n = len(list(out.glob("*.kvm")))
    keys_csv, manifest = out / f"keys{n}.csv", out / f"batch{n}.kvm"
    info = vault.issue_batch(identity, product, count, keys_out=keys_csv, manifest_out=manifest, **window)
    keys, serials = read_export(keys_csv)
    return Issued(identity, info, keys, serials, keys_csv, manifest)


@pytest.fixture
def issued(tmp_path: Path, supplier: Identity, supplier_store: Vault, platform: Vault) -> Issued:
    """200 keys issued by Acme Games and imported by the platform."""
    batch = issue(supplier_store, supplier, tmp_path / "files")
    platform.import_manifest(batch.manifest)
    return batch


# -- the CLI tests (test_cli.py, test_bad_input.py): a clean environment and a CLI-made world ------

import os  # noqa: E402

from cli_support import World, make_world  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads KEYVAULT_* variables: none may leak in from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("KEYVAULT_") and name not in ("KEYVAULT_NO_EXTENSIONS", "KEYVAULT_REQUIRE_EXTENSIONS"):
            monkeypatch.delenv(name)


@pytest.fixture
def world_keys() -> int:
    """How many keys the ``world`` batch holds; a test module may override this fixture."""
    return 40


@pytest.fixture
def world(tmp_path: Path, world_keys: int) -> World:
    """A supplier store that issued ``world_keys`` keys through the CLI, and a platform store that imported them."""
    return make_world(tmp_path / "w", count=world_keys)
