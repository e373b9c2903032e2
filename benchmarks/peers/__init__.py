"""Peers for the side-by-side benchmark: what a platform would use instead of keyvault.

One module per peer. Each has a ``start(workdir, stack)`` that returns an
object with the same methods (the :class:`~peers.common.Peer` protocol), or
raises :class:`~peers.common.Unavailable` with the reason it cannot run. The
timed workloads themselves live once, in :mod:`peers.workloads`, and drive
every peer (and keyvault, through ``benchmarks/keyvault_workloads.py``)
with the same loops over the same generated data.

Run them with ``python benchmarks/run_peers.py`` (or ``make bench-peers``).
"""

#: Peer name on the command line -> module under this package.
PEER_MODULES = {
    "plain": "plain_lmdb",
    "sqlite": "sqlite",
    "redis": "redis_peer",
    "postgres": "postgres_peer",
}
