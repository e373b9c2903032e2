"""`keyvault cluster local demo`'s story end to end: it ends with the cluster log consistent across the
failover and a bundle made on node2 of the key redeemed on node1, verified with the cluster's public key."""

from __future__ import annotations

import re
from pathlib import Path

from keyvault.cli.cluster_demo import run_demo

from .cluster_support import need_cluster


def test_the_demo_ends_with_a_consistent_log_and_a_verified_bundle(cluster_dir: Path) -> None:
    need_cluster()
    lines: list[str] = []
    ok = run_demo(cluster_dir, lines.append)
    text = "\n".join(lines)
    print(text)
    assert ok, text
    assert re.search(r"lost 0, doubles 0", text)
    assert re.search(r"cluster log \d+ entries \(checkpoint before the kill at \d+\), consistent across the failover: "
                     r"yes", text)
    assert re.search(r"its bundle made on node2 .*\n   \d+ checks, all pass", text)
    assert "8. cluster down" in text
