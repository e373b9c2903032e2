"""The JSON the CLI (``--json``) and the HTTP service print for reports stays what it is, key for key.

One store is built with a fixed story (issue, import, redeem, void, blacklist, a hold, a locked card),
then every reporting command and route is asked about it. Each answer must be exactly
``json.dumps`` of its parsed self (so nothing but the standard encoding is used), and its shape —
every key, in order, every fixed value — must equal ``tests/golden/answer_json.txt``. Values that
differ from run to run (times, identifiers, hashes, paths, sizes) are replaced by their kind.

``KEYVAULT_WRITE_GOLDEN=1`` rewrites the file instead (then read its diff before committing it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from keyvault import Identity, Vault
from cli_support import kv
from conftest import issue
from service_support import Server, make_token

GOLDEN = Path(__file__).parent / "golden" / "answer_json.txt"
WRITE = os.environ.get("KEYVAULT_WRITE_GOLDEN") == "1"  # read at import: the tests run without KEYVAULT_* set
#: Values under these keys change from run to run even when they are numbers.
_VOLATILE_KEYS = re.compile(r"bytes|size|_at$|^at$|elapsed|seconds|time|created|when|expires|lag|pid")
_FIXED_TEXT = re.compile(r"[a-z_ ]{1,40}")
_HEX = re.compile(r"[0-9a-f]+")
#: Lists whose length depends on random hashes (proof paths), and lists in an order set by random ids.
_HASH_LISTS = {"siblings"}
_UNORDERED = {"manifests"}


def shape(doc: Any, key: str = "") -> Any:
    """``doc`` with its run-dependent values replaced by their kind; keys, order and fixed values kept."""
    if isinstance(doc, dict):
        return {k: shape(v, k) for k, v in doc.items()}
    if isinstance(doc, list):
        if key in _HASH_LISTS:
            return "<hashes>"
        items = [shape(v, key) for v in doc]
        return sorted(items, key=json.dumps) if key in _UNORDERED else items
    if isinstance(doc, bool) or doc is None:
        return doc
    if isinstance(doc, float):
        return "<float>"
    if isinstance(doc, int):
        return "<int>" if doc >= 10**9 or _VOLATILE_KEYS.search(key) else doc
    if isinstance(doc, str):
        if _FIXED_TEXT.fullmatch(doc) and not _VOLATILE_KEYS.search(key):
            return doc
        return f"<hex{len(doc)}>" if _HEX.fullmatch(doc) else "<text>"
    raise AssertionError(f"not JSON: {doc!r}")


def _plain(raw: str) -> Any:
    """Parse one answer and require it to be the standard encoding of what it holds (compact or indented, raw
    or escaped non-ASCII): ``{"indent": N, "ascii": bool, "json": doc}``."""
    doc = json.loads(raw)
    for indent in (None, 1, 2):
        for ascii_only in (False, True):
            if raw == json.dumps(doc, ensure_ascii=ascii_only, indent=indent):
                return {"indent": indent, "ascii": ascii_only, "json": doc}
    raise AssertionError(f"the answer is not json.dumps of its own content: {raw[:200]}")


def _cli(*args: object) -> Any:
    done = kv(*args)
    assert done.exit_code in (0, 3), (args, done.output)
    try:
        return _plain(done.stdout.rstrip("\n"))
    except json.JSONDecodeError:  # JSON Lines
        return [_plain(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("answers")
    supplier = Identity.generate("Acme Games")
    with Vault.init(root / "supplier") as made:
        batch = issue(made, supplier, root / "files", count=12)
    store = root / "platform"
    cards = root / "cards.csv"
    cards.write_text("card_number,password\n4000123412341234,secret-pass-1\n4000123412345678,secret-pass-2\n")
    with Vault.init(store) as platform:
        platform.trust(supplier.public)
        platform.import_manifest(batch.manifest)
        platform.import_cards(supplier, "GIFT-50", cards, manifest_out=root / "cards.kvm")
        platform.redeem(batch.keys[0], "ORDER-1")
        platform.redeem(batch.keys[1], "ORDER-2", client="shop-a")
        platform.void(batch.keys[2], "refund")
        platform.blacklist("key", batch.serials[3], "leaked")
        platform.verify("4000123412341234:wrong-password")
        platform.hold(batch.keys[4], "ORDER-H", 600)
        platform.hold(batch.keys[5], "ORDER-C", 600)
        platform.hold(batch.keys[6], "ORDER-C", 600)
        platform.confirm("ORDER-C")
        platform.verify("7KQ2-XXXX-XXXX-XXXX-XXXX", client="shop-b")
        platform.flush_stats()
        platform.checkpoint()
        receipt = platform.receipt(batch.serials[0])
        platform.tokens.create("golden-shop", "redeem")
        platform.webhooks.add("http://127.0.0.1:9/hook", "redeem,void")
    return {"root": root, "store": store, "serials": batch.serials, "batch": batch.batch, "receipt": receipt}


def _answers(story: dict[str, Any]) -> dict[str, Any]:
    store, serial, root = story["store"], story["serials"][0], story["root"]
    s = ("--store", store)
    answers: dict[str, Any] = {
        "cli stats": _cli(*s, "stats", "--json"),
        "cli stats --since --daily": _cli(*s, "stats", "--since", "2020-01-01", "--daily", "--json"),
        "cli trace": _cli(*s, "trace", serial, "--json"),
        "cli trace --order": _cli(*s, "trace", "--order", "ORDER-H", "--json"),
        "cli check": _cli(*s, "check", "--json"),
        "cli audit": _cli(*s, "audit", "--json"),
        "cli throttle locked": _cli(*s, "throttle", "locked", "--json"),
        "cli receipt upgrade": _cli(*s, "receipt", "upgrade", story["receipt"]),
        "cli authority show": _cli(*s, "authority", "show", "--json"),
        "cli trust list": _cli(*s, "trust", "list", "--json"),
        "cli checkpoint --list": _cli(*s, "checkpoint", "--list", "--json"),
        "cli webhook list": _cli(*s, "webhook", "list", "--json"),
        "cli webhook stats": _cli(*s, "webhook", "stats", "--json"),
    }
    for what in ("batches", "manifests", "blacklist", "tokens"):
        limit = ("--limit", "1") if what == "batches" else ()  # a cursor; manifests are listed in a random order
        answers[f"cli list {what}"] = _cli(*s, "list", what, *limit, "--json")
    backup = root / f"backup-{len(list(root.iterdir()))}"
    answers["cli backup"] = _cli(*s, "backup", backup, "--with-pepper", "--json")
    answers["cli restore"] = _cli("restore", backup, root / f"restored-{len(list(root.iterdir()))}", "--json")
    return answers


def _http(story: dict[str, Any]) -> dict[str, Any]:
    store, serial = story["store"], story["serials"][0]
    token = make_token(store, "golden-admin", "admin")
    server = Server(store, story["root"] / "server.log", workers=1).start()
    answers: dict[str, Any] = {}
    try:
        for path in ("/v1/stats", "/v1/stats?since=2020-01-01&daily=1", "/v1/batches?limit=1", "/v1/manifests",
                     "/v1/blacklist", "/v1/tokens", f"/v1/trace/{serial}", f"/v1/trace/{serial}?bundle=1",
                     "/v1/orders/ORDER-H", "/v1/orders/ORDER-C"):
            reply = server.request("GET", path, token=token)
            assert reply.status == 200, (path, reply.body)
            answers[f"GET {path.replace(serial, 'SERIAL')}"] = _plain(reply.body.decode())
    finally:
        server.stop()
    return answers


def test_report_answers_keep_their_json(story: dict[str, Any]) -> None:
    found = {**_answers(story), **_http(story)}
    text = "".join(f"## {name}\n{json.dumps(shape(doc), ensure_ascii=False, indent=1)}\n"
                   for name, doc in found.items())
    if WRITE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    expected = GOLDEN.read_text()
    for a, b in zip(expected.split("## ")[1:], text.split("## ")[1:]):
        assert a == b
    assert text == expected


def test_a_typed_answer_reads_as_its_json_and_is_frozen() -> None:
    from keyvault import Audit, Trace
    from keyvault.engine.answers import DoubleSale, HopRecord, LogCheck

    hop = HopRecord(transfer="t1", from_="Acme", from_fingerprint="f1", to="East", to_fingerprint="f2", at=None,
                    ranges=["0-9"], record="00")
    sale = DoubleSale(batch="B", spent_record="r", detected_at=None, refused_at="receive", first=hop, second=hop)
    broken = Audit(double_sales=[sale], manifest_gaps=[], manifest_forks=[], event_log=LogCheck(ok=False, error="x"),
                   clean=False)
    doc = broken.to_dict()
    assert list(doc["double_sales"][0]["first"])[:2] == ["transfer", "from"]  # the JSON name, in place
    assert doc["event_log"] == {"ok": False, "error": "x"}  # absent, not null, as the dicts were
    assert Audit(double_sales=[], manifest_gaps=[], manifest_forks=[], clean=True,
                 event_log=LogCheck(ok=True, events=3, checkpoints=1)).to_dict()["event_log"] == \
        {"ok": True, "events": 3, "checkpoints": 1}
    assert broken["double_sales"][0]["first"]["from"] == "Acme" and hop.from_ == "Acme"
    assert broken.get("clean") is False and broken.get("nothing", 7) == 7 and LogCheck(ok=True).get("error") is None
    with pytest.raises(KeyError):
        broken["from_"]  # attributes are not JSON names
    with pytest.raises(AttributeError):
        broken.clean = True  # type: ignore[misc]
    assert "status" in Trace.__struct_fields__  # a trace's status is the Result itself (its JSON in to_dict)
