"""Every exception keyvault raises, under one root: :class:`KeyvaultError`.

An expected outcome of a check (unknown key, already redeemed) is a
:class:`~keyvault.results.Result`, never an exception. Exceptions are for
input the caller must fix and for stores that cannot be used; each message
says what to do next and never contains a card key.
"""

from __future__ import annotations


class KeyvaultError(Exception):
    """Root of keyvault's exceptions."""


class UsageError(KeyvaultError, ValueError):
    """An argument the caller must fix (an order id, a reason, a level)."""


class MalformedKeyError(UsageError):
    """A key or serial that does not parse, where an operation needs a real one."""


class NotFoundError(KeyvaultError, LookupError):
    """A serial, batch, supplier or blacklist entry the store does not hold."""


class StoreError(KeyvaultError):
    """A store that cannot be opened or used as it is."""


class NotAStoreError(StoreError):
    """The directory is not a keyvault store."""


class StoreExistsError(StoreError):
    """``init`` on a directory that already holds a store."""


class StoreVersionError(StoreError):
    """The store was written in a format this version does not read."""


class StoreCorruptError(StoreError):
    """The store's files are damaged or truncated."""


class PepperError(StoreError):
    """The pepper file is missing, unsafe, or not the one this store was made with."""


class StoreFullError(StoreError, OSError):
    """The disk (not the map: that grows by itself) has no room for a write."""


class ClosedError(KeyvaultError):
    """An operation on a vault that was closed, or opened in another process before fork()."""


class IdentityError(KeyvaultError):
    """An identity file that is missing, unreadable, malformed or unsafe."""


class ManifestError(KeyvaultError, ValueError):
    """A manifest that is truncated, malformed, or refused by the store."""


class BadSignatureError(ManifestError):
    """A signature that does not verify: the file was altered or not signed by its supplier."""


class ConflictError(KeyvaultError):
    """A change that contradicts what the store holds (prefix taken, batch or card present)."""


class ImportFileError(KeyvaultError, ValueError):
    """An upstream CSV of cards that cannot be imported as it is."""


class ProofError(KeyvaultError, ValueError):
    """A Merkle proof, checkpoint or bundle that does not verify or cannot be parsed."""


class TrustError(KeyvaultError):
    """A signer this store (or verifier) has not pinned, or a rotation it cannot accept."""


class CustodyError(KeyvaultError, ValueError):
    """A transfer or lot that is forged, out of chain, or a double sale."""


class WebhookError(KeyvaultError, ValueError):
    """A webhook whose Standard Webhooks signature, headers or secret do not check out."""


class AuthorityError(StoreError):
    """The PostgreSQL authority a store is bound to cannot be reached or refused a change (nothing was decided)."""


class OutcomeUnknownError(AuthorityError):
    """The authority may or may not have made a change (its COMMIT was cut off): retry with the same order id."""
