# keyformat.pxi: part of _core.pyx (included there). The v1 key format: its constants, GF(32)
# and the check symbols, the per-character tables (built at import), and the public functions
# that read and write keys and serials: normalize, check_symbols, parse_key, parse_serial,
# format_serial, encode_key.
#
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
# The ASCII characters of _pure.SEPARATORS. Text with any of the others is
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


# ---------------------------------------------------------------------------
# The public functions of the key format: _pure's, one for one.

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
