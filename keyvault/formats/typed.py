"""What the typed documents share: hex string types and the strict decode that maps msgspec's errors.

Every JSON document keyvault reads is a ``msgspec.Struct`` decoded by a module-level
``msgspec.json.Decoder``: exact types (an int is never a bool or a float), no unknown field,
every required field present. msgspec's message names the field (``Expected `int`, got `str` -
at `$.count```); :func:`decode` puts it in the caller's error class with what to do next.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, TypeVar

import msgspec

from ..errors import KeyvaultError

T = TypeVar("T")

#: Lower-case hex of exactly 16 and 32 bytes, as keyvault writes them. (``\Z``, not ``$``: a Python ``$``
#: also matches before a final newline, and ``bytes.fromhex`` skips whitespace.)
Hex16 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}\Z")]
Hex32 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
#: Lower-case hex of any whole number of bytes (at most 255), as a subject of the subject index.
HexBytes = Annotated[str, msgspec.Meta(pattern=r"^(?:[0-9a-f]{2}){1,255}\Z")]
#: A count or an index: 0 to 2**63 - 1 (what a signed 64-bit reader takes).
Index = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def unb64url(encoded: str, *, max_bytes: int) -> bytes:
    """The bytes of canonical unpadded base64url text of at most ``max_bytes``; ValueError says what is wrong."""
    if len(encoded) > (max_bytes * 4 + 2) // 3 or not _B64URL.fullmatch(encoded):
        raise ValueError("holds characters outside base64url (A-Z a-z 0-9 - _) or is too long")
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("is truncated or damaged (not base64url)") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != encoded:
        raise ValueError("is damaged (not canonical base64url)")
    return raw


class _Twice(ValueError):
    """An object names a field twice."""


def _once(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object's fields, each named once (else _Twice naming the first repeated one)."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        names = [k for k, _ in pairs]
        raise _Twice(next(k for k in names if names.count(k) > 1))
    return doc


def decode(decoder: msgspec.json.Decoder[T], data: bytes, *, what: str, error: type[KeyvaultError],
           fix: str) -> T:
    """``data`` decoded strictly by ``decoder``, or ``error`` naming ``what``, msgspec's reason and ``fix``.

    Strictly: besides the types, a document any JSON reader could read two ways is refused: an object
    that names a field twice (readers disagree on which value counts), or text Python's reader refuses.
    """
    try:
        doc = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise error(f"{what} is not valid ({exc}); {fix}") from None
    except msgspec.DecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc}); it may be truncated: {fix}") from None
    except RecursionError:
        raise error(f"{what} is not valid (JSON nested too deep); {fix}") from None
    try:
        json.loads(data, object_pairs_hook=_once)
    except _Twice as exc:
        raise error(f"{what} names field {str(exc)[:40]!r} twice in one object: readers could see either "
                    f"value; {fix}") from None
    except (ValueError, RecursionError):
        raise error(f"{what} is not valid JSON (a strict reader refuses it); {fix}") from None
    return doc
