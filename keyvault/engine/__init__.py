"""The engine: an open store and every operation on it, behind :class:`~keyvault.vault.Vault`.

``state.py`` holds what every operation works on (store, pepper, event log,
overlay, catalog); ``engine.py`` the operations, with ``lookup.py`` (finding
and judging keys), ``guard.py`` (refusals and throttling), ``issuing.py``,
``lots.py``, ``trust.py``, ``reports.py``, ``proofs.py`` and ``checkup.py``
(the store check) beside it, and ``answers.py``, the typed reports they answer with; ``ledger.py``, ``eventlog.py`` and
``groupcommit.py`` are how redeems are recorded and committed.
"""

from .answers import (Activity, Answer, Audit, AuthorityBound, AuthorityShown, AuthorityStatus, AuthorityUnbound,
    ClusterKeyState, ClusterLogState,
                      Backup, CheckReport, CheckRow, LockedCard, Order, Page, ReceiptProof, Restore, Stats, Trace)
from .catalog import BatchInfo, BlacklistEntry, Catalog
from .checkup import CHECKS
from .engine import Engine
from .eventlog import Policy
from .issuing import Progress, read_cards_csv
from .throttling import CARD_ATTEMPTS, ThrottlePolicy
from .tokens import Grant
from .webhooks import EVENT_KINDS, Due, Message, Webhooks
from .witness import (LogWitness, add_witness, consistency_proof, export_tiles, list_witnesses, newest_checkpoint,
                      node_witness, read_tile, remove_witness, submit_all, submit_checkpoint)

__all__ = ["CARD_ATTEMPTS", "CHECKS", "EVENT_KINDS", "Activity", "Answer", "Audit", "AuthorityBound", "AuthorityShown", "AuthorityStatus", "AuthorityUnbound", "ClusterKeyState", "ClusterLogState", "Backup", "CheckReport", "CheckRow", "LockedCard", "Order", "Page", "ReceiptProof", "Restore", "Stats", "Trace",
           "BatchInfo", "BlacklistEntry", "Catalog", "Due", "Engine",
           "Grant", "LogWitness", "Message", "Policy", "Progress", "ThrottlePolicy", "Webhooks", "consistency_proof",
           "export_tiles", "newest_checkpoint", "read_cards_csv", "read_tile", "submit_checkpoint",
           "add_witness", "list_witnesses", "node_witness", "remove_witness", "submit_all"]
