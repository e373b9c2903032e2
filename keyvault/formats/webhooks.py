"""Standard Webhooks signatures (https://www.standardwebhooks.com): signing and verifying a webhook's headers.

A signed webhook carries three headers::

    webhook-id:        msg_2KWPBgLlAfxdpx2AI54pPJ85f4W    <- the message's id, the same on every retry
    webhook-timestamp: 1674087231                         <- Unix seconds when it was (re)sent
    webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=

The signature is base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), versioned ``v1,``; the header may
hold several space-separated signatures (a receiver accepts the message when any ``v1`` one matches: that
is how a secret is rotated). The secret is ``whsec_`` followed by the base64 of the key (24 to 64 bytes
of randomness when keyvault makes one). :func:`verify` refuses a timestamp more than ``tolerance``
seconds (5 minutes by default) away from now, in either direction, and compares signatures in constant
time. Every refusal is a :class:`~keyvault.errors.WebhookError` that says what to check; it never holds
the secret or the body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping

from ..errors import WebhookError

SECRET_PREFIX = "whsec_"
TOLERANCE = 300  # seconds a timestamp may be away from now (the spec's 5 minutes)
MIN_KEY_BYTES = 24  # the spec: 24 to 64 bytes of randomness
MAX_KEY_BYTES = 64
MAX_SIGNATURES = 32  # signatures in one header: more is an attack on the verifier's time, not a rotation
_ID = re.compile(r"[\x21-\x2d\x2f-\x7e]{1,256}")  # visible ASCII but '.': "a.1" at 2 would sign like "a" at 1
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def make_secret(nbytes: int = 32) -> str:
    """A new random secret, ``whsec_`` and the base64 of ``nbytes`` random bytes (24 to 64)."""
    if not MIN_KEY_BYTES <= nbytes <= MAX_KEY_BYTES:
        raise WebhookError(f"a webhook secret has {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes; ask for that many")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` (the prefix optional) decoded, or raw bytes as they are."""
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise WebhookError("the webhook secret is not 'whsec_' followed by base64: copy it again from "
                               "where it was made") from None
    if not key:
        raise WebhookError("the webhook secret is empty: set the secret the sender signs with")
    return key


def signature(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    mac = hmac.new(secret_key(secret), b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers (lower-case names) for ``body`` sent as ``msg_id`` at ``timestamp``."""
    if not _ID.fullmatch(msg_id):
        raise WebhookError("a webhook id is 1 to 256 visible ASCII characters without '.', like msg_<random>")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise WebhookError("a webhook timestamp is whole Unix seconds, like int(time.time())")
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, msg_id, timestamp, body)}


def _header(headers: Mapping[str, str], name: str) -> str:
    found = [v.strip() for k, v in headers.items() if k.lower() == name]
    if len(found) > 1:
        raise WebhookError(f"the webhook has more than one {name} header: a proxy or a client changed it")
    if not found or not found[0]:
        raise WebhookError(f"the webhook has no {name} header: it was not signed by a Standard Webhooks sender")
    return found[0]


def verify(secret: str | bytes, headers: Mapping[str, str], body: bytes, tolerance: float = TOLERANCE,
           now: float | None = None) -> str:
    """Check a received webhook's headers against ``body``; its id (for de-duplication), or WebhookError.

    ``headers`` maps header names (any case) to values. The body must be the bytes received, before any
    JSON parsing: a re-serialised body does not verify.
    """
    key = secret_key(secret)
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    sent = _header(headers, "webhook-signature")
    if not _TIMESTAMP.fullmatch(stamp):
        raise WebhookError("the webhook-timestamp header is not Unix seconds: the sender is not Standard Webhooks")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookError(f"the webhook's timestamp is more than {tolerance:g} s old: a replay, or this "
                           "machine's clock is wrong (check NTP)")
    if timestamp > current + tolerance:
        raise WebhookError(f"the webhook's timestamp is more than {tolerance:g} s in the future: this machine's "
                           "clock or the sender's is wrong (check NTP)")
    expected = hmac.new(key, b"%s.%s.%s" % (msg_id.encode(), stamp.encode(), body), hashlib.sha256).digest()
    candidates = sent.split()
    if len(candidates) > MAX_SIGNATURES:
        raise WebhookError(f"the webhook-signature header holds more than {MAX_SIGNATURES} signatures")
    matched = False
    for candidate in candidates:
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue  # other schemes (v1a: asymmetric) are not ours to check
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        matched |= hmac.compare_digest(expected, given)  # every candidate compared: no early exit
    if not matched:
        raise WebhookError("no webhook signature matches: check that the secret is the one this endpoint was "
                           "given, and that the body is the bytes received, unparsed")
    return msg_id
