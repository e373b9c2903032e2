"""What one redeem, hold or confirm costs: CPU, bytes written and fsyncs per operation.

Wall time on a shared machine swings by 2x between runs, so this script counts what does not swing: the
CPU the process spent per operation, the bytes its writes sent to the disk, and (run under strace, see
below) its fsyncs. Each mode times only its measured phase: the keys are issued, and for ``confirm`` held,
before it starts.

Modes: ``redeem`` (``vault.redeem``), ``hold`` (``vault.hold``), ``confirm`` (``vault.confirm`` of a held
key), ``holdconfirm`` (both, one sale), ``redeem_many`` / ``hold_many`` / ``confirm_many`` (``redeem_many``
and ``checkout_for`` with every op of the phase in batches of 100). ``--no-checkpoints``: no checkpoint is signed
during the phase (the subject index is brought up to date per checkpoint, whenever one lands in the phase).

``deliver``: webhooks. OPS keys are redeemed with an endpoint configured for redeems, its receiver in another
process answering at once; then the delivery worker (service/delivery.py, as ``keyvault webhook run`` runs it)
sends them all: the phase is the delivery alone, so its figures are what delivering one redeem's webhook costs
the machine (compare with a redeem's).

Run: .venv/bin/python benchmarks/checkout_costs.py MODE [OPS] [CALLERS]
Fsyncs: strace -f -qq -e trace=fdatasync,fsync,msync,write -o /tmp/t.txt .venv/bin/python
        benchmarks/checkout_costs.py MODE OPS CALLERS, then benchmarks/checkout_costs.py --count /tmp/t.txt OPS
Instructions: valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg.%p .venv/bin/python
        benchmarks/checkout_costs.py MODE OPS CALLERS --callgrind  (the phase alone is collected)
"""

from __future__ import annotations

import csv
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from keyvault import Identity, Status, Vault

MARK = b"keyvault-checkout-costs-mark\n"


def _io() -> dict[str, int]:
    with open("/proc/self/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh)}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _mark() -> None:
    fd = os.open("/dev/null", os.O_WRONLY)
    os.write(fd, MARK)
    os.close(fd)


def _callgrind(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fsyncs_between_marks(trace: str) -> tuple[int, int]:
    """(fsync-like calls, write calls to the store) between the two marks of an strace -f output."""
    inside, syncs, writes = False, 0, 0
    for line in Path(trace).read_text().splitlines():
        if "keyvault-checkout-costs-mark" in line:
            inside = not inside
            continue
        if inside and re.search(r"\b(fdatasync|fsync|msync)\(", line):
            syncs += 1
        elif inside and re.search(r"\bwrite\(", line):
            writes += 1
    return syncs, writes


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    mode = args[0] if args else "redeem"
    ops = int(args[1]) if len(args) > 1 else 400
    callers = int(args[2]) if len(args) > 2 else 1
    grind = "--callgrind" in sys.argv
    root = Path(tempfile.mkdtemp())
    supplier = Identity.generate("Bench")
    with Vault.init(root / "store") as sup:
        sup.issue_batch(supplier, "P", ops, keys_out=root / "k.csv", manifest_out=root / "b.kvm")
    with open(root / "k.csv", newline="") as fh:
        keys = [row["key"] for row in csv.DictReader(fh)]
    vault = Vault.open(root / "store")
    if "--no-checkpoints" in sys.argv:  # the subject index's catch-up left out: it runs per checkpoint, not per op
        vault.set_checkpoint_policy(10**9, 10**6)
    orders = [f"order-{i}" for i in range(ops)]
    if mode == "deliver":
        return deliver(vault, keys, orders)
    if mode in ("confirm", "confirm_many"):  # held first, outside the phase
        for b in range(0, ops, 100):
            vault.checkout_for([("hold", k, o, 900) for k, o in zip(keys[b:b + 100], orders[b:b + 100])])

    def one(i: int) -> None:
        if mode == "redeem":
            assert vault.redeem(keys[i], orders[i]).status is Status.ACCEPTED
        elif mode == "hold":
            assert vault.hold(keys[i], orders[i], 900).status is Status.HELD
        elif mode == "confirm":
            assert vault.confirm(orders[i])[0].status is Status.ACCEPTED
        elif mode == "holdconfirm":
            assert vault.hold(keys[i], orders[i], 900).status is Status.HELD
            assert vault.confirm(orders[i])[0].status is Status.ACCEPTED

    def chunked(start: int, stop: int) -> None:
        for b in range(start, stop, 100):
            ks, os_ = keys[b:min(b + 100, stop)], orders[b:min(b + 100, stop)]
            if mode == "redeem_many":
                assert all(r.status is Status.ACCEPTED for r in vault.redeem_many(zip(ks, os_)))
            elif mode == "hold_many":
                assert all(r.status is Status.HELD for r in vault.checkout_for([("hold", k, o, 900)
                                                                                for k, o in zip(ks, os_)]))
            else:
                assert all(r[0].status is Status.ACCEPTED for r in vault.checkout_for([("confirm", o) for o in os_]))

    def caller(c: int) -> None:
        share = range(c * ops // callers, (c + 1) * ops // callers)
        if mode.endswith("_many"):
            chunked(share.start, share.stop)
        else:
            for i in share:
                one(i)

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    io0, cpu0, t0 = _io(), _cpu(), time.perf_counter()
    if grind:
        _callgrind(True)
    _mark()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _mark()
    if grind:
        _callgrind(False)
    wall, cpu, io1 = time.perf_counter() - t0, _cpu() - cpu0, _io()
    line = (f"{mode} ops={ops} callers={callers}: cpu {cpu / ops * 1e6:.0f} us/op, wall {wall / ops * 1e6:.0f} us/op, "
            f"written {(io1['write_bytes'] - io0['write_bytes']) / ops:.0f} B/op to disk, "
            f"{(io1['wchar'] - io0['wchar']) / ops:.0f} B/op by write calls, "
            f"{(io1['syscw'] - io0['syscw']) / ops:.2f} write calls/op")
    print(line, flush=True)
    vault.close()


def deliver(vault: Vault, keys: list[str], orders: list[str]) -> None:
    """The ``deliver`` mode (see the module's docstring)."""
    from keyvault.service.delivery import Delivery

    helper = subprocess.Popen([sys.executable, str(Path(__file__).with_name("webhooks_redeem.py")), "--receivers"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert helper.stdout is not None
    fast_url = helper.stdout.readline().split()[0]
    endpoint = vault.webhooks.add(fast_url, "redeem")["id"]
    for b in range(0, len(keys), 1000):
        vault.redeem_many(list(zip(keys[b:b + 1000], orders[b:b + 1000])))
    ops = len(keys)
    delivery = Delivery(vault, poll=0.05)
    io0, cpu0, t0 = _io(), _cpu(), time.perf_counter()
    _mark()
    delivery.start()
    while vault.webhooks.get(endpoint)["delivered"] < ops:
        time.sleep(0.01)
    _mark()
    wall, cpu, io1 = time.perf_counter() - t0, _cpu() - cpu0, _io()
    delivery.stop()
    helper.communicate("")
    print(f"deliver ops={ops}: cpu {cpu / ops * 1e6:.0f} us/message (this process; the receiver's apart), wall "
          f"{wall / ops * 1e6:.0f} us/message, written {(io1['write_bytes'] - io0['write_bytes']) / ops:.0f} B/message "
          f"to disk, {(io1['syscw'] - io0['syscw']) / ops:.2f} write calls/message", flush=True)
    vault.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--count"]:  # --count TRACE OPS: fsyncs per op between the marks of a finished strace
        syncs, writes = fsyncs_between_marks(sys.argv[2])
        print(f"fsyncs {syncs / int(sys.argv[3]):.2f}/op, write calls {writes / int(sys.argv[3]):.2f}/op")
    else:
        main()
