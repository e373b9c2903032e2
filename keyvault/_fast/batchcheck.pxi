# batchcheck.pxi: part of _core.pyx (included there). The batch check and the redeem path:
# format_serial_text, judge, check_keys, check_one, accept_redeems and fold_records, with the
# C of kv_batch.h (Result tuples, answer slots, untracked pairs).
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
    CARD_BODY = 17  # a cards record: state (1 byte) + tag (DIGEST_SIZE bytes)...
    CARD_SIZE = 33  # ...+ its seal (SEAL_BYTES): _pure.seal(pepper, SEAL_CARD, serial, state || tag)
    OUTCOME_HEAD = 17  # an outcomes record: state (1 byte) + at ms (8 bytes) + event index (8), then UTF-8 text
    SERIAL_KEY_BYTES = 8  # a serial as a store key: big-endian u64
    SERIAL_TEXT_SIZE = 14  # PPPP-BBB-IIIII
    SERIAL_TEXT_DASH1 = 4  # symbols before the first dash...
    SERIAL_TEXT_DASH2 = 7  # ...and before the second

    # A batch row (_pure.BatchRow, or a plain tuple of its fields), read by position here: (salt,
    # valid_from, valid_until, block, batch id, supplier id, supplier name, product).
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


cdef extern from "kv_batch.h":
    enum: KEYVAULT_RESULT_ITEMS
    bint keyvault_tuple_subtype(object type) noexcept
    object keyvault_result(object type, int direct, object status, object serial, object batch,
                           object supplier, object supplier_name, object product, object message)
    object keyvault_result_items(object type, int direct, PyObject** items)
    void kv_slot_set(PyObject** slots, Py_ssize_t i, object o)
    list kv_list_from_slots(PyObject** slots, Py_ssize_t n)
    void kv_slots_clear(PyObject** slots, Py_ssize_t n)
    object kv_untracked_pair(object a, object b)


# keyvault.results and keyvault.clock, imported on first use (as _pure does).
cdef object _Result = None
cdef object _Status = None
cdef object _VALID = None
cdef object _UNKNOWN = None
cdef object _iso = None
cdef bint _direct_results = False
cdef str _NO_SUCH_KEY = "no such key in this store"

# The named rows of the specification: tuples with tuple's own item access (NamedTuple adds only
# properties), so C reads them by position as it reads plain tuples. Subclasses of these or of
# tuple, which could read otherwise, go to _pure.
cdef object _BatchRow = _pure.BatchRow  # batches' values
cdef object _Change = _pure.Change  # a fold's pending values (overlay entries are only passed on to judge)

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


ctypedef struct _Found:
    uint64_t serial
    PyObject* row  # the batch row (kept alive by check_keys' rows list), NULL for an unknown batch
    Py_ssize_t index  # position in the input
    const unsigned char* salt  # the batch's salt (kept alive as the row), or the unknown batch's
    size_t salt_len
    unsigned char key[KEY_SYMBOLS]  # the canonical key
    unsigned char tag[DIGEST_SIZE]  # the tag its card record must hold: tag(pepper, verifier(salt, key))
    unsigned char seal[SEAL_BYTES]  # the seal its card record holds if it is active: seal(serial, 0 || tag)
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


cdef void _seal_all(const blake2b_state* sealed, _Found* found, Py_ssize_t n, int lanes) noexcept nogil:
    """Every found key's active seal (what its card record ends with if it says active): lanes at a time."""
    cdef unsigned char blocks[KV_MAX_LANES][BLAKE2B_BLOCKBYTES]  # b"c" || serial || ACTIVE || tag, zero-padded
    cdef const unsigned char* ptr[KV_MAX_LANES]
    cdef unsigned char* out[KV_MAX_LANES]
    cdef uint64_t lens[KV_MAX_LANES]
    cdef unsigned char body[CARD_BODY]
    cdef Py_ssize_t k
    cdef int j, b, filled = 0
    cdef _Found* f
    if lanes > KV_MAX_LANES:
        lanes = 0
    if lanes == 0:
        body[0] = ACTIVE
        for k in range(n):
            memcpy(body + 1, found[k].tag, DIGEST_SIZE)
            _card_seal(sealed, found[k].serial, body, found[k].seal)
        return
    for j in range(lanes):
        memset(blocks[j], 0, BLAKE2B_BLOCKBYTES)
        blocks[j][0] = b"c"
        ptr[j] = blocks[j]
        lens[j] = SEAL_CARD_INPUT
    k = 0
    while k < n:
        f = &found[k]
        for b in range(8):
            blocks[filled][8 - b] = <unsigned char>(f.serial >> (8 * b))
        blocks[filled][9] = ACTIVE
        memcpy(blocks[filled] + 10, f.tag, DIGEST_SIZE)
        out[filled] = f.seal
        filled += 1
        k += 1
        if filled == lanes or k == n:
            if filled == lanes:
                kv_lanes(sealed.h, sealed.t[0], ptr, lens, out, SEAL_BYTES)
            else:
                for j in range(filled):
                    _digest_block(sealed, blocks[j], SEAL_CARD_INPUT, out[j])
            filled = 0


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


def format_serial_text(serial: int) -> str:
    """A serial as printed: PPPP-BBB-IIIII."""
    if type(serial) is not int:
        return _pure.format_serial_text(serial)
    return _serial_text(PyLong_AsUnsignedLongLongMask(serial))


# The rule book has one definition, the specification's: check_keys builds the hot results (valid,
# unknown) itself, and every rarer status goes through this same function.
judge = _pure.judge
# The seal's Python-level helpers (outcome records are opened on the rare paths only): the specification's.
seal = _pure.seal
card_sound = _pure.card_sound
open_outcome = _pure.open_outcome
damaged = _pure.damaged


def check_keys(keys: list, pepper: bytes, batches: dict, key_blocks: dict, overlay: dict, cards: object,
               outcomes: object, now: int) -> list:
    """Judge many typed keys at once: one Result per key, in input order; None for non-native input.

    batches maps a batch key to its BatchRow (salt, valid_from, valid_until, block, batch id,
    supplier id, supplier name, product), block being the KeyBlock (level, reason) of a supplier
    or batch blacklist entry, or None; key_blocks maps a serial to its KeyBlock; overlay maps a
    serial to its unfolded ledger Change (state, at ms, text, event index). cards and outcomes are py-lmdb
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
    # Other types, or a batch row that is not a tuple or BatchRow of 8 with a bytes salt: before any store read,
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
    cdef PyObject* items[KEYVAULT_RESULT_ITEMS]
    cdef PyObject* found
    _load_results()
    if type(results) is not list or type(orders) is not list:
        return _pure.accept_redeems(results, orders, now, when)
    n = min(PyList_GET_SIZE(results), PyList_GET_SIZE(orders))
    for i in range(n):  # Results and str orders only (as check_keys and redeem_many give): else the specification
        if type(<object>PyList_GET_ITEM(results, i)) is not _Result \
                or PyTuple_GET_SIZE(<object>PyList_GET_ITEM(results, i)) != KEYVAULT_RESULT_ITEMS \
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
            for j in range(KEYVAULT_RESULT_ITEMS):
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
            for j in range(KEYVAULT_RESULT_ITEMS):
                items[j] = PyTuple_GET_ITEM(result, j)
            items[0] = <PyObject*>accepted
            items[12] = <PyObject*>None
            results[i] = keyvault_result_items(_Result, _direct_results, items)
    return changes, counts


# check_one's hash states: the verifier's (unkeyed) and the tag's, keyed with the last pepper seen.
cdef blake2b_state _one_salted
cdef blake2b_state _one_keyed
cdef blake2b_state _one_sealed
cdef object _one_pepper = None  # the bytes _one_keyed was keyed with (held: its identity stays its own)


# (The verifier's state needs BLAKE2B_IV, set when blake2b.pxi's part of the module ran.)
blake2b_init(&_one_salted, DIGEST_SIZE, <const unsigned char*>PERSON_VERIFIER, strlen(PERSON_VERIFIER))


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
    if (type(row_obj) is not tuple and type(row_obj) is not _BatchRow) or PyTuple_GET_SIZE(row_obj) < ROW_FIELDS \
            or type(<object>PyTuple_GET_ITEM(row_obj, ROW_SALT)) is not bytes:
        return _pure.check_one(key, pepper, batches, key_blocks, overlay, txn, db, now)
    salt_obj = <object>PyTuple_GET_ITEM(row_obj, ROW_SALT)
    if pepper is not _one_pepper:
        blake2b_init_keyed(&_one_keyed, DIGEST_SIZE, <const unsigned char*>PyBytes_AS_STRING(pepper),
                           <size_t>PyBytes_GET_SIZE(pepper), <const unsigned char*>PERSON_TAG, strlen(PERSON_TAG))
        _init_sealed(&_one_sealed, <const unsigned char*>PyBytes_AS_STRING(pepper), <size_t>PyBytes_GET_SIZE(pepper))
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
    if PyBytes_GET_SIZE(record) < CARD_BODY:
        return None
    data = <const unsigned char*>PyBytes_AS_STRING(record)
    matched = digests_equal(data + 1, f.tag, DIGEST_SIZE)
    if not matched or data[0] != ACTIVE or PyBytes_GET_SIZE(record) != CARD_SIZE:
        return None
    _card_seal(&_one_sealed, serial, data, f.seal)
    if not digests_equal(data + CARD_BODY, f.seal, SEAL_BYTES):
        return None  # damaged: check_keys says so
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
    cdef blake2b_state salted, keyed, sealed
    cdef unsigned char seal[SEAL_BYTES]
    cdef bint sound
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
    cdef object change, serial_obj, state_obj, row_obj, text, answer, copy, by_key = None

    _load_results()
    if _profiling:
        marks = [_clock_ns()]
    now_fits = _int64_of(now, &now_ms)
    rows = []  # every row pointed to by found: alive until the end, whatever getmulti does
    memset(zero_salt, 0, UNKNOWN_SALT_BYTES)
    blake2b_init(&salted, DIGEST_SIZE, <const unsigned char*>PERSON_VERIFIER, strlen(PERSON_VERIFIER))
    blake2b_init_keyed(&keyed, DIGEST_SIZE, _binary_data(pepper), _binary_size(pepper),
                       <const unsigned char*>PERSON_TAG, strlen(PERSON_TAG))
    _init_sealed(&sealed, _binary_data(pepper), _binary_size(pepper))
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
                    if (type(row_obj) is not tuple and type(row_obj) is not _BatchRow) \
                            or PyTuple_GET_SIZE(row_obj) < ROW_FIELDS \
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
        _seal_all(&sealed, found, nfound, _lane_count)
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
                if not PyBytes_CheckExact(<object>record):  # a buffer, ...: read as _pure reads it
                    if not tags_equal(bytes((<object>record)[1:CARD_BODY]),
                                      PyBytes_FromStringAndSize(<char*>f.tag, DIGEST_SIZE)):
                        record = NULL
                    else:
                        copy = bytes(<object>record)
                        rows.append(copy)  # (kept alive with the rows)
                        record = <PyObject*>copy
                if record != NULL:
                    data = <const unsigned char*>PyBytes_AS_STRING(<object>record)
                    if PyBytes_GET_SIZE(<object>record) >= CARD_BODY and digests_equal(data + 1, f.tag, DIGEST_SIZE):
                        state = data[0]
                        state_obj = state  # a small int: no allocation
            if state == -1:
                f.verdict = VERDICT_UNKNOWN
                continue
            f.verdict = VERDICT_JUDGED
            row_obj = <object>f.row
            # The right key: its record must be whole (its seal vouches for state and tag at this serial).
            sound = PyBytes_GET_SIZE(<object>record) == CARD_SIZE
            if sound and state == ACTIVE:
                sound = digests_equal(data + CARD_BODY, f.seal, SEAL_BYTES)
            elif sound:
                _card_seal(&sealed, f.serial, data, seal)
                sound = digests_equal(data + CARD_BODY, seal, SEAL_BYTES)
            if not sound:
                kv_slot_set(slots, f.index, damaged(PyLong_FromUnsignedLongLong(f.serial), row_obj))
                continue
            serial_obj = PyLong_FromUnsignedLongLong(f.serial) if len(overlay) or len(key_blocks) else None
            change = None
            if len(overlay):
                entry = PyDict_GetItemWithError(overlay, serial_obj)
                if entry != NULL:
                    change = <object>entry
            if state > ACTIVE and change is None:
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
                                            open_outcome(pepper, serial_obj, details.get(serial_obj.to_bytes(8, "big"))),
                                            now))
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


cdef inline void _put_be64(unsigned char* p, uint64_t v) noexcept nogil:
    """v big-endian at p (8 bytes)."""
    cdef int i
    for i in range(SERIAL_KEY_BYTES - 1, -1, -1):
        p[i] = v & 0xFF
        v >>= 8


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)  # an ASCII str: its 1-byte data is its UTF-8


def fold_records(pending: dict, cards: list, pepper: bytes) -> tuple[list, list]:
    """What a ledger fold writes: (card pairs, outcome pairs), one of each per item of ``cards``, in its order.

    ``cards`` holds (serial key, card record) pairs as a sorted read returns them; ``pending`` maps each
    serial to its unfolded Change (state, at ms, text, event index). A sound card keeps its tag, takes
    the change's state and is sealed again; a damaged one is written back as it was (never re-sealed:
    it stays refused). The outcome record is the state, the time and the event index (big-endian u8,
    u64, u64), then the text in UTF-8, then its seal.
    """
    cdef Py_ssize_t n, i, size, tlen
    cdef PyObject* entry
    cdef uint64_t state, at_ms, index, serial
    cdef const char* utf8
    cdef unsigned char* out
    cdef const unsigned char* data
    cdef unsigned char mark[SEAL_BYTES]
    cdef blake2b_state sealed, fork
    if type(pending) is not dict or type(cards) is not list or type(pepper) is not bytes \
            or PyBytes_GET_SIZE(pepper) > BLAKE2B_KEYBYTES:
        return _pure.fold_records(pending, cards, pepper)
    _init_sealed(&sealed, <const unsigned char*>PyBytes_AS_STRING(pepper), <size_t>PyBytes_GET_SIZE(pepper))
    n = PyList_GET_SIZE(cards)
    new_cards = []
    outcomes = []
    for i in range(n):  # any shape or value read otherwise than here: the specification answers (or raises)
        item = <object>PyList_GET_ITEM(cards, i)
        if type(item) is not tuple or PyTuple_GET_SIZE(item) != 2:
            return _pure.fold_records(pending, cards, pepper)
        key = <object>PyTuple_GET_ITEM(item, 0)
        record = <object>PyTuple_GET_ITEM(item, 1)
        if type(key) is not bytes or PyBytes_GET_SIZE(key) != SERIAL_KEY_BYTES or type(record) is not bytes:
            return _pure.fold_records(pending, cards, pepper)
        serial = _load_be64(<const unsigned char*>PyBytes_AS_STRING(key))
        entry = PyDict_GetItemWithError(pending, PyLong_FromUnsignedLongLong(serial))
        if entry == NULL or (type(<object>entry) is not tuple and type(<object>entry) is not _Change) \
                or PyTuple_GET_SIZE(<object>entry) != 4:  # a Change: (state, at ms, text, event index)
            return _pure.fold_records(pending, cards, pepper)
        change = <object>entry
        text = <object>PyTuple_GET_ITEM(change, 2)
        if not kv_u64_of(<object>PyTuple_GET_ITEM(change, 0), &state) or state > 255 \
                or not kv_u64_of(<object>PyTuple_GET_ITEM(change, 1), &at_ms) \
                or not kv_u64_of(<object>PyTuple_GET_ITEM(change, 3), &index) or type(text) is not str:
            return _pure.fold_records(pending, cards, pepper)
        if PyUnicode_IS_ASCII(text):
            utf8 = <const char*>PyUnicode_1BYTE_DATA(text)
            tlen = PyUnicode_GET_LENGTH(text)
        else:
            try:
                utf8 = PyUnicode_AsUTF8AndSize(text, &tlen)
            except UnicodeError:
                return _pure.fold_records(pending, cards, pepper)
        size = PyBytes_GET_SIZE(record)
        data = <const unsigned char*>PyBytes_AS_STRING(record)
        card = record  # damaged: written back as it was
        if size == CARD_SIZE:
            _card_seal(&sealed, serial, data, mark)
            if digests_equal(data + CARD_BODY, mark, SEAL_BYTES):
                card = PyBytes_FromStringAndSize(NULL, CARD_SIZE)
                out = <unsigned char*>PyBytes_AS_STRING(card)
                out[0] = <unsigned char>state
                memcpy(out + 1, data + 1, DIGEST_SIZE)
                _card_seal(&sealed, serial, out, out + CARD_BODY)
        outcome = PyBytes_FromStringAndSize(NULL, OUTCOME_HEAD + tlen + SEAL_BYTES)
        out = <unsigned char*>PyBytes_AS_STRING(outcome)
        out[0] = <unsigned char>state
        _put_be64(out + 1, at_ms)
        _put_be64(out + 9, index)
        memcpy(out + OUTCOME_HEAD, utf8, <size_t>tlen)
        fork = sealed
        mark[0] = b"o"
        blake2b_update(&fork, mark, 1)
        blake2b_update(&fork, <const unsigned char*>PyBytes_AS_STRING(key), SERIAL_KEY_BYTES)
        blake2b_update(&fork, out, <size_t>(OUTCOME_HEAD + tlen))
        blake2b_final(&fork, out + OUTCOME_HEAD + tlen)
        new_cards.append(kv_untracked_pair(key, card))
        outcomes.append(kv_untracked_pair(key, outcome))
    return new_cards, outcomes
