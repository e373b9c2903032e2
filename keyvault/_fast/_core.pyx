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
Cython modules.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsUnsignedLongLongMask
from cpython.unicode cimport (PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_DATA,
                              PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_New, PyUnicode_READ)
from libc.stdint cimport uint64_t
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
    for i in range(n):
        s.s0 ^= values[i]
        s.s1 ^= _mul(values[i], LOCATORS[i])
        s.s3 ^= _mul(values[i], _CUBES[i])
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


def parse_key(text: str) -> tuple[int, int, bytes, int]:
    """Parse typed input as a v1 key: (outcome, serial, canonical bytes, position).

    On OK, serial is the 60-bit serial and canonical the 32 ASCII symbols; on
    any other outcome they are 0 and b"", and position is the 0-based symbol
    position at fault (-1 when no single position can be named).
    """
    cdef signed char symbols[KEY_SYMBOLS]
    cdef char canonical[KEY_SYMBOLS]
    cdef Py_ssize_t i, position = -1
    cdef uint64_t serial = 0
    cdef int outcome
    if type(text) is not str:
        return _pure.parse_key(text)
    keyvault_unicode_ready(text)
    if PyUnicode_GET_LENGTH(text) > MAX_INPUT:
        return BAD_LENGTH, 0, b"", -1
    if _symbols_of(text, symbols, KEY_SYMBOLS) != KEY_SYMBOLS:
        return BAD_LENGTH, 0, b"", -1
    for i in range(KEY_SYMBOLS):
        if symbols[i] < 0:
            return BAD_SYMBOL, 0, b"", i
    # All values are now 0..31: read them as unsigned.
    outcome = _check_key(<unsigned char*>symbols, &position)
    if outcome != OK:
        return outcome, 0, b"", position
    if symbols[0] != VERSION:
        return BAD_VERSION, 0, b"", 0
    for i in range(SERIAL_START, SERIAL_START + SERIAL_SYMBOLS):
        serial = (serial << SYMBOL_BITS) | <uint64_t>symbols[i]
    for i in range(KEY_SYMBOLS):
        canonical[i] = ALPHABET[symbols[i]]
    return OK, serial, PyBytes_FromStringAndSize(canonical, KEY_SYMBOLS), -1


def parse_serial(text: str) -> int:
    """The 60-bit serial from typed serial text (12 symbols), or -1 if it is not one."""
    cdef signed char symbols[SERIAL_SYMBOLS]
    cdef Py_ssize_t i
    cdef uint64_t serial = 0
    if type(text) is not str:
        return _pure.parse_serial(text)
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

    Returns the canonical keys and their verifiers concatenated (16 bytes each).
    """
    cdef blake2b_state salted
    cdef char key[KEY_SYMBOLS]
    cdef const unsigned char* chunk
    cdef unsigned char* out
    cdef uint64_t serial
    cdef Py_ssize_t i, n
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
    keys = []
    verifiers = PyBytes_FromStringAndSize(NULL, n * DIGEST_SIZE)
    out = <unsigned char*>PyBytes_AS_STRING(verifiers)
    chunk = <const unsigned char*>PyBytes_AS_STRING(entropy)
    # Every verifier hashes salt || key: absorb the salt once, fork per key.
    blake2b_init(&salted, DIGEST_SIZE, <const unsigned char*>PERSON_VERIFIER, strlen(PERSON_VERIFIER))
    blake2b_update(&salted, <const unsigned char*>PyBytes_AS_STRING(salt), <size_t>PyBytes_GET_SIZE(salt))
    for i in range(n):
        _encode_key(key, serial + <uint64_t>i, _load40(chunk), _load40(chunk + HALF_SECRET_BYTES))
        blake2b_digest_from(&salted, <const unsigned char*>key, KEY_SYMBOLS, out)
        text = PyUnicode_New(KEY_SYMBOLS, ASCII_MAX)
        memcpy(PyUnicode_1BYTE_DATA(text), key, KEY_SYMBOLS)
        keys.append(text)
        chunk += SECRET_BYTES
        out += DIGEST_SIZE
    return keys, verifiers


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
