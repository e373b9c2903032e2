# testhooks.pxi: part of _core.pyx (included there). Hooks for tests/test_fast_twins.py,
# tests/test_fast_provenance.py and the benchmarks: the C constants and tables, the BLAKE2b C
# API, the lanes and SHA-256 selections, check_keys' phase profile. Not part of the public API
# (their names start with _, and _core.pyi leaves them out).


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
        "_INDEX_BUCKET": INDEX_BUCKET, "_INDEX_ENTRY": INDEX_ENTRY, "_INDEX_INNER": INDEX_INNER,
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



def _blake2b_one_block(key, person, digest_size, message):
    """blake2b(message, key=, digest_size=, person=) for 1 to 128 bytes through _digest_block (the single-key
    hashes' one compression) from a blake2b_init_keyed state."""
    cdef blake2b_state S
    cdef unsigned char block[BLAKE2B_BLOCKBYTES]
    cdef unsigned char out[BLAKE2B_OUTBYTES]
    cdef bytes k = bytes(key), p = bytes(person), m = bytes(message)
    if not 0 < len(m) <= BLAKE2B_BLOCKBYTES or blake2b_init_keyed(&S, digest_size, k, len(k), p, len(p)) < 0:
        raise ValueError("digest_size, key, person or message out of range")
    memset(block, 0, BLAKE2B_BLOCKBYTES)
    memcpy(block, <const unsigned char*>PyBytes_AS_STRING(m), len(m))
    _digest_block(&S, block, len(m), out)
    return PyBytes_FromStringAndSize(<char*>out, digest_size)

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


def _profile_check_keys(clock):
    """Benchmark hook: time check_keys' phases with clock (e.g. time.perf_counter_ns), or stop (None)."""
    global _profiling, _clock_ns
    _clock_ns = clock
    _profiling = clock is not None


def _check_keys_profile():
    """The phase times (ns) of the last check_keys call made while profiling, or None."""
    return _last_profile


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
