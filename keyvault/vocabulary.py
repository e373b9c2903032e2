"""The words keyvault's records, answers and commands share: blacklist levels, trust roles, token scopes.

Each is a ``str`` enum whose value is the name used in JSON, on the command
line and over HTTP, so one definition serves the library, the CLI and the
service. (A check's outcome, :class:`~keyvault.results.Status`, lives with the
results it describes.)
"""

from __future__ import annotations

import enum

from .errors import UsageError


class _Word(str, enum.Enum):
    """A name from a fixed list; ``parse`` turns caller input into one, or says which names exist."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def names(cls) -> list[str]:
        """Every value, in definition order."""
        return [member.value for member in cls]

    @classmethod
    def parse(cls, value: object) -> _Word:
        """The member named ``value``; UsageError listing the names otherwise (the input is never echoed)."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise UsageError(f"{cls._what()}: use {', '.join(cls.names())}") from None

    @classmethod
    def _what(cls) -> str:
        return cls.__name__.lower()


class Level(_Word):
    """What a blacklist entry refuses: one key (named by the key or its serial), a batch, or a supplier."""

    KEY = "key"
    SERIAL = "serial"  # a key, named by its public serial (stored as a key-level entry)
    BATCH = "batch"
    SUPPLIER = "supplier"

    @classmethod
    def _what(cls) -> str:
        return "unknown blacklist level"


class Role(_Word):
    """What a pinned identity may sign: each role is one kind of signed statement (docs/provenance.md)."""

    SUPPLIER = "supplier"  # manifests, under the issuer prefix it owns; the first hop of its batches' lots
    DISTRIBUTOR = "distributor"  # transfers of keys it holds, to the next holder
    ENGINE = "engine"  # checkpoints of one store's event log, under the origin its key names
    WITNESS = "witness"  # cosignatures of checkpoints it has seen

    @classmethod
    def _missing_(cls, value: object) -> Role | None:
        # Names of earlier versions: "platform" pinned a platform's engine key, "own" a store's own issuer.
        return {"platform": cls.ENGINE, "own": cls.SUPPLIER}.get(value) if isinstance(value, str) else None

    @classmethod
    def _what(cls) -> str:
        return "unknown trust role"


class Scope(_Word):
    """What a service token may do; each scope includes the ones before it."""

    VERIFY = "verify"
    REDEEM = "redeem"
    ADMIN = "admin"

    @classmethod
    def _what(cls) -> str:
        return "unknown token scope"
