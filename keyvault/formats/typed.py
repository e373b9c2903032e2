"""What the typed documents share: hex string types and the strict decode that maps msgspec's errors.

Every JSON document keyvault reads is a ``msgspec.Struct`` decoded by a module-level
``msgspec.json.Decoder``: exact types (an int is never a bool or a float), no unknown field,
every required field present. msgspec's message names the field (``Expected `int`, got `str` -
at `$.count```); :func:`decode` puts it in the caller's error class with what to do next.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec

from ..errors import KeyvaultError

T = TypeVar("T")

#: Lower-case hex of exactly 16 and 32 bytes, as keyvault writes them.
Hex16 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
Hex32 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


def decode(decoder: msgspec.json.Decoder[T], data: bytes, *, what: str, error: type[KeyvaultError],
           fix: str) -> T:
    """``data`` decoded strictly by ``decoder``, or ``error`` naming ``what``, msgspec's reason and ``fix``."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise error(f"{what} is not valid ({exc}); {fix}") from None
    except msgspec.DecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc}); it may be truncated: {fix}") from None
    except RecursionError:
        raise error(f"{what} is not valid (JSON nested too deep); {fix}") from None
