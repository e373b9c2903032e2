"""A storefront end to end: PHP and Go buyers against a running ``keyvault serve``, webhooks to failing receivers.

One server (several workers) over a store with a normal batch and a ``--uses 5`` batch. At once: three PHP
buyers (tests/storefront/shop.php) and three Go buyers (tests/storefront/go, goroutines of one program), each
through its language's public client only, hold keys for orders, pay some twice, release others, let holds
expire, race payments against expiries and voids, redeem with receipts, fight over shared keys and spend
count-limited keys (five orders each, the sixth refused). Meanwhile two webhook receivers get every checkout,
redeem and void: one in PHP verifying the Standard Webhooks signature with its own code, one in Python with the
reference ``standardwebhooks`` package; both answer 500, answer too late, and go away for a while (connection
refused) before recovering.

Every answer a buyer printed is then checked against the server's own view: the order lookup over HTTP and
``keyvault trace --order``, each key's trace, the receipts checked offline by ``keyvault verify-receipt``, and
the webhook streams (each change at least once, in log order, stable ids, every signature good). Without php
or go the test is skipped with the reason, unless KEYVAULT_REQUIRE_CLIENTS=1 (CI), where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import issue
from service_support import KEYVAULT, Server, cli, free_port, make_token
from standardwebhooks.webhooks import Webhook
from test_clients import _missing_go, _missing_php, _need

from keyvault import Identity, Vault
from keyvault.errors import NotFoundError
from keyvault.formats import webhooks as signing

HERE = Path(__file__).resolve().parent / "storefront"
PHP_BUYERS, GO_BUYERS = 3, 3
OWN = 6  # normal keys per buyer
CONTESTED = 4  # normal keys every buyer tries to hold at once
USES = 5
KINDS = "hold,confirm,release,expire,use,redeem,void"
SLOW = 11  # seconds a receiver takes on a `slow` request: past the delivery worker's 10 s timeout
PHP_PLAN = ["500", "500", "slow", "500"]  # what the receivers answer their first requests; then 2xx
PY_PLAN = ["500", "slow", "500", "500"]


class PyReceiver:
    """A storefront's webhook receiver in Python: `standardwebhooks` verifies each request; fails as planned."""

    def __init__(self, secret: str, port: int) -> None:
        self.verifier = Webhook(secret)
        self.port = port
        self.plan = list(PY_PLAN)
        self.got: list[dict[str, Any]] = []  # every request: id, body, verified, answer
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.is_down = True
        self.up()

    def up(self) -> None:
        owner = self
        self.is_down = False

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner.lock:
                    action = owner.plan.pop(0) if owner.plan else "ok"
                try:
                    owner.verifier.verify(body, headers)
                    verified = True
                except Exception:  # noqa: BLE001 - any refusal of the reference verifier is a failure here
                    verified = False
                answer = 401 if not verified else 500 if action == "500" else 204
                with owner.lock:  # on arrival: a receiver stopped while it is slow has still received the request
                    owner.got.append({"id": headers.get("webhook-id"), "body": body.decode(), "verified": verified,
                                      "answer": answer, "action": action})
                if action == "slow":
                    time.sleep(SLOW)
                self.send_response(answer)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.is_down = True

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.got)


class PhpReceiver:
    """tests/storefront/receiver.php under `php -S`: verifies with its own code; fails as its plan file says."""

    def __init__(self, secret: str, port: int, root: Path) -> None:
        self.port, self.log, plan = port, root / "php-hooks.log", root / "php-hooks.plan"
        plan.write_text("".join(a + "\n" for a in PHP_PLAN))
        self.env = {**os.environ, "SF_HOOK_SECRET": secret, "SF_HOOK_LOG": str(self.log),
                    "SF_HOOK_PLAN": str(plan), "SF_HOOK_SLOW": str(SLOW)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.is_down = True
        self.up()

    def up(self) -> None:
        self.is_down = False
        self.proc = subprocess.Popen(["php", "-S", f"127.0.0.1:{self.port}", str(HERE / "receiver.php")],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port)

    def down(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)
        self.is_down = True

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)


@pytest.fixture
def toolchains() -> None:
    _need(_missing_php())
    _need(_missing_go())


def _go_env(root: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEYVAULT_")}
    env.update({"GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local",
                "GOCACHE": env.get("GOCACHE") or str(Path.home() / ".cache" / "go-build"),
                "GOPATH": env.get("GOPATH") or str(root / "gopath")})
    return env


FIELDS = ("serial", "order_id", "uses_left", "expires_at", "redeemed_at", "voided_at", "receipt")


def _lines(text: str) -> list[dict[str, Any]]:
    """A buyer's JSON lines, every field present (None when the answer did not carry it)."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [{**line, **{f: line.get(f) or (0 if line.get(f) == 0 else None) for f in FIELDS},
             "has_uses_left": bool(line.get("has_uses_left"))} for line in lines]


@pytest.fixture
def shop(tmp_path: Path, toolchains: None) -> Iterator[dict[str, Any]]:
    """The store, its server, the two receivers and everything the buyers need."""
    go_binary = tmp_path / "go-shop"
    built = subprocess.run(["go", "build", "-o", str(go_binary), "."], cwd=HERE / "go", env=_go_env(tmp_path),
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    buyers = PHP_BUYERS + GO_BUYERS
    supplier = Identity.generate("Acme Games")
    with Vault.init(tmp_path / "supplier") as made:
        normal = issue(made, supplier, tmp_path / "files", count=buyers * OWN + CONTESTED)
        passes = issue(made, supplier, tmp_path / "files", count=buyers + 1, product="PASS-5", uses=USES)
    store = tmp_path / "store"
    secrets = {"php": signing.make_secret(), "py": signing.make_secret()}
    ports = {"php": free_port(), "py": free_port()}
    with Vault.init(store) as platform:
        platform.trust(supplier.public)
        platform.import_manifest(normal.manifest)
        platform.import_manifest(passes.manifest)
        endpoints = {name: platform.webhooks.add(f"http://127.0.0.1:{ports[name]}/hooks/keyvault", KINDS, secret)
                     for name, secret in secrets.items()}
    engine = tmp_path / "engine.pub"
    shown = cli(store, "identity", "show", "--public")
    assert shown.returncode == 0, shown.stderr
    engine.write_text(shown.stdout)
    tokens = {scope: make_token(store, f"shop-{scope}", scope) for scope in ("redeem", "admin")}
    receivers = {"py": PyReceiver(secrets["py"], ports["py"]), "php": PhpReceiver(secrets["php"], ports["php"], tmp_path)}
    server = Server(store, tmp_path / "server.log", workers=3).start()
    try:
        yield {"root": tmp_path, "store": store, "server": server, "tokens": tokens, "receivers": receivers,
               "endpoints": endpoints, "engine": engine, "go": go_binary, "normal": normal, "passes": passes}
    finally:
        server.kill()
        for receiver in receivers.values():
            with contextlib.suppress(Exception):  # already down
                receiver.down()


def test_storefront_from_php_and_go(shop: dict[str, Any]) -> None:
    server, tokens, receivers = shop["server"], shop["tokens"], shop["receivers"]
    normal, passes = shop["normal"], shop["passes"]
    contested = normal.keys[-CONTESTED:]
    run = f"SO{random.randrange(10**6):06d}"
    common = {name: value for name, value in os.environ.items() if not name.startswith("KEYVAULT_")}
    common.update({"SF_URL": f"http://127.0.0.1:{server.port}", "SF_TOKEN": tokens["redeem"],
                   "SF_ADMIN": tokens["admin"], "SF_RUN": run, "SF_CONTESTED": ",".join(contested),
                   "SF_LIMITED_SHARED": passes.keys[-1]})
    own = [normal.keys[b * OWN:(b + 1) * OWN] for b in range(PHP_BUYERS + GO_BUYERS)]
    procs: dict[str, subprocess.Popen[str]] = {}
    for b in range(PHP_BUYERS):
        env = {**common, "SF_BUYER": f"php-{b}", "SF_OWN": ",".join(own[b]), "SF_LIMITED_OWN": passes.keys[b]}
        procs[f"php-{b}"] = subprocess.Popen(["php", str(HERE / "shop.php")], env=env, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    go_names = [f"go-{b}" for b in range(GO_BUYERS)]
    env = {**common, "SF_BUYERS": ",".join(go_names), "SF_ENGINE": str(shop["engine"]),
           "SF_OWN": ";".join(",".join(own[PHP_BUYERS + b]) for b in range(GO_BUYERS)),
           "SF_LIMITED_OWN": ",".join(passes.keys[PHP_BUYERS:PHP_BUYERS + GO_BUYERS])}
    procs["go"] = subprocess.Popen([str(shop["go"])], env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)

    # While the buyers shop, both receivers go away (connection refused), each until the service logged that its
    # delivery was refused, then come back.
    time.sleep(2)
    for receiver in receivers.values():
        receiver.down()
    deadline = time.monotonic() + 120
    while any(receiver.is_down for receiver in receivers.values()):
        log = server.log.read_text(errors="replace").splitlines()
        for receiver in receivers.values():
            if receiver.is_down and any("ConnectionRefusedError" in line and f"127.0.0.1:{receiver.port})" in line
                                        for line in log):
                receiver.up()
        assert time.monotonic() < deadline, "no delivery was refused while the receivers were down"
        time.sleep(0.2)

    told: list[dict[str, Any]] = []
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{err[-4000:]}\n{out[-2000:]}"
            told += _lines(out)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    done = {line["buyer"] for line in told if line.get("done") or line.get("step") == "done"}
    assert done == {f"php-{b}" for b in range(PHP_BUYERS)} | set(go_names)
    told = [line for line in told if "op" in line and line["op"] != "done"]
    for line in told:  # no key in anything a buyer printed
        assert not any(key in json.dumps(line) for key in normal.keys + passes.keys)

    # -- what the buyers were told, step by step ----------------------------------------------------------
    by = defaultdict(list)
    for line in told:
        by[(line["buyer"], line["step"])].append(line)
    buyers = sorted({line["buyer"] for line in told})
    for buyer in buyers:
        paid = by[(buyer, "paid")]
        assert [(x["op"], x["status"]) for x in paid] == [("hold", "held"), ("confirm", "accepted"),
                                                        ("confirm", "accepted"), ("receipt", "accepted")]
        assert len({x["redeemed_at"] for x in paid[1:]}) == 1, "two payments of one order answered differently"
        failed = by[(buyer, "failed")]
        assert [(x["op"], x["status"]) for x in failed] == [
            ("hold", "held"), ("release", "released"), ("release", "released"), ("confirm", "released"),
            ("hold", "held"), ("confirm", "accepted")]
        late = by[(buyer, "late")]
        assert [(x["op"], x["status"]) for x in late] == [("hold", "held"), ("confirm", "expired_hold"),
                                                        ("hold", "held"), ("confirm", "accepted")]
        race = by[(buyer, "race")]
        assert race[0]["status"] == "held" and race[1]["status"] in ("accepted", "expired_hold")
        hold, void, confirm = by[(buyer, "voided")]
        assert hold["status"] == "held"
        # A void and a payment: exactly one of them wins.
        assert (void["status"], confirm["status"]) in (("void", "void"), ("redeemed", "accepted")), (void, confirm)
        direct = by[(buyer, "direct")]
        assert [x["status"] for x in direct] == ["accepted", "accepted", "redeemed"]
        assert direct[0]["redeemed_at"] == direct[1]["redeemed_at"] and direct[0]["receipt"] == direct[1]["receipt"]
        assert direct[0]["receipt"].startswith("KVR1.") and direct[2]["order_id"] == direct[0]["order"]
        assert [x["status"] for x in by[(buyer, "ghost")]] == ["not-found", "not-found"]
        passes_told = by[(buyer, "pass")]
        assert [(x["status"], x["uses_left"]) for x in passes_told] == [
            ("accepted", 4), ("accepted", 3), ("accepted", 2), ("accepted", 1), ("accepted", 0), ("exhausted", 0),
            ("accepted", 4), ("exhausted", 0)]
        assert passes_told[6]["redeemed_at"] == passes_told[0]["redeemed_at"], "a retry of a use answered otherwise"
        # Only the last use is a redeem, with a receipt (naming its own order); the others carry none.
        assert [bool(x.get("receipt")) for x in passes_told[:6]] == [False] * 4 + [True, False]
    for line in told:  # a count-limited key's every answer says how many uses are left
        if line.get("serial") in passes.serials and line["op"] != "receipt":
            assert line.get("has_uses_left"), line
        elif line.get("serial") in normal.serials:
            assert not line.get("has_uses_left"), line
    for j, key in enumerate(contested):
        holds = [x for x in told if x["step"] == "contested" and x["order"].endswith(f"-contested-{j}")]
        won = [x for x in holds if x["op"] == "hold" and x["status"] == "held" and x.get("order_id") == x["order"]]
        assert len(won) == 1, f"contested key {j}: {len(won)} orders held it"
        assert [x["status"] for x in holds if x["op"] == "confirm"] == ["accepted"]
        for lost in (x for x in holds if x["op"] == "hold" and x is not won[0]):
            assert lost["status"] in ("held", "redeemed") and lost.get("order_id") in (None, won[0]["order"]), lost
    shared_serial = passes.serials[-1]
    shared_wins = [x for x in told if x.get("serial") == shared_serial and x["op"] in ("redeem", "confirm")
                   and x["status"] == "accepted"]
    assert 1 <= len(shared_wins) <= USES
    assert sorted((x["uses_left"] for x in shared_wins), reverse=True) == list(range(USES - 1, USES - 1 - len(shared_wins),
                                                                                      -1)), shared_wins

    # -- the order lookup over HTTP for every order a buyer named ------------------------------------------
    orders: dict[str, Any] = {}
    for order in sorted({x["order"] for x in told if x["order"]}):
        reply = server.request("GET", f"/v1/orders/{quote(order, safe='')}", token=tokens["redeem"])
        assert reply.status in (200, 404), reply.body
        orders[order] = reply.json() if reply.status == 200 else None
    for line in told:
        _agrees(line, orders[line["order"]] if line["order"] else None)

    # -- the webhooks: wait until both endpoints caught up --------------------------------------------------
    deadline = time.monotonic() + 240
    while True:
        stats = server.request("GET", "/v1/webhooks/stats", token=tokens["admin"]).json()["endpoints"]
        if all(s["pending"] == 0 for s in stats):
            break
        assert time.monotonic() < deadline, f"the webhooks did not catch up: {stats}"
        time.sleep(0.5)
    assert server.stop() == 0
    for receiver in receivers.values():
        receiver.down()

    # -- the server's own view, from the store ----------------------------------------------------------
    with Vault.open(shop["store"]) as vault:
        traces = {serial: vault.trace(serial).to_dict() for serial in normal.serials + passes.serials}
        for order, doc in orders.items():  # the library's order lookup (`trace --order`'s) answers as the service did
            if doc is None:
                with pytest.raises(NotFoundError):
                    vault.order(order)
            else:
                assert _same_or_later(doc, vault.order(order).to_dict()), order
    events = {e["index"]: e for t in traces.values() for e in t["events"] if e["type"] in KINDS.split(",")}
    for serial, trace in traces.items():
        mine = [e for e in trace["events"] if e.get("serial") == serial]
        redeems = [e for e in mine if e["type"] == "redeem"]
        assert len(redeems) <= 1, f"{serial} redeemed twice: {redeems}"
        if serial in passes.serials:
            uses = [e for e in mine if e["type"] == "use"]
            assert len(uses) <= USES and len({e["order_id"] for e in uses}) == len(uses), serial
        else:
            confirmed = {e["order_id"] for e in mine if e["type"] in ("confirm", "redeem")}
            assert len(confirmed) <= 1, f"{serial} confirmed for {confirmed}"
    for line in told:  # every acknowledged hold, confirm and redeem is in the store
        kinds = {"hold": ("hold",), "confirm": ("confirm",), "redeem": ("redeem", "use")}.get(line["op"], ())
        if not kinds or line["status"] not in ("held", "accepted") or line.get("order_id") != line["order"]:
            continue
        assert any(e["type"] in kinds and e.get("order_id") == line["order"] and e.get("serial") == line["serial"]
                   for e in events.values()), f"acknowledged but not in the log: {line}"
    # `keyvault trace --order` answers what the service answered, for a sample of orders.
    for order in random.sample(sorted(o for o, doc in orders.items() if doc), 8):
        done = cli(shop["store"], "trace", "--order", order, "--json")
        assert done.returncode == 0, done.stderr
        assert _same_or_later(orders[order], json.loads(done.stdout)), order

    # -- receipts, checked offline ----------------------------------------------------------------------
    receipts = {(x["serial"], x["receipt"]) for x in told if x.get("receipt")}
    assert len(receipts) >= 3 * len(buyers)
    for serial, receipt in receipts:
        done = subprocess.run([KEYVAULT, "verify-receipt", receipt, "--engine", str(shop["engine"]), "--json"],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        doc = json.loads(done.stdout)
        assert doc["authentic"] and doc["serial"] == serial
        owner = [x for x in told if x.get("receipt") == receipt]
        assert all(x["order"] == doc["order_id"] for x in owner)
        for x in owner:  # the Go buyers checked theirs offline too, with the Go client: the same fields
            if x["buyer"].startswith("go-"):
                assert (x["receipt_serial"], x["receipt_order"], x["receipt_at"]) == (
                    serial, doc["order_id"], doc["redeemed_at"]), x
    damaged = next(iter(receipts))[1]
    damaged = damaged[:-2] + ("A" if damaged[-2] != "A" else "B") + damaged[-1]
    refused = subprocess.run([KEYVAULT, "verify-receipt", damaged, "--engine", str(shop["engine"])],
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 3, refused.stdout + refused.stderr

    # -- the webhook streams --------------------------------------------------------------------------
    start = min(int(e["cursor"]) for e in shop["endpoints"].values())
    wanted = {i for i in events if i >= start}
    for name, receiver in receivers.items():
        got = receiver.requests()
        assert got, f"the {name} receiver got nothing"
        assert all(r["verified"] for r in got), f"{name}: a signature did not verify: {got}"
        actions = Counter(r["action"] for r in got)
        assert actions["500"] >= 2 and actions["slow"] == 1, f"{name}: the failures did not happen: {actions}"
        bodies: dict[str, str] = {}
        first: list[int] = []  # the event of each id, in the order the ids first arrived
        for r in got:
            payload = json.loads(r["body"])
            index = payload["data"]["event"]
            assert r["id"].startswith("evt_") and r["id"].endswith(f"_{index}"), r
            if r["id"] not in bodies:
                first.append(index)
            assert bodies.setdefault(r["id"], r["body"]) == r["body"], f"{name}: one id, two bodies"
            event = events.get(index)
            assert event is not None and event["type"] == payload["type"], (payload, event)
            assert payload["data"].get("serial") == event.get("serial")
            assert payload["data"].get("order_id") == event.get("order_id")
        assert first == sorted(first), f"{name}: delivered out of log order"
        assert set(first) == wanted, f"{name}: missing {sorted(wanted - set(first))[:10]}, extra " \
                                     f"{sorted(set(first) - wanted)[:10]}"
        assert len({r["id"] for r in got}) == len(wanted)  # every id stable across retries
        duplicates = len(got) - len(wanted)
        assert duplicates >= 1, f"{name}: no message was sent twice, yet one timed out"


def _same_or_later(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """True when ``after`` is ``before``, but for holds that ended since."""
    if after["order_id"] != before["order_id"] or len(after["keys"]) != len(before["keys"]):
        return False
    return all(a == b or (a["state"] == "held" and b["state"] == "expired" and a["serial"] == b["serial"])
               for a, b in zip(before["keys"], after["keys"]))


def _agrees(line: dict[str, Any], order: dict[str, Any] | None) -> None:
    """What a buyer was told of an order agrees with the service's order lookup."""
    op, status, serial = line["op"], line["status"], line.get("serial")
    if op == "verify":
        return
    if status == "not-found" or (status in ("held", "redeemed", "exhausted") and line.get("order_id") != line["order"]):
        # refused, or never held: the order got nothing of this key
        if order is not None:
            assert all(k["serial"] != serial for k in order["keys"]), (line, order)
        return
    assert order is not None, f"the buyer was told {status} but the service knows no order {line['order']}"
    entry = next((k for k in order["keys"] if k["serial"] == serial), None)
    assert entry is not None, (line, order)
    if status == "accepted":
        final = [k for k in order["keys"] if k["serial"] == serial]
        assert final[-1]["state"] == "redeemed" and final[-1]["redeemed_at"] == line["redeemed_at"], (line, order)
        if line.get("has_uses_left"):
            assert final[-1]["uses_left"] == line["uses_left"], (line, order)
    elif status == "expired_hold":
        assert entry["state"] == "expired", (line, order)
    elif status == "released":
        assert entry["state"] == "released", (line, order)
    elif status == "held" and line["step"] == "race":
        assert entry["held_at"] is not None
    elif status == "void":  # voided while this order held it: the order says so, with the void's time
        assert entry["state"] == "void" and entry["voided_at"] == line["voided_at"], (line, order)


def _walk_through() -> tuple[str, str]:
    """The PHP and Go programs of docs/service.md's storefront walk-through."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "service.md").read_text()
    section = text[text.index("## A storefront with the clients"):]
    section = section[:section.index("\n## ", 10)]
    php = section[section.index("```php\n") + 7:]
    go = section[section.index("```go\n") + 6:]
    return php[:php.index("```")], go[:go.index("```")]


def test_the_walk_through_runs(tmp_path: Path, toolchains: None) -> None:
    """docs/service.md's storefront walk-through, its PHP and its Go, against a real server: what it says it prints."""
    supplier = Identity.generate("Acme Games")
    with Vault.init(tmp_path / "supplier") as made:
        normal = issue(made, supplier, tmp_path / "files", count=4)
        passes = issue(made, supplier, tmp_path / "files", count=2, product="PASS-5", uses=USES)
    store = tmp_path / "store"
    with Vault.init(store) as platform:
        platform.trust(supplier.public)
        platform.import_manifest(normal.manifest)
        platform.import_manifest(passes.manifest)
    engine = tmp_path / "engine.pub"
    engine.write_text(cli(store, "identity", "show", "--public").stdout)
    token = make_token(store, "shop", "redeem")
    php, go = _walk_through()
    (tmp_path / "storefront.php").write_text(php)
    module = tmp_path / "gostore"
    module.mkdir()
    (module / "shop-engine.pub").write_text(engine.read_text())
    (module / "main.go").write_text(go)
    clients = Path(__file__).resolve().parent.parent / "clients"
    (module / "go.mod").write_text(f"module example.com/shop\n\ngo 1.19\n\nrequire keyvault.example/client v0.0.0\n\n"
                                   f"replace keyvault.example/client => {clients / 'go'}\n")
    server = Server(store, tmp_path / "server.log").start()
    try:
        env = {name: value for name, value in os.environ.items() if not name.startswith("KEYVAULT_")}
        env.update({"KV_URL": f"http://127.0.0.1:{server.port}", "KV_TOKEN": token})
        ran = subprocess.run(["php", "-d", f"include_path=.:{clients.parent}", "storefront.php"], cwd=tmp_path,
                             env={**env, "KEY": normal.keys[0], "PASS": passes.keys[0]}, capture_output=True,
                             text=True, timeout=120, check=False)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        lines = ran.stdout.splitlines()
        paid = lines[0].split()
        assert paid[:3] == ["accepted", normal.serials[0], "at"] and paid[3] == paid[5].rstrip(")"), lines
        assert lines[1].endswith(f": {normal.serials[0]} redeemed"), lines
        assert lines[2:8] == [f"pass, order {i}: accepted, {USES - i} left" for i in range(1, 6)] + [
            "pass, order 6: exhausted, 0 left"], lines
        assert lines[8:] == ["urn:keyvault:problem:not-found"], lines
        verified = subprocess.run([KEYVAULT, "verify-receipt", (tmp_path / "receipt.txt").read_text(), "--engine",
                                   str(engine), "--json"], capture_output=True, text=True, timeout=120, check=False)
        assert verified.returncode == 0 and json.loads(verified.stdout)["serial"] == normal.serials[0], verified

        ran = subprocess.run(["go", "run", "."], cwd=module, env={**_go_env(tmp_path), "KV_URL": env["KV_URL"],
                             "KV_TOKEN": token, "KEY": normal.keys[1], "PASS": passes.keys[1]},
                             capture_output=True, text=True, timeout=600, check=False)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        lines = ran.stdout.splitlines()
        assert lines[0] == f"accepted {normal.serials[1]} true <nil>", lines
        assert lines[1:7] == [f"pass, order {i}: accepted, {USES - i} left" for i in range(1, 6)] + [
            "pass, order 6: exhausted, 0 left"], lines
        assert lines[7:] == ["urn:keyvault:problem:not-found"], lines
    finally:
        server.kill()


# -- what the storefront found, pinned without the PHP and Go toolchains ----------------------------------------


def test_an_order_says_when_its_held_key_was_voided(tmp_path: Path, platform: Vault, supplier: Identity,
                                                   supplier_store: Vault) -> None:
    """A key voided while an order held it is `void` in the order (with the void's time), not `held` then
    `expired`: the order's confirm is refused `void`. A void after the hold ended leaves it `expired`."""
    batch = issue(supplier_store, supplier, tmp_path / "files", count=3)
    platform.import_manifest(batch.manifest)
    assert platform.hold(batch.keys[0], "SO-V", ttl=1.5).status.value == "held"
    voided = platform.void(batch.serials[0], "chargeback")
    entry = platform.order("SO-V").keys[0]
    assert (entry.state, entry.voided_at) == ("void", voided.voided_at)
    assert [r.status.value for r in platform.confirm("SO-V")] == ["void"]
    shown = cli(Path(platform.path), "trace", "--order", "SO-V")
    assert shown.returncode == 0 and f"{batch.serials[0]}  void  " in shown.stdout, shown.stdout + shown.stderr
    assert f"voided {voided.voided_at}" in shown.stdout, shown.stdout
    time.sleep(1.6)  # the hold's end passes: still void, not expired
    assert (platform.order("SO-V").keys[0].state, platform.order("SO-V").keys[0].voided_at) == ("void",
                                                                                             voided.voided_at)
    assert platform.hold(batch.keys[1], "SO-E", ttl=1).status.value == "held"
    time.sleep(1.1)
    assert platform.void(batch.serials[1], "too late").status.value == "void"
    assert (platform.order("SO-E").keys[0].state, platform.order("SO-E").keys[0].voided_at) == ("expired", None)
    assert platform.hold(batch.keys[2], "SO-R", ttl=60).status.value == "held"
    assert [r.status.value for r in platform.confirm("SO-R")] == ["accepted"]
    assert platform.void(batch.serials[2], "refund").status.value == "redeemed"
    assert platform.order("SO-R").keys[0].state == "redeemed"
    assert "voided_at" not in platform.order("SO-R").to_dict()["keys"][0]


def test_a_count_limited_use_asking_for_a_receipt_is_accepted(tmp_path: Path) -> None:
    """Over HTTP, a count-limited key's uses before its last, asked for a receipt, are answered accepted without
    one (they are not redeems), never a 404 after the use was spent, nor the last use's receipt; the last use
    gets its own."""
    supplier = Identity.generate("Acme Games")
    with Vault.init(tmp_path / "supplier") as made:
        passes = issue(made, supplier, tmp_path / "files", count=1, product="PASS-3", uses=3)
    store = tmp_path / "store"
    with Vault.init(store) as platform:
        platform.trust(supplier.public)
        platform.import_manifest(passes.manifest)
    token = make_token(store, "shop", "redeem")
    server = Server(store, tmp_path / "server.log").start()
    try:
        def redeem(order: str) -> dict[str, Any]:
            reply = server.request("POST", "/v1/redeem", {"key": passes.keys[0], "order_id": order, "receipt": True},
                                   token=token)
            assert reply.status == 200, reply.body
            return dict(reply.json())

        first, second, last = redeem("SO-1"), redeem("SO-2"), redeem("SO-3")
        assert [(a["status"], a["uses_left"], "receipt" in a) for a in (first, second, last)] == [
            ("accepted", 2, False), ("accepted", 1, False), ("accepted", 0, True)]
        again = redeem("SO-1")
        assert (again["status"], again["uses_left"], "receipt" in again) == ("accepted", 2, False)
        assert redeem("SO-4")["status"] == "exhausted"
        assert redeem("SO-3")["receipt"] == last["receipt"]
    finally:
        server.kill()
    engine = tmp_path / "engine.pub"
    engine.write_text(cli(store, "identity", "show", "--public").stdout)
    checked = subprocess.run([KEYVAULT, "verify-receipt", last["receipt"], "--engine", str(engine), "--json"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert checked.returncode == 0 and json.loads(checked.stdout)["order_id"] == "SO-3", checked
