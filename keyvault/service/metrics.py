"""Prometheus metrics summed over every worker process of one service.

Each worker counts in memory (no lock, no I/O per request) and writes its
totals to ``<run dir>/<pid>.json`` every METRICS_SECONDS when they changed (the
commit process too); ``/metrics`` adds up every file in the run directory, its
own counts taken live. So a scrape is behind by at most METRICS_SECONDS for
the other processes' counts (plus however long a busy loop takes to get there). Totals of a
worker that died stay in its file, so counters only go up while the service
runs. The run directory is made when the service starts and removed when it stops.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..results import Result, Status

#: How often each worker and the commit process publish their totals (when they changed).
METRICS_SECONDS = 0.25

#: Upper bounds (seconds) of the request latency histogram's buckets.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_HELP = {
    "keyvault_http_requests_total": ("counter", "HTTP requests answered, by route and status code."),
    "keyvault_http_request_duration_seconds": ("histogram", "Time from request to answer, by route."),
    "keyvault_keys_total": ("counter", "Keys answered, by operation and result status."),
    "keyvault_redeem_commits_total": ("counter", "Durable commits made by the redeem group commit."),
    "keyvault_redeem_commit_items_total": ("counter", "Redeem items carried by those commits."),
}


class Metrics:
    """One worker's counts, and the sum over all workers."""

    def __init__(self, run_dir: Path | None) -> None:
        self._dir = run_dir
        self._counts: defaultdict[str, float] = defaultdict(float)  # sample "name{labels}" -> value
        self._file = run_dir / f"{os.getpid()}.json" if run_dir else None
        self._names: dict[tuple[str, Status], str] = {}  # (operation, status) -> sample name
        self._routes: dict[tuple[str, int], tuple[str, str, list[str]]] = {}  # (route, code) -> _route_names
        self._changed = True  # since the last save

    def request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        names = self._routes.get((route, status))
        if names is None:
            names = self._routes[route, status] = _route_names(route, status)
        counts = self._counts
        self._changed = True
        counts[names[0]] += 1
        counts[names[1]] += seconds
        counts[names[2][bisect.bisect_left(BUCKETS, seconds)]] += 1

    def keys(self, op: str, results: Sequence[Result]) -> None:
        """Count answered keys by status."""
        counts, names = self._counts, self._names
        for result in results:
            name = names.get((op, result[0]))
            if name is None:
                name = names[op, result[0]] = f'keyvault_keys_total{{op="{op}",status="{result[0].value}"}}'
            counts[name] += 1

    def set_commits(self, commits: int, items: int) -> None:
        """Record the group commit's totals (they are counted by the committer thread)."""
        self._changed = True
        self._counts["keyvault_redeem_commits_total"] = commits
        self._counts["keyvault_redeem_commit_items_total"] = items

    def save(self) -> None:
        """Write this worker's totals for the other workers' /metrics (atomically: write, then rename)."""
        if self._file is None or not self._changed:
            return
        self._changed = False
        temp = self._file.with_suffix(".tmp")
        temp.write_text(json.dumps(dict(self._counts)))
        os.replace(temp, self._file)

    def render(self) -> str:
        """The Prometheus text exposition of every worker's totals."""
        total: defaultdict[str, float] = defaultdict(float)
        sources = [self._counts]
        if self._dir is not None:
            for path in self._dir.glob("*.json"):
                if path != self._file:
                    try:
                        sources.append(json.loads(path.read_text()))
                    except (OSError, ValueError):
                        continue  # a worker replaced it while we read: next scrape
        for source in sources:
            for sample, value in source.items():
                total[sample] += value
        return _exposition(total)


def _route_names(route: str, status: int) -> tuple[str, str, list[str]]:
    """Sample names of a route and status: its request count, its time sum, its buckets (the last +Inf)."""
    bucket = 'keyvault_http_request_duration_seconds_bucket{route="%s",le="%s"}'
    return (f'keyvault_http_requests_total{{route="{route}",code="{status}"}}',
            f'keyvault_http_request_duration_seconds_sum{{route="{route}"}}',
            [bucket % (route, le) for le in [*map(str, BUCKETS), "+Inf"]])


def _exposition(samples: dict[str, float]) -> str:
    """Samples grouped by metric with HELP/TYPE lines; histogram buckets made cumulative."""
    lines = []
    for name, (kind, text) in _HELP.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        if kind == "histogram":
            lines += _histogram(name, samples)
        else:
            own = sorted(s for s in samples if s == name or s.startswith(name + "{"))
            lines += [f"{s} {_number(samples[s])}" for s in own]
    return "\n".join(lines) + "\n"


def _histogram(name: str, samples: dict[str, float]) -> list[str]:
    """Cumulative buckets, sum and count per route (workers keep each bucket on its own)."""
    sums = {s: v for s, v in samples.items() if s.startswith(name + "_sum{")}
    lines = []
    for sample in sorted(sums):
        labels = sample[len(name) + 4:]  # '{route="..."}'
        running = 0
        for bound in [*map(str, BUCKETS), "+Inf"]:
            bucket = f'{labels[:-1]},le="{bound}"}}'
            running += int(samples.get(f"{name}_bucket{bucket}", 0))
            lines.append(f"{name}_bucket{bucket} {running}")
        lines += [f"{name}_sum{labels} {_number(sums[sample])}", f"{name}_count{labels} {running}"]
    return lines


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
