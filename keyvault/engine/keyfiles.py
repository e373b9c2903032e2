"""The store's secret files beside LMDB: the pepper (keys every stored hash) and the engine key (signs checkpoints).

Both are 0600 files outside ``data.mdb``, so a copy of the database alone
cannot be used to test guessed keys, nor to sign the store's history.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import PepperError, StoreError
from ..formats.identity import Identity, check_private_file

PEPPER_ENV = "KEYVAULT_PEPPER_FILE"
ENGINE_FILE = "engine.key"  # the store's own Ed25519 key: signs checkpoints (0600, beside the pepper)
ENGINE_NAME = "keyvault-engine"
PEPPER_BYTES = 32
_PEPPER_CHECK = b"kv1/pepper-check"


def pepper_check(pepper: bytes) -> bytes:
    """The record (meta/pepper_check) that tells whether a pepper file is this store's own."""
    return hashlib.blake2b(_PEPPER_CHECK, key=pepper, digest_size=16).digest()


def read_engine_key(path: Path) -> Identity:
    """The store's engine identity, or StoreError saying to restore it."""
    if not path.exists():
        raise StoreError(f"the store's engine key {path} is missing; it signs the store's checkpoints: restore it "
                         "from your backup")
    return Identity.load(path)


def read_pepper(path: Path) -> bytes:
    """The 32-byte pepper in ``path`` (hex, 0600), or PepperError saying what to restore."""
    try:
        check_private_file(path, "pepper file")
        text = path.read_text("ascii").strip()
        pepper = bytes.fromhex(text)
    except FileNotFoundError:
        raise PepperError(f"the pepper file {path} is missing; the store cannot check keys without it: restore it "
                          f"from your backup (or point {PEPPER_ENV} at it)") from None
    except (ValueError, UnicodeDecodeError):
        raise PepperError(f"the pepper file {path} is damaged; restore it from your backup") from None
    except PermissionError:
        raise PepperError(f"the pepper file {path} cannot be read: permission denied") from None
    except Exception as exc:  # IdentityError from check_private_file: re-raise as a pepper problem
        if isinstance(exc, OSError):
            raise PepperError(f"the pepper file {path} cannot be read: {exc.strerror}") from None
        raise PepperError(str(exc)) from None
    if len(pepper) != PEPPER_BYTES:
        raise PepperError(f"the pepper file {path} is damaged (wrong length); restore it from your backup")
    return pepper
