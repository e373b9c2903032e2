# cython: annotation_typing=False
# (The annotations below are _pure's, for introspection only: arguments are
# checked by hand so that other types can be handed to _pure.)
"""Compiled twin of ``keyvault._fast._pure``: the same functions, in C.

_pure is the specification; names here follow it. Every public function takes
the same arguments and returns the same results (or raises the same exception)
as its _pure twin, and ``tests/test_fast_twins.py`` holds the two to that.

The work happens in C for the argument types the hot path uses: ``str`` text,
``int`` numbers and ``bytes`` or ``bytearray`` binary data. Any other argument
type is handed to the _pure function of the same name, so odd calls behave
(and fail) exactly as the specification does. Text that is not ASCII is
normalised by ``_pure.normalize`` (NFKC belongs to Python) and then read here.

BLAKE2b is written below from RFC 7693; _core.pxd declares its C API for other
Cython modules. check_keys, the batch check, also hashes several keys at once in
SIMD lanes (same compression, vectorised) where the compiler and CPU allow.
SHA-256 (FIPS 180-4), portable and with the x86 SHA extensions, serves the
provenance functions at the end: key commitments, event leaves, the Merkle tree.

issue_keys, commitments and merkle_root do their hashing without the GIL when
they are given NOGIL_ITEMS items or more (issue_batch runs the last two on a
second thread while the first makes the next chunk).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLongMask, PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport (PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_AsUTF8AndSize, PyUnicode_DATA,
                              PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_New, PyUnicode_READ)
cimport cython
from libc.stdint cimport UINT64_MAX, uint32_t, uint64_t
from libc.string cimport memcpy, memset, strlen

# Only for what C does not do here: NFKC, and arguments of unexpected types.
from keyvault._fast import _pure


cdef extern from *:
    """
    /* Strings made by the legacy (pre-PEP 393) API must be made ready before
       their kind and data can be read; Python 3.12 removed that API. */
    #if PY_VERSION_HEX < 0x030C0000
    #define keyvault_unicode_ready(op) PyUnicode_READY(op)
    #else
    #define keyvault_unicode_ready(op) 0
    #endif
    """
    int keyvault_unicode_ready(object text) except -1
    const Py_ssize_t PY_SSIZE_T_MAX


# ---------------------------------------------------------------------------
# The key format's constants: copies of _pure's (a test compares them).

cdef enum:
    KEY_SYMBOLS = 32  # symbols in a v1 key
    DATA_SYMBOLS = 29  # symbols before the three check symbols
    VERSION = 1  # value of symbol 0 in a v1 key
    SERIAL_SYMBOLS = 12  # prefix (4) + batch (3) + index (5)
    SECRET_SYMBOLS = 16  # 80 bits
    SECRET_BYTES = 10  # random bytes drawn per key (80 bits)
    MAX_INPUT = 256  # longer input is refused before any normalisation work
    DIGEST_SIZE = 16  # bytes of every verifier, tag and locator

    SERIAL_START = 1  # the serial follows the version symbol
    SECRET_START = 13  # SERIAL_START + SERIAL_SYMBOLS
    HALF_SECRET_SYMBOLS = 8  # the secret is kept as two halves of 8 symbols...
    HALF_SECRET_BITS = 40  # ...40 bits each, so that each fits a uint64_t
    HALF_SECRET_BYTES = 5  # bytes of entropy per half (SECRET_BYTES / 2)
    SYMBOL_BITS = 5  # bits per base32 symbol
    SYMBOL_MASK = 31  # (1 << SYMBOL_BITS) - 1

    # Parse outcomes, as in _pure.
    OK = 0
    BAD_LENGTH = 1  # not 32 symbols after normalisation
    BAD_SYMBOL = 2  # a character outside the alphabet; position says where
    BAD_VERSION = 3  # symbol 0 is not a version this code reads
    CHECK_SUBSTITUTION = 4  # one symbol is wrong; position says which
    CHECK_TRANSPOSITION = 5  # symbols at position and position + 1 are swapped
    CHECK_FAILED = 6  # two or more errors that cannot be located

    # GF(32) with the primitive polynomial x^5 + x^2 + 1.
    POLY = 0b100101  # the polynomial's coefficients
    FIELD_SIZE = 32  # elements of GF(32); also the overflow bit when multiplying by x
    GF_ORDER = 31  # non-zero elements; exponents are taken mod 31
    CHECKS = 3  # check symbols, syndromes and rows of the check matrix

    # Per-character tables for ASCII input.
    ASCII_SIZE = 128  # code points 0..127
    BYTE_SIZE = 256  # values of one byte of a 1-byte-kind str
    ASCII_MAX = 127  # largest ASCII code point (maxchar of a new ASCII str)
    NOGIL_ITEMS = 1024  # keys or hashes from which a call's hashing lets other threads run (GIL released)
    DROP = 255  # in _FOLD: a separator, removed by normalize
    NOT_SYMBOL = -1  # in _VALUE and _SYMBOL: kept by normalize, but not in the alphabet
    SEPARATOR = -2  # in _SYMBOL: dropped by normalize
    NOT_ASCII = -3  # in _SYMBOL: the text needs _pure.normalize

cdef uint64_t SERIAL_MASK = (<uint64_t>1 << (SYMBOL_BITS * SERIAL_SYMBOLS)) - 1  # low 60 bits
cdef uint64_t HALF_SECRET_MASK = (<uint64_t>1 << HALF_SECRET_BITS) - 1  # low 40 bits

# Crockford base32: a symbol's value is its index.
cdef const char* ALPHABET = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# The ASCII characters of _pure._SEPARATORS. Text with any of the others is
# not ASCII and goes through _pure.normalize.
cdef const char* ASCII_SEPARATORS = b" \t\r\n\v\f-_"

# The locator x_i of each position (see _pure.LOCATORS).
cdef unsigned char[KEY_SYMBOLS] LOCATORS = [
    3, 26, 22, 15, 31, 25, 9, 19, 4, 24, 30, 10, 13, 6, 28, 5,
    12, 20, 7, 0, 29, 14, 17, 23, 8, 16, 21, 2, 11, 27, 18, 1]

# Derived from the above by _init_tables(), as _pure derives them.
cdef unsigned char _EXP[2 * GF_ORDER]  # alpha**i, twice over so a sum of two logs needs no mod
cdef unsigned char _LOG[FIELD_SIZE]  # log of a non-zero element (_LOG[0] unused, 0)
cdef unsigned char _CUBES[KEY_SYMBOLS]  # x_i**3
cdef unsigned char _TIMES_X[KEY_SYMBOLS][FIELD_SIZE]  # [i][v]: v * x_i (a syndrome term, by table)
cdef unsigned char _TIMES_X3[KEY_SYMBOLS][FIELD_SIZE]  # [i][v]: v * x_i**3
cdef signed char _POSITION_OF[FIELD_SIZE]  # position whose locator is x
cdef signed char _SWAP_AT[FIELD_SIZE]  # k whose adjacent swap gives S3/S1 == x, or -1
cdef unsigned char _CHECK_INVERSE[CHECKS][CHECKS]  # check symbols = this * syndromes
cdef unsigned char _FOLD[ASCII_SIZE]  # ASCII char after upper() and I/L->1, O->0; DROP if a separator
cdef signed char _VALUE[ASCII_SIZE]  # value of an (upper-case) ASCII symbol, NOT_SYMBOL if none
cdef signed char _SYMBOL[BYTE_SIZE]  # _VALUE[_FOLD[c]] in one step, or SEPARATOR, or NOT_ASCII

# BLAKE2b personalisations (the `person` parameter), one per kind of hash.
cdef const char* PERSON_VERIFIER = b"kv1/verifier"
cdef const char* PERSON_TAG = b"kv1/tag"
cdef const char* PERSON_LOCATE = b"kv1/locate"
cdef const char* PERSON_STORE_LOCATE = b"kv1/slocate"


# ---------------------------------------------------------------------------
# BLAKE2b (RFC 7693), 64-bit words, little-endian.

cdef enum:
    BLAKE2B_ROUNDS = 12  # rounds of G per compression
    BLAKE2B_WORDS = 16  # words per block and in the working vector
    HASH_WORDS = 8  # words in the chain value h (and in the IV)
    BLAKE2B_SIGMA_ROWS = 10  # rounds 10 and 11 reuse the permutations of rounds 0 and 1
    WORD_BYTES = 8  # bytes per 64-bit word
    PARAM_FANOUT_DEPTH = 0x01010000  # parameter bytes 2 and 3: fanout 1, depth 1 (sequential)
    PARAM_KEY_SHIFT = 8  # parameter byte 1: key length

# Initialisation vector (RFC 7693 section 2.6; the same as SHA-512's).
cdef uint64_t[HASH_WORDS] BLAKE2B_IV = [
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL]

# Message word schedule (RFC 7693 section 2.7): row r is round r's permutation.
cdef unsigned char[BLAKE2B_SIGMA_ROWS * BLAKE2B_WORDS] BLAKE2B_SIGMA = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3,
    11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4,
    7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8,
    9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13,
    2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9,
    12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11,
    13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10,
    6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5,
    10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0]


cdef inline uint64_t _load64(const unsigned char* p) noexcept nogil:
    """The little-endian word at p (compilers turn this into one load)."""
    return ((<uint64_t>p[0]) | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48)
            | (<uint64_t>p[7] << 56))


cdef inline uint64_t _rotr64(uint64_t w, unsigned int c) noexcept nogil:
    """w rotated right by c bits (0 < c < 64, the word size)."""
    return (w >> c) | (w << (64 - c))


cdef inline void _g(uint64_t* v, int a, int b, int c, int d, uint64_t x, uint64_t y) noexcept nogil:
    """The mixing function G (RFC 7693 section 3.1); rotation counts R1..R4 = 32, 24, 16, 63."""
    v[a] = v[a] + v[b] + x
    v[d] = _rotr64(v[d] ^ v[a], 32)
    v[c] = v[c] + v[d]
    v[b] = _rotr64(v[b] ^ v[c], 24)
    v[a] = v[a] + v[b] + y
    v[d] = _rotr64(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = _rotr64(v[b] ^ v[c], 63)


cdef void _compress(blake2b_state* S, const unsigned char* block, bint last) noexcept nogil:
    """The compression function F (RFC 7693 section 3.2) on one 128-byte block.

    S.t must already count the bytes of this block.
    """
    cdef uint64_t m[BLAKE2B_WORDS]
    cdef uint64_t v[BLAKE2B_WORDS]
    cdef const unsigned char* s
    cdef int i, r
    for i in range(BLAKE2B_WORDS):
        m[i] = _load64(block + i * WORD_BYTES)
    for i in range(HASH_WORDS):  # v = h, then the IV
        v[i] = S.h[i]
        v[i + HASH_WORDS] = BLAKE2B_IV[i]
    v[12] ^= S.t[0]  # v[12], v[13]: the byte counter
    v[13] ^= S.t[1]
    if last:
        v[14] = ~v[14]  # v[14]: the final-block flag
    for r in range(BLAKE2B_ROUNDS):
        s = &BLAKE2B_SIGMA[(r % BLAKE2B_SIGMA_ROWS) * BLAKE2B_WORDS]
        _g(v, 0, 4, 8, 12, m[s[0]], m[s[1]])  # columns
        _g(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _g(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _g(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _g(v, 0, 5, 10, 15, m[s[8]], m[s[9]])  # diagonals
        _g(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _g(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _g(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(HASH_WORDS):
        S.h[i] ^= v[i] ^ v[i + HASH_WORDS]


cdef inline void _count(blake2b_state* S, size_t n) noexcept nogil:
    """Add n to the 128-bit byte counter."""
    S.t[0] += n
    if S.t[0] < n:  # carry into the high word
        S.t[1] += 1


cdef inline void _start(blake2b_state* S) noexcept nogil:
    """h = IV xor the parameter block; counter 0. Uses S.outlen, S.keylen and S.person.

    Parameter block word 0 holds digest_length (byte 0), key_length (byte 1),
    fanout and depth (bytes 2, 3); words 1-5 (leaf length, node offset, node
    depth, inner length, salt) are zero; words 6-7 are the personalisation.
    """
    cdef int i
    for i in range(HASH_WORDS):
        S.h[i] = BLAKE2B_IV[i]
    S.h[0] ^= PARAM_FANOUT_DEPTH | (<uint64_t>S.keylen << PARAM_KEY_SHIFT) | <uint64_t>S.outlen
    S.h[6] ^= S.person[0]
    S.h[7] ^= S.person[1]
    S.t[0] = 0
    S.t[1] = 0


cdef int blake2b_init(blake2b_state* S, size_t outlen,
                      const unsigned char* person, size_t personlen) noexcept nogil:
    return blake2b_init_keyed(S, outlen, NULL, 0, person, personlen)


cdef int blake2b_init_keyed(blake2b_state* S, size_t outlen,
                            const unsigned char* key, size_t keylen,
                            const unsigned char* person, size_t personlen) noexcept nogil:
    cdef unsigned char padded[BLAKE2B_PERSONALBYTES]
    if outlen == 0 or outlen > BLAKE2B_OUTBYTES or keylen > BLAKE2B_KEYBYTES or personlen > BLAKE2B_PERSONALBYTES:
        return -1
    memset(padded, 0, BLAKE2B_PERSONALBYTES)
    if personlen:
        memcpy(padded, person, personlen)
    S.outlen = outlen
    S.keylen = keylen
    S.person[0] = _load64(padded)
    S.person[1] = _load64(padded + WORD_BYTES)
    _start(S)
    memset(S.buf, 0, BLAKE2B_BLOCKBYTES)
    S.buflen = 0
    if keylen:
        # The key, zero-padded to a block, is the first block. It is compressed
        # now (as a block that is not the last) so that copies of S start after
        # it; buf keeps it in case no message follows (see blake2b_final).
        memcpy(S.buf, key, keylen)
        _count(S, BLAKE2B_BLOCKBYTES)
        _compress(S, S.buf, False)
    return 0


cdef void blake2b_update(blake2b_state* S, const unsigned char* data, size_t n) noexcept nogil:
    # A full buffer is compressed only once more input arrives: the last block
    # must be left for blake2b_final, which marks it as the last.
    cdef size_t take
    while n > 0:
        if S.buflen == BLAKE2B_BLOCKBYTES:
            _count(S, BLAKE2B_BLOCKBYTES)
            _compress(S, S.buf, False)
            S.buflen = 0
        if S.buflen == 0 and n > BLAKE2B_BLOCKBYTES:
            # A whole block, and more after it: compress it straight from data.
            _count(S, BLAKE2B_BLOCKBYTES)
            _compress(S, data, False)
            data += BLAKE2B_BLOCKBYTES
            n -= BLAKE2B_BLOCKBYTES
            continue
        take = BLAKE2B_BLOCKBYTES - S.buflen
        if take > n:
            take = n
        memcpy(S.buf + S.buflen, data, take)
        S.buflen += take
        data += take
        n -= take


cdef void blake2b_final(blake2b_state* S, unsigned char* out) noexcept nogil:
    cdef size_t i
    if S.buflen == 0 and S.keylen:
        # Keyed, and no message: the key block itself is the last block. init
        # compressed it as not last, so start again and redo it (buf still holds it).
        _start(S)
        _count(S, BLAKE2B_BLOCKBYTES)
    else:
        _count(S, S.buflen)
        memset(S.buf + S.buflen, 0, BLAKE2B_BLOCKBYTES - S.buflen)  # zero padding
    _compress(S, S.buf, True)
    for i in range(S.outlen):  # h as little-endian bytes, truncated; 8 bits per byte
        out[i] = <unsigned char>(S.h[i // WORD_BYTES] >> (8 * (i % WORD_BYTES)))


cdef void blake2b_digest_from(const blake2b_state* S, const unsigned char* data, size_t n,
                              unsigned char* out) noexcept nogil:
    cdef blake2b_state fork = S[0]
    blake2b_update(&fork, data, n)
    blake2b_final(&fork, out)


cdef int blake2b_digest(unsigned char* out, size_t outlen,
                        const unsigned char* key, size_t keylen,
                        const unsigned char* person, size_t personlen,
                        const unsigned char* data, size_t n) noexcept nogil:
    cdef blake2b_state S
    if blake2b_init_keyed(&S, outlen, key, keylen, person, personlen) < 0:
        return -1
    blake2b_update(&S, data, n)
    blake2b_final(&S, out)
    return 0


cdef bint digests_equal(const unsigned char* a, const unsigned char* b, size_t n) noexcept nogil:
    # No early exit: the time taken does not depend on where a and b differ.
    cdef volatile unsigned char diff = 0
    cdef size_t i
    for i in range(n):
        diff |= a[i] ^ b[i]
    return diff == 0


# ---------------------------------------------------------------------------
# GF(32) and the check symbols.

cdef inline unsigned char _mul(unsigned char a, unsigned char b) noexcept nogil:
    """Multiply two GF(32) elements."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


cdef inline unsigned char _div(unsigned char a, unsigned char b) noexcept nogil:
    """Divide a by a non-zero b in GF(32)."""
    if a == 0:
        return 0
    return _EXP[_LOG[a] - _LOG[b] + GF_ORDER]


cdef inline unsigned char _cube(unsigned char a) noexcept nogil:
    return _mul(a, _mul(a, a))


cdef inline unsigned char _swap_value(unsigned char a, unsigned char b) noexcept nogil:
    return _mul(a, a) ^ _mul(a, b) ^ _mul(b, b)


ctypedef struct Syndromes:
    unsigned char s0  # sum of v_i
    unsigned char s1  # sum of v_i * x_i
    unsigned char s3  # sum of v_i * x_i**3


cdef inline Syndromes _syndromes(const unsigned char* values, Py_ssize_t n) noexcept nogil:
    """Syndromes of the first n values (n <= KEY_SYMBOLS)."""
    cdef Syndromes s
    cdef Py_ssize_t i
    s.s0 = s.s1 = s.s3 = 0
    for i in range(n):  # (values are 0..31)
        s.s0 ^= values[i]
        s.s1 ^= _TIMES_X[i][values[i]]
        s.s3 ^= _TIMES_X3[i][values[i]]
    return s


cdef inline void _check_values(const unsigned char* values, Py_ssize_t n, unsigned char* checks) noexcept nogil:
    """Values of the three check symbols for n data values (DATA_SYMBOLS in a key)."""
    cdef Syndromes d = _syndromes(values, n)
    cdef int r
    for r in range(CHECKS):
        checks[r] = (_mul(_CHECK_INVERSE[r][0], d.s0) ^ _mul(_CHECK_INVERSE[r][1], d.s1)
                     ^ _mul(_CHECK_INVERSE[r][2], d.s3))


cdef inline int _check_key(const unsigned char* values, Py_ssize_t* position) noexcept nogil:
    """OK, or the CHECK_* outcome of KEY_SYMBOLS values (setting *position as _pure.parse_key)."""
    cdef Syndromes s = _syndromes(values, KEY_SYMBOLS)
    cdef int j, k
    if s.s0 == 0 and s.s1 == 0 and s.s3 == 0:
        return OK
    if s.s0:
        # One substitution of size s0 where the locator is s1/s0, if s3 agrees.
        j = _POSITION_OF[_div(s.s1, s.s0)]
        if j >= 0 and _mul(s.s0, _CUBES[j]) == s.s3:  # (j >= 0 always: LOCATORS is a permutation)
            position[0] = j
            return CHECK_SUBSTITUTION
    elif s.s1:
        # Two equal-sized errors (a swap gives those): S3/S1 names the pair.
        k = _SWAP_AT[_div(s.s3, s.s1)]
        if k >= 0 and values[k] ^ values[k + 1] == _div(s.s1, LOCATORS[k] ^ LOCATORS[k + 1]):
            position[0] = k
            return CHECK_TRANSPOSITION
    position[0] = -1
    return CHECK_FAILED


cdef inline void _put_symbols(unsigned char* values, uint64_t number, int count) noexcept nogil:
    """The low count symbols of number, most significant first (as _pure._symbols)."""
    cdef int i
    for i in range(count - 1, -1, -1):
        values[i] = number & SYMBOL_MASK
        number >>= SYMBOL_BITS


cdef inline void _encode_key(char* out, uint64_t serial, uint64_t secret_high, uint64_t secret_low) noexcept nogil:
    """The canonical KEY_SYMBOLS characters of a key (as _pure.encode_key).

    serial: its low 60 bits are used; secret_high, secret_low: bits 40-79 and
    0-39 of the secret, each in the low 40 bits.
    """
    cdef unsigned char values[KEY_SYMBOLS]
    cdef int i
    values[0] = VERSION
    _put_symbols(values + SERIAL_START, serial, SERIAL_SYMBOLS)
    _put_symbols(values + SECRET_START, secret_high, HALF_SECRET_SYMBOLS)
    _put_symbols(values + SECRET_START + HALF_SECRET_SYMBOLS, secret_low, HALF_SECRET_SYMBOLS)
    _check_values(values, DATA_SYMBOLS, values + DATA_SYMBOLS)
    for i in range(KEY_SYMBOLS):
        out[i] = ALPHABET[values[i]]


cdef inline uint64_t _load40(const unsigned char* p) noexcept nogil:
    """The big-endian 40-bit number in HALF_SECRET_BYTES bytes at p."""
    return ((<uint64_t>p[0] << 32) | (<uint64_t>p[1] << 24) | (<uint64_t>p[2] << 16)
            | (<uint64_t>p[3] << 8) | <uint64_t>p[4])


# ---------------------------------------------------------------------------
# Reading text.

cdef inline Py_ssize_t _ascii_symbols(const unsigned char* text, Py_ssize_t n,
                                      signed char* values, Py_ssize_t cap) noexcept nogil:
    """Normalise 1-byte text straight to symbol values, keeping the first cap.

    A character outside the alphabet gives NOT_SYMBOL. Returns the length of
    the normalised text, or -1 if text is not ASCII (it needs _pure.normalize).
    """
    cdef Py_ssize_t i, count = 0
    cdef signed char v
    for i in range(n):
        v = _SYMBOL[text[i]]
        if v == SEPARATOR:
            continue
        if v == NOT_ASCII:
            return -1
        if count < cap:
            values[count] = v
        count += 1
    return count


cdef inline Py_ssize_t _str_symbols(str symbols, signed char* values, Py_ssize_t cap) noexcept:
    """Symbol values of already normalised text, keeping the first cap; returns its length."""
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(symbols)
    cdef int kind = PyUnicode_KIND(symbols)
    cdef void* data = PyUnicode_DATA(symbols)
    cdef Py_UCS4 ch
    for i in range(min(n, cap)):
        ch = PyUnicode_READ(kind, data, i)
        values[i] = _VALUE[ch] if ch < ASCII_SIZE else NOT_SYMBOL
    return n


cdef Py_ssize_t _symbols_of(str text, signed char* values, Py_ssize_t cap) except -2:
    """normalize(text) as symbol values (the first cap of them); returns its length.

    text must be ready (keyvault_unicode_ready).
    """
    cdef Py_ssize_t count = -1
    if PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND:
        count = _ascii_symbols(PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text), values, cap)
    if count < 0:
        normalized = _pure.normalize(text)  # not ASCII: NFKC first
        count = _str_symbols(normalized, values, cap)
    return count


cdef inline bint _binary(object data) noexcept:
    """Whether data is bytes or a bytearray (types read in C here)."""
    return type(data) is bytes or type(data) is bytearray


cdef inline const unsigned char* _binary_data(object data) noexcept:
    if type(data) is bytes:
        return <const unsigned char*>PyBytes_AS_STRING(data)
    return <const unsigned char*>PyByteArray_AS_STRING(data)


cdef inline size_t _binary_size(object data) noexcept:
    if type(data) is bytes:
        return <size_t>PyBytes_GET_SIZE(data)
    return <size_t>PyByteArray_GET_SIZE(data)


cdef bytes _hash(const char* person, object key, object data):
    """BLAKE2b-128 of data (bytes or bytearray) under key (b"" for none, at most 64 bytes)."""
    cdef unsigned char out[DIGEST_SIZE]
    blake2b_digest(out, DIGEST_SIZE, _binary_data(key), _binary_size(key),
                   <const unsigned char*>person, strlen(person), _binary_data(data), _binary_size(data))
    return PyBytes_FromStringAndSize(<char*>out, DIGEST_SIZE)


# ---------------------------------------------------------------------------
# The public functions: _pure's, one for one.

def normalize(text: str) -> str:
    """Fold typed input to symbols: NFKC, upper case, separators dropped, I/L->1, O->0."""
    cdef Py_ssize_t i, n, count = 0
    cdef const unsigned char* data
    cdef unsigned char* out
    cdef unsigned char ch
    if type(text) is not str:
        return _pure.normalize(text)
    keyvault_unicode_ready(text)
    if PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND:
        return _pure.normalize(text)
    n = PyUnicode_GET_LENGTH(text)
    data = PyUnicode_1BYTE_DATA(text)
    for i in range(n):  # first pass: is it ASCII, and how long is the result?
        if data[i] > ASCII_MAX:
            return _pure.normalize(text)
        if _FOLD[data[i]] != DROP:
            count += 1
    result = PyUnicode_New(count, ASCII_MAX)
    out = PyUnicode_1BYTE_DATA(result)
    count = 0
    for i in range(n):
        ch = _FOLD[data[i]]
        if ch != DROP:
            out[count] = ch
            count += 1
    return result


def check_symbols(data: str) -> str:
    """The three check symbols for 29 data symbols (already valid alphabet characters)."""
    cdef unsigned char values[KEY_SYMBOLS]
    cdef unsigned char checks[CHECKS]
    cdef Py_ssize_t i, n
    cdef int kind
    cdef void* chars
    cdef Py_UCS4 ch
    cdef signed char v
    if type(data) is not str:
        return _pure.check_symbols(data)
    keyvault_unicode_ready(data)
    n = PyUnicode_GET_LENGTH(data)
    kind = PyUnicode_KIND(data)
    chars = PyUnicode_DATA(data)
    for i in range(n):  # _pure looks up every character before using any
        ch = PyUnicode_READ(kind, chars, i)
        v = _VALUE[ch] if ch < ASCII_SIZE else NOT_SYMBOL
        if v < 0:
            raise KeyError(chr(ch))  # as _pure's _VALUE[ch]
        if i < KEY_SYMBOLS:
            values[i] = v
    if n > KEY_SYMBOLS:
        raise IndexError("tuple index out of range")  # as _pure's LOCATORS[i]
    _check_values(values, n, checks)
    result = PyUnicode_New(CHECKS, ASCII_MAX)
    for i in range(CHECKS):
        PyUnicode_1BYTE_DATA(result)[i] = ALPHABET[checks[i]]
    return result


cdef int _parse(str text, unsigned char* values, Py_ssize_t* position) except -1:
    """parse_key's work in C: its outcome, with *position as parse_key's.

    On OK, values holds the KEY_SYMBOLS symbol values (0..31) of the key.
    """
    cdef signed char* symbols = <signed char*>values
    cdef Py_ssize_t i
    cdef int outcome
    position[0] = -1
    keyvault_unicode_ready(text)
    if PyUnicode_GET_LENGTH(text) > MAX_INPUT:
        return BAD_LENGTH
    if _symbols_of(text, symbols, KEY_SYMBOLS) != KEY_SYMBOLS:
        return BAD_LENGTH
    for i in range(KEY_SYMBOLS):
        if symbols[i] < 0:
            position[0] = i
            return BAD_SYMBOL
    # All values are now 0..31: read them as unsigned.
    outcome = _check_key(values, position)
    if outcome != OK:
        return outcome
    if values[0] != VERSION:
        position[0] = 0
        return BAD_VERSION
    return OK


cdef inline uint64_t _serial_of(const unsigned char* values) noexcept nogil:
    """The 60-bit serial of a parsed key's symbol values."""
    cdef uint64_t serial = 0
    cdef Py_ssize_t i
    for i in range(SERIAL_START, SERIAL_START + SERIAL_SYMBOLS):
        serial = (serial << SYMBOL_BITS) | values[i]
    return serial


def parse_key(text: str) -> tuple[int, int, bytes, int]:
    """Parse typed input as a v1 key: (outcome, serial, canonical bytes, position).

    On OK, serial is the 60-bit serial and canonical the 32 ASCII symbols; on
    any other outcome they are 0 and b"", and position is the 0-based symbol
    position at fault (-1 when no single position can be named).
    """
    cdef unsigned char values[KEY_SYMBOLS]
    cdef char canonical[KEY_SYMBOLS]
    cdef Py_ssize_t i, position = -1
    cdef int outcome
    if type(text) is not str:
        return _pure.parse_key(text)
    outcome = _parse(text, values, &position)
    if outcome != OK:
        return outcome, 0, b"", position
    for i in range(KEY_SYMBOLS):
        canonical[i] = ALPHABET[values[i]]
    return OK, _serial_of(values), PyBytes_FromStringAndSize(canonical, KEY_SYMBOLS), -1


def parse_serial(text: str) -> int:
    """The 60-bit serial from typed serial text (12 symbols), or -1 if it is not one."""
    if type(text) is not str:
        return _pure.parse_serial(text)
    return _parse_serial(<str>text)


cdef object _parse_serial(str text):
    """parse_serial for a str."""
    cdef signed char symbols[SERIAL_SYMBOLS]
    cdef Py_ssize_t i
    cdef uint64_t serial = 0
    keyvault_unicode_ready(text)
    if PyUnicode_GET_LENGTH(text) > MAX_INPUT:
        return -1
    if _symbols_of(text, symbols, SERIAL_SYMBOLS) != SERIAL_SYMBOLS:
        return -1
    for i in range(SERIAL_SYMBOLS):
        if symbols[i] < 0:
            return -1
        serial = (serial << SYMBOL_BITS) | <uint64_t>symbols[i]
    return serial


def format_serial(serial: int) -> str:
    """The 12 serial symbols of a 60-bit serial, without separators."""
    cdef unsigned char values[SERIAL_SYMBOLS]
    cdef Py_ssize_t i
    if type(serial) is not int:
        return _pure.format_serial(serial)
    # The low 64 bits (two's complement, like Python's & on a negative int).
    _put_symbols(values, PyLong_AsUnsignedLongLongMask(serial), SERIAL_SYMBOLS)
    result = PyUnicode_New(SERIAL_SYMBOLS, ASCII_MAX)
    for i in range(SERIAL_SYMBOLS):
        PyUnicode_1BYTE_DATA(result)[i] = ALPHABET[values[i]]
    return result


def encode_key(serial: int, secret: int) -> str:
    """The canonical 32-symbol key for a 60-bit serial and an 80-bit secret (higher bits are dropped)."""
    cdef char key[KEY_SYMBOLS]
    cdef uint64_t high, low
    if type(serial) is not int or type(secret) is not int:
        return _pure.encode_key(serial, secret)
    low = PyLong_AsUnsignedLongLongMask(secret) & HALF_SECRET_MASK
    high = PyLong_AsUnsignedLongLongMask(secret >> HALF_SECRET_BITS) & HALF_SECRET_MASK
    _encode_key(key, PyLong_AsUnsignedLongLongMask(serial), high, low)
    result = PyUnicode_New(KEY_SYMBOLS, ASCII_MAX)
    memcpy(PyUnicode_1BYTE_DATA(result), key, KEY_SYMBOLS)
    return result


def verifier(salt: bytes, material: bytes) -> bytes:
    """What a manifest carries per key: BLAKE2b-128 of salt || key material, tag kv1/verifier."""
    cdef blake2b_state S
    cdef unsigned char out[DIGEST_SIZE]
    if not (_binary(salt) and _binary(material)):
        return _pure.verifier(salt, material)
    blake2b_init(&S, DIGEST_SIZE, <const unsigned char*>PERSON_VERIFIER, strlen(PERSON_VERIFIER))
    blake2b_update(&S, _binary_data(salt), _binary_size(salt))
    blake2b_update(&S, _binary_data(material), _binary_size(material))
    blake2b_final(&S, out)
    return PyBytes_FromStringAndSize(<char*>out, DIGEST_SIZE)


def tag(pepper: bytes, verifier_: bytes) -> bytes:
    """What the store keeps per key: the verifier re-keyed with the store's pepper."""
    if not (_binary(pepper) and _binary(verifier_)) or _binary_size(pepper) > BLAKE2B_KEYBYTES:
        return _pure.tag(pepper, verifier_)  # (raises hashlib's ValueError for a long key)
    return _hash(PERSON_TAG, pepper, verifier_)


def locator(material: bytes) -> bytes:
    """Unkeyed hash that finds an imported code's record (computable by its supplier)."""
    if not _binary(material):
        return _pure.locator(material)
    return _hash(PERSON_LOCATE, b"", material)


def store_locator(pepper: bytes, locator_: bytes) -> bytes:
    """The store's key for an imported code: the locator re-keyed with the pepper."""
    if not (_binary(pepper) and _binary(locator_)) or _binary_size(pepper) > BLAKE2B_KEYBYTES:
        return _pure.store_locator(pepper, locator_)
    return _hash(PERSON_STORE_LOCATE, pepper, locator_)


def tags_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two tags."""
    if type(a) is not bytes or type(b) is not bytes:
        return _pure.tags_equal(a, b)
    if PyBytes_GET_SIZE(a) != PyBytes_GET_SIZE(b):
        return False  # (hmac.compare_digest also lets the lengths show)
    return digests_equal(<const unsigned char*>PyBytes_AS_STRING(a), <const unsigned char*>PyBytes_AS_STRING(b),
                         <size_t>PyBytes_GET_SIZE(a))


def issue_keys(serial_base: int, count: int, salt: bytes, entropy: bytes) -> tuple[list[str], bytes]:
    """Make count keys with serials serial_base.. and secrets from entropy (10 bytes each).

    Returns the canonical keys and their verifiers concatenated (16 bytes each). The keys and
    verifiers are computed without the GIL (for NOGIL_ITEMS keys or more), the key strings made
    after it.
    """
    cdef blake2b_state salted
    cdef const unsigned char* secrets
    cdef const unsigned char* salt_data
    cdef size_t salt_len
    cdef unsigned char* out
    cdef char* symbols = NULL
    cdef uint64_t serial
    cdef Py_ssize_t i, n
    cdef int lanes = _lane_count
    cdef list keys
    if not (type(serial_base) is int and type(count) is int and _binary(salt) and _binary(entropy)):
        return _pure.issue_keys(serial_base, count, salt, entropy)
    if len(entropy) != count * SECRET_BYTES:
        raise ValueError(f"need {count * SECRET_BYTES} bytes of entropy, got {len(entropy)}")
    # Copies of bytearrays, so nothing can resize them under the pointers below.
    salt = bytes(salt)
    entropy = bytes(entropy)
    n = PyBytes_GET_SIZE(entropy) // SECRET_BYTES
    if n > PY_SSIZE_T_MAX // DIGEST_SIZE:
        raise MemoryError()
    serial = PyLong_AsUnsignedLongLongMask(serial_base) & SERIAL_MASK  # serials are taken mod 2**60
    verifiers = PyBytes_FromStringAndSize(NULL, n * DIGEST_SIZE)
    out = <unsigned char*>PyBytes_AS_STRING(verifiers)
    secrets = <const unsigned char*>PyBytes_AS_STRING(entropy)
    salt_data = <const unsigned char*>PyBytes_AS_STRING(salt)
    salt_len = <size_t>PyBytes_GET_SIZE(salt)
    symbols = <char*>PyMem_Malloc(<size_t>n * KEY_SYMBOLS if n > 0 else 1)
    if symbols == NULL:
        raise MemoryError()
    try:
        # Every verifier hashes salt || key: in lanes, or one by one from the state after the salt.
        blake2b_init(&salted, DIGEST_SIZE, <const unsigned char*>PERSON_VERIFIER, strlen(PERSON_VERIFIER))
        if n >= NOGIL_ITEMS:
            with nogil:
                _issue(&salted, salt_data, salt_len, serial, secrets, n, symbols, out, lanes)
        else:
            _issue(&salted, salt_data, salt_len, serial, secrets, n, symbols, out, lanes)
        keys = []
        for i in range(n):
            text = PyUnicode_New(KEY_SYMBOLS, ASCII_MAX)
            memcpy(PyUnicode_1BYTE_DATA(text), symbols + i * KEY_SYMBOLS, KEY_SYMBOLS)
            keys.append(text)
    finally:
        PyMem_Free(symbols)
    return keys, verifiers


cdef void _issue(blake2b_state* S, const unsigned char* salt, size_t salt_len, uint64_t serial,
                 const unsigned char* secrets, Py_ssize_t n, char* symbols, unsigned char* out,
                 int lanes) noexcept nogil:
    """issue_keys' work: n keys' symbols (KEY_SYMBOLS each) and their verifiers (DIGEST_SIZE each).

    S is fresh from blake2b_init (nothing absorbed). When salt || key fits one block, lanes
    verifiers are one compression at once; what is left over (or everything, without lanes),
    one at a time from S after the salt (as before lanes: the same hash).
    """
    cdef unsigned char blocks[KV_MAX_LANES][BLAKE2B_BLOCKBYTES]  # salt || key, zero-padded
    cdef const unsigned char* block_at[KV_MAX_LANES]
    cdef unsigned char* out_at[KV_MAX_LANES]
    cdef uint64_t lens[KV_MAX_LANES]
    cdef Py_ssize_t i, done = 0
    cdef int j
    for i in range(n):
        _encode_key(symbols + i * KEY_SYMBOLS, serial + <uint64_t>i, _load40(secrets + i * SECRET_BYTES),
                    _load40(secrets + i * SECRET_BYTES + HALF_SECRET_BYTES))
    if lanes > KV_MAX_LANES or salt_len + KEY_SYMBOLS > BLAKE2B_BLOCKBYTES:
        lanes = 0
    if lanes > 0:
        for j in range(lanes):
            memset(blocks[j], 0, BLAKE2B_BLOCKBYTES)
            memcpy(blocks[j], salt, salt_len)
            block_at[j] = blocks[j]
            lens[j] = salt_len + KEY_SYMBOLS
        while n - done >= lanes:
            for j in range(lanes):
                memcpy(blocks[j] + salt_len, symbols + (done + j) * KEY_SYMBOLS, KEY_SYMBOLS)
                out_at[j] = out + (done + j) * DIGEST_SIZE
            kv_lanes(S.h, S.t[0], block_at, lens, out_at, DIGEST_SIZE)
            done += lanes
    blake2b_update(S, salt, salt_len)
    for i in range(done, n):
        blake2b_digest_from(S, <const unsigned char*>symbols + i * KEY_SYMBOLS, KEY_SYMBOLS, out + i * DIGEST_SIZE)


# ---------------------------------------------------------------------------
# BLAKE2b in lanes: one compression of several independent one-block messages at
# once, in SIMD vectors of 64-bit words (GCC/Clang vector extensions). The same
# RFC 7693 compression as _compress above, with every round unrolled; lane j
# hashes blocks[j]. x86-64 picks AVX-512 (8 lanes) or AVX2 (4 lanes) at run
# time, else 4 lanes in the baseline instruction set (SSE2, NEON); without GCC
# vector extensions there are no lanes and every hash goes through _compress.

cdef extern from *:
    """
    #include <string.h>
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ \\
        && (defined(__x86_64__) || defined(__aarch64__))
    #define KV_LANES_AVAILABLE 1
    #else
    #define KV_LANES_AVAILABLE 0
    #endif
    #define KV_MAX_LANES 8

    /* Hash lanes one-block messages: lane j is the BLAKE2b state with chain value
       h0 and byte counter t0 (nothing buffered), followed by the lens[j] bytes at
       blocks[j] (zero-padded to 128 bytes) as the last block; its first outlen
       (<= 64) digest bytes go to outs[j]. */
    typedef void (*kv_lanes_fn)(const uint64_t* h0, uint64_t t0, const unsigned char* const* blocks,
                                const uint64_t* lens, unsigned char* const* outs, size_t outlen);

    #if KV_LANES_AVAILABLE
    static const uint64_t kv_iv[8] = {
        0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
        0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};

    #define KV_ROTR(x, c) (((x) >> (c)) | ((x) << (64 - (c))))
    #define KV_G(a, b, c, d, x, y) do { \\
        a = a + b + (x); d = KV_ROTR(d ^ a, 32); c = c + d; b = KV_ROTR(b ^ c, 24); \\
        a = a + b + (y); d = KV_ROTR(d ^ a, 16); c = c + d; b = KV_ROTR(b ^ c, 63); } while (0)
    #define KV_ROUND(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) do { \\
        KV_G(v0, v4, v8, v12, m[s0], m[s1]); KV_G(v1, v5, v9, v13, m[s2], m[s3]); \\
        KV_G(v2, v6, v10, v14, m[s4], m[s5]); KV_G(v3, v7, v11, v15, m[s6], m[s7]); \\
        KV_G(v0, v5, v10, v15, m[s8], m[s9]); KV_G(v1, v6, v11, v12, m[s10], m[s11]); \\
        KV_G(v2, v7, v8, v13, m[s12], m[s13]); KV_G(v3, v4, v9, v14, m[s14], m[s15]); } while (0)
    /* The message schedule (RFC 7693 section 2.7), rounds 0-11. */
    #define KV_ROUNDS do { \\
        KV_ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); \\
        KV_ROUND(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3); \\
        KV_ROUND(11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4); \\
        KV_ROUND(7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8); \\
        KV_ROUND(9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13); \\
        KV_ROUND(2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9); \\
        KV_ROUND(12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11); \\
        KV_ROUND(13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10); \\
        KV_ROUND(6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5); \\
        KV_ROUND(10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0); \\
        KV_ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); \\
        KV_ROUND(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3); } while (0)

    /* dst (a vector) = expr for each lane j, through the array w. */
    #define KV_SPLAT(dst, expr) do { \\
        for (j = 0; j < sizeof(w) / sizeof(w[0]); j++) \\
            w[j] = (expr); \\
        memcpy(&(dst), w, sizeof(dst)); } while (0)

    /* One lanes function: vectors of L words (type VT), compiled with ATTR. */
    #define KV_DEFINE_LANES(NAME, VT, L, ATTR) \\
    ATTR static void NAME(const uint64_t* h0, uint64_t t0, const unsigned char* const* blocks, \\
                          const uint64_t* lens, unsigned char* const* outs, size_t outlen) { \\
        VT m[16], h[8], v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15; \\
        uint64_t w[L]; \\
        size_t i, j; \\
        for (i = 0; i < 16; i++) { \\
            for (j = 0; j < L; j++) memcpy(&w[j], blocks[j] + 8 * i, 8); \\
            memcpy(&m[i], w, sizeof(VT)); \\
        } \\
        for (i = 0; i < 8; i++) \\
            KV_SPLAT(h[i], h0[i]); \\
        v0 = h[0]; v1 = h[1]; v2 = h[2]; v3 = h[3]; v4 = h[4]; v5 = h[5]; v6 = h[6]; v7 = h[7]; \\
        KV_SPLAT(v8, kv_iv[0]); KV_SPLAT(v9, kv_iv[1]); KV_SPLAT(v10, kv_iv[2]); KV_SPLAT(v11, kv_iv[3]); \\
        KV_SPLAT(v12, kv_iv[4] ^ (t0 + lens[j])); /* the byte counter (its high word t1 is 0) */ \\
        KV_SPLAT(v13, kv_iv[5]); KV_SPLAT(v14, ~kv_iv[6]); /* the last block */ KV_SPLAT(v15, kv_iv[7]); \\
        KV_ROUNDS; \\
        h[0] ^= v0 ^ v8; h[1] ^= v1 ^ v9; h[2] ^= v2 ^ v10; h[3] ^= v3 ^ v11; \\
        h[4] ^= v4 ^ v12; h[5] ^= v5 ^ v13; h[6] ^= v6 ^ v14; h[7] ^= v7 ^ v15; \\
        for (i = 0; i < (outlen + 7) / 8; i++) { \\
            memcpy(w, &h[i], sizeof(VT)); \\
            for (j = 0; j < L; j++) { \\
                size_t k, n = outlen - 8 * i < 8 ? outlen - 8 * i : 8; \\
                for (k = 0; k < n; k++) outs[j][8 * i + k] = (unsigned char)(w[j] >> (8 * k)); \\
            } \\
        } \\
    }

    typedef uint64_t kv_u64x4 __attribute__((vector_size(32)));
    KV_DEFINE_LANES(kv_lanes4, kv_u64x4, 4, )
    #if defined(__x86_64__)
    typedef uint64_t kv_u64x8 __attribute__((vector_size(64)));
    KV_DEFINE_LANES(kv_lanes4_avx2, kv_u64x4, 4, __attribute__((target("avx2"))))
    KV_DEFINE_LANES(kv_lanes8_avx512, kv_u64x8, 8, __attribute__((target("avx512f"))))
    #endif
    #endif

    static kv_lanes_fn kv_lanes = NULL;

    /* Choose the lanes function: 0 none, 1 baseline (4 lanes), 2 AVX2 (4), 3 AVX-512 (8), -1 the best
       this CPU runs. Returns the lanes of the choice, or -1 if this build or CPU lacks it. */
    static int kv_lanes_select(int which) {
    #if KV_LANES_AVAILABLE
        int avx2 = 0, avx512 = 0;
        #if defined(__x86_64__)
        __builtin_cpu_init();
        avx2 = __builtin_cpu_supports("avx2");
        avx512 = __builtin_cpu_supports("avx512f");
        #endif
        if (which < 0)
            which = avx512 ? 3 : avx2 ? 2 : 1;
        switch (which) {
        case 0: kv_lanes = NULL; return 0;
        case 1: kv_lanes = kv_lanes4; return 4;
        #if defined(__x86_64__)
        case 2: if (!avx2) return -1; kv_lanes = kv_lanes4_avx2; return 4;
        case 3: if (!avx512) return -1; kv_lanes = kv_lanes8_avx512; return 8;
        #endif
        default: return -1;
        }
    #else
        if (which <= 0) { kv_lanes = NULL; return 0; }
        return -1;
    #endif
    }
    """
    enum:
        KV_MAX_LANES
    ctypedef void (*kv_lanes_fn)(const uint64_t* h0, uint64_t t0, const unsigned char* const* blocks,
                                 const uint64_t* lens, unsigned char* const* outs, size_t outlen) noexcept nogil
    kv_lanes_fn kv_lanes
    int kv_lanes_select(int which) noexcept


cdef int _lane_count = kv_lanes_select(-1)


def _select_lanes(which):
    """Test hook: hash in lanes with 0 none, 1 baseline, 2 AVX2, 3 AVX-512, -1 the best; the lanes, -1 if unavailable."""
    global _lane_count
    cdef int lanes = kv_lanes_select(which)
    if lanes >= 0:
        _lane_count = lanes
    return lanes


def _blake2b_lanes(key, person, messages):
    """Test hook: [blake2b(m, key=key, digest_size=16, person=person) for m in messages] through the
    lanes function (each message 1..128 bytes; how many at once is the lane count)."""
    cdef blake2b_state S
    cdef unsigned char blocks[KV_MAX_LANES][BLAKE2B_BLOCKBYTES]
    cdef unsigned char outs[KV_MAX_LANES][DIGEST_SIZE]
    cdef const unsigned char* bp[KV_MAX_LANES]
    cdef unsigned char* op[KV_MAX_LANES]
    cdef uint64_t lens[KV_MAX_LANES]
    cdef bytes k = bytes(key), p = bytes(person), m
    cdef int j
    if _lane_count == 0:
        raise ValueError("no lanes")
    if blake2b_init_keyed(&S, DIGEST_SIZE, k, len(k), p, len(p)) < 0:
        raise ValueError("key or person out of range")
    messages = [bytes(x) for x in messages]
    if len(messages) != _lane_count or not all(0 < len(x) <= BLAKE2B_BLOCKBYTES for x in messages):
        raise ValueError(f"need {_lane_count} messages of 1..128 bytes")
    for j in range(_lane_count):
        m = messages[j]
        memset(blocks[j], 0, BLAKE2B_BLOCKBYTES)
        memcpy(blocks[j], <const char*>m, len(m))
        lens[j] = len(m)
        bp[j] = blocks[j]
        op[j] = outs[j]
    kv_lanes(S.h, S.t[0], bp, lens, op, DIGEST_SIZE)
    return [PyBytes_FromStringAndSize(<char*>outs[j], DIGEST_SIZE) for j in range(_lane_count)]


# ---------------------------------------------------------------------------
# The batch check: format_serial_text, judge and check_keys.
#
# check_keys does per key, in C: parse, verifier and tag (one BLAKE2b block
# each), the sort by serial, the merge of the cards cursor's one getmulti
# answer, the constant-time tag comparison and, for the hot statuses (valid,
# unknown), the Result itself. Rarer statuses go through judge, which is
# _pure.judge compiled as it is written.

cdef enum:
    ACTIVE = 0  # card states (as keyvault.store.records)
    REDEEMED = 1
    VOIDED = 2
    INDEX_BITS = 25  # serial >> INDEX_BITS is the batch key
    CARD_SIZE = 17  # a cards record: state (1 byte) + tag (DIGEST_SIZE bytes)
    OUTCOME_HEAD = 17  # an outcomes record: state (1 byte) + at ms (8 bytes) + event index (8), then UTF-8 text
    SERIAL_KEY_BYTES = 8  # a serial as a store key: big-endian u64
    SERIAL_TEXT_SIZE = 14  # PPPP-BBB-IIIII
    SERIAL_TEXT_DASH1 = 4  # symbols before the first dash...
    SERIAL_TEXT_DASH2 = 7  # ...and before the second

    # A batch row: (salt, valid_from, valid_until, block, batch id, supplier id, supplier name, product).
    ROW_SALT = 0
    ROW_VALID_FROM = 1
    ROW_VALID_UNTIL = 2
    ROW_BLOCK = 3
    ROW_BATCH = 4
    ROW_SUPPLIER = 5
    ROW_SUPPLIER_NAME = 6
    ROW_PRODUCT = 7
    ROW_FIELDS = 8

    UNKNOWN_SALT_BYTES = 16  # the salt hashed for a key whose batch is unknown: 16 zero bytes
    AHEAD = 8  # items prefetched ahead in check_keys' loops
    SMALL_SORT = 32  # fewer items than this are sorted by insertion
    RADIX_BITS = 11  # bits per pass of the radix sort
    RADIX_SIZE = 2048  # 1 << RADIX_BITS
    RADIX_MASK = 2047

    # What check_keys' pass A found for a key.
    VERDICT_UNKNOWN = 0  # no such key (pass B makes the Result)
    VERDICT_VALID = 1  # valid (pass B makes the Result)
    VERDICT_JUDGED = 2  # judged in pass A, or left for its outcome record


cdef extern from *:
    """
    /* A Result (a NamedTuple: a tuple subclass with no instance dict) made as
       tuple.__new__(Result, items) makes it: allocated by the type, items set.
       From Python 3.14 a tuple caches its hash in a field tp_alloc would leave 0
       (a valid hash) instead of -1, so there, and in free-threaded builds,
       tuple.__new__ itself is called. */
    #if PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
    #define KEYVAULT_DIRECT_TUPLES 1
    #else
    #define KEYVAULT_DIRECT_TUPLES 0
    #endif

    static int keyvault_tuple_subtype(PyObject* type) {
        PyTypeObject* t = (PyTypeObject*)type;
        if (!KEYVAULT_DIRECT_TUPLES || !PyType_Check(type) || !PyType_IsSubtype(t, &PyTuple_Type))
            return 0;
        return t->tp_basicsize == PyTuple_Type.tp_basicsize && t->tp_itemsize == PyTuple_Type.tp_itemsize
            && t->tp_alloc == PyType_GenericAlloc;
    }

    static PyObject* keyvault_result_items(PyObject* type, int direct, PyObject** items);

    static PyObject* keyvault_result(PyObject* type, int direct, PyObject* status, PyObject* serial,
                                     PyObject* batch, PyObject* supplier, PyObject* supplier_name,
                                     PyObject* product, PyObject* message) {
        PyObject* items[13] = {status, serial, batch, supplier, supplier_name, product,
                               Py_None, Py_None, Py_None, Py_None, Py_None, Py_None, message};
        return keyvault_result_items(type, direct, items);
    }

    /* A Result of 13 items (borrowed references). */
    static PyObject* keyvault_result_items(PyObject* type, int direct, PyObject** items) {
        PyObject *result, *plain, *args;
        Py_ssize_t i;
        int atomic = 1;
        if (direct) {
            result = ((PyTypeObject*)type)->tp_alloc((PyTypeObject*)type, 13);
            if (result == NULL)
                return NULL;
            for (i = 0; i < 13; i++) {
                Py_INCREF(items[i]);
                PyTuple_SET_ITEM(result, i, items[i]);
            }
        } else {
            plain = PyTuple_New(13);
            if (plain == NULL)
                return NULL;
            for (i = 0; i < 13; i++) {
                Py_INCREF(items[i]);
                PyTuple_SET_ITEM(plain, i, items[i]);
            }
            args = PyTuple_Pack(1, plain);
            Py_DECREF(plain);
            if (args == NULL)
                return NULL;
            result = PyTuple_Type.tp_new((PyTypeObject*)type, args, NULL);
            Py_DECREF(args);
            if (result == NULL)
                return NULL;
        }
        /* A Result of str and None besides its status cannot be part of cyclic garbage: str and None
           refer to nothing, and the status (a Status member, which this module also holds) is
           never garbage. So the cycle collector need not track it (as CPython untracks tuples of
           untracked items): a batch of results then costs the collector nothing. */
        for (i = 1; i < 13; i++)
            if (items[i] != Py_None && !PyUnicode_CheckExact(items[i]))
                atomic = 0;
        if (atomic && PyObject_GC_IsTracked(result))
            PyObject_GC_UnTrack(result);
        return result;
    }
    """
    bint keyvault_tuple_subtype(object type) noexcept
    object keyvault_result(object type, int direct, object status, object serial, object batch,
                           object supplier, object supplier_name, object product, object message)
    object keyvault_result_items(object type, int direct, PyObject** items)


cdef extern from *:
    """
    #if defined(__GNUC__)
    #define KV_PREFETCH(p) __builtin_prefetch((const void*)(p))
    #else
    #define KV_PREFETCH(p) ((void)0)
    #endif
    """
    void KV_PREFETCH(const void* p) noexcept nogil  # a hint: bring *p into the cache soon


cdef extern from *:
    """
    /* check_keys' answers, held in a C array until the list is made: a list of 100 000 items,
       made early, would be traversed by every collection the batch's allocations trigger. */
    static void kv_slot_set(PyObject** slots, Py_ssize_t i, PyObject* o) {
        Py_INCREF(o);
        Py_XSETREF(slots[i], o);
    }

    /* The list of the n slots (None where empty), which takes over their references. */
    static PyObject* kv_list_from_slots(PyObject** slots, Py_ssize_t n) {
        PyObject* list = PyList_New(n);
        PyObject* o;
        Py_ssize_t i;
        if (list == NULL)
            return NULL;
        for (i = 0; i < n; i++) {
            o = slots[i];
            if (o == NULL) {
                o = Py_None;
                Py_INCREF(o);
            }
            slots[i] = NULL;
            PyList_SET_ITEM(list, i, o);
        }
        return list;
    }

    static void kv_slots_clear(PyObject** slots, Py_ssize_t n) {
        Py_ssize_t i;
        if (slots != NULL)
            for (i = 0; i < n; i++)
                Py_CLEAR(slots[i]);
    }
    """
    void kv_slot_set(PyObject** slots, Py_ssize_t i, object o)
    list kv_list_from_slots(PyObject** slots, Py_ssize_t n)
    void kv_slots_clear(PyObject** slots, Py_ssize_t n)


# keyvault.results and keyvault.clock, imported on first use (as _pure does).
cdef object _Result = None
cdef object _Status = None
cdef object _VALID = None
cdef object _UNKNOWN = None
cdef object _iso = None
cdef bint _direct_results = False
cdef str _NO_SUCH_KEY = "no such key in this store"

# check_keys' phase timings (ns of the profiling clock), when _profile_check_keys(clock).
cdef bint _profiling = False
cdef object _clock_ns = None
cdef object _last_profile = None


cdef int _load_results() except -1:
    global _Result, _Status, _VALID, _UNKNOWN, _iso, _direct_results
    if _Result is None:
        from keyvault.clock import iso
        from keyvault.results import Result, Status
        _iso = iso
        _Status = Status
        _VALID = Status.VALID
        _UNKNOWN = Status.UNKNOWN
        _direct_results = keyvault_tuple_subtype(Result)
        _Result = Result
    return 0


cdef inline uint64_t _load_be64(const unsigned char* p) noexcept nogil:
    """The big-endian 64-bit number at p."""
    cdef uint64_t v = 0
    cdef int i
    for i in range(SERIAL_KEY_BYTES):
        v = (v << 8) | p[i]
    return v


cdef inline bytes _serial_key(uint64_t serial):
    """A serial as the store keys it: 8 bytes big-endian."""
    cdef bytes key = PyBytes_FromStringAndSize(NULL, SERIAL_KEY_BYTES)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(key)
    cdef int i
    for i in range(SERIAL_KEY_BYTES - 1, -1, -1):
        p[i] = serial & 0xFF
        serial >>= 8
    return key


cdef str _serial_text(uint64_t serial):
    """PPPP-BBB-IIIII for the low 60 bits of serial."""
    cdef unsigned char values[SERIAL_SYMBOLS]
    cdef Py_ssize_t i, j = 0
    _put_symbols(values, serial, SERIAL_SYMBOLS)
    result = PyUnicode_New(SERIAL_TEXT_SIZE, ASCII_MAX)
    cdef unsigned char* out = PyUnicode_1BYTE_DATA(result)
    for i in range(SERIAL_SYMBOLS):
        if i == SERIAL_TEXT_DASH1 or i == SERIAL_TEXT_DASH2:
            out[j] = b'-'
            j += 1
        out[j] = ALPHABET[values[i]]
        j += 1
    return result


cdef inline void _digest_block(const blake2b_state* S, const unsigned char* block, size_t n,
                               unsigned char* out) noexcept nogil:
    """blake2b_digest_from(S, block, n, out) for 0 < n <= BLAKE2B_BLOCKBYTES bytes, given zero-padded
    to a whole block, when S has nothing buffered (fresh from blake2b_init or blake2b_init_keyed).

    The message is the last block: one compression from S's chain value.
    """
    cdef blake2b_state fork
    cdef size_t i
    memcpy(fork.h, S.h, sizeof(fork.h))
    fork.t[0] = S.t[0]
    fork.t[1] = S.t[1]
    _count(&fork, n)
    _compress(&fork, block, True)
    for i in range(S.outlen):
        out[i] = <unsigned char>(fork.h[i // WORD_BYTES] >> (8 * (i % WORD_BYTES)))


ctypedef struct _Found:
    uint64_t serial
    PyObject* row  # the batch row (kept alive by check_keys' rows list), NULL for an unknown batch
    Py_ssize_t index  # position in the input
    const unsigned char* salt  # the batch's salt (kept alive as the row), or the unknown batch's
    size_t salt_len
    unsigned char key[KEY_SYMBOLS]  # the canonical key
    unsigned char tag[DIGEST_SIZE]  # the tag its card record must hold: tag(pepper, verifier(salt, key))
    int verdict  # VERDICT_*, once its card record is read


cdef void _tag_one(const blake2b_state* salted, const blake2b_state* keyed, _Found* f) noexcept nogil:
    """f.tag, one hash at a time."""
    cdef unsigned char block[BLAKE2B_BLOCKBYTES]
    cdef blake2b_state fork
    memset(block, 0, BLAKE2B_BLOCKBYTES)
    if f.salt_len + KEY_SYMBOLS <= BLAKE2B_BLOCKBYTES:
        memcpy(block, f.salt, f.salt_len)
        memcpy(block + f.salt_len, f.key, KEY_SYMBOLS)
        _digest_block(salted, block, f.salt_len + KEY_SYMBOLS, block)
        memset(block + DIGEST_SIZE, 0, BLAKE2B_BLOCKBYTES - DIGEST_SIZE)
    else:
        fork = salted[0]
        blake2b_update(&fork, f.salt, f.salt_len)
        blake2b_update(&fork, f.key, KEY_SYMBOLS)
        blake2b_final(&fork, block)
    _digest_block(keyed, block, DIGEST_SIZE, f.tag)


cdef void _tag_all(const blake2b_state* salted, const blake2b_state* keyed, _Found* found, Py_ssize_t n,
                   int lanes) noexcept nogil:
    """Every found key's tag: lanes keys at a time when they fit one block (each key's salt || key),
    the rest one by one."""
    cdef unsigned char vblocks[KV_MAX_LANES][BLAKE2B_BLOCKBYTES]  # salt || key, zero-padded
    cdef unsigned char tblocks[KV_MAX_LANES][BLAKE2B_BLOCKBYTES]  # the verifier, zero-padded
    cdef const unsigned char* vptr[KV_MAX_LANES]
    cdef const unsigned char* tptr[KV_MAX_LANES]
    cdef unsigned char* tout[KV_MAX_LANES]
    cdef unsigned char* out[KV_MAX_LANES]
    cdef uint64_t vlen[KV_MAX_LANES]
    cdef uint64_t tlen[KV_MAX_LANES]
    cdef const unsigned char* held[KV_MAX_LANES]  # the salt each vblocks[j] holds
    cdef size_t held_len[KV_MAX_LANES]
    cdef Py_ssize_t group[KV_MAX_LANES]  # the found index in each lane
    cdef Py_ssize_t k
    cdef int j, filled = 0
    cdef _Found* f
    if lanes > KV_MAX_LANES:
        lanes = 0
    for j in range(lanes):
        memset(vblocks[j], 0, BLAKE2B_BLOCKBYTES)
        memset(tblocks[j], 0, BLAKE2B_BLOCKBYTES)
        vptr[j] = vblocks[j]
        tptr[j] = tblocks[j]
        tout[j] = tblocks[j]
        tlen[j] = DIGEST_SIZE
        held[j] = NULL
        held_len[j] = 0
    for k in range(n):
        f = &found[k]
        if lanes == 0 or f.salt_len + KEY_SYMBOLS > BLAKE2B_BLOCKBYTES:
            _tag_one(salted, keyed, f)
            continue
        j = filled
        if held[j] != f.salt or held_len[j] != f.salt_len:
            memset(vblocks[j], 0, BLAKE2B_BLOCKBYTES)
            memcpy(vblocks[j], f.salt, f.salt_len)
            held[j] = f.salt
            held_len[j] = f.salt_len
        memcpy(vblocks[j] + f.salt_len, f.key, KEY_SYMBOLS)
        vlen[j] = f.salt_len + KEY_SYMBOLS
        out[j] = f.tag
        group[j] = k
        filled += 1
        if filled == lanes:
            kv_lanes(salted.h, salted.t[0], vptr, vlen, tout, DIGEST_SIZE)
            kv_lanes(keyed.h, keyed.t[0], tptr, tlen, out, DIGEST_SIZE)
            filled = 0
    for j in range(filled):  # fewer than lanes left over
        _tag_one(salted, keyed, &found[group[j]])


ctypedef struct _SortItem:
    uint64_t serial
    Py_ssize_t at  # index into the found array


ctypedef struct _Record:
    uint64_t serial  # the key of one getmulti answer
    PyObject* value  # its value (borrowed from the answer list)


cdef void _sort_items(_SortItem* a, _SortItem* scratch, Py_ssize_t n) noexcept nogil:
    """Sort by serial, keeping the order of equal serials: insertion sort for a few items, else an
    LSD radix sort over the low bits in which the serials differ (scratch holds n items)."""
    cdef Py_ssize_t i, j, total, c
    cdef Py_ssize_t counts[RADIX_SIZE]
    cdef _SortItem x
    cdef _SortItem* src = a
    cdef _SortItem* dst = scratch
    cdef _SortItem* swap
    cdef uint64_t differ = 0
    cdef unsigned int shift = 0, bits = 0, digit
    if n < SMALL_SORT:
        for i in range(1, n):
            x = a[i]
            j = i
            while j > 0 and a[j - 1].serial > x.serial:
                a[j] = a[j - 1]
                j -= 1
            a[j] = x
        return
    for i in range(1, n):
        differ |= a[i].serial ^ a[0].serial
    while differ:  # bits above the highest differing one are the same in every serial
        bits += 1
        differ >>= 1
    while shift < bits:
        memset(counts, 0, sizeof(counts))
        for i in range(n):
            counts[(src[i].serial >> shift) & RADIX_MASK] += 1
        total = 0
        for i in range(RADIX_SIZE):
            c = counts[i]
            counts[i] = total
            total += c
        for i in range(n):
            digit = (src[i].serial >> shift) & RADIX_MASK
            dst[counts[digit]] = src[i]
            counts[digit] += 1
        swap = src
        src = dst
        dst = swap
        shift += RADIX_BITS
    if src != a:
        memcpy(a, src, <size_t>n * sizeof(_SortItem))


cdef inline bint _int64_of(object value, long long* out) noexcept:
    """Whether value is an int that fits 64 bits (stored in *out); no exception is left set."""
    cdef int overflow = 0
    if type(value) is not int:
        return False
    out[0] = PyLong_AsLongLongAndOverflow(value, &overflow)
    return overflow == 0


cdef bint _open_now(object row_obj, dict key_blocks, object serial_obj, long long now_ms) noexcept:
    """No key-level blacklist entry for the serial, and now inside the batch row's validity window (the
    row's own block is the caller's to check): the last rules of a valid answer."""
    cdef long long bound
    cdef PyObject* entry
    if key_blocks:
        entry = PyDict_GetItemWithError(key_blocks, serial_obj)
        if entry != NULL and entry != <PyObject*>None:
            return False
    if PyTuple_GET_ITEM(row_obj, ROW_VALID_FROM) != <PyObject*>None:
        if not (_int64_of(<object>PyTuple_GET_ITEM(row_obj, ROW_VALID_FROM), &bound) and now_ms >= bound):
            return False
    if PyTuple_GET_ITEM(row_obj, ROW_VALID_UNTIL) != <PyObject*>None:
        if not (_int64_of(<object>PyTuple_GET_ITEM(row_obj, ROW_VALID_UNTIL), &bound) and now_ms < bound):
            return False
    return True


cdef object _NO_MATCH = object()  # _record_state: the tag did not match


@cython.boundscheck(True)  # Python objects of any shape are indexed here: as Python does
@cython.wraparound(True)
cdef object _record_state(object record, bytes expected):
    """The state of a card record that is not bytes (a buffer, ...), read as _pure reads it, or _NO_MATCH."""
    if not tags_equal(bytes(record[1:CARD_SIZE]), expected):
        return _NO_MATCH
    return record[0]


def format_serial_text(serial: int) -> str:
    """A serial as printed: PPPP-BBB-IIIII."""
    if type(serial) is not int:
        return _pure.format_serial_text(serial)
    return _serial_text(PyLong_AsUnsignedLongLongMask(serial))


# The rule book has one definition, the specification's: check_keys builds the hot results (valid,
# unknown) itself, and every rarer status goes through this same function.
judge = _pure.judge


def check_keys(keys: list, pepper: bytes, batches: dict, key_blocks: dict, overlay: dict, cards: object,
               outcomes: object, now: int) -> list:
    """Judge many typed keys at once: one Result per key, in input order; None for non-native input.

    batches maps a batch key to its row (salt, valid_from, valid_until, block, batch id,
    supplier id, supplier name, product), block being the (level, reason) of a supplier or batch
    blacklist entry, or None; key_blocks maps a serial to (level, reason); overlay maps a serial
    to its unfolded ledger change (state, at ms, text, seq). cards and outcomes are py-lmdb
    cursors, each read with one getmulti over the sorted serials. A key whose batch is unknown
    is still hashed, so unknown and wrong keys cost the same. TypeError for a non-str key.
    """
    if (type(keys) is list or type(keys) is tuple) and _binary(pepper) \
            and _binary_size(pepper) <= BLAKE2B_KEYBYTES and type(batches) is dict \
            and type(key_blocks) is dict and type(overlay) is dict and type(now) is int:
        out = _check_keys(keys if type(keys) is list else list(keys), pepper, batches, key_blocks, overlay,
                          cards, outcomes, now)
        if out is not None:
            return out
    # Other types, or a batch row that is not a tuple of 8 with a bytes salt: before any store read,
    # so the specification can answer instead.
    return _pure.check_keys(keys, pepper, batches, key_blocks, overlay, cards, outcomes, now)


def accept_redeems(results: list, orders: list, now: int, when: str) -> tuple[list, dict]:
    """Turn check_keys' answers for keys to redeem into redeem answers, in place: (changes, counts).

    ``orders[i]`` is the order id for ``results[i]``; ``when`` is ``now`` as ISO text. A valid key is
    accepted for its order (once per serial: a later pair with the same order gets the same answer,
    one with another order is refused as redeemed by the first); a key redeemed by the same order
    before answers accepted again (a retry). changes are the ledger's (serial, REDEEMED, now, order)
    for each key accepted here, counts the accepted keys by (batch id, supplier id).
    """
    cdef Py_ssize_t n, i, j
    cdef PyObject* items[13]
    cdef PyObject* found
    _load_results()
    if type(results) is not list or type(orders) is not list:
        return _pure.accept_redeems(results, orders, now, when)
    n = min(PyList_GET_SIZE(results), PyList_GET_SIZE(orders))
    for i in range(n):  # Results and str orders only (as check_keys and redeem_many give): else the specification
        if type(<object>PyList_GET_ITEM(results, i)) is not _Result \
                or PyTuple_GET_SIZE(<object>PyList_GET_ITEM(results, i)) != 13 \
                or type(<object>PyList_GET_ITEM(orders, i)) is not str:
            return _pure.accept_redeems(results, orders, now, when)
    accepted = _Status.ACCEPTED
    redeemed = _Status.REDEEMED
    taken = {}  # serial text -> (order, time) accepted in this call
    changes = []
    counts = {}
    for i in range(n):
        result = <object>PyList_GET_ITEM(results, i)
        order = <object>PyList_GET_ITEM(orders, i)
        status = <object>PyTuple_GET_ITEM(result, 0)
        if status is _VALID:
            for j in range(13):
                items[j] = PyTuple_GET_ITEM(result, j)
            serial = <object>items[1]
            found = PyDict_GetItemWithError(taken, serial)
            if found == NULL:
                first = (order, when)
                taken[serial] = first
                changes.append((_parse_serial(serial) if type(serial) is str else parse_serial(serial or ""),
                                REDEEMED, now, order))
                scope = (<object>items[2] or "", <object>items[3] or "")
                found = PyDict_GetItemWithError(counts, scope)
                counts[scope] = (<object>found + 1) if found != NULL else 1
                items[0] = <PyObject*>accepted
                items[6] = <PyObject*>order
                items[7] = <PyObject*>when
            else:
                first = <object>found
                if first[0] == order:  # the same pair twice in one call: the same answer
                    items[0] = <PyObject*>accepted
                    items[6] = <PyObject*>order
                    items[7] = PyTuple_GET_ITEM(first, 1)
                else:
                    message = f"already redeemed by order {first[0]} at {first[1]}"
                    items[0] = <PyObject*>redeemed
                    items[6] = PyTuple_GET_ITEM(first, 0)
                    items[7] = PyTuple_GET_ITEM(first, 1)
                    items[12] = <PyObject*>message
            results[i] = keyvault_result_items(_Result, _direct_results, items)
        elif status is redeemed and <object>PyTuple_GET_ITEM(result, 6) == order:  # a retry: the first answer
            for j in range(13):
                items[j] = PyTuple_GET_ITEM(result, j)
            items[0] = <PyObject*>accepted
            items[12] = <PyObject*>None
            results[i] = keyvault_result_items(_Result, _direct_results, items)
    return changes, counts


# check_one's hash states: the verifier's (unkeyed) and the tag's, keyed with the last pepper seen.
cdef blake2b_state _one_salted
cdef blake2b_state _one_keyed
cdef object _one_pepper = None  # the bytes _one_keyed was keyed with (held: its identity stays its own)


def check_one(key: str, pepper: bytes, batches: dict, key_blocks: dict, overlay: dict, txn: object, db: object,
              now: int) -> object:
    """One typed key's Result when its card says active and it is valid now, as check_keys gives it; else None.

    The single-key hot path: the card record is read with ``txn.get(serial key, None, db)``. A None
    says only "not for this path" (not a native key, not valid, or an unfolded ledger change for it):
    check_keys then says what it is, so every refusal costs the same work whatever its cause.
    """
    global _one_pepper
    cdef unsigned char values[KEY_SYMBOLS]
    cdef _Found f
    cdef Py_ssize_t position, k
    cdef uint64_t serial
    cdef PyObject* row
    cdef PyObject* entry
    cdef const unsigned char* data
    cdef long long now_ms = 0, bound
    cdef bint matched, valid
    if type(key) is not str or type(pepper) is not bytes or PyBytes_GET_SIZE(pepper) > BLAKE2B_KEYBYTES \
            or type(batches) is not dict or type(key_blocks) is not dict or type(overlay) is not dict:
        return _pure.check_one(key, pepper, batches, key_blocks, overlay, txn, db, now)
    if _parse(<str>key, values, &position) != OK:
        return None
    serial = _serial_of(values)
    row = PyDict_GetItemWithError(batches, PyLong_FromUnsignedLongLong(serial >> INDEX_BITS))
    if row == NULL:
        return None
    row_obj = <object>row
    if type(row_obj) is not tuple or PyTuple_GET_SIZE(row_obj) < ROW_FIELDS \
            or type(<object>PyTuple_GET_ITEM(row_obj, ROW_SALT)) is not bytes:
        return _pure.check_one(key, pepper, batches, key_blocks, overlay, txn, db, now)
    salt_obj = <object>PyTuple_GET_ITEM(row_obj, ROW_SALT)
    if pepper is not _one_pepper:
        blake2b_init_keyed(&_one_keyed, DIGEST_SIZE, <const unsigned char*>PyBytes_AS_STRING(pepper),
                           <size_t>PyBytes_GET_SIZE(pepper), <const unsigned char*>PERSON_TAG, strlen(PERSON_TAG))
        _one_pepper = pepper
    for k in range(KEY_SYMBOLS):
        f.key[k] = ALPHABET[values[k]]
    f.salt = <const unsigned char*>PyBytes_AS_STRING(salt_obj)
    f.salt_len = <size_t>PyBytes_GET_SIZE(salt_obj)
    _tag_one(&_one_salted, &_one_keyed, &f)
    record = txn.get(_serial_key(serial), None, db)
    if type(record) is not bytes:
        if record is None:
            return None
        return _pure.check_one(key, pepper, batches, key_blocks, overlay, txn, db, now)
    if PyBytes_GET_SIZE(record) < CARD_SIZE:
        return None
    data = <const unsigned char*>PyBytes_AS_STRING(record)
    matched = digests_equal(data + 1, f.tag, DIGEST_SIZE)
    if not matched or data[0] != ACTIVE:
        return None
    serial_obj = PyLong_FromUnsignedLongLong(serial)
    if len(overlay):
        entry = PyDict_GetItemWithError(overlay, serial_obj)
        if entry != NULL and entry != <PyObject*>None:
            return None
    _load_results()
    # Valid, decided here when nothing else can apply (as check_keys decides); anything else is judge's.
    valid = _int64_of(now, &now_ms) and PyTuple_GET_ITEM(row_obj, ROW_BLOCK) == <PyObject*>None \
        and _open_now(row_obj, key_blocks, serial_obj, now_ms)
    if valid:
        return keyvault_result(_Result, _direct_results, _VALID, _serial_text(serial),
                               <object>PyTuple_GET_ITEM(row_obj, ROW_BATCH),
                               <object>PyTuple_GET_ITEM(row_obj, ROW_SUPPLIER),
                               <object>PyTuple_GET_ITEM(row_obj, ROW_SUPPLIER_NAME),
                               <object>PyTuple_GET_ITEM(row_obj, ROW_PRODUCT), None)
    result = judge(serial_obj, ACTIVE, row_obj, key_blocks, None, None, now)
    return result if result.status is _VALID else None


@cython.boundscheck(True)  # Python objects of any shape are indexed here: as Python does
@cython.wraparound(True)
cdef object _check_keys(list keys, object pepper, dict batches, dict key_blocks, dict overlay, object cards,
                        object outcomes, object now):
    """check_keys for the types it reads in C; None (before any store read) for a batch row it does not."""
    cdef Py_ssize_t n = len(keys), nfound = 0, nrecords = 0, i, k, r
    cdef _Found* found = NULL
    cdef _Found* f
    cdef _SortItem* order = NULL
    cdef _Record* records = NULL
    cdef blake2b_state salted, keyed
    cdef unsigned char values[KEY_SYMBOLS]
    cdef unsigned char zero_salt[UNKNOWN_SALT_BYTES]
    cdef const unsigned char* salt = NULL
    cdef const unsigned char* data
    cdef size_t salt_len = 0
    cdef bint have_batch = False, fast_records, now_fits, valid
    cdef Py_ssize_t position
    cdef uint64_t serial, batch_key = 0, previous
    cdef PyObject* row = NULL
    cdef PyObject* record
    cdef PyObject* entry
    cdef long long now_ms = 0, bound
    cdef int state
    cdef list rows, marks = None
    cdef PyObject** slots = NULL  # the answer for each key, or NULL (None)
    cdef object change, serial_obj, state_obj, row_obj, text, answer, by_key = None

    _load_results()
    if _profiling:
        marks = [_clock_ns()]
    now_fits = _int64_of(now, &now_ms)
    rows = []  # every row pointed to by found: alive until the end, whatever getmulti does
    memset(zero_salt, 0, UNKNOWN_SALT_BYTES)
    blake2b_init(&salted, DIGEST_SIZE, <const unsigned char*>PERSON_VERIFIER, strlen(PERSON_VERIFIER))
    blake2b_init_keyed(&keyed, DIGEST_SIZE, _binary_data(pepper), _binary_size(pepper),
                       <const unsigned char*>PERSON_TAG, strlen(PERSON_TAG))
    if <size_t>n > (<size_t>PY_SSIZE_T_MAX) // sizeof(_Found):
        raise MemoryError()
    found = <_Found*>PyMem_Malloc(<size_t>max(n, 1) * sizeof(_Found))
    order = <_SortItem*>PyMem_Malloc(<size_t>max(n, 1) * 2 * sizeof(_SortItem))
    slots = <PyObject**>PyMem_Calloc(<size_t>max(n, 1), sizeof(PyObject*))
    try:
        if found == NULL or order == NULL or slots == NULL:
            raise MemoryError()

        # Parse every key, in input order, and find its batch's row.
        for i in range(n):
            if i + AHEAD < n:  # the key AHEAD on: its object, and its characters in the next line
                KV_PREFETCH(PyList_GET_ITEM(keys, i + AHEAD))
                KV_PREFETCH(<char*>PyList_GET_ITEM(keys, i + AHEAD) + 64)
            key = keys[i]
            f = &found[nfound]
            if type(key) is str:
                if _parse(<str>key, values, &position) != OK:
                    continue
                serial = _serial_of(values)
                for k in range(KEY_SYMBOLS):
                    f.key[k] = ALPHABET[values[k]]
            elif isinstance(key, str):  # a subclass: its own methods may normalise it
                parsed = _pure.parse_key(key)
                if parsed[0] != OK:
                    continue
                serial = parsed[1]
                text = parsed[2]
                if type(text) is not bytes or PyBytes_GET_SIZE(text) != KEY_SYMBOLS:
                    return None
                memcpy(f.key, PyBytes_AS_STRING(text), KEY_SYMBOLS)
            else:
                raise TypeError("a key must be a string")
            if not have_batch or serial >> INDEX_BITS != batch_key:
                batch_key = serial >> INDEX_BITS
                have_batch = True
                row = PyDict_GetItemWithError(batches, PyLong_FromUnsignedLongLong(batch_key))
                if row == NULL:
                    salt, salt_len = zero_salt, UNKNOWN_SALT_BYTES
                else:
                    row_obj = <object>row
                    if type(row_obj) is not tuple or PyTuple_GET_SIZE(row_obj) < ROW_FIELDS \
                            or not _binary(row_obj[ROW_SALT]):
                        return None
                    rows.append(row_obj)
                    salt_obj = bytes(row_obj[ROW_SALT])  # (a bytearray is copied: nothing can resize it then)
                    rows.append(salt_obj)
                    salt = <const unsigned char*>PyBytes_AS_STRING(salt_obj)
                    salt_len = <size_t>PyBytes_GET_SIZE(salt_obj)
            f.serial = serial
            f.row = row
            f.index = i
            f.salt = salt
            f.salt_len = salt_len
            nfound += 1
        if marks is not None:
            marks.append(_clock_ns())

        # Hash (verifier, then tag), and sort by serial (equal serials in input order). The GIL is
        # kept: getting it back from a busy thread can take a whole switch interval (5 ms), more
        # than hashing takes; getmulti lets other threads run three times per key anyway.
        _tag_all(&salted, &keyed, found, nfound, _lane_count)
        if marks is not None:
            marks.append(_clock_ns())
        for k in range(nfound):
            order[k].serial = found[k].serial
            order[k].at = k
        _sort_items(order, order + nfound, nfound)

        # Read the cards in one getmulti.
        wanted = [None] * nfound
        for k in range(nfound):
            wanted[k] = _serial_key(order[k].serial)
        if marks is not None:
            marks.append(_clock_ns())
        answer = cards.getmulti(wanted)
        if marks is not None:
            marks.append(_clock_ns())

        # The answer as a sorted C array when it is a list of (8 bytes, value) in key order (as a
        # cursor's is); anything else is read as _pure reads it, through a dict.
        fast_records = type(answer) is list
        if fast_records:
            nrecords = PyList_GET_SIZE(answer)
            records = <_Record*>PyMem_Malloc(<size_t>max(nrecords, 1) * sizeof(_Record))
            if records == NULL:
                raise MemoryError()
            previous = 0
            for r in range(nrecords):
                entry = PyList_GET_ITEM(answer, r)
                if not PyTuple_CheckExact(<object>entry) or PyTuple_GET_SIZE(<object>entry) != 2:
                    fast_records = False
                    break
                record = PyTuple_GET_ITEM(<object>entry, 0)
                if not PyBytes_CheckExact(<object>record) or PyBytes_GET_SIZE(<object>record) != SERIAL_KEY_BYTES:
                    fast_records = False
                    break
                serial = _load_be64(<const unsigned char*>PyBytes_AS_STRING(<object>record))
                if serial < previous:
                    fast_records = False
                    break
                previous = serial
                records[r].serial = serial
                records[r].value = PyTuple_GET_ITEM(<object>entry, 1)
        if not fast_records:
            by_key = dict(answer)

        # Pass A, in serial order (as _pure goes): match each key's card record, in constant time,
        # and decide. judge (the rarer statuses) is called here, in _pure's order; the valid and
        # unknown results, which cannot fail, are made in pass B.
        pending = []  # (serial, index, state, row): the outcome record says why the key is not active
        r = 0
        for k in range(nfound):
            if k + AHEAD < nfound:
                KV_PREFETCH(&found[order[k + AHEAD].at])
                if fast_records and r + AHEAD < nrecords:
                    KV_PREFETCH(records[r + AHEAD].value)
            f = &found[order[k].at]
            record = NULL
            if f.row != NULL:
                if fast_records:
                    while r < nrecords and records[r].serial < f.serial:
                        r += 1
                    while r + 1 < nrecords and records[r + 1].serial == f.serial:
                        r += 1  # a key asked for twice: a dict keeps the last answer
                    if r < nrecords and records[r].serial == f.serial:
                        record = records[r].value
                else:
                    record = PyDict_GetItemWithError(by_key, wanted[k])
            # state: the record's first byte when its tag matched; -2 when the record (not bytes)
            # matched and state_obj is its state; -1: no such key.
            state = -1
            state_obj = None
            if record != NULL and <object>record is not None:
                if PyBytes_CheckExact(<object>record):
                    data = <const unsigned char*>PyBytes_AS_STRING(<object>record)
                    if PyBytes_GET_SIZE(<object>record) >= CARD_SIZE and digests_equal(data + 1, f.tag, DIGEST_SIZE):
                        state = data[0]
                        state_obj = state  # a small int: no allocation
                else:
                    state_obj = _record_state(<object>record, PyBytes_FromStringAndSize(<char*>f.tag, DIGEST_SIZE))
                    if state_obj is _NO_MATCH:
                        state_obj = None
                    else:
                        state = -2
            if state == -1:
                f.verdict = VERDICT_UNKNOWN
                continue
            f.verdict = VERDICT_JUDGED
            row_obj = <object>f.row
            serial_obj = PyLong_FromUnsignedLongLong(f.serial) if len(overlay) or len(key_blocks) else None
            change = None
            if len(overlay):
                entry = PyDict_GetItemWithError(overlay, serial_obj)
                if entry != NULL:
                    change = <object>entry
            if (state > ACTIVE or (state == -2 and state_obj != ACTIVE)) and change is None:
                if serial_obj is None:
                    serial_obj = PyLong_FromUnsignedLongLong(f.serial)
                pending.append((serial_obj, f.index, state_obj, row_obj))
                continue
            # Valid, decided here when nothing else can apply; anything else is judge's.
            valid = state == ACTIVE and change is None and now_fits \
                and PyTuple_GET_ITEM(row_obj, ROW_BLOCK) == <PyObject*>None \
                and _open_now(row_obj, key_blocks, serial_obj, now_ms)
            if valid:
                f.verdict = VERDICT_VALID
            else:
                if serial_obj is None:
                    serial_obj = PyLong_FromUnsignedLongLong(f.serial)
                kv_slot_set(slots, f.index, judge(serial_obj, state_obj, row_obj, key_blocks, change, None, now))
        if marks is not None:
            marks.append(_clock_ns())
        # The store's answer is no longer needed (records pointed into it): let it go now.
        PyMem_Free(records)
        records = NULL
        answer = by_key = wanted = None
        if marks is not None:
            marks.append(_clock_ns())

        # Pass B, in input order: the valid and unknown results.
        for k in range(nfound):
            f = &found[k]
            if f.verdict == VERDICT_VALID:
                row_obj = <object>f.row
                kv_slot_set(slots, f.index, keyvault_result(
                    _Result, _direct_results, _VALID, _serial_text(f.serial),
                    <object>PyTuple_GET_ITEM(row_obj, ROW_BATCH), <object>PyTuple_GET_ITEM(row_obj, ROW_SUPPLIER),
                    <object>PyTuple_GET_ITEM(row_obj, ROW_SUPPLIER_NAME),
                    <object>PyTuple_GET_ITEM(row_obj, ROW_PRODUCT), None))
            elif f.verdict == VERDICT_UNKNOWN:
                kv_slot_set(slots, f.index, keyvault_result(
                    _Result, _direct_results, _UNKNOWN, _serial_text(f.serial),
                    <object>PyTuple_GET_ITEM(<object>f.row, ROW_BATCH) if f.row != NULL else None,
                    None, None, None, _NO_SUCH_KEY))

        if pending:
            details = dict(outcomes.getmulti([item[0].to_bytes(8, "big") for item in pending]))
            for serial_obj, i, state_obj, row_obj in pending:
                kv_slot_set(slots, i, judge(serial_obj, state_obj, row_obj, key_blocks, None,
                                            details.get(serial_obj.to_bytes(8, "big")), now))
        if marks is not None:
            marks.append(_clock_ns())
            _record_profile(marks, n, nfound)
        return kv_list_from_slots(slots, n)
    finally:
        kv_slots_clear(slots, n)
        PyMem_Free(slots)
        PyMem_Free(found)
        PyMem_Free(order)
        PyMem_Free(records)


cdef void _record_profile(list marks, Py_ssize_t n, Py_ssize_t nfound) except *:
    global _last_profile
    names = ("parse_ns", "hash_ns", "sort_ns", "getmulti_ns", "match_ns", "release_ns", "results_ns")
    _last_profile = {"keys": n, "found": nfound, "total_ns": marks[len(marks) - 1] - marks[0]}
    for i, name in enumerate(names):
        _last_profile[name] = marks[i + 1] - marks[i]


def _profile_check_keys(clock):
    """Benchmark hook: time check_keys' phases with clock (e.g. time.perf_counter_ns), or stop (None)."""
    global _profiling, _clock_ns
    _clock_ns = clock
    _profiling = clock is not None


def _check_keys_profile():
    """The phase times (ns) of the last check_keys call made while profiling, or None."""
    return _last_profile


# ---------------------------------------------------------------------------
# Tables, built at import as _pure builds its own.

cdef void _init_tables() noexcept:
    cdef int i, j, k, r, col, pivot
    cdef unsigned int x
    cdef unsigned char f, g, tmp
    cdef unsigned char m[CHECKS][CHECKS]
    # GF(32): powers of alpha (= x) and their logarithms.
    x = 1
    for i in range(GF_ORDER):
        _EXP[i] = x
        _LOG[x] = i
        x <<= 1
        if x & FIELD_SIZE:
            x ^= POLY
    for i in range(GF_ORDER, 2 * GF_ORDER):
        _EXP[i] = _EXP[i - GF_ORDER]
    # Per position: its cube, and each locator's position.
    for i in range(FIELD_SIZE):
        _POSITION_OF[i] = -1
        _SWAP_AT[i] = -1
    for i in range(KEY_SYMBOLS):
        _CUBES[i] = _cube(LOCATORS[i])
        for j in range(FIELD_SIZE):
            _TIMES_X[i][j] = _mul(j, LOCATORS[i])
            _TIMES_X3[i][j] = _mul(j, _CUBES[i])
        _POSITION_OF[LOCATORS[i]] = i
    for k in range(KEY_SYMBOLS - 1):
        _SWAP_AT[_swap_value(LOCATORS[k], LOCATORS[k + 1])] = k
    # Inverse of the check positions' columns (1, x, x**3): Gauss-Jordan as _solve_checks.
    for i in range(CHECKS):
        m[0][i] = 1
        m[1][i] = LOCATORS[DATA_SYMBOLS + i]
        m[2][i] = _CUBES[DATA_SYMBOLS + i]
        for j in range(CHECKS):
            _CHECK_INVERSE[i][j] = i == j
    for col in range(CHECKS):
        pivot = col
        while m[pivot][col] == 0:
            pivot += 1
        for j in range(CHECKS):
            tmp = m[col][j]; m[col][j] = m[pivot][j]; m[pivot][j] = tmp
            tmp = _CHECK_INVERSE[col][j]; _CHECK_INVERSE[col][j] = _CHECK_INVERSE[pivot][j]
            _CHECK_INVERSE[pivot][j] = tmp
        f = m[col][col]
        for j in range(CHECKS):
            m[col][j] = _div(m[col][j], f)
            _CHECK_INVERSE[col][j] = _div(_CHECK_INVERSE[col][j], f)
        for r in range(CHECKS):
            if r != col and m[r][col]:
                g = m[r][col]
                for j in range(CHECKS):
                    m[r][j] ^= _mul(g, m[col][j])
                    _CHECK_INVERSE[r][j] ^= _mul(g, _CHECK_INVERSE[col][j])
    # ASCII: normalize's folding, and the symbol values.
    for i in range(ASCII_SIZE):
        f = i
        if ord('a') <= f <= ord('z'):
            f -= ord('a') - ord('A')  # str.upper()
        if f == ord('I') or f == ord('L'):
            f = ord('1')
        elif f == ord('O'):
            f = ord('0')
        _FOLD[i] = f
        _VALUE[i] = NOT_SYMBOL
    for i in range(<int>strlen(ASCII_SEPARATORS)):
        _FOLD[<unsigned char>ASCII_SEPARATORS[i]] = DROP
    for i in range(KEY_SYMBOLS):
        _VALUE[<unsigned char>ALPHABET[i]] = i
    for i in range(BYTE_SIZE):
        if i >= ASCII_SIZE:
            _SYMBOL[i] = NOT_ASCII
        elif _FOLD[i] == DROP:
            _SYMBOL[i] = SEPARATOR
        else:
            _SYMBOL[i] = _VALUE[_FOLD[i]]


_init_tables()
blake2b_init(&_one_salted, DIGEST_SIZE, <const unsigned char*>PERSON_VERIFIER, strlen(PERSON_VERIFIER))


# ---------------------------------------------------------------------------
# Test hooks (tests/test_fast_twins.py): the C tables and the BLAKE2b C API.

def _constants():
    """The constants and tables this module uses, in _pure's shapes, for comparison."""
    return {
        "ALPHABET": ALPHABET.decode("ascii"),
        "KEY_SYMBOLS": KEY_SYMBOLS, "DATA_SYMBOLS": DATA_SYMBOLS, "VERSION": VERSION,
        "SERIAL_SYMBOLS": SERIAL_SYMBOLS, "SECRET_SYMBOLS": SECRET_SYMBOLS, "SECRET_BYTES": SECRET_BYTES,
        "MAX_INPUT": MAX_INPUT, "DIGEST_SIZE": DIGEST_SIZE,
        "OK": OK, "BAD_LENGTH": BAD_LENGTH, "BAD_SYMBOL": BAD_SYMBOL, "BAD_VERSION": BAD_VERSION,
        "CHECK_SUBSTITUTION": CHECK_SUBSTITUTION, "CHECK_TRANSPOSITION": CHECK_TRANSPOSITION,
        "CHECK_FAILED": CHECK_FAILED,
        "ACTIVE": ACTIVE, "REDEEMED": REDEEMED, "VOIDED": VOIDED, "INDEX_BITS": INDEX_BITS,
        "_CARD_SIZE": CARD_SIZE, "_OUTCOME_HEAD": OUTCOME_HEAD,
        "_POLY": POLY,
        "LOCATORS": tuple([LOCATORS[i] for i in range(KEY_SYMBOLS)]),
        "_EXP": [_EXP[i] for i in range(2 * GF_ORDER)],
        "_LOG": [_LOG[i] for i in range(FIELD_SIZE)],
        "_CUBES": tuple([_CUBES[i] for i in range(KEY_SYMBOLS)]),
        "_POSITION_OF": {i: _POSITION_OF[i] for i in range(FIELD_SIZE) if _POSITION_OF[i] >= 0},
        "_SWAP_AT": {i: _SWAP_AT[i] for i in range(FIELD_SIZE) if _SWAP_AT[i] >= 0},
        "_CHECK_INVERSE": tuple([tuple([_CHECK_INVERSE[i][j] for j in range(CHECKS)]) for i in range(CHECKS)]),
        "_VALUE": {chr(i): _VALUE[i] for i in range(ASCII_SIZE) if _VALUE[i] >= 0},
        "ASCII_SEPARATORS": ASCII_SEPARATORS.decode("ascii"),
        "HASH_SIZE": HASH_SIZE, "SEED_SIZE": SEED_SIZE, "SALT_SIZE": SALT_SIZE,
        "KIND_SUPPLIER": KIND_SUPPLIER, "KIND_ISSUE": KIND_ISSUE, "KIND_IMPORT": KIND_IMPORT,
        "KIND_REDEEM": KIND_REDEEM, "KIND_VOID": KIND_VOID, "KIND_BLACKLIST": KIND_BLACKLIST,
        "KIND_LIFT": KIND_LIFT, "KIND_TRANSFER": KIND_TRANSFER, "KIND_TRUST": KIND_TRUST,
    }


def _blake2b(data, key=b"", digest_size=64, person=b"", chunk=0):
    """blake2b(data, key=, digest_size=, person=) through the C API; chunk > 0 feeds data in pieces."""
    cdef blake2b_state S
    cdef unsigned char out[BLAKE2B_OUTBYTES]
    cdef bytes d = bytes(data), k = bytes(key), p = bytes(person)
    cdef Py_ssize_t step = chunk if chunk > 0 else max(len(d), 1)
    cdef Py_ssize_t i
    if blake2b_init_keyed(&S, digest_size, k, len(k), p, len(p)) < 0:
        raise ValueError("digest_size, key or person out of range")
    for i in range(0, len(d), step):
        blake2b_update(&S, <const unsigned char*>PyBytes_AS_STRING(d) + i, min(step, len(d) - i))
    blake2b_final(&S, out)
    return PyBytes_FromStringAndSize(<char*>out, digest_size)


def _blake2b_forked(key, person, digest_size, messages):
    """[blake2b(m, key=key, ...) for m in messages] from one blake2b_init_keyed state."""
    cdef blake2b_state S
    cdef unsigned char out[BLAKE2B_OUTBYTES]
    cdef bytes k = bytes(key), p = bytes(person), m
    if blake2b_init_keyed(&S, digest_size, k, len(k), p, len(p)) < 0:
        raise ValueError("digest_size, key or person out of range")
    results = []
    for message in messages:
        m = bytes(message)
        blake2b_digest_from(&S, m, len(m), out)
        results.append(PyBytes_FromStringAndSize(<char*>out, digest_size))
    return results


# -- issuance in bulk: twins of _pure.export_rows and _pure.card_records ----------------------------

cdef enum:
    SERIAL_TEXT_LEN = 14  # PPPP-BBB-IIIII
    KEY_TEXT_LEN = 39  # 32 symbols in 8 groups of 4, joined by 7 dashes
    CARD_RECORD_LEN = 17  # state byte + 16-byte tag
    DIGEST_LEN = 16  # every verifier and tag
    PRINT_GROUP = 4  # symbols per printed group (_pure.GROUP_SIZE)


cdef inline Py_ssize_t _put_serial_text(char* out, uint64_t serial) noexcept nogil:
    """Write PPPP-BBB-IIIII for the low 60 bits of serial; the length written."""
    cdef char symbols[SERIAL_SYMBOLS]
    cdef int k
    for k in range(SERIAL_SYMBOLS - 1, -1, -1):
        symbols[k] = ALPHABET[serial & SYMBOL_MASK]
        serial >>= SYMBOL_BITS
    memcpy(out, symbols, 4)  # prefix
    out[4] = b"-"
    memcpy(out + 5, symbols + 4, 3)  # batch
    out[8] = b"-"
    memcpy(out + 9, symbols + 7, 5)  # index
    return SERIAL_TEXT_LEN


def export_rows(first_serial: int, keys: list[str], suffix: str) -> str:
    """CSV lines ``serial,key,suffix`` for consecutive serials (see _pure.export_rows)."""
    if type(first_serial) is not int or type(keys) is not list or type(suffix) is not str \
            or first_serial < 0 or first_serial + len(keys) > 0xFFFFFFFFFFFFFFFF:
        return _pure.export_rows(first_serial, keys, suffix)
    for key in keys:  # anything but canonical ASCII keys takes the specification's path
        if type(key) is not str or len(<str>key) != KEY_SYMBOLS or not (<str>key).isascii():
            return _pure.export_rows(first_serial, keys, suffix)
    cdef bytes tail = (suffix + "\r\n").encode("utf-8")
    cdef Py_ssize_t tail_len = len(tail)
    cdef Py_ssize_t n = len(keys)
    cdef Py_ssize_t row = SERIAL_TEXT_LEN + 1 + KEY_TEXT_LEN + 1 + tail_len
    cdef bytearray buf = bytearray(n * row)
    cdef char* out = PyByteArray_AS_STRING(buf)
    cdef const char* tail_data = PyBytes_AS_STRING(tail)
    cdef const char* key_data
    cdef uint64_t serial = <uint64_t>first_serial
    cdef Py_ssize_t i, g, pos = 0
    for i in range(n):
        key_data = <const char*>PyUnicode_1BYTE_DATA(<str>keys[i])
        pos += _put_serial_text(out + pos, serial + <uint64_t>i)
        out[pos] = b","
        pos += 1
        for g in range(KEY_SYMBOLS // PRINT_GROUP):
            if g:
                out[pos] = b"-"
                pos += 1
            memcpy(out + pos, key_data + g * PRINT_GROUP, PRINT_GROUP)
            pos += PRINT_GROUP
        out[pos] = b","
        pos += 1
        memcpy(out + pos, tail_data, tail_len)
        pos += tail_len
    return buf.decode("utf-8")


def card_records(first_serial: int, records: bytes, size: int, pepper: bytes) -> list[tuple[bytes, bytes]]:
    """(serial key, active card record) pairs from a manifest body chunk (see _pure.card_records)."""
    if type(first_serial) is not int or type(records) is not bytes or type(size) is not int \
            or type(pepper) is not bytes or size < DIGEST_LEN or len(pepper) > BLAKE2B_KEYBYTES \
            or first_serial < 0 or first_serial + len(records) // max(size, 1) > 0xFFFFFFFFFFFFFFFF:
        return _pure.card_records(first_serial, records, size, pepper)
    cdef blake2b_state keyed
    blake2b_init_keyed(&keyed, DIGEST_LEN, <const unsigned char*>PyBytes_AS_STRING(pepper), len(pepper),
                       <const unsigned char*>PERSON_TAG, strlen(PERSON_TAG))
    cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(records)
    cdef Py_ssize_t width = size  # a C integer: the pointer arithmetic below must not be Python's
    cdef Py_ssize_t n = len(records) // width
    cdef Py_ssize_t i
    cdef int b
    cdef uint64_t serial
    cdef unsigned char key[8]
    cdef unsigned char value[CARD_RECORD_LEN]
    cdef list out = []
    value[0] = 0  # ACTIVE
    for i in range(n):
        serial = <uint64_t>first_serial + <uint64_t>i
        for b in range(8):  # big-endian, so the store keeps serial order
            key[7 - b] = <unsigned char>(serial >> (8 * b))
        blake2b_digest_from(&keyed, data + (i + 1) * width - DIGEST_LEN, DIGEST_LEN, &value[1])
        out.append((PyBytes_FromStringAndSize(<char*>key, 8), PyBytes_FromStringAndSize(<char*>value, CARD_RECORD_LEN)))
    return out


# ---------------------------------------------------------------------------
# SHA-256 (FIPS 180-4), for provenance (docs/provenance.md). A portable C
# compression and, on x86-64, one with the SHA extensions (SHA-NI), chosen at
# run time as the BLAKE2b lanes are; no libcrypto. kv_sha256_update and
# kv_sha256_final stream any message; kv_sha256_node hashes an RFC 9162
# interior node (65 bytes: exactly two padded blocks) without a state, and
# kv_sha256_node2 and kv_sha256_padded2 two independent messages at once.

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    #define KV_SHA256_BLOCK 64       /* bytes per block */
    #define KV_SHA256_WORDS 8        /* 32-bit words in the chain value */
    #define KV_SHA256_ROUNDS 64      /* rounds per block (one per message schedule word) */
    #define KV_SHA256_LENGTH_AT 56   /* the last block ends with the message's bit count, u64 at bytes 56..63 */
    #define KV_SHA256_PAD_BYTE 0x80  /* the 1 bit that starts the padding */
    #define KV_HASH_BYTES 32         /* bytes of a digest: every leaf hash and node */
    #define KV_NODE_PREFIX 0x01      /* RFC 9162: an interior node hashes 0x01 || left || right... */
    #define KV_NODE_MESSAGE 65       /* ...65 bytes (1 + 2 * 32), padded to two blocks */

    /* Compress count consecutive 64-byte blocks into the chain value h. */
    typedef void (*kv_sha256_blocks_fn)(uint32_t* h, const unsigned char* blocks, size_t count);

    typedef struct {
        uint32_t h[KV_SHA256_WORDS];         /* chain value */
        uint64_t length;                     /* bytes absorbed so far */
        unsigned char buf[KV_SHA256_BLOCK];  /* input not yet compressed */
        size_t buflen;                       /* bytes used in buf: fewer than a block between calls */
        kv_sha256_blocks_fn blocks;          /* the compression this hash uses */
    } kv_sha256_state;

    /* Initial hash value (FIPS 180-4 5.3.3): the first 32 bits of the fractional parts of the square
       roots of the first 8 primes. */
    static const uint32_t kv_sha256_iv[KV_SHA256_WORDS] = {
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

    /* Round constants (4.2.2): the first 32 bits of the fractional parts of the cube roots of the first
       64 primes. */
    static const uint32_t kv_sha256_k[KV_SHA256_ROUNDS] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

    static inline uint32_t kv_rotr32(uint32_t x, unsigned int c) {  /* x rotated right by c, 0 < c < 32 */
        return (x >> c) | (x << (32 - c));
    }

    static inline uint32_t kv_load_be32(const unsigned char* p) {
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
    }

    static inline void kv_store_be32(unsigned char* p, uint32_t x) {
        p[0] = (unsigned char)(x >> 24);
        p[1] = (unsigned char)(x >> 16);
        p[2] = (unsigned char)(x >> 8);
        p[3] = (unsigned char)x;
    }

    /* u64(x): 8 bytes big-endian. */
    static inline void kv_store_be64(unsigned char* p, uint64_t x) {
        kv_store_be32(p, (uint32_t)(x >> 32));
        kv_store_be32(p + 4, (uint32_t)x);
    }

    /* The compression, FIPS 180-4 6.2.2, in plain C. Rotation and shift counts are the standard's
       (4.1.2): sigma0 7, 18, >>3; sigma1 17, 19, >>10; Sigma0 2, 13, 22; Sigma1 6, 11, 25. */
    static void kv_sha256_blocks_portable(uint32_t* h, const unsigned char* p, size_t count) {
        uint32_t w[KV_SHA256_ROUNDS];
        uint32_t a, b, c, d, e, f, g, hh, s0, s1, t1, t2;
        int i;
        for (; count > 0; count--, p += KV_SHA256_BLOCK) {
            for (i = 0; i < 16; i++)  /* the block's 16 words, big-endian */
                w[i] = kv_load_be32(p + 4 * i);
            for (i = 16; i < KV_SHA256_ROUNDS; i++) {  /* the message schedule */
                s0 = kv_rotr32(w[i - 15], 7) ^ kv_rotr32(w[i - 15], 18) ^ (w[i - 15] >> 3);
                s1 = kv_rotr32(w[i - 2], 17) ^ kv_rotr32(w[i - 2], 19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16] + s0 + w[i - 7] + s1;
            }
            a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
            for (i = 0; i < KV_SHA256_ROUNDS; i++) {
                t1 = hh + (kv_rotr32(e, 6) ^ kv_rotr32(e, 11) ^ kv_rotr32(e, 25)) + ((e & f) ^ (~e & g))
                     + kv_sha256_k[i] + w[i];
                t2 = (kv_rotr32(a, 2) ^ kv_rotr32(a, 13) ^ kv_rotr32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
                hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
            }
            h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
        }
    }

    /* Two independent chains (h0 over p0, h1 over p1), count blocks each. */
    typedef void (*kv_sha256_blocks2_fn)(uint32_t* h0, const unsigned char* p0, uint32_t* h1,
                                         const unsigned char* p1, size_t count);

    static void kv_sha256_blocks2_portable(uint32_t* h0, const unsigned char* p0, uint32_t* h1,
                                           const unsigned char* p1, size_t count) {
        kv_sha256_blocks_portable(h0, p0, count);
        kv_sha256_blocks_portable(h1, p1, count);
    }

    #if defined(__x86_64__) && defined(__GNUC__)
    #define KV_SHA_NI_AVAILABLE 1
    #include <immintrin.h>
    #if !(defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__))
    #include <cpuid.h>  /* compilers whose __builtin_cpu_supports may not know "sha" */
    #endif

    /* The same compression with the SHA extensions. The state lives in two registers as
       sha256rnds2 wants it: lanes (A, B, E, F) and (C, D, G, H), highest lane first. Each step does
       four rounds (two per sha256rnds2) with message words m[step & 3], a ring of the last 16. */
    __attribute__((target("sha,sse4.1")))
    static void kv_sha256_blocks_shani(uint32_t* h, const unsigned char* p, size_t count) {
        /* pshufb mask that reverses the bytes of each 32-bit word: the message is big-endian */
        const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
        __m128i abef, cdgh, abef_saved, cdgh_saved, tmp, wk, m[4];
        int step;
        /* Shuffle 0xB1 swaps adjacent words and 0x1B reverses all four; alignr by 8 bytes takes the
           high half of its second operand and the low half of its first; blend 0xF0 takes the high
           half of its second operand. */
        tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h[0]), 0xB1);  /* C D A B */
        cdgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h[4]), 0x1B); /* E F G H */
        abef = _mm_alignr_epi8(tmp, cdgh, 8);                                     /* A B E F */
        cdgh = _mm_blend_epi16(cdgh, tmp, 0xF0);                                  /* C D G H */
        for (; count > 0; count--, p += KV_SHA256_BLOCK) {
            abef_saved = abef;
            cdgh_saved = cdgh;
            #pragma GCC unroll 16
            for (step = 0; step < 16; step++) {  /* rounds 4 * step .. 4 * step + 3 */
                if (step < 4) {  /* the block itself: 16 bytes (4 words) per step */
                    m[step] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(p + 16 * step)), bswap);
                } else {
                    /* W[t..t+3] from the 16 before (6.2.2 step 1): msg1 adds sigma0 of W[t-15..t-12] to
                       W[t-16..t-13], then W[t-7..t-4] is added and msg2 adds sigma1 of W[t-2], W[t-1]. */
                    tmp = _mm_sha256msg1_epu32(m[step & 3], m[(step + 1) & 3]);
                    tmp = _mm_add_epi32(tmp, _mm_alignr_epi8(m[(step + 3) & 3], m[(step + 2) & 3], 4));  /* 1 word */
                    m[step & 3] = _mm_sha256msg2_epu32(tmp, m[(step + 3) & 3]);
                }
                wk = _mm_add_epi32(m[step & 3], _mm_loadu_si128((const __m128i*)&kv_sha256_k[4 * step]));
                /* Two rounds with the low two words of wk, two with the high two (0x0E moves them down).
                   The first call leaves the new A B E F in cdgh, and the old one is the new C D G H:
                   the second call swaps them back. */
                cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
                abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
            }
            abef = _mm_add_epi32(abef, abef_saved);
            cdgh = _mm_add_epi32(cdgh, cdgh_saved);
        }
        tmp = _mm_shuffle_epi32(abef, 0x1B);                                    /* F E B A */
        cdgh = _mm_shuffle_epi32(cdgh, 0xB1);                                   /* D C H G */
        _mm_storeu_si128((__m128i*)&h[0], _mm_blend_epi16(tmp, cdgh, 0xF0));   /* D C B A */
        _mm_storeu_si128((__m128i*)&h[4], _mm_alignr_epi8(cdgh, tmp, 8));      /* H G F E */
    }

    /* kv_sha256_blocks_shani on two independent chains at once, their steps interleaved: one chain's
       rounds wait on the previous round's result, so two chains keep the SHA unit busier. */
    __attribute__((target("sha,sse4.1")))
    static void kv_sha256_blocks2_shani(uint32_t* h0, const unsigned char* p0, uint32_t* h1,
                                        const unsigned char* p1, size_t count) {
        const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
        __m128i abef0, cdgh0, abef1, cdgh1, abef0_saved, cdgh0_saved, abef1_saved, cdgh1_saved;
        __m128i tmp0, tmp1, k, wk0, wk1, m0[4], m1[4];
        int step;
        tmp0 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h0[0]), 0xB1);
        cdgh0 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h0[4]), 0x1B);
        abef0 = _mm_alignr_epi8(tmp0, cdgh0, 8);
        cdgh0 = _mm_blend_epi16(cdgh0, tmp0, 0xF0);
        tmp1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h1[0]), 0xB1);
        cdgh1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h1[4]), 0x1B);
        abef1 = _mm_alignr_epi8(tmp1, cdgh1, 8);
        cdgh1 = _mm_blend_epi16(cdgh1, tmp1, 0xF0);
        for (; count > 0; count--, p0 += KV_SHA256_BLOCK, p1 += KV_SHA256_BLOCK) {
            abef0_saved = abef0;
            cdgh0_saved = cdgh0;
            abef1_saved = abef1;
            cdgh1_saved = cdgh1;
            #pragma GCC unroll 16
            for (step = 0; step < 16; step++) {
                if (step < 4) {
                    m0[step] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(p0 + 16 * step)), bswap);
                    m1[step] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(p1 + 16 * step)), bswap);
                } else {
                    tmp0 = _mm_sha256msg1_epu32(m0[step & 3], m0[(step + 1) & 3]);
                    tmp1 = _mm_sha256msg1_epu32(m1[step & 3], m1[(step + 1) & 3]);
                    tmp0 = _mm_add_epi32(tmp0, _mm_alignr_epi8(m0[(step + 3) & 3], m0[(step + 2) & 3], 4));
                    tmp1 = _mm_add_epi32(tmp1, _mm_alignr_epi8(m1[(step + 3) & 3], m1[(step + 2) & 3], 4));
                    m0[step & 3] = _mm_sha256msg2_epu32(tmp0, m0[(step + 3) & 3]);
                    m1[step & 3] = _mm_sha256msg2_epu32(tmp1, m1[(step + 3) & 3]);
                }
                k = _mm_loadu_si128((const __m128i*)&kv_sha256_k[4 * step]);
                wk0 = _mm_add_epi32(m0[step & 3], k);
                wk1 = _mm_add_epi32(m1[step & 3], k);
                cdgh0 = _mm_sha256rnds2_epu32(cdgh0, abef0, wk0);
                cdgh1 = _mm_sha256rnds2_epu32(cdgh1, abef1, wk1);
                abef0 = _mm_sha256rnds2_epu32(abef0, cdgh0, _mm_shuffle_epi32(wk0, 0x0E));
                abef1 = _mm_sha256rnds2_epu32(abef1, cdgh1, _mm_shuffle_epi32(wk1, 0x0E));
            }
            abef0 = _mm_add_epi32(abef0, abef0_saved);
            cdgh0 = _mm_add_epi32(cdgh0, cdgh0_saved);
            abef1 = _mm_add_epi32(abef1, abef1_saved);
            cdgh1 = _mm_add_epi32(cdgh1, cdgh1_saved);
        }
        tmp0 = _mm_shuffle_epi32(abef0, 0x1B);
        cdgh0 = _mm_shuffle_epi32(cdgh0, 0xB1);
        _mm_storeu_si128((__m128i*)&h0[0], _mm_blend_epi16(tmp0, cdgh0, 0xF0));
        _mm_storeu_si128((__m128i*)&h0[4], _mm_alignr_epi8(cdgh0, tmp0, 8));
        tmp1 = _mm_shuffle_epi32(abef1, 0x1B);
        cdgh1 = _mm_shuffle_epi32(cdgh1, 0xB1);
        _mm_storeu_si128((__m128i*)&h1[0], _mm_blend_epi16(tmp1, cdgh1, 0xF0));
        _mm_storeu_si128((__m128i*)&h1[4], _mm_alignr_epi8(cdgh1, tmp1, 8));
    }

    /* Whether this CPU has the SHA extensions (and SSE4.1, which the code above also uses). */
    static int kv_cpu_has_sha(void) {
    #if defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__)
        __builtin_cpu_init();
        return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
    #else
        unsigned int a, b, c, d;
        if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1))  /* leaf 1: SSE4.1 in ecx */
            return 0;
        return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA);  /* leaf 7: SHA in ebx */
    #endif
    }
    #else
    #define KV_SHA_NI_AVAILABLE 0
    #endif

    static kv_sha256_blocks_fn kv_sha256_blocks = kv_sha256_blocks_portable;
    static kv_sha256_blocks2_fn kv_sha256_blocks2 = kv_sha256_blocks2_portable;  /* always the same kind */

    /* Choose the compression: 0 portable, 1 SHA-NI, -1 the best this CPU runs. Returns the choice, or
       -1 (nothing changed) if this build or CPU lacks it. */
    static int kv_sha256_select(int which) {
        int sha = 0;
    #if KV_SHA_NI_AVAILABLE
        sha = kv_cpu_has_sha();
    #endif
        if (which < 0)
            which = sha ? 1 : 0;
        switch (which) {
        case 0: kv_sha256_blocks = kv_sha256_blocks_portable; kv_sha256_blocks2 = kv_sha256_blocks2_portable; return 0;
    #if KV_SHA_NI_AVAILABLE
        case 1:
            if (!sha) return -1;
            kv_sha256_blocks = kv_sha256_blocks_shani;
            kv_sha256_blocks2 = kv_sha256_blocks2_shani;
            return 1;
    #endif
        default: return -1;
        }
    }

    static void kv_sha256_init(kv_sha256_state* S) {
        memcpy(S->h, kv_sha256_iv, sizeof(S->h));
        S->length = 0;
        S->buflen = 0;
        S->blocks = kv_sha256_blocks;
    }

    static void kv_sha256_update(kv_sha256_state* S, const unsigned char* data, size_t n) {
        size_t take, whole;
        if (n == 0)
            return;
        S->length += n;
        if (S->buflen > 0) {  /* top up the partial block first */
            take = KV_SHA256_BLOCK - S->buflen;
            if (take > n)
                take = n;
            memcpy(S->buf + S->buflen, data, take);
            S->buflen += take;
            data += take;
            n -= take;
            if (S->buflen < KV_SHA256_BLOCK)
                return;  /* (all of data is buffered) */
            S->blocks(S->h, S->buf, 1);
            S->buflen = 0;
        }
        whole = n / KV_SHA256_BLOCK;  /* whole blocks straight from data */
        if (whole > 0) {
            S->blocks(S->h, data, whole);
            data += whole * KV_SHA256_BLOCK;
            n -= whole * KV_SHA256_BLOCK;
        }
        if (n > 0)
            memcpy(S->buf, data, n);
        S->buflen = n;
    }

    /* Pad (5.1.1: a 1 bit, zeros, the bit count as a u64), compress, write the 32-byte digest. S is spent. */
    static void kv_sha256_final(kv_sha256_state* S, unsigned char* out) {
        size_t n = S->buflen;
        int i;
        S->buf[n++] = KV_SHA256_PAD_BYTE;
        if (n > KV_SHA256_LENGTH_AT) {  /* no room for the length here: it goes in one more block */
            memset(S->buf + n, 0, KV_SHA256_BLOCK - n);
            S->blocks(S->h, S->buf, 1);
            n = 0;
        }
        memset(S->buf + n, 0, KV_SHA256_LENGTH_AT - n);
        kv_store_be64(S->buf + KV_SHA256_LENGTH_AT, S->length * 8);  /* 8 bits per byte */
        S->blocks(S->h, S->buf, 1);
        for (i = 0; i < KV_SHA256_WORDS; i++)
            kv_store_be32(out + 4 * i, S->h[i]);
    }

    /* The two padded blocks of an interior node: 0x01 || left || right, then the padding. */
    static void kv_node_blocks(unsigned char* block, const unsigned char* left, const unsigned char* right) {
        block[0] = KV_NODE_PREFIX;
        memcpy(block + 1, left, KV_HASH_BYTES);
        memcpy(block + 1 + KV_HASH_BYTES, right, KV_HASH_BYTES);
        block[KV_NODE_MESSAGE] = KV_SHA256_PAD_BYTE;
        memset(block + KV_NODE_MESSAGE + 1, 0, KV_SHA256_BLOCK + KV_SHA256_LENGTH_AT - KV_NODE_MESSAGE - 1);
        kv_store_be64(block + KV_SHA256_BLOCK + KV_SHA256_LENGTH_AT, KV_NODE_MESSAGE * 8);  /* bit count */
    }

    static void kv_sha256_digest_out(const uint32_t* h, unsigned char* out) {
        int i;
        for (i = 0; i < KV_SHA256_WORDS; i++)
            kv_store_be32(out + 4 * i, h[i]);
    }

    /* SHA-256(0x01 || left || right), an RFC 9162 interior node, from two 32-byte hashes; out may be
       either of them. */
    static void kv_sha256_node(const unsigned char* left, const unsigned char* right, unsigned char* out) {
        unsigned char block[2 * KV_SHA256_BLOCK];
        uint32_t h[KV_SHA256_WORDS];
        kv_node_blocks(block, left, right);
        memcpy(h, kv_sha256_iv, sizeof(h));
        kv_sha256_blocks(h, block, 2);
        kv_sha256_digest_out(h, out);
    }

    /* Two nodes at once: out0 = node(left0, right0), out1 = node(left1, right1). Every input is read
       before an output is written, so an output may be any of the inputs. */
    static void kv_sha256_node2(const unsigned char* left0, const unsigned char* right0, unsigned char* out0,
                                const unsigned char* left1, const unsigned char* right1, unsigned char* out1) {
        unsigned char block0[2 * KV_SHA256_BLOCK], block1[2 * KV_SHA256_BLOCK];
        uint32_t h0[KV_SHA256_WORDS], h1[KV_SHA256_WORDS];
        kv_node_blocks(block0, left0, right0);
        kv_node_blocks(block1, left1, right1);
        memcpy(h0, kv_sha256_iv, sizeof(h0));
        memcpy(h1, kv_sha256_iv, sizeof(h1));
        kv_sha256_blocks2(h0, block0, h1, block1, 2);
        kv_sha256_digest_out(h0, out0);
        kv_sha256_digest_out(h1, out1);
    }

    /* Pad the n-byte message at block in place (5.1.1); block must hold n + 9 bytes rounded up to a
       whole block. Returns the blocks it now spans. */
    static size_t kv_sha256_pad(unsigned char* block, size_t n) {
        size_t blocks = (n + 1 + 8 + KV_SHA256_BLOCK - 1) / KV_SHA256_BLOCK;
        block[n] = KV_SHA256_PAD_BYTE;
        memset(block + n + 1, 0, blocks * KV_SHA256_BLOCK - 8 - n - 1);
        kv_store_be64(block + blocks * KV_SHA256_BLOCK - 8, (uint64_t)n * 8);
        return blocks;
    }

    /* SHA-256 of two padded messages of the same number of blocks, at once. */
    static void kv_sha256_padded2(const unsigned char* block0, const unsigned char* block1, size_t blocks,
                                  unsigned char* out0, unsigned char* out1) {
        uint32_t h0[KV_SHA256_WORDS], h1[KV_SHA256_WORDS];
        memcpy(h0, kv_sha256_iv, sizeof(h0));
        memcpy(h1, kv_sha256_iv, sizeof(h1));
        kv_sha256_blocks2(h0, block0, h1, block1, blocks);
        kv_sha256_digest_out(h0, out0);
        kv_sha256_digest_out(h1, out1);
    }

    #if defined(__GNUC__)
    #define kv_popcount64(x) ((unsigned int)__builtin_popcountll(x))
    #else
    static unsigned int kv_popcount64(uint64_t x) {
        unsigned int n = 0;
        for (; x; x &= x - 1)  /* clears the lowest set bit */
            n++;
        return n;
    }
    #endif

    /* Whether value is an int in 0..2**64-1 (stored in *out); no exception is left set. */
    static int kv_u64_of(PyObject* value, uint64_t* out) {
        unsigned long long u;
        long long v;
        int overflow;
        if (!PyLong_CheckExact(value))
            return 0;
        v = PyLong_AsLongLongAndOverflow(value, &overflow);  /* the quick way, for 0..2**63-1 (cannot fail on an int) */
        if (overflow == 0) {
            *out = (uint64_t)v;
            return v >= 0;
        }
        if (overflow < 0)
            return 0;
        u = PyLong_AsUnsignedLongLong(value);  /* 2**63 and up */
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *out = (uint64_t)u;
        return 1;
    }
    """
    ctypedef void (*kv_sha256_blocks_fn)(uint32_t* h, const unsigned char* blocks, size_t count) noexcept nogil
    ctypedef struct kv_sha256_state:
        kv_sha256_blocks_fn blocks
    void kv_sha256_blocks_portable(uint32_t* h, const unsigned char* blocks, size_t count) noexcept nogil
    int kv_sha256_select(int which) noexcept nogil
    void kv_sha256_init(kv_sha256_state* S) noexcept nogil
    void kv_sha256_update(kv_sha256_state* S, const unsigned char* data, size_t n) noexcept nogil
    void kv_sha256_final(kv_sha256_state* S, unsigned char* out) noexcept nogil
    void kv_sha256_node(const unsigned char* left, const unsigned char* right, unsigned char* out) noexcept nogil
    void kv_sha256_node2(const unsigned char* left0, const unsigned char* right0, unsigned char* out0,
                         const unsigned char* left1, const unsigned char* right1, unsigned char* out1) noexcept nogil
    size_t kv_sha256_pad(unsigned char* block, size_t n) noexcept nogil
    void kv_sha256_padded2(const unsigned char* block0, const unsigned char* block1, size_t blocks,
                           unsigned char* out0, unsigned char* out1) noexcept nogil
    void kv_store_be64(unsigned char* p, uint64_t x) noexcept nogil
    unsigned int kv_popcount64(uint64_t x) noexcept nogil
    bint kv_u64_of(object value, uint64_t* out) noexcept


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object text)  # an ASCII str: its 1-byte data is its UTF-8


kv_sha256_select(-1)  # the best compression this CPU runs


# ---------------------------------------------------------------------------
# Provenance: twins of _pure's key_salt, commitments, merkle_root, ledger_leaves
# and tree_append (docs/provenance.md). Per item they read the input in place
# and make only the Python objects they return.

cdef enum:
    HASH_SIZE = 32  # bytes of a SHA-256 digest: every commitment, leaf hash and node
    SEED_SIZE = 32  # bytes of a batch's commit seed (the salts' BLAKE2b key)
    SALT_SIZE = 16  # bytes of a key salt (BLAKE2b-128)
    U64_SIZE = 8  # u64(x): 8 bytes big-endian
    LEAF_PREFIX = 0x00  # RFC 9162: SHA-256(0x00 || leaf) is a leaf hash
    MAX_LEVELS = 64  # a tree of fewer than 2**64 leaves: at most 64 perfect subtrees, of levels 0..63
    MERKLE_BLOCK_LEVEL = 8  # _merkle_root hashes perfect subtrees of up to 2**8 leaves level by level...
    MERKLE_BLOCK = 256  # ...of this many leaves
    MERKLE_SCRATCH = 4096  # MERKLE_BLOCK // 2 * HASH_SIZE: bytes of the level above a block's leaves

    # A commitment's preimage, after its 0x00: kv1/commit || u64(serial) || salt (16) || material.
    COMMIT_TAG_SIZE = 10  # len(b"kv1/commit")
    COMMIT_SERIAL_AT = 11  # 1 + COMMIT_TAG_SIZE
    COMMIT_SALT_AT = 19  # COMMIT_SERIAL_AT + U64_SIZE
    COMMIT_HEAD = 35  # COMMIT_SALT_AT + SALT_SIZE: the bytes hashed before the material
    SHA256_BLOCK = 64  # bytes per SHA-256 block
    COMMIT_BLOCKS = 2  # commitments of materials up to COMMIT_PAIR_MATERIAL bytes span 1 or 2 blocks...
    COMMIT_PAIR_MATERIAL = 84  # ...COMMIT_BLOCKS * SHA256_BLOCK - 9 (the padding's 0x80 and length) - COMMIT_HEAD

    # An event leaf: kv1/event || u64(index) || previous leaf hash || u8(kind) || u64(at ms) || body.
    EVENT_TAG_SIZE = 9  # len(b"kv1/event")
    EVENT_INDEX_AT = 9  # EVENT_TAG_SIZE
    EVENT_PREV_AT = 17  # EVENT_INDEX_AT + U64_SIZE
    EVENT_KIND_AT = 49  # EVENT_PREV_AT + HASH_SIZE
    EVENT_AT_MS_AT = 50  # EVENT_KIND_AT + 1
    EVENT_BODY_AT = 58  # EVENT_AT_MS_AT + U64_SIZE
    CHANGE_TEXT_AT = 66  # EVENT_BODY_AT + U64_SIZE: a redeem or void body is u64(serial), then the text in UTF-8

    # Event kinds, as in _pure.
    KIND_SUPPLIER = 1
    KIND_ISSUE = 2
    KIND_IMPORT = 3
    KIND_REDEEM = 4
    KIND_VOID = 5
    KIND_BLACKLIST = 6
    KIND_LIFT = 7
    KIND_TRANSFER = 8
    KIND_TRUST = 9

cdef const char* PERSON_SALT = b"kv1/salt"
cdef const char* COMMIT_TAG = b"kv1/commit"
cdef const char* EVENT_TAG = b"kv1/event"


cdef inline bytes _u64_bytes(uint64_t value):
    """u64(value) as a bytes object (a store key)."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, U64_SIZE)
    kv_store_be64(<unsigned char*>PyBytes_AS_STRING(out), value)
    return out


cdef inline bytes _hash_bytes(const unsigned char* digest):
    return PyBytes_FromStringAndSize(<const char*>digest, HASH_SIZE)


cdef inline void _leaf_hash(const unsigned char* leaf, size_t n, unsigned char* out) noexcept nogil:
    """SHA-256(0x00 || leaf): an RFC 9162 leaf hash."""
    cdef kv_sha256_state S
    cdef unsigned char prefix = LEAF_PREFIX
    kv_sha256_init(&S)
    kv_sha256_update(&S, &prefix, 1)
    kv_sha256_update(&S, leaf, n)
    kv_sha256_final(&S, out)


cdef inline uint64_t _node_key(unsigned int level, uint64_t index) noexcept nogil:
    """_pure.node_key(level, index), for level >= 1 and (index + 1) << level < 2**64."""
    cdef uint64_t m = (index + 1) << level
    return (m - 1) - kv_popcount64(m - 1) + (level - 1)


def key_salt(seed: bytes, serial: int) -> bytes:
    """A key's salt: BLAKE2b-128 of u64(serial), keyed with the batch's 32-byte commit seed, tag kv1/salt."""
    cdef uint64_t s
    cdef unsigned char message[U64_SIZE]
    cdef unsigned char out[SALT_SIZE]
    if not (_binary(seed) and _binary_size(seed) == SEED_SIZE and kv_u64_of(serial, &s)):
        return _pure.key_salt(seed, serial)
    kv_store_be64(message, s)
    blake2b_digest(out, SALT_SIZE, _binary_data(seed), SEED_SIZE,
                   <const unsigned char*>PERSON_SALT, strlen(PERSON_SALT), message, U64_SIZE)
    return PyBytes_FromStringAndSize(<char*>out, SALT_SIZE)


ctypedef struct _Salts:
    # key_salt for up to KV_MAX_LANES consecutive serials: in BLAKE2b lanes when there are lanes.
    unsigned char blocks[KV_MAX_LANES][BLAKE2B_BLOCKBYTES]  # u64(serial), zero-padded: the last block
    unsigned char salts[KV_MAX_LANES][SALT_SIZE]
    const unsigned char* block_at[KV_MAX_LANES]  # the lanes function's pointers to the above
    unsigned char* salt_at[KV_MAX_LANES]
    uint64_t lens[KV_MAX_LANES]


cdef void _salts_init(_Salts* T) noexcept nogil:
    cdef int j
    memset(T.blocks, 0, sizeof(T.blocks))
    for j in range(KV_MAX_LANES):
        T.block_at[j] = T.blocks[j]
        T.salt_at[j] = T.salts[j]
        T.lens[j] = U64_SIZE


cdef void _salts_from(_Salts* T, const blake2b_state* keyed, uint64_t first, int count, int lanes) noexcept nogil:
    """T.salts[j] = key_salt(seed, first + j) for j < count <= KV_MAX_LANES; keyed has absorbed the seed
    (blake2b_init_keyed), so each salt is one compression: count == lanes of them at once."""
    cdef int j
    for j in range(count):
        kv_store_be64(T.blocks[j], first + <uint64_t>j)
    if count == lanes:
        kv_lanes(keyed.h, keyed.t[0], T.block_at, T.lens, T.salt_at, SALT_SIZE)
    else:
        for j in range(count):
            _digest_block(keyed, T.blocks[j], U64_SIZE, T.salts[j])


cdef inline bint _material_of(object material, const unsigned char** data, size_t* size) noexcept:
    """A key material's bytes, read in place: bytes, a bytearray or an ASCII str (False for anything else)."""
    if _binary(material):
        data[0] = _binary_data(material)
        size[0] = _binary_size(material)
        return True
    if type(material) is str and PyUnicode_IS_COMPACT_ASCII(material):
        data[0] = PyUnicode_1BYTE_DATA(material)
        size[0] = <size_t>PyUnicode_GET_LENGTH(material)
        return True
    return False


def commitments(first_serial: int, seed: bytes, materials: list) -> bytes:
    """The manifest's commitment to each key, for serials first_serial, first_serial + 1, ... (see _pure).

    The materials are copied into one buffer while the GIL is held; the hashing, for NOGIL_ITEMS
    keys or more, lets other threads run.
    """
    cdef uint64_t first
    cdef Py_ssize_t i, n
    cdef blake2b_state keyed
    cdef const unsigned char* data
    cdef size_t size, total = 0
    cdef size_t* offsets = NULL  # material i is packed[offsets[i]:offsets[i + 1]]
    cdef unsigned char* packed = NULL
    cdef unsigned char* out
    if not (kv_u64_of(first_serial, &first) and _binary(seed) and _binary_size(seed) == SEED_SIZE
            and type(materials) is list):
        return _pure.commitments(first_serial, seed, materials)
    n = PyList_GET_SIZE(materials)
    if n > 0 and first > UINT64_MAX - <uint64_t>(n - 1):  # the last serial is past u64: the specification says how
        return _pure.commitments(first_serial, seed, materials)
    if n > PY_SSIZE_T_MAX // HASH_SIZE:
        raise MemoryError()
    offsets = <size_t*>PyMem_Malloc((<size_t>n + 1) * sizeof(size_t))
    if offsets == NULL:
        raise MemoryError()
    try:
        # Nothing from here to the copy allocates Python objects or runs Python code: the list and
        # its items hold still. Afterwards the hashing reads only the copy.
        offsets[0] = 0
        for i in range(n):
            if not _material_of(<object>PyList_GET_ITEM(materials, i), &data, &size):
                return _pure.commitments(first_serial, seed, materials)  # (its TypeError or UnicodeEncodeError)
            if size > <size_t>PY_SSIZE_T_MAX - total:
                raise MemoryError()
            total += size
            offsets[i + 1] = total
        packed = <unsigned char*>PyMem_Malloc(total if total > 0 else 1)
        if packed == NULL:
            raise MemoryError()
        for i in range(n):
            _material_of(<object>PyList_GET_ITEM(materials, i), &data, &size)
            memcpy(packed + offsets[i], data, size)
        result = PyBytes_FromStringAndSize(NULL, n * HASH_SIZE)
        out = <unsigned char*>PyBytes_AS_STRING(result)
        blake2b_init_keyed(&keyed, SALT_SIZE, _binary_data(seed), SEED_SIZE,
                           <const unsigned char*>PERSON_SALT, strlen(PERSON_SALT))
        if n >= NOGIL_ITEMS:
            with nogil:
                _commit(&keyed, first, packed, offsets, n, out, _lane_count)
        else:
            _commit(&keyed, first, packed, offsets, n, out, _lane_count)
    finally:
        PyMem_Free(packed)
        PyMem_Free(offsets)
    return result


cdef size_t _commit_message(unsigned char* block, uint64_t serial, const unsigned char* salt,
                            const unsigned char* material, size_t size) noexcept nogil:
    """A commitment's preimage, 0x00 || kv1/commit || u64(serial) || salt || material, padded in block
    (COMMIT_BLOCKS SHA-256 blocks) for size <= COMMIT_PAIR_MATERIAL; the blocks it spans."""
    block[0] = LEAF_PREFIX
    memcpy(&block[1], COMMIT_TAG, COMMIT_TAG_SIZE)
    kv_store_be64(&block[COMMIT_SERIAL_AT], serial)
    memcpy(&block[COMMIT_SALT_AT], salt, SALT_SIZE)
    memcpy(&block[COMMIT_HEAD], material, size)
    return kv_sha256_pad(block, COMMIT_HEAD + size)


cdef void _commit(const blake2b_state* keyed, uint64_t first, const unsigned char* packed, const size_t* offsets,
                  Py_ssize_t n, unsigned char* out, int lanes) noexcept nogil:
    """commitments' hashing: material i is packed[offsets[i]:offsets[i + 1]], its commitment goes to
    out + i * HASH_SIZE; keyed has absorbed the seed (the salts' key). Two commitments whose
    preimages pad to the same short length (every native key's) are hashed at once."""
    cdef kv_sha256_state S
    cdef _Salts T
    cdef unsigned char head[COMMIT_HEAD]
    cdef unsigned char pair[2][COMMIT_BLOCKS * SHA256_BLOCK]
    cdef size_t size, blocks0, blocks1
    cdef Py_ssize_t i, at = 0
    cdef int j, count, group
    _salts_init(&T)
    group = lanes if lanes > 0 else KV_MAX_LANES
    head[0] = LEAF_PREFIX
    memcpy(&head[1], COMMIT_TAG, COMMIT_TAG_SIZE)
    at = 0
    while at < n:
        count = group if n - at >= group else <int>(n - at)
        _salts_from(&T, keyed, first + <uint64_t>at, count, lanes)
        j = 0
        while j < count:
            i = at + j
            if (j + 1 < count and offsets[i + 1] - offsets[i] <= COMMIT_PAIR_MATERIAL
                    and offsets[i + 2] - offsets[i + 1] <= COMMIT_PAIR_MATERIAL):
                blocks0 = _commit_message(pair[0], first + <uint64_t>i, T.salts[j], packed + offsets[i],
                                          offsets[i + 1] - offsets[i])
                blocks1 = _commit_message(pair[1], first + <uint64_t>i + 1, T.salts[j + 1],
                                          packed + offsets[i + 1], offsets[i + 2] - offsets[i + 1])
                if blocks0 == blocks1:
                    kv_sha256_padded2(pair[0], pair[1], blocks0, out + i * HASH_SIZE, out + (i + 1) * HASH_SIZE)
                    j += 2
                    continue
            size = offsets[i + 1] - offsets[i]
            kv_store_be64(&head[COMMIT_SERIAL_AT], first + <uint64_t>i)
            memcpy(&head[COMMIT_SALT_AT], T.salts[j], SALT_SIZE)
            kv_sha256_init(&S)
            kv_sha256_update(&S, head, COMMIT_HEAD)
            kv_sha256_update(&S, packed + offsets[i], size)
            kv_sha256_final(&S, out + i * HASH_SIZE)
            j += 1
        at += count


cdef void _perfect_root(const unsigned char* leaves, unsigned int level, unsigned char* scratch,
                        unsigned char* out) noexcept nogil:
    """MTH of 2**level leaves (level <= MERKLE_BLOCK_LEVEL), level by level, two nodes at a time;
    scratch holds MERKLE_SCRATCH bytes (MERKLE_BLOCK // 2 hashes)."""
    cdef const unsigned char* below = leaves
    cdef size_t count = <size_t>1 << level, half, j
    while count > 1:
        half = count >> 1
        j = 0
        while j + 1 < half:  # (node2 reads its inputs before it writes: scratch may be below)
            kv_sha256_node2(below + 2 * j * HASH_SIZE, below + (2 * j + 1) * HASH_SIZE, scratch + j * HASH_SIZE,
                            below + (2 * j + 2) * HASH_SIZE, below + (2 * j + 3) * HASH_SIZE,
                            scratch + (j + 1) * HASH_SIZE)
            j += 2
        if j < half:
            kv_sha256_node(below + 2 * j * HASH_SIZE, below + (2 * j + 1) * HASH_SIZE, scratch + j * HASH_SIZE)
        below = scratch
        count = half
    memcpy(out, below, HASH_SIZE)


cdef void _merkle_root(const unsigned char* leaves, size_t n, unsigned char* out) noexcept nogil:
    """RFC 9162 MTH of n leaf hashes, in O(n) hashes and O(log n) memory.

    The leaves are folded left to right into perfect subtrees, as a binary counter counts: after
    each subtree the stack holds the subtrees of the leaf count's binary decomposition, largest
    first. The subtrees pushed are of MERKLE_BLOCK leaves while that many are left, then of the
    remainder's powers of two, largest first (each starts at a multiple of its size, as it must);
    each is hashed by _perfect_root. MTH then combines the right edge right to left (RFC 9162
    splits at the largest power of two).
    """
    cdef unsigned char stack[MAX_LEVELS + 1][HASH_SIZE]
    cdef unsigned char scratch[MERKLE_SCRATCH]
    cdef int top = 0, j
    cdef unsigned int level
    cdef size_t i = 0, size, k
    cdef kv_sha256_state S
    if n == 0:  # the empty tree: SHA-256("")
        kv_sha256_init(&S)
        kv_sha256_final(&S, out)
        return
    while i < n:
        size = MERKLE_BLOCK
        level = MERKLE_BLOCK_LEVEL
        while size > n - i:
            size >>= 1
            level -= 1
        _perfect_root(leaves + i * HASH_SIZE, level, scratch, stack[top])
        top += 1
        i += size
        k = i >> level
        while (k & 1) == 0:  # the top two subtrees are the same size: siblings
            top -= 1
            kv_sha256_node(stack[top - 1], stack[top], stack[top - 1])
            k >>= 1
    memcpy(out, stack[top - 1], HASH_SIZE)
    for j in range(top - 2, -1, -1):
        kv_sha256_node(stack[j], out, out)


def merkle_root(leaf_hashes: bytes) -> bytes:
    """RFC 9162 MTH of len(leaf_hashes) // 32 leaf hashes given concatenated (see _pure)."""
    cdef unsigned char out[HASH_SIZE]
    cdef const unsigned char* leaves
    cdef size_t n
    if not _binary(leaf_hashes) or _binary_size(leaf_hashes) % HASH_SIZE:
        return _pure.merkle_root(leaf_hashes)
    leaves = _binary_data(leaf_hashes)
    n = _binary_size(leaf_hashes) // HASH_SIZE
    # bytes hold still without the GIL; a bytearray could be resized by another thread.
    if type(leaf_hashes) is bytes and n >= NOGIL_ITEMS:
        with nogil:
            _merkle_root(leaves, n, out)
    else:
        _merkle_root(leaves, n, out)
    return _hash_bytes(out)


# One definition, the specification's: both are called once per event or node, not per hash.
event_leaf = _pure.event_leaf
node_key = _pure.node_key


@cython.boundscheck(True)  # the list is indexed between allocations: as Python does
def ledger_leaves(first_index: int, prev: bytes, changes: list) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The event leaves of redeems and voids, (serial, state, at ms, text) each (see _pure)."""
    cdef uint64_t first, serial, at_ms
    cdef long long state
    cdef Py_ssize_t i, n, text_size
    cdef const unsigned char* text_data
    cdef const unsigned char* previous
    cdef unsigned char first_prev[HASH_SIZE]
    cdef unsigned char* leaf_data
    cdef unsigned char* hash_out
    cdef list pairs = []
    cdef tuple change
    if not (kv_u64_of(first_index, &first) and _binary(prev) and _binary_size(prev) == HASH_SIZE
            and type(changes) is list):
        return _pure.ledger_leaves(first_index, prev, changes)
    n = PyList_GET_SIZE(changes)
    if n > 0 and first > UINT64_MAX - <uint64_t>(n - 1):
        return _pure.ledger_leaves(first_index, prev, changes)
    if n > PY_SSIZE_T_MAX // HASH_SIZE:
        raise MemoryError()
    hashes = PyBytes_FromStringAndSize(NULL, n * HASH_SIZE)
    hash_out = <unsigned char*>PyBytes_AS_STRING(hashes)
    memcpy(first_prev, _binary_data(prev), HASH_SIZE)
    previous = first_prev
    for i in range(n):
        item = changes[i]
        # Anything but (int, 1 or 2, int, str) with u64 numbers: the specification's answer or error.
        if type(item) is not tuple or PyTuple_GET_SIZE(item) != 4:
            return _pure.ledger_leaves(first_index, prev, changes)
        change = <tuple>item
        if not (kv_u64_of(change[0], &serial) and _int64_of(change[1], &state) and (state == REDEEMED or state == VOIDED)
                and kv_u64_of(change[2], &at_ms) and type(change[3]) is str):
            return _pure.ledger_leaves(first_index, prev, changes)
        text = change[3]
        if PyUnicode_IS_COMPACT_ASCII(text):
            text_data = PyUnicode_1BYTE_DATA(text)
            text_size = PyUnicode_GET_LENGTH(text)
        else:
            try:
                text_data = <const unsigned char*>PyUnicode_AsUTF8AndSize(text, &text_size)
            except UnicodeEncodeError:  # a lone surrogate
                return _pure.ledger_leaves(first_index, prev, changes)
        leaf = PyBytes_FromStringAndSize(NULL, CHANGE_TEXT_AT + text_size)
        leaf_data = <unsigned char*>PyBytes_AS_STRING(leaf)
        memcpy(leaf_data, EVENT_TAG, EVENT_TAG_SIZE)
        kv_store_be64(leaf_data + EVENT_INDEX_AT, first + <uint64_t>i)
        memcpy(leaf_data + EVENT_PREV_AT, previous, HASH_SIZE)
        leaf_data[EVENT_KIND_AT] = KIND_REDEEM if state == REDEEMED else KIND_VOID
        kv_store_be64(leaf_data + EVENT_AT_MS_AT, at_ms)
        kv_store_be64(leaf_data + EVENT_BODY_AT, serial)
        memcpy(leaf_data + CHANGE_TEXT_AT, text_data, text_size)
        _leaf_hash(leaf_data, CHANGE_TEXT_AT + text_size, hash_out)
        previous = hash_out
        hash_out += HASH_SIZE
        pairs.append((_u64_bytes(first + <uint64_t>i), leaf))
    return pairs, hashes


cdef inline void _put_be64(unsigned char* p, uint64_t v) noexcept nogil:
    """v big-endian at p (8 bytes)."""
    cdef int i
    for i in range(SERIAL_KEY_BYTES - 1, -1, -1):
        p[i] = v & 0xFF
        v >>= 8


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)  # an ASCII str: its 1-byte data is its UTF-8


cdef extern from *:
    """
    /* (a, b) of two bytes objects, which cannot be part of cyclic garbage: untracked, so a fold's
       200,000 pairs cost the cycle collector nothing (CPython would untrack them itself, later). */
    static PyObject* kv_untracked_pair(PyObject* a, PyObject* b) {
        PyObject* pair = PyTuple_Pack(2, a, b);
        if (pair != NULL && PyObject_GC_IsTracked(pair))
            PyObject_GC_UnTrack(pair);
        return pair;
    }
    """
    object kv_untracked_pair(object a, object b)


def fold_records(pending: dict, cards: list) -> tuple[list, list]:
    """What a ledger fold writes: (card pairs, outcome pairs), one of each per item of ``cards``, in its order.

    ``cards`` holds (serial key, card record) pairs as a sorted read returns them; ``pending`` maps each
    serial to its unfolded change (state, at ms, text, event index). The card keeps its tag and takes
    the change's state; the outcome record is the state, the time and the event index (big-endian u8,
    u64, u64), then the text in UTF-8.
    """
    cdef Py_ssize_t n, i, size, tlen
    cdef PyObject* entry
    cdef uint64_t state, at_ms, index
    cdef const char* utf8
    cdef unsigned char* out
    if type(pending) is not dict or type(cards) is not list:
        return _pure.fold_records(pending, cards)
    n = PyList_GET_SIZE(cards)
    new_cards = []
    outcomes = []
    for i in range(n):  # any shape or value read otherwise than here: the specification answers (or raises)
        item = <object>PyList_GET_ITEM(cards, i)
        if type(item) is not tuple or PyTuple_GET_SIZE(item) != 2:
            return _pure.fold_records(pending, cards)
        key = <object>PyTuple_GET_ITEM(item, 0)
        record = <object>PyTuple_GET_ITEM(item, 1)
        if type(key) is not bytes or PyBytes_GET_SIZE(key) != SERIAL_KEY_BYTES or type(record) is not bytes:
            return _pure.fold_records(pending, cards)
        entry = PyDict_GetItemWithError(pending, PyLong_FromUnsignedLongLong(
            _load_be64(<const unsigned char*>PyBytes_AS_STRING(key))))
        if entry == NULL or type(<object>entry) is not tuple or PyTuple_GET_SIZE(<object>entry) != 4:
            return _pure.fold_records(pending, cards)
        change = <object>entry
        text = <object>PyTuple_GET_ITEM(change, 2)
        if not kv_u64_of(<object>PyTuple_GET_ITEM(change, 0), &state) or state > 255 \
                or not kv_u64_of(<object>PyTuple_GET_ITEM(change, 1), &at_ms) \
                or not kv_u64_of(<object>PyTuple_GET_ITEM(change, 3), &index) or type(text) is not str:
            return _pure.fold_records(pending, cards)
        if PyUnicode_IS_ASCII(text):
            utf8 = <const char*>PyUnicode_1BYTE_DATA(text)
            tlen = PyUnicode_GET_LENGTH(text)
        else:
            try:
                utf8 = PyUnicode_AsUTF8AndSize(text, &tlen)
            except UnicodeError:
                return _pure.fold_records(pending, cards)
        size = PyBytes_GET_SIZE(record)
        card = PyBytes_FromStringAndSize(NULL, 1 + (size - 1 if size > 1 else 0))
        out = <unsigned char*>PyBytes_AS_STRING(card)
        out[0] = <unsigned char>state
        if size > 1:
            memcpy(out + 1, PyBytes_AS_STRING(record) + 1, <size_t>(size - 1))
        outcome = PyBytes_FromStringAndSize(NULL, OUTCOME_HEAD + tlen)
        out = <unsigned char*>PyBytes_AS_STRING(outcome)
        out[0] = <unsigned char>state
        _put_be64(out + 1, at_ms)
        _put_be64(out + 9, index)
        memcpy(out + OUTCOME_HEAD, utf8, <size_t>tlen)
        new_cards.append(kv_untracked_pair(key, card))
        outcomes.append(kv_untracked_pair(key, outcome))
    return new_cards, outcomes


def tree_append(size: int, frontier: bytes, leaf_hashes: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Append leaves to an append-only RFC 9162 tree of ``size`` leaves: the internal nodes they complete,
    [(u64(node_key), hash), ...] in key order, and the new frontier (see _pure)."""
    cdef uint64_t tree_size, index
    cdef unsigned char stack[MAX_LEVELS + 1][HASH_SIZE]  # the frontier, then the new one
    cdef unsigned char node[HASH_SIZE]
    cdef const unsigned char* leaves
    cdef Py_ssize_t i, n
    cdef int top
    cdef unsigned int level
    cdef list nodes = []
    if not (kv_u64_of(size, &tree_size) and _binary(frontier) and _binary(leaf_hashes)) \
            or _binary_size(leaf_hashes) % HASH_SIZE \
            or _binary_size(frontier) != kv_popcount64(tree_size) * HASH_SIZE:
        return _pure.tree_append(size, frontier, leaf_hashes)
    n = _binary_size(leaf_hashes) // HASH_SIZE
    if <uint64_t>n > UINT64_MAX - tree_size:  # the new size is past u64
        return _pure.tree_append(size, frontier, leaf_hashes)
    top = kv_popcount64(tree_size)
    memcpy(stack, _binary_data(frontier), top * HASH_SIZE)
    leaf_hashes = bytes(leaf_hashes)  # (a bytearray is copied: the loop allocates, which may run Python code)
    leaves = <const unsigned char*>PyBytes_AS_STRING(leaf_hashes)
    for i in range(n):
        # The new leaf is a perfect subtree (level 0, index tree_size); while it is a right child,
        # the frontier's last subtree is its sibling: the two make their parent.
        memcpy(node, leaves + i * HASH_SIZE, HASH_SIZE)
        level = 0
        index = tree_size
        while index & 1:
            top -= 1
            kv_sha256_node(stack[top], node, node)
            level += 1
            index >>= 1
            nodes.append((_u64_bytes(_node_key(level, index)), _hash_bytes(node)))
        memcpy(stack[top], node, HASH_SIZE)
        top += 1
        tree_size += 1
    return nodes, PyBytes_FromStringAndSize(<char*>stack, top * HASH_SIZE)


# -- test hooks (tests/test_fast_provenance.py): the SHA-256 compressions ----------------------------

def _select_sha256(which):
    """Test hook: compress SHA-256 with 0 the portable code, 1 SHA-NI, -1 the best this CPU runs; the
    choice, -1 if this build or CPU lacks it (then nothing changes)."""
    return kv_sha256_select(which)


def _sha256(data, force_portable=False, chunk=0):
    """Test hook: hashlib.sha256(data).digest() through the C code, with the compression in use or, with
    force_portable, the portable one; chunk > 0 feeds data in pieces of that size."""
    cdef kv_sha256_state S
    cdef unsigned char out[HASH_SIZE]
    cdef bytes d = bytes(data)
    cdef Py_ssize_t step = chunk if chunk > 0 else max(len(d), 1)
    cdef Py_ssize_t i
    kv_sha256_init(&S)
    if force_portable:
        S.blocks = kv_sha256_blocks_portable
    for i in range(0, len(d), step):
        kv_sha256_update(&S, <const unsigned char*>PyBytes_AS_STRING(d) + i, min(step, len(d) - i))
    kv_sha256_final(&S, out)
    return _hash_bytes(out)


cdef bint _canonical_serial(object text):
    """ASCII letters, digits and '-' only (what a printed serial is made of), and not empty."""
    cdef Py_ssize_t i, n
    cdef const unsigned char* data
    cdef unsigned char c
    if type(text) is not str or PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND:
        return False
    n = PyUnicode_GET_LENGTH(text)
    if n == 0:
        return False
    data = <const unsigned char*>PyUnicode_1BYTE_DATA(text)
    for i in range(n):
        c = data[i]
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 45):
            return False
    return True


def results_json(results: list, templates: dict, render: Callable[[Any, str | None], str]) -> str:
    """The JSON texts of ``results`` joined with ", ", each exactly ``render(result, None)``.

    Compiled twin of _pure.results_json: one template per result shape, the serial set in. A result
    whose fields (but the serial) are the very objects of the one before it (results of one batch
    are) reuses its template without a lookup.
    """
    cdef Py_ssize_t i, j, n, size
    cdef PyObject* found
    cdef bint same
    if type(results) is not list or type(templates) is not dict:
        return _pure.results_json(results, templates, render)
    n = PyList_GET_SIZE(results)
    parts = []
    previous = None  # the last result that went through a template (keeps its fields alive)
    head = tail = None
    for i in range(n):
        result = <object>PyList_GET_ITEM(results, i)
        if not isinstance(result, tuple):
            return _pure.results_json(results, templates, render)
        if i:
            parts.append(", ")
        size = PyTuple_GET_SIZE(result)
        serial = result[1] if size > 1 else None
        if not _canonical_serial(serial):
            parts.append(render(result, None))
            continue
        same = previous is not None and PyTuple_GET_SIZE(previous) == size
        if same:
            for j in range(size):
                if j != 1 and PyTuple_GET_ITEM(result, j) != PyTuple_GET_ITEM(previous, j):
                    same = False
                    break
        if not same:
            shape = result[:1] + result[2:]
            found = PyDict_GetItemWithError(templates, shape)
            if found == NULL:
                text_head, _, text_tail = render(result, _pure._MARK).partition(_pure._MARK_JSON)
                template = (text_head + '"', '"' + text_tail)
                templates[shape] = template
            else:
                template = <object>found
            head, tail = template
            previous = result
        parts.append(head)
        parts.append(serial)
        parts.append(tail)
    return "".join(parts)
