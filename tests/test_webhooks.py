"""Standard Webhooks signatures (keyvault/formats/webhooks.py): the spec's vector, the reference package both
ways, and every way a received webhook can be wrong."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from keyvault.errors import WebhookError
from keyvault.formats import webhooks

# The Standard Webhooks specification's published test vector.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_spec_vector_signs_and_verifies() -> None:
    headers = webhooks.sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    assert headers == {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP),
                       "webhook-signature": SPEC_SIGNATURE}
    assert webhooks.verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 299) == SPEC_ID
    # the secret without its prefix, and as raw key bytes, is the same key
    assert webhooks.verify(SPEC_SECRET[6:], headers, SPEC_BODY, now=SPEC_TIMESTAMP) == SPEC_ID
    raw = base64.b64decode(SPEC_SECRET[6:])
    assert webhooks.sign(raw, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)["webhook-signature"] == SPEC_SIGNATURE


def test_the_reference_package_verifies_what_keyvault_signs() -> None:
    secret = webhooks.make_secret()
    body = b'{"type": "card.redeemed", "data": {"serial": "AB12-0000042"}}'
    headers = webhooks.sign(secret, "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == {"type": "card.redeemed", "data": {"serial": "AB12-0000042"}}
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.make_secret()).verify(body, headers)


def test_keyvault_verifies_what_the_reference_package_signs() -> None:
    secret = webhooks.make_secret(24)
    body = '{"ok": true, "\u00e9": 1}'
    now = int(time.time())
    signature = Webhook(secret).sign("msg_2", datetime.fromtimestamp(now, tz=timezone.utc), body)
    headers = {"Webhook-Id": "msg_2", "Webhook-Timestamp": str(now), "Webhook-Signature": signature}
    assert webhooks.verify(secret, headers, body.encode()) == "msg_2"
    with pytest.raises(WebhookError, match="no webhook signature matches"):
        webhooks.verify(secret, headers, body.encode() + b" ")


@settings(max_examples=50, deadline=None)
@given(body=st.binary(max_size=300).map(lambda b: b.decode("latin-1").encode()),
       msg_id=st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True), key=st.binary(min_size=1, max_size=64))
def test_keyvault_and_the_reference_agree_on_any_message(body: bytes, msg_id: str, key: bytes) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    now = int(time.time())
    ours = webhooks.sign(secret, msg_id, now, body)["webhook-signature"]
    assert ours == Webhook(secret).sign(msg_id, datetime.fromtimestamp(now, tz=timezone.utc), body.decode())


def test_a_rotated_secret_any_of_several_signatures_matches() -> None:
    old, new = webhooks.make_secret(), webhooks.make_secret()
    now = int(time.time())
    body = b"{}"
    both = " ".join(webhooks.sign(s, "msg_r", now, body)["webhook-signature"] for s in (old, new))
    headers = {"webhook-id": "msg_r", "webhook-timestamp": str(now), "webhook-signature": "v1a,xyz " + both}
    assert webhooks.verify(old, headers, body) == "msg_r"
    assert webhooks.verify(new, headers, body) == "msg_r"
    with pytest.raises(WebhookError):
        webhooks.verify(webhooks.make_secret(), headers, body)
    many = {**headers, "webhook-signature": " ".join(["v1,AAAA"] * 33)}
    with pytest.raises(WebhookError, match="more than 32 signatures"):
        webhooks.verify(old, many, body)


@pytest.mark.parametrize("offset, accepted", [(-301, False), (-300, True), (0, True), (300, True), (301, False)])
def test_the_five_minute_tolerance_both_ways(offset: int, accepted: bool) -> None:
    headers = webhooks.sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    now = SPEC_TIMESTAMP - offset
    if accepted:
        assert webhooks.verify(SPEC_SECRET, headers, SPEC_BODY, now=now) == SPEC_ID
    else:
        with pytest.raises(WebhookError, match="old" if offset < 0 else "future"):
            webhooks.verify(SPEC_SECRET, headers, SPEC_BODY, now=now)
    with pytest.raises(WebhookError):  # against the real clock, 2021's vector is far too old
        webhooks.verify(SPEC_SECRET, headers, SPEC_BODY)


def _spec_headers(**changes: str | None) -> dict[str, str]:
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": SPEC_SIGNATURE}
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return headers


@pytest.mark.parametrize("headers, message", [
    (_spec_headers(webhook_id=None), "no webhook-id header"),
    (_spec_headers(webhook_timestamp=None), "no webhook-timestamp header"),
    (_spec_headers(webhook_signature=None), "no webhook-signature header"),
    (_spec_headers(webhook_id=""), "no webhook-id"),
    (_spec_headers(webhook_id="msg_other"), "no webhook signature matches"),
    (_spec_headers(webhook_timestamp="1614265331"), "no webhook signature matches"),
    (_spec_headers(webhook_timestamp="1614265330.0"), "not Unix seconds"),
    (_spec_headers(webhook_timestamp="-1614265330"), "not Unix seconds"),
    (_spec_headers(webhook_signature="v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="), "no webhook signature"),
    (_spec_headers(webhook_signature="v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE"), "no webhook signature"),
    (_spec_headers(webhook_signature="v1,not base64!"), "no webhook signature"),
    (_spec_headers(webhook_signature="g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="), "no webhook signature"),
    ({**_spec_headers(), "Webhook-Id": SPEC_ID}, "more than one webhook-id"),
])
def test_each_damaged_header_is_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(WebhookError, match=message) as caught:
        webhooks.verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)
    assert SPEC_SECRET[6:] not in str(caught.value) and "2432232314" not in str(caught.value)


def test_every_flipped_bit_of_the_body_or_signature_is_refused() -> None:
    for i in range(len(SPEC_BODY) * 8):
        body = bytearray(SPEC_BODY)
        body[i // 8] ^= 1 << (i % 8)
        with pytest.raises(WebhookError):
            webhooks.verify(SPEC_SECRET, _spec_headers(), bytes(body), now=SPEC_TIMESTAMP)
    mac = bytearray(base64.b64decode(SPEC_SIGNATURE[3:]))
    for i in range(len(mac) * 8):
        flipped = bytearray(mac)
        flipped[i // 8] ^= 1 << (i % 8)
        headers = _spec_headers(webhook_signature="v1," + base64.b64encode(bytes(flipped)).decode())
        with pytest.raises(WebhookError):
            webhooks.verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("secret", ["whsec_", "", "whsec_not*base64", b""])
def test_a_bad_secret_is_refused_with_what_to_do(secret: str | bytes) -> None:
    with pytest.raises(WebhookError, match="secret"):
        webhooks.verify(secret, _spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)
    with pytest.raises(WebhookError, match="secret"):
        webhooks.sign(secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)


@pytest.mark.parametrize("msg_id, timestamp", [("", 1), ("a.1", 2), ("has space", 1), ("é", 1), ("x" * 257, 1),
                                               ("msg", -1), ("msg", True), ("msg", 1.5)])
def test_sign_refuses_an_unusable_id_or_timestamp(msg_id: str, timestamp: object) -> None:
    with pytest.raises(WebhookError):
        webhooks.sign(SPEC_SECRET, msg_id, timestamp, b"{}")  # type: ignore[arg-type]


def test_made_secrets_are_random_and_sized() -> None:
    made = {webhooks.make_secret() for _ in range(20)}
    assert len(made) == 20 and all(s.startswith("whsec_") and len(base64.b64decode(s[6:])) == 32 for s in made)
    assert len(base64.b64decode(webhooks.make_secret(64)[6:])) == 64
    for bad in (23, 65):
        with pytest.raises(WebhookError):
            webhooks.make_secret(bad)
