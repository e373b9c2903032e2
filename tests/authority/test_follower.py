"""One follower per node: the processes sharing a bound store keep its cache current through whichever holds
the store's follower lock, and another takes over when that process dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from keyvault import Identity, Status, Vault
from keyvault.engine.authority.remote import FOLLOWER_LOCK

from conftest import Issued, eventually, issue


def _held(lock: Path) -> bool:
    """True when a process holds the follower lock (probed from a child: this process's own POSIX locks
    would not conflict with a probe here, and closing the probe would release them)."""
    probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", probe, str(lock)], timeout=60).returncode == 3


def test_the_processes_of_a_node_share_one_follower_and_another_takes_over_when_it_dies(
        tmp_path: Path, supplier: Identity, supplier_store: Vault, authority_dsn: str) -> None:
    batch: Issued = issue(supplier_store, supplier, tmp_path / "files", count=10)
    stores = []
    for name in ("a", "b"):
        vault = Vault.init(tmp_path / name)
        vault.trust(supplier.public)
        vault.import_manifest(batch.manifest)
        vault.authority.set(authority_dsn)
        stores.append(vault)
    a, b = stores
    lock = tmp_path / "a" / FOLLOWER_LOCK
    a.close()
    eventually(lambda: not _held(lock), "the closed store's follower kept its lock", 30, 0.2)
    leader = subprocess.Popen([sys.executable, "-c", "import sys\nfrom keyvault import Vault\n"
                               f"v = Vault.open({str(tmp_path / 'a')!r})\nprint('open', flush=True)\nsys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert leader.stdout is not None and leader.stdout.readline().strip() == "open"
        eventually(lambda: _held(lock), "the other process never took the follower lock", 30, 0.2)
        a = Vault.open(tmp_path / "a")  # this process's follower waits: the other one follows for both
        assert b.redeem(batch.keys[0], "o1").status is Status.ACCEPTED
        eventually(lambda: a.verify(batch.keys[0]).status is Status.REDEEMED, "the node never learned B's redeem "
                   "through the other process's follower", 30)
        assert _held(lock)  # still the other process: this one's follower waits
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait(60)
        assert b.redeem(batch.keys[1], "o2").status is Status.ACCEPTED
        eventually(lambda: a.verify(batch.keys[1]).status is Status.REDEEMED, "no follower took over after the "
                   "other process died", 30)
        assert _held(lock)  # by this process's follower now: the dead one's lock went with it
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait(60)
        for pipe in (leader.stdin, leader.stdout):
            if pipe is not None:
                pipe.close()
        a.close()
        b.close()
