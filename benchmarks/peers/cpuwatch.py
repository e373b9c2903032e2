"""How much CPU *other* processes used while a column ran: the figures are only as good as a quiet machine.

Busy time of the whole machine (/proc/stat) minus the CPU time of the processes this run
accounts for: the runner and its descendants (caller threads and processes), and each server
it started with their descendants (Redis and its AOF-rewrite child; the postmaster and its
backends). Reaped children are counted through their parent's cutime/cstime, so processes
that exit between the two samples are still ours. Linux only; elsewhere it reports nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy() -> int:
    """Busy ticks of all CPUs since boot: user, nice, system, irq, softirq, steal (not idle, iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq + steal


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime + stime + cutime + cstime in ticks), for every process readable."""
    out: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # gone already
        rest = raw[raw.rfind(")") + 2:].split()  # after "pid (comm) "
        ppid = int(rest[1])
        ticks = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
        out[int(entry.name)] = (ppid, ticks)
    return out


def _ours(roots: Iterable[int]) -> int:
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    stack = [pid for pid in roots if pid in procs]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, ()))
    return sum(procs[pid][1] for pid in seen)


class CpuWatch:
    """start() before a column, stop(server_pids) before its servers are stopped."""

    def __init__(self) -> None:
        self.enabled = Path("/proc/stat").exists()
        self.t0 = 0.0
        self.busy0 = self.ours0 = 0

    def start(self) -> None:
        if self.enabled:
            self.t0 = time.monotonic()
            self.busy0, self.ours0 = _machine_busy(), _ours([os.getpid()])

    def stop(self, server_pids: Iterable[int] = ()) -> dict[str, float] | None:
        """Other processes' CPU since start(), as a share of the machine (0.1 = 10% of all CPUs)."""
        if not self.enabled:
            return None
        seconds = time.monotonic() - self.t0
        busy, ours = _machine_busy(), _ours([os.getpid(), *server_pids])
        other = max(0, (busy - self.busy0) - (ours - self.ours0)) / _HZ
        cpus = os.cpu_count() or 1
        return {"seconds": round(seconds, 1), "other_cpu_seconds": round(other, 1),
                "other_share": round(other / max(seconds * cpus, 1e-9), 3)}
