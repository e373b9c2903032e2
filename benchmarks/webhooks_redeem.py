"""Redeem throughput with a webhook endpoint configured, its receiver fast, slow or down, against none.

Redeems come from 16 threads calling ``vault.redeem`` (group commit). Rounds alternate between the four
set-ups. By default the delivery worker and the receivers run in the redeeming process (the worst case: all
of them share its GIL); with ``--split`` as in production, the receivers in a process of their own and the
delivery worker in another (``keyvault webhook run``, as ``keyvault serve`` runs it in its supervisor).
Run: .venv/bin/python benchmarks/webhooks_redeem.py [keys per round] [rounds] [--split]
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
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


def receivers_process() -> None:
    """``--receivers``: serve a fast and a slow receiver, print their URLs, live until stdin closes."""
    _, fast_url = receiver(0.0)
    _, slow_url = receiver(2.0)
    print(fast_url, slow_url, flush=True)
    sys.stdin.read()


def main() -> None:
    if "--receivers" in sys.argv:
        return receivers_process()
    split = "--split" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    per_round = int(args[0]) if args else 5000
    rounds = int(args[1]) if len(args) > 1 else 2
    setups = ["none", "fast", "slow", "down"]
    root = Path(tempfile.mkdtemp())
    supplier = Identity.generate("Bench")
    with Vault.init(root / "supplier") as sup:
        sup.issue_batch(supplier, "P", per_round * rounds * len(setups), keys_out=root / "k.csv",
                        manifest_out=root / "b.kvm")
    with open(root / "k.csv", newline="") as fh:
        keys = [row["key"] for row in csv.DictReader(fh)]
    helper = None
    if split:
        helper = subprocess.Popen([sys.executable, __file__, "--receivers"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert helper.stdout is not None
        fast_url, slow_url = helper.stdout.readline().split()
    else:
        fast, fast_url = receiver(0.0)
        slow, slow_url = receiver(2.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down_url = f"http://127.0.0.1:{s.getsockname()[1]}/hooks"
    results: dict[str, list[float]] = {name: [] for name in setups}
    with Vault.init(root / "platform") as vault:
        vault.trust(supplier.public)
        vault.import_manifest(root / "b.kvm")
        if split:
            keyvault = os.path.join(os.path.dirname(sys.executable), "keyvault")
            worker = subprocess.Popen([keyvault, "--store", str(root / "platform"), "webhook", "run"])
        else:
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
        if split:
            worker.terminate()
            worker.wait()
        else:
            delivery.stop()
    if helper is not None:
        helper.communicate("")
    else:
        fast.shutdown()
        slow.shutdown()
    for name, rates in results.items():
        print(f"{name:5}: " + ", ".join(f"{x:.0f}" for x in rates) + " redeems/s")


if __name__ == "__main__":
    main()
