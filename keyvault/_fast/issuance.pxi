# issuance.pxi: part of _core.pyx (included there). Issuing keys in bulk: issue_keys (keys and
# their verifiers, in lanes, without the GIL for large counts), export_rows (the printable CSV)
# and card_records (the store's active card records, sealed).


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


# -- export_rows and card_records: a chunk of an issued batch at a time ----------------------------

cdef enum:
    SERIAL_TEXT_LEN = 14  # PPPP-BBB-IIIII
    KEY_TEXT_LEN = 39  # 32 symbols in 8 groups of 4, joined by 7 dashes
    CARD_RECORD_LEN = 33  # state byte + 16-byte tag + 16-byte seal
    CARD_BODY_LEN = 17  # what the seal covers (with the serial): state byte + tag
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
    """(serial key, active card record) pairs from a manifest body chunk (see _pure.card_records).

    The tags and seals (two compressions per card) are hashed in lanes, without the GIL for
    NOGIL_ITEMS cards or more, into one buffer; the pairs are made from it after.
    """
    if type(first_serial) is not int or type(records) is not bytes or type(size) is not int \
            or type(pepper) is not bytes or size < DIGEST_LEN or len(pepper) > BLAKE2B_KEYBYTES \
            or first_serial < 0 or first_serial + len(records) // max(size, 1) > 0xFFFFFFFFFFFFFFFF:
        return _pure.card_records(first_serial, records, size, pepper)
    cdef blake2b_state keyed, sealed
    blake2b_init_keyed(&keyed, DIGEST_LEN, <const unsigned char*>PyBytes_AS_STRING(pepper), len(pepper),
                       <const unsigned char*>PERSON_TAG, strlen(PERSON_TAG))
    _init_sealed(&sealed, <const unsigned char*>PyBytes_AS_STRING(pepper), <size_t>len(pepper))
    cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(records)
    cdef Py_ssize_t width = size  # a C integer: the pointer arithmetic below must not be Python's
    cdef Py_ssize_t n = len(records) // width
    cdef Py_ssize_t i
    cdef int b
    cdef uint64_t serial = <uint64_t>first_serial
    cdef unsigned char key[8]
    cdef unsigned char* values = <unsigned char*>PyMem_Malloc(<size_t>n * CARD_RECORD_LEN if n > 0 else 1)
    cdef list out = []
    if values == NULL:
        raise MemoryError()
    try:
        if n >= NOGIL_ITEMS:
            with nogil:
                _card_bodies(&keyed, &sealed, data, width, n, serial, values, _lane_count)
        else:
            _card_bodies(&keyed, &sealed, data, width, n, serial, values, _lane_count)
        for i in range(n):
            for b in range(8):  # big-endian, so the store keeps serial order
                key[7 - b] = <unsigned char>((serial + <uint64_t>i) >> (8 * b))
            out.append((PyBytes_FromStringAndSize(<char*>key, 8),
                        PyBytes_FromStringAndSize(<char*>values + i * CARD_RECORD_LEN, CARD_RECORD_LEN)))
    finally:
        PyMem_Free(values)
    return out


cdef void _card_bodies(const blake2b_state* keyed, const blake2b_state* sealed, const unsigned char* data,
                       Py_ssize_t width, Py_ssize_t n, uint64_t first, unsigned char* values,
                       int lanes) noexcept nogil:
    """card_records' hashing: n active card records (state, tag, seal: CARD_RECORD_LEN bytes each) into
    values, for the cards whose verifiers end each width-byte record at data. Lanes cards at a time
    (one compression for their tags, one for their seals), the rest one by one: the same hashes."""
    cdef unsigned char tblocks[KV_MAX_LANES][BLAKE2B_BLOCKBYTES]  # a verifier, zero-padded
    cdef unsigned char sblocks[KV_MAX_LANES][BLAKE2B_BLOCKBYTES]  # b"c" || serial || ACTIVE || tag, zero-padded
    cdef const unsigned char* tptr[KV_MAX_LANES]
    cdef const unsigned char* sptr[KV_MAX_LANES]
    cdef unsigned char* tout[KV_MAX_LANES]
    cdef unsigned char* sout[KV_MAX_LANES]
    cdef uint64_t tlen[KV_MAX_LANES]
    cdef uint64_t slen[KV_MAX_LANES]
    cdef uint64_t serial
    cdef unsigned char* value
    cdef Py_ssize_t i = 0
    cdef int j, b
    if lanes > KV_MAX_LANES:
        lanes = 0
    for j in range(lanes):
        memset(tblocks[j], 0, BLAKE2B_BLOCKBYTES)
        memset(sblocks[j], 0, BLAKE2B_BLOCKBYTES)
        sblocks[j][0] = b"c"
        tptr[j] = tblocks[j]
        sptr[j] = sblocks[j]
        tout[j] = sblocks[j] + 10  # the tag goes straight into the seal's input...
        tlen[j] = DIGEST_LEN
        slen[j] = SEAL_CARD_INPUT
    if lanes > 0:
        while n - i >= lanes:
            for j in range(lanes):
                memcpy(tblocks[j], data + (i + j + 1) * width - DIGEST_LEN, DIGEST_LEN)
                serial = first + <uint64_t>(i + j)
                for b in range(8):
                    sblocks[j][8 - b] = <unsigned char>(serial >> (8 * b))
                sblocks[j][9] = 0  # ACTIVE
                sout[j] = values + (i + j) * CARD_RECORD_LEN + CARD_BODY_LEN
            kv_lanes(keyed.h, keyed.t[0], tptr, tlen, tout, DIGEST_LEN)
            kv_lanes(sealed.h, sealed.t[0], sptr, slen, sout, SEAL_BYTES)
            for j in range(lanes):  # ...and into the record, before its seal
                value = values + (i + j) * CARD_RECORD_LEN
                value[0] = 0  # ACTIVE
                memcpy(value + 1, sblocks[j] + 10, DIGEST_LEN)
            i += lanes
    while i < n:
        value = values + i * CARD_RECORD_LEN
        value[0] = 0  # ACTIVE
        blake2b_digest_from(keyed, data + (i + 1) * width - DIGEST_LEN, DIGEST_LEN, value + 1)
        _card_seal(sealed, first + <uint64_t>i, value, value + CARD_BODY_LEN)
        i += 1
