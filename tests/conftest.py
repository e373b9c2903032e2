"""Shared fixtures: stores, identities and small issued batches on temporary directories."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keyvault import BatchInfo, Identity, Vault
from keyvault._fast import _pure, env_flag


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


# -- keyvault._fast's two implementations (test_fast_twins.py, test_fast_provenance.py) ------------
#
# The compiled core is imported directly, whatever keyvault._fast selected (so KEYVAULT_NO_EXTENSIONS
# runs the comparisons too). Without a built core, what needs it is skipped, with the reason; under
# KEYVAULT_REQUIRE_EXTENSIONS it fails instead, so a broken build cannot pass as a skip.

from types import ModuleType  # noqa: E402

CORE_IMPORT_ERROR: ImportError | None = None
try:
    from keyvault._fast import _core as _compiled
except ImportError as exc:
    _compiled, CORE_IMPORT_ERROR = None, exc


def compiled_core() -> ModuleType:
    """keyvault._fast._core; skips the test when it is not built (fails under KEYVAULT_REQUIRE_EXTENSIONS)."""
    if _compiled is None:
        if env_flag("KEYVAULT_REQUIRE_EXTENSIONS"):
            pytest.fail(f"keyvault._fast._core did not import: {CORE_IMPORT_ERROR!r}")
        pytest.skip(f"compiled core not built ({CORE_IMPORT_ERROR}); set KEYVAULT_REQUIRE_EXTENSIONS=1 to make this fail")
    return _compiled


@pytest.fixture(scope="session", params=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation of keyvault._fast in turn: the compiled core (id c), then _pure (id py)."""
    return compiled_core() if request.param == "c" else _pure


@pytest.fixture(scope="session")
def core() -> ModuleType:
    """The compiled core alone (its test hooks, or what only it does)."""
    return compiled_core()


def run(func: Callable, *args: object) -> tuple:
    """func(*args) as an answer to compare: ("returned", value) or ("raised", type, args)."""
    try:
        return "returned", func(*args)
    except Exception as exc:  # the exception is part of the answer
        return "raised", type(exc), exc.args


def typed(value: object) -> object:
    """value with the type of everything in it made explicit (True != 1, list != tuple)."""
    if isinstance(value, (tuple, list)):
        return type(value), [typed(v) for v in value]
    return type(value), value


def same(name: str, *args: object) -> object:
    """name(*args) through the compiled core and _pure: the same answer (value and types, or exception
    type and args) required. Returns _pure's value, or None if both raised."""
    expected = run(getattr(_pure, name), *args)
    actual = run(getattr(compiled_core(), name), *args)
    text = repr(args)
    shown = text if len(text) < 300 else text[:300] + "...)"
    assert typed(actual) == typed(expected), f"{name}{shown}: _core {actual!r} != _pure {expected!r}"
    return expected[1] if expected[0] == "returned" else None
