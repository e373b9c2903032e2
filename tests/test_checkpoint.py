"""keyvault.formats.checkpoint: C2SP tlog-checkpoint signed notes with Ed25519.

(a) known answers: the exact text of a checkpoint signed by a fixed key, the Go sumdb/note
    example (key id c74f20a3, byte-exact signature line) and the C2SP signed-note example;
(b) round trips, cosignatures, k of n, unknown keys ignored, known keys that fail refused;
(c) every way a note can be malformed, and every single-byte change or truncation, refused.

Notes with broken bodies are signed here by hand (key id and line written out in the test),
so that the parser's refusals are reached only after a signature verified.
"""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
import pytest

from keyvault.formats import checkpoint
from keyvault.formats.checkpoint import Checkpoint, Verifier, add_signature, key_id, open_note, sign
from keyvault.errors import ProofError

ZERO_KEY = nacl.signing.SigningKey(bytes(32))
ZERO_PUB = bytes(ZERO_KEY.verify_key)
ORIGIN = "example.com/log"
ROOT = bytes(range(32))
LOG = Verifier(ORIGIN, ZERO_PUB)
WITNESS_KEY = nacl.signing.SigningKey(b"w" * 32)
WITNESS = Verifier("witness.example/w1", bytes(WITNESS_KEY.verify_key))
OTHER_KEY = nacl.signing.SigningKey(b"o" * 32)

# The whole note, written out: C2SP tlog-checkpoint's example has exactly this line structure
# (origin, size, base64 root, blank line, "— <name> <base64(key id || signature)>").
EXPECTED_NOTE = (
    "example.com/log\n"
    "42\n"
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    "\n"
    "\u2014 example.com/log Hd5FMakWj51vHGJJOhzkORG8Ml/ZJ+HQK2Rmpjfiv6dO6JE1kVN5UITwT5lffN0KvvYRo17dYRUNq35VhFaCeU2kVQ8=\n"
).encode()


def hand_signed(text: str | bytes, name: str = ORIGIN, key: nacl.signing.SigningKey = ZERO_KEY,
                body: bytes | None = None) -> bytes:
    """A note signed without keyvault.formats.checkpoint: ``text`` + blank line + one signature line."""
    raw = text.encode() if isinstance(text, str) else text
    kid = hashlib.sha256(name.encode() + b"\n\x01" + bytes(key.verify_key)).digest()[:4]
    sig = key.sign(raw if body is None else body).signature
    return raw + b"\n" + "\u2014 {} {}\n".format(name, base64.b64encode(kid + sig).decode()).encode()


def body(size: str = "42", root: str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", *more: str) -> str:
    return "".join(line + "\n" for line in (ORIGIN, size, root, *more))


# -- (a) known answers ---------------------------------------------------------------------------

def test_a_fixed_key_signs_exactly_this_note() -> None:
    note = sign(Checkpoint(ORIGIN, 42, ROOT), ORIGIN, ZERO_KEY)
    assert note == EXPECTED_NOTE
    assert note == hand_signed(body())
    text, blank, sig_line = note.decode().partition("\n\n")
    assert text.split("\n") == [ORIGIN, "42", base64.b64encode(ROOT).decode()]
    dash, name, encoded = sig_line.rstrip("\n").split(" ")
    assert (dash, name) == ("\u2014", ORIGIN)
    blob = base64.b64decode(encoded, validate=True)
    assert len(blob) == 4 + 64
    ZERO_KEY.verify_key.verify((text + "\n").encode(), blob[4:])  # over the body, with its last \n


def test_key_id_known_answer() -> None:
    assert ZERO_PUB.hex() == "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
    kid = key_id(ORIGIN, ZERO_PUB)
    assert kid == hashlib.sha256(b"example.com/log\n\x01" + ZERO_PUB).digest()[:4]
    assert kid.hex() == "1dde4531" and LOG.key_id == kid
    assert base64.b64decode(EXPECTED_NOTE.split(b" ")[-1])[:4] == kid


def test_go_sumdb_note_example_byte_for_byte() -> None:
    """golang.org/x/mod/sumdb/note's documented example: PeterNeumann+c74f20a3."""
    seed = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")  # type byte 0x01 + seed
    key = nacl.signing.SigningKey(seed[1:])
    assert b"\x01" + bytes(key.verify_key) == base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    assert key_id("PeterNeumann", bytes(key.verify_key)).hex() == "c74f20a3"
    text = b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
    line = checkpoint.signature_line(text, "PeterNeumann", key)
    assert line == ("\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6Ryy"
                    "BwJnAM=\n").encode()


def test_c2sp_signed_note_example_verifies() -> None:
    """The example of c2sp.org/signed-note (verifier key example.com/foo+530d903a+Aeky...)."""
    vkey = base64.b64decode("AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
    verifier = Verifier("example.com/foo", vkey[1:])
    assert vkey[0] == 1 and verifier.key_id.hex() == "530d903a"
    note = ("This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAl"
            "TgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n").encode()
    text, [sig] = checkpoint.split_note(note)
    assert text == b"This is an example message.\n" and sig.key_id == verifier.key_id
    assert verifier.verifies(text, sig.signature)
    with pytest.raises(ProofError, match="the checkpoint has 1 lines"):  # a note, but not a checkpoint
        open_note(note, None, [verifier])


# -- (b) opening notes ----------------------------------------------------------------------------

@pytest.mark.parametrize("cp", [
    Checkpoint(ORIGIN, 42, ROOT),
    Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest()),
    Checkpoint("keyvault.example/events \u00e9\u00e8", 2**63 - 1, b"\xff" * 32, ("ext one", "x")),
])
def test_round_trip(cp: Checkpoint) -> None:
    note = sign(cp, ORIGIN, ZERO_KEY)
    assert open_note(note, cp.origin, [LOG]) == cp
    assert open_note(note, None, [WITNESS, LOG]) == cp
    assert note.startswith(cp.body() + "\n\u2014 ".encode())


def test_cosignatures_k_of_n() -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    note = add_signature(sign(cp, ORIGIN, ZERO_KEY), WITNESS.name, WITNESS_KEY)
    assert note.count("\u2014".encode()) == 2
    assert open_note(note, ORIGIN, [LOG, WITNESS], required=2) == cp
    assert open_note(note, ORIGIN, [WITNESS], required=1) == cp
    with pytest.raises(ProofError, match="2 of the pinned keys signed this note; 3 needed"):
        open_note(note, ORIGIN, [LOG, WITNESS], required=3)
    with pytest.raises(ProofError, match="1 of the pinned keys signed this note; 2 needed"):
        open_note(note, ORIGIN, [LOG], required=2)
    # The same verifier twice is still one signer; its signature line twice refuses the note (as Go's note.Open).
    with pytest.raises(ProofError, match="1 of the pinned keys signed this note; 2 needed"):
        open_note(sign(cp, ORIGIN, ZERO_KEY), ORIGIN, [LOG, LOG], required=2)
    twice = add_signature(sign(cp, ORIGIN, ZERO_KEY), ORIGIN, ZERO_KEY)
    with pytest.raises(ProofError, match="two signature lines by"):
        open_note(twice, ORIGIN, [LOG], required=1)
    with pytest.raises(ProofError, match="at least one signature"):
        open_note(note, ORIGIN, [LOG], required=0)


def test_unknown_keys_are_ignored_never_trusted() -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    note = add_signature(sign(cp, ORIGIN, ZERO_KEY), "stranger.example", OTHER_KEY)
    assert open_note(note, ORIGIN, [LOG]) == cp
    by_stranger = sign(cp, "stranger.example", OTHER_KEY)
    with pytest.raises(ProofError, match="0 of the pinned keys signed this note; 1 needed"):
        open_note(by_stranger, ORIGIN, [LOG])
    # The pinned name with another key (so another key id) is someone else too.
    impostor = sign(cp, ORIGIN, OTHER_KEY)
    with pytest.raises(ProofError, match="0 of the pinned keys"):
        open_note(impostor, ORIGIN, [LOG])
    # A stranger's unparseable body is never parsed: the signatures are checked first.
    with pytest.raises(ProofError, match="0 of the pinned keys"):
        open_note(hand_signed("not a checkpoint\n", "stranger.example", OTHER_KEY), ORIGIN, [LOG])
    # Signature types other than Ed25519 (a tlog-cosignature, a future algorithm) are other keys.
    odd = note + "\u2014 witness.example/c {}\n".format(base64.b64encode(b"\x04" * 80).decode()).encode()
    assert open_note(odd, ORIGIN, [LOG]) == cp


def test_a_known_key_that_does_not_verify_refuses_the_note() -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    good = sign(cp, ORIGIN, ZERO_KEY)
    other_sig = sign(Checkpoint(ORIGIN, 8, ROOT), ORIGIN, ZERO_KEY).split(b"\n\n")[1]
    swapped = good.split(b"\n\n")[0] + b"\n\n" + other_sig
    with pytest.raises(ProofError, match="signature by 'example.com/log' does not verify"):
        open_note(swapped, ORIGIN, [LOG])
    with pytest.raises(ProofError, match="does not verify"):  # even next to a valid signature
        open_note(good + other_sig, ORIGIN, [LOG])
    kid = key_id(ORIGIN, ZERO_PUB)
    for length in (1, 63, 65):
        line = "\u2014 {} {}\n".format(ORIGIN, base64.b64encode(kid + b"s" * length).decode()).encode()
        with pytest.raises(ProofError, match="does not verify"):
            open_note(cp.body() + b"\n" + line, ORIGIN, [LOG])


def test_wrong_origin() -> None:
    note = sign(Checkpoint(ORIGIN, 7, ROOT), ORIGIN, ZERO_KEY)
    with pytest.raises(ProofError, match="the checkpoint is for log 'example.com/log', not 'example.com/other'"):
        open_note(note, "example.com/other", [LOG])
    with pytest.raises(ProofError, match="not 'example.com/lo'"):
        open_note(note, "example.com/lo", [LOG])


# -- (c) malformed notes --------------------------------------------------------------------------

COSIGNED = add_signature(sign(Checkpoint(ORIGIN, 1234, ROOT, ("ext",)), ORIGIN, ZERO_KEY), WITNESS.name, WITNESS_KEY)


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80, 0xFF])
@pytest.mark.parametrize(("note", "required"), [(EXPECTED_NOTE, 1), (COSIGNED, 2)])
def test_every_single_byte_change_is_refused(note: bytes, required: int, mask: int) -> None:
    for at in range(len(note)):
        changed = note[:at] + bytes([note[at] ^ mask]) + note[at + 1:]
        with pytest.raises(ProofError):
            open_note(changed, None, [LOG, WITNESS], required)


@pytest.mark.parametrize(("note", "required"), [(EXPECTED_NOTE, 1), (COSIGNED, 2)])
def test_every_truncation_is_refused(note: bytes, required: int) -> None:
    for end in range(len(note)):
        with pytest.raises(ProofError):
            open_note(note[:end], None, [LOG, WITNESS], required)
    # (Cut after a whole signature line, a note loses that cosigner: only k of n can tell.)
    assert open_note(COSIGNED[:COSIGNED.index("\u2014 witness".encode())], None, [LOG]).size == 1234


@pytest.mark.parametrize(("size", "message"), [
    ("042", "not a decimal number without leading zeros"),
    ("00", "not a decimal number"),
    ("-1", "not a decimal number"),
    ("+42", "not a decimal number"),
    (" 42", "not a decimal number"),
    ("42 ", "not a decimal number"),
    ("4_2", "not a decimal number"),
    ("\u0664\u0662", "not a decimal number"),  # Arabic-Indic digits: str.isdigit() would say yes
    ("0x2a", "not a decimal number"),
    ("", "not a decimal number"),
    (str(2**63), "is 2\\*\\*63 or more"),
    ("9" * 19, "is 2\\*\\*63 or more"),
    ("1" * 20, "not a decimal number"),
    ("1" * 50_000, "not a decimal number"),
])
def test_bad_tree_sizes(size: str, message: str) -> None:
    with pytest.raises(ProofError, match=message):
        open_note(hand_signed(body(size)), ORIGIN, [LOG])


def test_tree_size_bounds() -> None:
    assert open_note(hand_signed(body("0")), ORIGIN, [LOG]).size == 0
    assert open_note(hand_signed(body(str(2**63 - 1))), ORIGIN, [LOG]).size == 2**63 - 1


@pytest.mark.parametrize(("root", "message"), [
    (base64.b64encode(bytes(31)).decode(), "the root is 31 bytes"),
    (base64.b64encode(bytes(33)).decode(), "the root is 33 bytes"),
    ("", "the root is 0 bytes"),
    (bytes(32).hex(), "the root is 48 bytes"),
    ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", "not valid base64"),  # no padding
    ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=", "not in canonical base64"),  # spare bits set
    ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd Hh8=", "not valid base64"),
    ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\u00e9", "not valid base64"),
    ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd_h8=", "not valid base64"),  # base64url
])
def test_bad_roots(root: str, message: str) -> None:
    with pytest.raises(ProofError, match=message):
        open_note(hand_signed(body("42", root)), ORIGIN, [LOG])


@pytest.mark.parametrize(("note", "message"), [
    (EXPECTED_NOTE.replace(b"\n", b"\r\n"), "control character"),
    (hand_signed(body().replace("\n", "\r\n")), "control character"),
    (hand_signed(body("42\r")), "control character"),
    (hand_signed(body("42", base64.b64encode(ROOT).decode() + "\t")), "control character"),
    (hand_signed(body() + "\0"), "control character"),
    (EXPECTED_NOTE.replace(b"\n\n", b"\n"), "no blank line"),
    (EXPECTED_NOTE.split(b"\n\n")[0] + b"\n\n", "no signature lines"),
    (EXPECTED_NOTE[:-1], "does not end with a newline"),
    (EXPECTED_NOTE + b"\n", "no signature lines"),
    (EXPECTED_NOTE.replace(b"\n\n", b"\n\n\n"), "does not verify"),  # the blank line moved into the text
    (EXPECTED_NOTE.replace(b"\xe2\x80\x94 ", b"- "), "signature line 1 is not"),
    (EXPECTED_NOTE.replace(b"\xe2\x80\x94 ", b"\xe2\x80\x94"), "signature line 1 is not"),
    (EXPECTED_NOTE.replace(b"log Hd5", b"log  Hd5"), "not valid base64"),
    (EXPECTED_NOTE.replace(b"log Hd5", b"logHd5"), "signature line 1 is not"),
    (EXPECTED_NOTE + "\u2014 a+b {}\n".format("A" * 92).encode(), "key name 'a\\+b' is not usable"),
    (EXPECTED_NOTE + "\u2014  {}\n".format("A" * 92).encode(), "key name '' is not usable"),
    (EXPECTED_NOTE + "\u2014 a\u00a0b {}\n".format("A" * 92).encode(), "not usable"),
    (EXPECTED_NOTE + "\u2014 a AAAAAA==\n".encode(), "too short"),
    (EXPECTED_NOTE + "\u2014 a !!!!\n".encode(), "not valid base64"),
    (EXPECTED_NOTE + b"\xe2\x80\x94 a \xff\n", "not valid UTF-8"),
    (hand_signed("\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"), "origin '' must be a non-empty line"),
    (hand_signed(body() + "\next\n"), "extension line '' must be"),
    (hand_signed(ORIGIN + "\n42\n"), "the checkpoint has 2 lines"),
    (hand_signed(body(), body=body().encode()[:-1]), "does not verify"),  # signed without the last \n
    (hand_signed(body() + "x" * 70_000 + "\n"), "at most 65536"),
])
def test_malformed_notes(note: bytes, message: str) -> None:
    with pytest.raises(ProofError, match=message):
        open_note(note, ORIGIN, [LOG])


def test_only_bytes_are_notes() -> None:
    with pytest.raises(ProofError, match="not str"):
        open_note(EXPECTED_NOTE.decode(), ORIGIN, [LOG])  # type: ignore[arg-type]


def test_messages_stay_short() -> None:
    huge = "o" * 60_000
    with pytest.raises(ProofError) as info:
        open_note(hand_signed(huge + "\n1\n" + base64.b64encode(ROOT).decode() + "\n"), ORIGIN, [LOG])
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(("fields", "message"), [
    (("", 1, ROOT), "origin"),
    (("a\nb", 1, ROOT), "origin"),
    (("a", -1, ROOT), "tree size"),
    (("a", 2**63, ROOT), "tree size"),
    (("a", True, ROOT), "tree size"),
    (("a", "1", ROOT), "tree size"),
    (("a", 1, ROOT[:31]), "32 bytes"),
    (("a", 1, ROOT, ("",)), "extension line"),
    (("a", 1, ROOT, ("x\ny",)), "extension line"),
])
def test_checkpoint_fields_are_checked(fields: tuple[object, ...], message: str) -> None:
    with pytest.raises(ProofError, match=message):
        Checkpoint(*fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\tb", "a\u2003b", "a\nb"])
def test_key_names_are_checked(name: str) -> None:
    with pytest.raises(ProofError, match="not usable in a note"):
        Verifier(name, ZERO_PUB)
    with pytest.raises(ProofError, match="not usable in a note"):
        sign(Checkpoint(ORIGIN, 1, ROOT), name, ZERO_KEY)


def test_verifier_keys_are_32_bytes() -> None:
    with pytest.raises(ProofError, match="32 bytes, not 31"):
        Verifier(ORIGIN, ZERO_PUB[:31])


def test_notes_too_large_to_open_are_not_signed() -> None:
    big = Checkpoint(ORIGIN, 1, ROOT, ("x" * 40_000, "y" * 25_500))
    with pytest.raises(ProofError, match="at most 65536"):
        sign(big, ORIGIN, ZERO_KEY)
    fits = sign(Checkpoint(ORIGIN, 1, ROOT, ("x" * 40_000, "y" * 25_300)), ORIGIN, ZERO_KEY)
    assert open_note(fits, ORIGIN, [LOG]).size == 1
    with pytest.raises(ProofError, match="at most 65536"):
        add_signature(fits, WITNESS.name, WITNESS_KEY)


def test_add_signature_needs_a_well_formed_note() -> None:
    with pytest.raises(ProofError, match="no blank line"):
        add_signature(Checkpoint(ORIGIN, 1, ROOT).body(), WITNESS.name, WITNESS_KEY)
    with pytest.raises(ProofError, match="the checkpoint has 1 lines"):
        add_signature(hand_signed("hello\n"), WITNESS.name, WITNESS_KEY)
