"""Faults under load, each judged by one checker (keyvault.cli.cluster_load.check): 0 acknowledged
redeems lost, 0 keys accepted for two orders, every answer definite or unknown (503), every
acknowledged answer compared with what PostgreSQL holds after the run.

The workload is the bare redeem (INSERT … ON CONFLICT on the primary over the multi-host DSN), many
clients racing on the same serials with a few order ids each, unknown answers retried with the same
order. The asynchronous control runs the same fault with synchronous mode off and must find loss or
doubles: if it does not, the checker is not biting.
"""

from __future__ import annotations

import os
import signal
import time

from keyvault.cli.cluster_load import Load, SqlClient, check, holdings, prepare
from keyvault.cli.cluster_local import (
    LocalCluster,
    member_by_role,
    postmaster_pid,
    set_synchronous,
    walreceiver_pid,
)


def _wait_accepting(load: Load, since: float, seconds: float = 60, not_on: int = 0) -> float:
    """Wait until a redeem sent after ``since`` is accepted (by a server other than ``not_on``); when it was."""
    deadline = time.monotonic() + seconds
    while (first := load.first_accepted_after(since, not_on)) is None:
        assert time.monotonic() < deadline, f"no redeem accepted {seconds:.0f} s after {since}: {load.errors[-5:]}"
        time.sleep(0.1)
    return first


def _kill_primary(cluster: LocalCluster) -> tuple[dict, float]:
    state = cluster.load()
    assert state is not None
    leader = member_by_role(cluster, state, "leader")
    assert leader is not None
    pid = postmaster_pid(leader)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return leader, time.monotonic()


def _run_kill_primary(cluster: LocalCluster, clients: int = 8, serials: int = 3000,
                      stall_replicas: float = 0.0) -> tuple:
    """SIGKILL of the primary's postmaster under load; ``stall_replicas`` > 0 first stops every replica's WAL
    receiver that long (the kill lands while they lag), and lets them go on after the kill."""
    state = cluster.load()
    assert state is not None
    prepare(state["dsn"])
    load = Load(lambda i: SqlClient(state["dsn"]), [f"S{n:07d}" for n in range(serials)], clients=clients).start()
    try:
        _wait_accepting(load, time.monotonic() - 1)
        time.sleep(3)
        receivers = []
        if stall_replicas:
            for member in state["members"]:
                live = {m.get("name"): m.get("role") for m in cluster.members(state)}
                if live.get(member["name"]) in ("replica", "sync_standby"):
                    pid = walreceiver_pid(cluster, state, member)
                    if pid is not None:
                        receivers.append(pid)
            for pid in receivers:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(stall_replicas)
        try:
            old, killed = _kill_primary(cluster)
            if receivers:
                time.sleep(1.0)  # the killed primary's WAL senders notice its death and exit before they resume
        finally:
            for pid in receivers:
                os.kill(pid, signal.SIGCONT)
        first = _wait_accepting(load, killed, not_on=old["pg_port"])
        time.sleep(2)
    finally:
        answers = load.stop()
    verdict = check(answers, holdings(state["dsn"]))
    new_state = cluster.load()
    new_leader = member_by_role(cluster, new_state, "leader") if new_state else None
    return verdict, first - killed, old["name"], new_leader, answers, killed, load


def test_sigkill_of_the_primary_under_load_loses_nothing(cluster: LocalCluster) -> None:
    verdict, outage, old, new_leader, answers, killed, _ = _run_kill_primary(cluster)
    print(f"SIGKILL of {old}'s postmaster: {verdict.summary()}; first accepted redeem {outage:.1f} s later"
          f" on {new_leader and new_leader['name']}")
    assert verdict.ok, (verdict.lost[:5], verdict.doubles[:5], verdict.wrong_refusals[:5], verdict.indefinite[:5])
    assert verdict.acknowledged > 100 and verdict.stored >= verdict.acknowledged
    assert new_leader is not None and new_leader["name"] != old, "Patroni did not promote another member"


def test_a_stopped_sync_standby_blocks_commits_and_loses_nothing(cluster: LocalCluster) -> None:
    state = cluster.load()
    assert state is not None
    prepare(state["dsn"])
    sync = member_by_role(cluster, state, "sync_standby")
    assert sync is not None
    receiver = walreceiver_pid(cluster, state, sync)
    assert receiver is not None
    load = Load(lambda i: SqlClient(state["dsn"], request_deadline=30), [f"S{n:07d}" for n in range(3000)],
                clients=6).start()
    try:
        _wait_accepting(load, time.monotonic() - 1)
        time.sleep(2)
        os.kill(receiver, signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(5)
        during = load.accepted_since(stopped + 0.5)
        os.kill(receiver, signal.SIGCONT)
        resumed = time.monotonic()
        _wait_accepting(load, resumed)
        time.sleep(1)
    finally:
        os.kill(receiver, signal.SIGCONT)
        answers = load.stop()
    verdict = check(answers, holdings(state["dsn"]))
    print(f"SIGSTOP of {sync['name']}'s WAL receiver for 5 s: {during} redeems accepted meanwhile; {verdict.summary()}")
    assert verdict.ok, (verdict.lost[:5], verdict.doubles[:5], verdict.wrong_refusals[:5])
    # synchronous mode strict: no commit is acknowledged while the one sync standby receives nothing
    assert during == 0
    assert verdict.acknowledged > 100


def test_the_asynchronous_control_loses_or_doubles(cluster: LocalCluster) -> None:
    """Synchronous mode off, the same SIGKILL of the primary: the checker must see loss or doubles."""
    state = cluster.load()
    assert state is not None
    set_synchronous(cluster, state, False)
    found = []
    for attempt in range(4):
        # On a quiet machine asynchronous standbys keep up within milliseconds over loopback, so the kill
        # rarely lands in the gap: the replicas' WAL receivers are stopped for a moment first (what a slow
        # network or disk does), and acknowledged commits made meanwhile that did not fit in the sockets'
        # buffers exist only on the killed primary (measured here: none lost with a 0.5 s stop, some with 1 s).
        verdict, outage, old, new_leader, *_ = _run_kill_primary(cluster, clients=12, serials=200_000,
                                                                 stall_replicas=1.0 * (attempt + 1))
        found.append(f"attempt {attempt + 1}: {verdict.summary()}, promoted {new_leader and new_leader['name']} "
                     f"{outage:.1f} s after the kill")
        if verdict.lost or verdict.doubles:
            break
        cluster.wait_for_members(cluster.load(), running=2)
    print("asynchronous control: " + "; ".join(found))
    assert verdict.lost or verdict.doubles, "the asynchronous control found nothing: " + "; ".join(found)
