#!/usr/bin/env python
"""What parsing a request body costs: the service's msgspec decoding against json.loads with hand checks.

    python benchmarks/service/decode.py [--rounds 7]

For a one-key and a 1,000-key /v1/verify body and a /v1/redeem body: the best of --rounds timings
(each a loop long enough to take ~0.2 s) of

  json+checks  what the service did before its bodies were msgspec types: json.loads of the decoded
               text, then the object, list, string and free-text checks by hand;
  msgspec      keyvault.service.bodies.decode (a typed msgspec.json.Decoder per body, unknown fields
               forbidden, lengths checked) and the same free-text check (check_text) after it.

Both end with the same values (keys, client, order id). No server, no engine: the parse alone.
"""

from __future__ import annotations

import argparse
import json
import timeit
from typing import Any

from keyvault.fields import MAX_ORDER_ID, check_text
from keyvault.service import bodies

KEY = "17YT-Y000-0000-028V-2CSX-TK01-VCTH-PYY5"


def old_verify(raw: bytes) -> tuple[list[str], str | None]:
    """The former hand-checked path: json.loads, then the checks of the former app.py."""
    doc = json.loads(raw.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("the body must be a JSON object")
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise ValueError("'keys' must be a list of strings")
    if len(keys) > bodies.MAX_KEYS:
        raise ValueError("too many")
    for key in keys:
        if not isinstance(key, str):
            raise ValueError("'keys[i]' must be a string")
    client = doc.get("client")
    return keys, None if client is None else check_text(client, "client", bodies.MAX_CLIENT_ID)


def new_verify(raw: bytes) -> tuple[list[str], str | None]:
    """The service's path now."""
    body = bodies.decode(bodies.VerifyRequest, raw)
    return body.keys, None if body.client is None else bodies.text(body.client, "client", bodies.MAX_CLIENT_ID)


def old_redeem(raw: bytes) -> tuple[str, str, str | None]:
    """The former hand-checked path for /v1/redeem."""
    doc = json.loads(raw.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("the body must be a JSON object")
    key = doc.get("key")
    if not isinstance(key, str):
        raise ValueError("'key' must be a string")
    client = doc.get("client")
    return (key, check_text(doc.get("order_id"), "order_id", MAX_ORDER_ID),
            None if client is None else check_text(client, "client", bodies.MAX_CLIENT_ID))


def new_redeem(raw: bytes) -> tuple[str, str, str | None]:
    """The service's path now."""
    body = bodies.decode(bodies.RedeemRequest, raw)
    return (body.key, bodies.text(body.order_id, "order_id", MAX_ORDER_ID),
            None if body.client is None else bodies.text(body.client, "client", bodies.MAX_CLIENT_ID))


def best(call: Any, raw: bytes, rounds: int) -> float:
    """Seconds per call, the best of ``rounds``."""
    timer = timeit.Timer(lambda: call(raw))
    number, _ = timer.autorange()
    return min(timer.repeat(rounds, number)) / number


def main(argv: list[str] | None = None) -> None:
    """Time both paths on the three bodies and print a table (microseconds per body)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    cases = [
        ("verify, 1 key", old_verify, new_verify, json.dumps({"keys": [KEY], "client": "acct-5521"}).encode()),
        ("verify, 1,000 keys", old_verify, new_verify,
         json.dumps({"keys": [KEY] * 1000, "client": "acct-5521"}).encode()),
        ("redeem", old_redeem, new_redeem,
         json.dumps({"key": KEY, "order_id": "SO-2026-118812", "client": "acct-5521"}).encode()),
    ]
    print(f"{'body':<20} {'bytes':>7} {'json+checks µs':>15} {'msgspec µs':>11} {'ratio':>6}")
    for name, old, new, raw in cases:
        assert old(raw) == new(raw)
        before, after = best(old, raw, args.rounds), best(new, raw, args.rounds)
        print(f"{name:<20} {len(raw):>7} {before * 1e6:>15.2f} {after * 1e6:>11.2f} {before / after:>5.1f}x")


if __name__ == "__main__":
    main()
