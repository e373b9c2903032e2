"""The event log as C2SP tlog-tiles, and the text encoding of consistency proofs.

A tile is 256 consecutive hashes (8,192 bytes) at one level of tiles; a partial tile, at the
right edge, 1 to 255. Hash ``i`` of tile ``n`` at tile level ``l`` is the root of the perfect
subtree over entries [(n·256 + i)·256^l, (n·256 + i + 1)·256^l), i.e. the Merkle node at tree
level 8·l, index n·256 + i. Paths::

    tile/<l>/<n>[.p/<w>]          tile/entries/<n>[.p/<w>]

with ``n`` in 3-digit groups, all but the last prefixed with ``x`` (1234067 -> x001/x234/067).
An entry bundle is the entries of one level-0 tile, each prefixed by its length (u16).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Sequence

from ..errors import ProofError
from . import merkle

WIDTH = 256
HEIGHT = 8
MAX_ENTRY = 0xFFFF
MAX_PROOF_LINES = 63
_PATH = re.compile(r"tile/(?:(0|[1-9][0-9]?)|(entries))/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?")


def encode_index(index: int) -> str:
    """``index`` as tile path elements: 1234067 -> ``x001/x234/067``."""
    if index < 0:
        raise ProofError(f"a tile index cannot be negative ({index})")
    groups = []
    while True:
        index, rest = divmod(index, 1000)
        groups.append(f"{rest:03d}")
        if index == 0:
            break
    return "/".join("x" + g for g in reversed(groups[1:])) + ("/" if len(groups) > 1 else "") + groups[0]


def tile_path(level: int, index: int, width: int = WIDTH) -> str:
    """The path of a hash tile (``level`` 0 to 63) or, with ``level`` -1, of an entry bundle."""
    if not 1 <= width <= WIDTH:
        raise ProofError(f"a tile is 1 to {WIDTH} hashes wide, not {width}")
    if not -1 <= level <= 63:
        raise ProofError(f"a tile level is 0 to 63, not {level}")
    head = "entries" if level == -1 else str(level)
    return f"tile/{head}/{encode_index(index)}" + ("" if width == WIDTH else f".p/{width}")


def parse_tile_path(path: str) -> tuple[int, int, int]:
    """(level, index, width) of a tile path (level -1 for an entry bundle), else ProofError."""
    match = _PATH.fullmatch(path)
    if match is None:
        raise ProofError(f"{path[:80]!r} is not a tile path: tile/<level>/<index>[.p/<width>], the index in "
                         "3-digit groups like x001/x234/067")
    level = -1 if match.group(2) else int(match.group(1))
    if level > 63:
        raise ProofError("a tile level is 0 to 63")
    groups = match.group(3).split("/")
    if len(groups) > 1 and groups[0] == "x000":
        raise ProofError(f"{path[:80]!r} pads its index with a leading x000 group; tile paths have one form")
    index = int("".join(g.lstrip("x") for g in groups))
    width = int(match.group(4)) if match.group(4) else WIDTH
    if width > WIDTH - 1 and match.group(4):
        raise ProofError("a partial tile is 1 to 255 hashes wide")
    return level, index, width


def tiles(size: int) -> Iterator[tuple[int, int, int]]:
    """Every (level, index, width) hash tile of a tree of ``size`` entries, full and partial."""
    level = 0
    while size >> (HEIGHT * level):
        count = size >> (HEIGHT * level)  # hashes at this tile level
        for index in range(count // WIDTH):
            yield level, index, WIDTH
        if count % WIDTH:
            yield level, count // WIDTH, count % WIDTH
        level += 1


def tile_hashes(perfect: merkle.Perfect, level: int, index: int, width: int) -> bytes:
    """The ``width`` hashes of hash tile ``index`` at tile ``level``, concatenated."""
    return b"".join(perfect(HEIGHT * level, index * WIDTH + i) for i in range(width))


def entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Entries as an entry bundle: each prefixed by its length as a big-endian u16."""
    out = bytearray()
    for number, entry in enumerate(entries):
        if len(entry) > MAX_ENTRY:
            raise ProofError(f"entry {number} of the bundle is {len(entry)} bytes; an entry bundle holds at most "
                             f"{MAX_ENTRY}")
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def read_entry_bundle(data: bytes) -> list[bytes]:
    """The entries of an entry bundle, or ProofError if it is truncated."""
    entries, at = [], 0
    while at < len(data):
        if at + 2 > len(data):
            raise ProofError("the entry bundle ends inside a length prefix (truncated?)")
        length = int.from_bytes(data[at:at + 2], "big")
        if at + 2 + length > len(data):
            raise ProofError(f"entry {len(entries)} of the bundle is cut short (truncated?)")
        entries.append(data[at + 2:at + 2 + length])
        at += 2 + length
    return entries


def encode_proof(hashes: Sequence[bytes]) -> str:
    """A proof as text: one base64 hash per line, each line ending in a newline (as tlog-witness sends it)."""
    return "".join(base64.b64encode(h).decode() + "\n" for h in hashes)


def decode_proof(text: str) -> list[bytes]:
    """The hashes of a proof in :func:`encode_proof`'s form, else ProofError."""
    if text and not text.endswith("\n"):
        raise ProofError("every proof line must end with a newline")
    lines = text.split("\n")[:-1] if text else []
    if len(lines) > MAX_PROOF_LINES:
        raise ProofError(f"a proof has at most {MAX_PROOF_LINES} hashes, not {len(lines)}")
    hashes = []
    for number, line in enumerate(lines, 1):
        try:
            raw = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise ProofError(f"proof line {number} is not base64") from None
        if len(raw) != merkle.HASH_SIZE or base64.b64encode(raw).decode() != line:
            raise ProofError(f"proof line {number} is not one canonical base64 SHA-256 hash")
        hashes.append(raw)
    return hashes
