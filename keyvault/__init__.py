"""keyvault: card-key issuance and verification.

Open a store with :meth:`Vault.open`; every check answers a :class:`Result`
whose :class:`Status` tells a checkout exactly why a key is refused.
"""

from .catalog import BatchInfo, BlacklistEntry
from .errors import (
    BadSignatureError,
    ClosedError,
    ConflictError,
    IdentityError,
    ImportFileError,
    KeyvaultError,
    MalformedKeyError,
    ManifestError,
    NotAStoreError,
    NotFoundError,
    PepperError,
    StoreCorruptError,
    StoreError,
    StoreExistsError,
    StoreFullError,
    StoreVersionError,
    UsageError,
)
from .identity import Identity
from .results import Result, Status
from .vault import Vault

__version__ = "0.1.0"

__all__ = [
    "BadSignatureError",
    "BatchInfo",
    "BlacklistEntry",
    "ClosedError",
    "ConflictError",
    "Identity",
    "IdentityError",
    "ImportFileError",
    "KeyvaultError",
    "MalformedKeyError",
    "ManifestError",
    "NotAStoreError",
    "NotFoundError",
    "PepperError",
    "Result",
    "Status",
    "StoreCorruptError",
    "StoreError",
    "StoreExistsError",
    "StoreFullError",
    "StoreVersionError",
    "UsageError",
    "Vault",
    "__version__",
]
