"""Redeem throughput with a webhook endpoint configured, its receiver fast, slow or down, against none.

The delivery worker runs in the redeeming process (the worst case: it shares the GIL), redeems come from
16 threads calling ``vault.redeem`` (group commit). Rounds alternate between the four set-ups.
Run: .venv/bin/python benchmarks/webhooks_redeem.py [keys per round] [rounds]
"""

from __future__ import annotations

import csv
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from keyvault import Identity, Vault
from keyvault.service.delivery import Delivery


def receiver(delay: float) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            time.sleep(delay)
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hooks"


def main() -> None:
    per_round = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    setups = ["none", "fast", "slow", "down"]
    root = Path(tempfile.mkdtemp())
    supplier = Identity.generate("Bench")
    with Vault.init(root / "supplier") as sup:
        sup.issue_batch(supplier, "P", per_round * rounds * len(setups), keys_out=root / "k.csv",
                        manifest_out=root / "b.kvm")
    with open(root / "k.csv", newline="") as fh:
        keys = [row["key"] for row in csv.DictReader(fh)]
    fast, fast_url = receiver(0.0)
    slow, slow_url = receiver(2.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down_url = f"http://127.0.0.1:{s.getsockname()[1]}/hooks"
    results: dict[str, list[float]] = {name: [] for name in setups}
    with Vault.init(root / "platform") as vault:
        vault.trust(supplier.public)
        vault.import_manifest(root / "b.kvm")
        delivery = Delivery(vault, timeout=10.0).start()
        at = 0
        for r in range(rounds):
            for name in setups:
                for e in vault.webhooks.list():
                    vault.webhooks.remove(e["id"])
                if name != "none":
                    vault.webhooks.add({"fast": fast_url, "slow": slow_url, "down": down_url}[name], "redeem")
                time.sleep(0.5)
                chunk = keys[at:at + per_round]
                at += per_round
                start = time.perf_counter()
                with ThreadPoolExecutor(16) as pool:
                    done = list(pool.map(lambda k: vault.redeem(k, "o-" + k[-6:]), chunk))
                took = time.perf_counter() - start
                assert all(d.ok for d in done)
                results[name].append(per_round / took)
                stats = vault.webhooks.stats()
                print(f"round {r} {name:5}: {per_round / took:8.0f} redeems/s"
                      + (f"  (delivered {stats[0]['delivered']}, pending {stats[0]['pending']})" if stats else ""),
                      flush=True)
        delivery.stop()
    fast.shutdown()
    slow.shutdown()
    for name, rates in results.items():
        print(f"{name:5}: " + ", ".join(f"{x:.0f}" for x in rates) + " redeems/s")


if __name__ == "__main__":
    main()
