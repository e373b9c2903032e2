"""keyvault: card-key issuance and verification.

Open a store with :meth:`Vault.open`; every check answers a :class:`Result`
whose :class:`Status` tells a checkout exactly why a key is refused. Asyncio
programs use :class:`keyvault.aio.AsyncVault` (``await AsyncVault.open(path)``):
the same methods, awaitable, run in threads off the event loop. Reports
(:class:`Stats`, :class:`Trace`, :class:`CheckReport`, ...) are typed, frozen
:class:`Answer` values; ``to_dict()`` gives the JSON the CLI and the service print.
"""

from .engine import (Activity, Answer, Audit, AuthorityBound, AuthorityShown, AuthorityStatus, AuthorityUnbound,
    ClusterKeyState, ClusterLogState,
                     Backup, BatchInfo, BlacklistEntry, CheckReport, CheckRow, LockedCard, Order, Page, ReceiptProof,
                     Restore, Stats, ThrottlePolicy, Trace)
from .errors import (
    AuthorityError,
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
    OutcomeUnknownError,
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
from .vault import Vault
from .vocabulary import Level, Role, Scope

__version__ = "0.1.0"

__all__ = [
    "Activity",
    "Answer",
    "Audit",
    "AuthorityBound",
    "AuthorityShown",
    "AuthorityStatus",
    "AuthorityUnbound", "ClusterKeyState", "ClusterLogState",
    "Backup",
    "CheckReport",
    "CheckRow",
    "LockedCard",
    "Order",
    "Page",
    "ReceiptProof",
    "Restore",
    "Stats",
    "Trace",
    "AuthorityError",
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
    "Level",
    "MalformedKeyError",
    "ManifestError",
    "NotAStoreError",
    "NotFoundError",
    "OutcomeUnknownError",
    "PepperError",
    "ProofError",
    "PublicIdentity",
    "Result",
    "Role",
    "Rotation",
    "Scope",
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
