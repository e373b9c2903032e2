"""keyvault: card-key issuance and verification.

Open a store with :meth:`Vault.open`; every check answers a :class:`Result`
whose :class:`Status` tells a checkout exactly why a key is refused.
"""

from .engine.catalog import BatchInfo, BlacklistEntry
from .errors import (
    BadSignatureError,
    ClosedError,
    ConflictError,
    CustodyError,
    IdentityError,
    ImportFileError,
    KeyvaultError,
    MalformedKeyError,
    ManifestError,
    NotAStoreError,
    NotFoundError,
    PepperError,
    ProofError,
    StoreCorruptError,
    StoreError,
    StoreExistsError,
    StoreFullError,
    StoreVersionError,
    TrustError,
    UsageError,
)
from .formats.identity import Identity, PublicIdentity, Rotation
from .results import Result, Status
from .engine.throttling import ThrottlePolicy
from .vault import Vault

__version__ = "0.1.0"

__all__ = [
    "BadSignatureError",
    "BatchInfo",
    "BlacklistEntry",
    "ClosedError",
    "ConflictError",
    "CustodyError",
    "Identity",
    "IdentityError",
    "ImportFileError",
    "KeyvaultError",
    "MalformedKeyError",
    "ManifestError",
    "NotAStoreError",
    "NotFoundError",
    "PepperError",
    "ProofError",
    "PublicIdentity",
    "Result",
    "Rotation",
    "Status",
    "StoreCorruptError",
    "StoreError",
    "StoreExistsError",
    "StoreFullError",
    "StoreVersionError",
    "ThrottlePolicy",
    "TrustError",
    "UsageError",
    "Vault",
    "__version__",
]
