"""keyvault as a column of the peer benchmark, through its public API only.

The same protocol as the peers (``benchmarks/peers/common.py``): the workloads in
``benchmarks/peers/workloads.py`` drive it with the same loops, data sizes and index orders.

* load: ``Vault.issue_batch`` of N keys into a new store, timed whole: generating, hashing,
  storing, the signed manifest and the printable export. keyvault cannot take foreign keys, so it
  redeems and verifies the keys it issued (read back from the export, untimed), not the
  peers' generated ones: the same number, format and index orders.
* verify_one: ``Vault.verify``; verify_many: ``Vault.verify_many``;
* redeem_many: ``Vault.redeem_many`` if the installed keyvault has it, else the workload reports
  "not implemented yet";
* redeem_concurrent: ``Vault.redeem`` from every caller thread, on one shared Vault.

The store lives on the same disk as the peers' and keeps keyvault's own durability (every
accepted redeem committed and synced before it returns).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from keyvault import Identity, Result, Status, Vault, _fast
from keyvault import __version__ as KEYVAULT_VERSION

from peers.common import RedeemFn, disk_usage
from peers.workloads import NotImplementedYet

NAME = "keyvault"


class KeyvaultColumn:
    name = NAME
    concurrency = "threads"  # concurrent redeems from threads sharing one Vault

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.vault = Vault.init(directory / "store")
        self.identity = Identity.generate("Benchmark Supplier")
        self.keys: Sequence[str] = ()
        self.verify_one = self.vault.verify  # bound once: no wrapper between the loop and the API
        self.verify_many = self.vault.verify_many
        self._redeem_many = getattr(self.vault, "redeem_many", None)
        self.settings = (f"keyvault {KEYVAULT_VERSION}, {'compiled' if _fast.COMPILED else 'pure-Python'} core; "
                         "its own LMDB store (sync and metasync on)")

    def load(self, keys: Sequence[str]) -> None:
        """Issue len(keys) new keys (keyvault makes its own; the peers' keys are not used)."""
        export = self.directory / "keys.csv"
        self.vault.issue_batch(self.identity, "BENCH", len(keys), keys_out=export,
                               manifest_out=self.directory / "batch.kvm")
        self._issued = export

    def after_load(self) -> None:
        """Read the issued keys back, canonical (untimed: the load workload calls it after the clock)."""
        with open(self._issued, newline="", encoding="utf-8") as fh:
            rows = csv.reader(fh)
            header = next(rows)
            column = header.index("key")
            self.keys = [row[column].replace("-", "") for row in rows]
        self._issued.unlink()  # the only plaintext copy; nothing needs it any more

    @property
    def has_redeem_many(self) -> bool:
        return self._redeem_many is not None

    def redeem_many(self, pairs: Sequence[tuple[str, str]]) -> Sequence[Result]:
        if self._redeem_many is None:
            raise NotImplementedYet("Vault.redeem_many is not in this keyvault")
        return self._redeem_many(pairs)  # type: ignore[no-any-return]

    def caller(self) -> RedeemFn:
        return self.vault.redeem

    def store_size(self) -> tuple[int, str]:
        return disk_usage(self.vault.path), "the store directory on disk (LMDB files, pepper)"

    def caller_spec(self) -> tuple[str, str, tuple[object, ...]]:
        return __name__, "process_caller", (str(self.vault.path),)

    @staticmethod
    def is_valid(result: Any) -> bool:
        return isinstance(result, Result) and result.status is Status.VALID

    @staticmethod
    def is_accepted(result: Any) -> bool:
        return isinstance(result, Result) and result.status is Status.ACCEPTED

    def close(self) -> None:
        self.vault.close()


def process_caller(path: str) -> RedeemFn:
    """In a caller process (``--concurrency processes``): its own Vault on the same store."""
    return Vault.open(path).redeem


def start(workdir: Path, pepper: bytes, stack: ExitStack) -> KeyvaultColumn:
    """pepper is unused: a keyvault store makes its own (a 0600 file beside the store)."""
    column = KeyvaultColumn(workdir / "keyvault")
    stack.callback(column.close)
    return column
