"""The PHP and Go clients (clients/) against a real ``keyvault serve``.

One server, started here on a free loopback port over a fresh store, serves
both suites; each gets its own keys, three tokens (verify, redeem, admin) and
keys of a batch the store never imported (``unknown``), and one key of a
count-limited batch (``LIMITED_USES`` orders may each redeem it once) by
environment variables. The suites also check their request and answer shapes against the
OpenAPI document the server serves, so a service change that breaks a client
fails here. Without ``php`` (with curl) or ``go`` the suite is skipped with the
reason, unless KEYVAULT_REQUIRE_CLIENTS=1 (CI), where it fails instead.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import issue
from service_support import Server, cli, make_token

from keyvault import Identity, Vault
from keyvault.errors import WebhookError
from keyvault.formats import webhooks

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
# Read at import: the autouse fixture that clears KEYVAULT_* variables runs later, per test.
REQUIRE = os.environ.get("KEYVAULT_REQUIRE_CLIENTS", "") == "1"
KEYS_PER_SUITE = 16
LIMITED_USES = 3


def _missing_php() -> str | None:
    php = shutil.which("php")
    if php is None:
        return "php is not installed (apt-get install php-cli php-curl)"
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=60).stdout.split()
    if "curl" not in modules or "json" not in modules:
        return "php has no curl or json extension (apt-get install php-curl)"
    return None


def _missing_go() -> str | None:
    return None if shutil.which("go") else "go is not installed (apt-get install golang-go)"


def _need(missing: str | None) -> None:
    """Skip for a missing toolchain, or fail under KEYVAULT_REQUIRE_CLIENTS=1."""
    if missing is not None:
        if REQUIRE:
            pytest.fail(f"KEYVAULT_REQUIRE_CLIENTS=1 but {missing}")
        pytest.skip(f"{missing}; KEYVAULT_REQUIRE_CLIENTS=1 makes this a failure")


@dataclass
class Served:
    """The running server and what the suites get."""

    server: Server
    tokens: dict[str, str]
    keys: list[str]
    serials: list[str]
    unknown: list[str]
    limited: list[str]  # one count-limited key per suite
    limited_serials: list[str]
    root: Path
    webhooks: Path  # the signed webhook vectors (webhook_vectors)

    def env(self, suite: int) -> dict[str, str]:
        """The environment of client suite number ``suite``: its own slice of keys."""
        part = slice(suite * KEYS_PER_SUITE, (suite + 1) * KEYS_PER_SUITE)
        env = {name: value for name, value in os.environ.items() if not name.startswith("KEYVAULT_")}
        env.update({
            "KEYVAULT_TEST_URL": f"http://127.0.0.1:{self.server.port}",
            "KEYVAULT_TEST_TOKEN_VERIFY": self.tokens["verify"],
            "KEYVAULT_TEST_TOKEN_REDEEM": self.tokens["redeem"],
            "KEYVAULT_TEST_TOKEN_ADMIN": self.tokens["admin"],
            "KEYVAULT_TEST_KEYS": ",".join(self.keys[part]),
            "KEYVAULT_TEST_SERIALS": ",".join(self.serials[part]),
            "KEYVAULT_TEST_UNKNOWN": ",".join(self.unknown[suite * 4:(suite + 1) * 4]),
            "KEYVAULT_TEST_WEBHOOKS": str(self.webhooks),
            "KEYVAULT_TEST_LIMITED": self.limited[suite],
            "KEYVAULT_TEST_LIMITED_SERIAL": self.limited_serials[suite],
            "KEYVAULT_TEST_LIMITED_USES": str(LIMITED_USES),
            "KEYVAULT_TEST_ENGINE": str(self.root / "engine.pub"),
        })
        return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("clients")
    supplier = Identity.generate("Acme Games")
    with Vault.init(root / "supplier") as made:
        first = issue(made, supplier, root / "files", count=2 * KEYS_PER_SUITE)
        spare = issue(made, supplier, root / "files", count=8, product="POINTS-50")
        limited = issue(made, supplier, root / "files", count=2, product="PASS-3", uses=LIMITED_USES)
    store = root / "platform"
    with Vault.init(store) as platform:
        platform.trust(supplier.public)
        platform.import_manifest(first.manifest)
        platform.import_manifest(limited.manifest)
    tokens = {scope: make_token(store, f"{scope}-client", scope) for scope in ("verify", "redeem", "admin")}
    shown = cli(store, "identity", "show", "--public")  # the store's engine.pub: receipts are checked against it
    assert shown.returncode == 0, shown.stderr
    (root / "engine.pub").write_text(shown.stdout)
    server = Server(store, root / "server.log").start()
    try:
        yield Served(server, tokens, first.keys, first.serials, spare.keys, limited.keys, limited.serials, root,
                     webhook_vectors(root / "webhooks.json"))
    finally:
        server.kill()


def webhook_vectors(path: Path) -> Path:
    """Webhooks signed by keyvault.formats.webhooks, some damaged, each with keyvault's own verdict, as JSON."""
    secret, other = webhooks.make_secret(), webhooks.make_secret(24)
    now = 1_900_000_000
    body = json.dumps({"type": "card.redeemed", "data": {"serial": "7KQ2-00A-00031", "note": "caf\u00e9 \u6e38"}},
                      ensure_ascii=False).encode()
    signed = webhooks.sign(secret, "msg_2Kq8", now, body)
    rotated = {**signed, "webhook-signature": webhooks.sign(other, "msg_2Kq8", now, body)["webhook-signature"] + " "
               + signed["webhook-signature"]}
    binary = bytes(range(256))
    cases = [
        ("signed", secret, signed, body, now, 300),
        ("signed, the secret without its prefix", secret[6:], signed, body, now, 300),
        ("rotated: the second signature is this secret's", secret, rotated, body, now, 300),
        ("rotated: the first signature is this secret's", other, rotated, body, now, 300),
        ("a binary body", secret, webhooks.sign(secret, "msg_bin", now, binary), binary, now, 300),
        ("an empty body", secret, webhooks.sign(secret, "msg_empty", now, b""), b"", now, 300),
        ("5 minutes old", secret, signed, body, now + 300, 300),
        ("5 minutes and a second old", secret, signed, body, now + 301, 300),
        ("5 minutes and a second ahead", secret, signed, body, now - 301, 300),
        ("an hour old, with an hour's tolerance", secret, signed, body, now + 3600, 3600),
        ("another secret", webhooks.make_secret(), signed, body, now, 300),
        ("the body re-serialised", secret, signed, json.dumps(json.loads(body)).encode(), now, 300),
        ("the body with a trailing newline", secret, signed, body + b"\n", now, 300),
        ("another id", secret, {**signed, "webhook-id": "msg_other"}, body, now, 300),
        ("another timestamp", secret, {**signed, "webhook-timestamp": str(now + 1)}, body, now, 300),
        ("a v2 signature only", secret, {**signed, "webhook-signature": "v2," + signed["webhook-signature"][3:]},
         body, now, 300),
        ("no signature header", secret, {k: v for k, v in signed.items() if k != "webhook-signature"}, body, now, 300),
    ]
    vectors = []
    for name, key, headers, payload, at, tolerance in cases:
        try:
            webhooks.verify(key, headers, payload, tolerance, now=at)
            valid = True
        except WebhookError:
            valid = False
        vectors.append({"name": name, "secret": key, "headers": headers, "body_base64":
                        base64.b64encode(payload).decode(), "now": at, "tolerance": tolerance, "valid": valid})
    assert sum(v["valid"] for v in vectors) == 8 and len(vectors) - 8 == 9  # the verdicts this file expects
    path.write_text(json.dumps(vectors, ensure_ascii=False, indent=1))
    return path


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{out[-6000:]}"
    return out


def test_php_client(served: Served) -> None:
    _need(_missing_php())
    out = _run(["php", "tests/run.php"], CLIENTS / "php", served.env(0))
    last = out.strip().splitlines()[-1]
    counted = re.fullmatch(r"(\d+) passed, 0 failed", last)
    assert counted and int(counted.group(1)) >= 20, out[-6000:]


def test_go_client(served: Served, tmp_path: Path) -> None:
    _need(_missing_go())
    env = served.env(1)
    env.update({"GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local",
                "GOCACHE": env.get("GOCACHE") or str(Path.home() / ".cache" / "go-build"),
                "GOPATH": env.get("GOPATH") or str(tmp_path / "gopath")})
    out = _run(["go", "test", "-count=1", "-v", "./..."], CLIENTS / "go", env)
    assert "--- SKIP" not in out, out[-6000:]
    passed = out.count("--- PASS")
    assert passed >= 15 and "--- FAIL" not in out, out[-6000:]


def test_a_missing_toolchain_skips_or_fails_as_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert _missing_php() is not None and _missing_go() is not None
    monkeypatch.setattr(sys.modules[__name__], "REQUIRE", False)
    with pytest.raises(pytest.skip.Exception, match="KEYVAULT_REQUIRE_CLIENTS=1 makes this a failure"):
        _need(_missing_go())
    monkeypatch.setattr(sys.modules[__name__], "REQUIRE", True)
    with pytest.raises(pytest.fail.Exception, match="KEYVAULT_REQUIRE_CLIENTS=1 but go is not installed"):
        _need(_missing_go())
    _need(None)  # nothing missing: neither


def test_php_receiver_verifies_every_delivered_webhook(tmp_path: Path, supplier: Identity, platform: Vault,
                                                      supplier_store: Vault) -> None:
    """keyvault's delivery worker posting to a PHP receiver that checks each with Keyvault\\Webhook::verify."""
    import time

    from service_support import free_port

    from keyvault.service.delivery import Delivery

    _need(_missing_php())
    batch = issue(supplier_store, supplier, tmp_path / "files", count=20)
    platform.import_manifest(batch.manifest)
    port, log = free_port(), tmp_path / "received.log"
    secret = webhooks.make_secret()
    env = {**os.environ, "KEYVAULT_WEBHOOK_SECRET": secret, "KEYVAULT_WEBHOOK_LOG": str(log)}
    php = subprocess.Popen(["php", "-S", f"127.0.0.1:{port}", "tests/webhook_receiver.php"], cwd=CLIENTS / "php",
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    good = platform.webhooks.add(f"http://127.0.0.1:{port}/hooks", "redeem,void", secret)
    platform.webhooks.add(f"http://127.0.0.1:{port}/wrong", "redeem", webhooks.make_secret())  # refused: 400
    delivery = Delivery(platform, timeout=5, retry_base=0.05, retry_cap=0.2, poll=0.02).start()
    try:
        for i, key in enumerate(batch.keys[:10]):
            assert platform.redeem(key, f"php-{i}").ok
        platform.void(batch.serials[10], "php void")
        deadline = time.monotonic() + 60
        while not (log.exists() and len(log.read_text().splitlines()) >= 11):
            assert time.monotonic() < deadline, "the PHP receiver did not get every webhook"
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        while not Path(str(log) + ".refused").exists():
            assert time.monotonic() < deadline, "the wrongly keyed endpoint was not refused by the PHP receiver"
            time.sleep(0.05)
    finally:
        delivery.stop()
        php.terminate()
        php.wait(10)
    lines = [line.split("\t", 1) for line in log.read_text().splitlines()]
    payloads = [json.loads(body) for _, body in lines]
    assert [p["type"] for p in payloads][:11] == ["redeem"] * 10 + ["void"]
    assert all(msg_id.startswith("evt_") for msg_id, _ in lines)
    stats = {s["id"]: s for s in platform.webhooks.stats()}
    assert "400" in next(s["last_error"] for k, s in stats.items() if k != good["id"])
