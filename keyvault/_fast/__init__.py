"""The hot path: the compiled core when it loaded, else its pure-Python twin.

``KEYVAULT_NO_EXTENSIONS=1`` forces the pure module; ``KEYVAULT_REQUIRE_EXTENSIONS=1``
turns a missing or broken compiled core into an ImportError (CI sets it), so a
broken build cannot hide behind the slower path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import _pure


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is set to anything but "", "0", "false" or "no" (in any case)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _select() -> ModuleType:
    if env_flag("KEYVAULT_NO_EXTENSIONS"):
        if env_flag("KEYVAULT_REQUIRE_EXTENSIONS"):
            raise ImportError("KEYVAULT_NO_EXTENSIONS and KEYVAULT_REQUIRE_EXTENSIONS are both set: unset one")
        return _pure
    try:
        from . import _core
    except ImportError as exc:
        if env_flag("KEYVAULT_REQUIRE_EXTENSIONS"):
            raise ImportError(
                f"keyvault's compiled core did not load ({exc}); rebuild with `make install` "
                "or unset KEYVAULT_REQUIRE_EXTENSIONS to run on the pure-Python path"
            ) from exc
        return _pure
    return _core


impl: ModuleType = _select()
#: True when the compiled core is in use.
COMPILED: bool = impl is not _pure

# Typed here once, so callers are checked whichever module runs (see _core.pyi).
normalize: Callable[[str], str] = impl.normalize
parse_key: Callable[[str], tuple[int, int, bytes, int]] = impl.parse_key
parse_serial: Callable[[str], int] = impl.parse_serial
format_serial: Callable[[int], str] = impl.format_serial
encode_key: Callable[[int, int], str] = impl.encode_key
check_symbols: Callable[[str], str] = impl.check_symbols
verifier: Callable[[bytes, bytes], bytes] = impl.verifier
tag: Callable[[bytes, bytes], bytes] = impl.tag
locator: Callable[[bytes], bytes] = impl.locator
store_locator: Callable[[bytes, bytes], bytes] = impl.store_locator
tags_equal: Callable[[bytes, bytes], bool] = impl.tags_equal
issue_keys: Callable[[int, int, bytes, bytes], tuple[list[str], bytes]] = impl.issue_keys
format_serial_text: Callable[[int], str] = impl.format_serial_text
check_keys: Callable[..., list[Any]] = impl.check_keys
check_one: Callable[..., Any] = impl.check_one
fold_records: Callable[[dict[int, Any], list[tuple[bytes, bytes]], bytes],
                       tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]] = impl.fold_records
card_sound: Callable[[bytes, int, bytes], bool] = impl.card_sound
open_outcome: Callable[[bytes, int, bytes | None], bytes | None] = impl.open_outcome
seal: Callable[[bytes, bytes, int, bytes], bytes] = impl.seal
accept_redeems: Callable[[list[Any], list[str], int, str], tuple[list[Any], dict[tuple[str, str], int]]] = \
    impl.accept_redeems
judge: Callable[..., Any] = impl.judge
results_json: Callable[[list[Any], dict[Any, Any], Callable[[Any, str | None], str]], str] = impl.results_json
export_rows: Callable[[int, list[str], str], str] = impl.export_rows
card_records: Callable[[int, bytes, int, bytes], list[tuple[bytes, bytes]]] = impl.card_records
# Provenance (docs/provenance.md): commitments, event leaves, the Merkle tree.
key_salt: Callable[[bytes, int], bytes] = impl.key_salt
commitments: Callable[[int, bytes, list[Any]], bytes] = impl.commitments  # materials: bytes or ASCII str
merkle_root: Callable[[bytes], bytes] = impl.merkle_root
event_leaf: Callable[[int, bytes, int, int, bytes], bytes] = impl.event_leaf
ledger_leaves: Callable[[int, bytes, list[tuple[int, int, int, str]]], tuple[list[tuple[bytes, bytes]], bytes]] = \
    impl.ledger_leaves
tree_append: Callable[[int, bytes, bytes], tuple[list[tuple[bytes, bytes]], bytes]] = impl.tree_append
node_key: Callable[[int, int], int] = impl.node_key
# The subject index (docs/provenance.md, "Complete histories"), brought up to date when a checkpoint is signed.
subject_latest: Callable[[list[tuple[bytes, bytes]], int], dict[bytes, int] | None] = impl.subject_latest
subject_update: Callable[[dict[bytes, int], Callable[[bytes], Any], dict[bytes, bytes] | None],
                         tuple[bytes, list[tuple[bytes, bytes]]]] = impl.subject_update

# Constants and the named rows come from the specification, whichever module runs.
from ._pure import (  # noqa: E402
    ALPHABET,
    BAD_LENGTH,
    BAD_SYMBOL,
    BAD_VERSION,
    CHECK_FAILED,
    CHECK_SUBSTITUTION,
    CHECK_TRANSPOSITION,
    DIGEST_SIZE,
    GROUP_SIZE,
    HASH_SIZE,
    KEY_SYMBOLS,
    KIND_BLACKLIST,
    KIND_IMPORT,
    KIND_ISSUE,
    KIND_LIFT,
    KIND_REDEEM,
    KIND_SUPPLIER,
    KIND_TRANSFER,
    KIND_TRUST,
    KIND_VOID,
    MAX_INPUT,
    OK,
    SALT_SIZE,
    SECRET_BYTES,
    SEED_SIZE,
    SEPARATORS,
    SERIAL_SYMBOLS,
    BatchRow,
    Change,
    KeyBlock,
)

__all__ = [
    "ALPHABET", "BAD_LENGTH", "BAD_SYMBOL", "BAD_VERSION", "CHECK_FAILED", "CHECK_SUBSTITUTION",
    "CHECK_TRANSPOSITION", "COMPILED", "env_flag", "card_records", "accept_redeems", "check_keys", "check_one", "fold_records", "card_sound", "open_outcome", "seal", "export_rows", "format_serial_text", "judge", "results_json", "DIGEST_SIZE", "GROUP_SIZE", "KEY_SYMBOLS", "MAX_INPUT", "OK",
    "SECRET_BYTES", "SEPARATORS", "SERIAL_SYMBOLS", "check_symbols", "encode_key", "format_serial", "impl",
    "issue_keys", "locator", "normalize", "parse_key", "parse_serial", "store_locator", "tag",
    "tags_equal", "verifier",
    "HASH_SIZE", "KIND_BLACKLIST", "KIND_IMPORT", "KIND_ISSUE", "KIND_LIFT", "KIND_REDEEM", "KIND_SUPPLIER",
    "KIND_TRANSFER", "KIND_TRUST", "KIND_VOID", "SALT_SIZE", "SEED_SIZE", "commitments", "event_leaf", "key_salt",
    "ledger_leaves", "merkle_root", "node_key", "tree_append", "subject_latest", "subject_update",
    "BatchRow", "Change", "KeyBlock",
]
