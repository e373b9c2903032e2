# subjectindex.pxi: part of _core.pyx (included there). The subject index's work when a checkpoint
# is signed (docs/provenance.md, "Complete histories"): twins of _pure's subject_latest and
# subject_update, hashed with kv_sha256.h (sha256.pxi). Input of another shape, a damaged leaf or a
# damaged node record is handed to the _pure twin, which gives the specification's answer or error.

from libc.string cimport memcmp
from libc.stdlib cimport qsort


cdef enum:
    SUBJECT_TAG_SIZE = 11  # len(b"kv1/subject")
    INDEX_NODE_KEY = 35  # b"#" || u16 depth || 32-byte prefix
    INDEX_LEAF = 41  # b"L" || subject key || u64 latest event index
    INDEX_INNER = 65  # b"N" || left hash || right hash
    INDEX_MAX_DEPTH = 256
    LINKS_AT = 58  # EVENT_BODY_AT: a version 2 leaf's links section starts where a version 1 body would
    INDEX_DAMAGED = 1  # _index_go's answer for a record _pure must judge (it raises)

cdef const char* SUBJECT_TAG = b"kv1/subject"


ctypedef struct _SubjectItem:
    unsigned char key[HASH_SIZE]
    uint64_t value


cdef int _item_order(const void* a, const void* b) noexcept nogil:
    return memcmp((<const _SubjectItem*>a).key, (<const _SubjectItem*>b).key, HASH_SIZE)


cdef inline Py_ssize_t _items_bisect(const _SubjectItem* items, const unsigned char* key, Py_ssize_t lo,
                                     Py_ssize_t hi) noexcept nogil:
    """The first position in items[lo:hi] whose key is not below ``key`` (bisect_left)."""
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if memcmp(items[mid].key, key, HASH_SIZE) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline void _sha256_of(const unsigned char* data, size_t n, unsigned char* out) noexcept nogil:
    cdef kv_sha256_state S
    kv_sha256_init(&S)
    kv_sha256_update(&S, data, n)
    kv_sha256_final(&S, out)


cdef inline void _index_leaf_hash(const unsigned char* key, uint64_t latest, unsigned char* out) noexcept nogil:
    """SHA-256(0x00 || key || u64 latest): the index's leaf."""
    cdef unsigned char message[1 + HASH_SIZE + U64_SIZE]
    message[0] = LEAF_PREFIX
    memcpy(message + 1, key, HASH_SIZE)
    kv_store_be64(message + 1 + HASH_SIZE, latest)
    _sha256_of(message, sizeof(message), out)


cdef inline uint64_t _be64(const unsigned char* p) noexcept nogil:
    cdef uint64_t x = 0
    cdef int j
    for j in range(U64_SIZE):
        x = (x << 8) | p[j]
    return x


def subject_latest(items: list, size: int) -> dict | None:
    """Twin of _pure.subject_latest: {subject key: latest event index} over (u64 index, leaf) pairs."""
    cdef uint64_t limit, index
    cdef Py_ssize_t i, n, at, length, count, k, leaf_size
    cdef const unsigned char* leaf
    cdef object key, value
    cdef unsigned char digest[HASH_SIZE]
    cdef kv_sha256_state S
    cdef dict latest = {}
    if type(items) is not list or not kv_u64_of(size, &limit):
        return _pure.subject_latest(items, size)
    n = PyList_GET_SIZE(items)
    for i in range(n):
        item = <object>PyList_GET_ITEM(items, i)
        if not PyTuple_CheckExact(item) or PyTuple_GET_SIZE(item) != 2:
            return _pure.subject_latest(items, size)
        key = <object>PyTuple_GET_ITEM(item, 0)
        value = <object>PyTuple_GET_ITEM(item, 1)
        if not PyBytes_CheckExact(key) or PyBytes_GET_SIZE(key) != U64_SIZE or not PyBytes_CheckExact(value):
            return _pure.subject_latest(items, size)
        index = _be64(<const unsigned char*>PyBytes_AS_STRING(key))
        if index >= limit:
            break
        leaf = <const unsigned char*>PyBytes_AS_STRING(value)
        leaf_size = PyBytes_GET_SIZE(value)
        if leaf_size < LINKS_AT:
            return _pure.subject_latest(items, size)  # (raises: not a leaf)
        if memcmp(leaf, EVENT_TAG, EVENT_TAG_SIZE) == 0:
            return None
        if memcmp(leaf, EVENT_TAG_V2, EVENT_TAG_SIZE) != 0 or leaf_size <= LINKS_AT:
            return _pure.subject_latest(items, size)  # (raises: not a leaf, or links cut short)
        count = leaf[LINKS_AT]
        at = LINKS_AT + 1
        for k in range(count):
            length = leaf[at] if at < leaf_size else 0
            if not length or at + 1 + length + U64_SIZE > leaf_size:
                return _pure.subject_latest(items, size)  # (raises: links cut short)
            kv_sha256_init(&S)
            kv_sha256_update(&S, <const unsigned char*>SUBJECT_TAG, SUBJECT_TAG_SIZE)
            kv_sha256_update(&S, leaf + at + 1, <size_t>length)
            kv_sha256_final(&S, digest)
            latest[_hash_bytes(digest)] = PyLong_FromUnsignedLongLong(index)
            at += 1 + length + U64_SIZE
    return latest


cdef int _index_go(object get, list levels, const _SubjectItem* items, unsigned int depth,
                   const unsigned char* prefix, Py_ssize_t lo, Py_ssize_t hi, const _SubjectItem* extra,
                   bint below_inner, unsigned char* out) except -1:
    """_pure.subject_update's ``go``: the hash of the subtree at ``depth`` under ``prefix`` into ``out``, its
    changed records appended to levels[depth]; INDEX_DAMAGED for a record _pure must judge."""
    cdef unsigned char where[INDEX_NODE_KEY]
    cdef unsigned char right_prefix[HASH_SIZE]
    cdef unsigned char left_hash[HASH_SIZE]
    cdef unsigned char right_hash[HASH_SIZE]
    cdef unsigned char leaf_record[INDEX_LEAF]
    cdef unsigned char node_record[INDEX_INNER]
    cdef const unsigned char* rec = NULL
    cdef Py_ssize_t rec_size = 0, count, at, mid
    cdef _SubjectItem old
    cdef const _SubjectItem* one
    cdef const _SubjectItem* left_extra
    cdef const _SubjectItem* right_extra
    cdef bint inner = False, goes_right
    cdef int r
    cdef object record = None
    cdef bytes where_bytes
    where[0] = b'#'
    where[1] = <unsigned char>(depth >> 8)
    where[2] = <unsigned char>(depth & 0xFF)
    memcpy(where + 3, prefix, HASH_SIZE)
    where_bytes = PyBytes_FromStringAndSize(<const char*>where, INDEX_NODE_KEY)
    if below_inner:
        record = get(where_bytes)
        if record is not None:
            if not PyBytes_CheckExact(record):
                return INDEX_DAMAGED  # (not bytes: _pure reads it its own way)
            rec = <const unsigned char*>PyBytes_AS_STRING(record)
            rec_size = PyBytes_GET_SIZE(record)
    count = hi - lo + (extra != NULL)
    if count == 0:
        if rec == NULL:
            memset(out, 0, HASH_SIZE)
        elif rec[0] == b'L' and rec_size == INDEX_LEAF:
            _index_leaf_hash(rec + 1, _be64(rec + 1 + HASH_SIZE), out)
        elif rec[0] == b'N' and rec_size == INDEX_INNER:
            kv_sha256_node(rec + 1, rec + 1 + HASH_SIZE, out)
        else:
            return INDEX_DAMAGED
        return 0
    if rec != NULL:
        if rec[0] == b'L' and rec_size == INDEX_LEAF:
            at = _items_bisect(items, rec + 1, lo, hi)
            if not (at < hi and memcmp(items[at].key, rec + 1, HASH_SIZE) == 0):
                memcpy(old.key, rec + 1, HASH_SIZE)
                old.value = _be64(rec + 1 + HASH_SIZE)
                extra = &old
                count += 1
        elif rec[0] == b'N' and rec_size == INDEX_INNER:
            inner = True
        else:
            return INDEX_DAMAGED
    if not inner and count == 1:
        one = &items[lo] if extra == NULL else extra
        leaf_record[0] = b'L'
        memcpy(leaf_record + 1, one.key, HASH_SIZE)
        kv_store_be64(leaf_record + 1 + HASH_SIZE, one.value)
        (<list>levels[depth]).append((where_bytes, PyBytes_FromStringAndSize(<const char*>leaf_record, INDEX_LEAF)))
        _index_leaf_hash(one.key, one.value, out)
        return 0
    if depth >= INDEX_MAX_DEPTH:
        return INDEX_DAMAGED  # (two subjects share a key: _pure says so)
    memcpy(right_prefix, prefix, HASH_SIZE)
    right_prefix[depth >> 3] |= <unsigned char>(0x80 >> (depth & 7))
    mid = _items_bisect(items, right_prefix, lo, hi)
    goes_right = extra != NULL and (extra.key[depth >> 3] >> (7 - (depth & 7))) & 1
    left_extra = NULL if goes_right else extra
    right_extra = extra if goes_right else NULL
    if lo < mid or left_extra != NULL:
        r = _index_go(get, levels, items, depth + 1, prefix, lo, mid, left_extra, inner, left_hash)
        if r:
            return r
    elif inner:
        memcpy(left_hash, rec + 1, HASH_SIZE)
    else:
        memset(left_hash, 0, HASH_SIZE)
    if mid < hi or right_extra != NULL:
        r = _index_go(get, levels, items, depth + 1, right_prefix, mid, hi, right_extra, inner, right_hash)
        if r:
            return r
    elif inner:
        memcpy(right_hash, rec + 1 + HASH_SIZE, HASH_SIZE)
    else:
        memset(right_hash, 0, HASH_SIZE)
    node_record[0] = b'N'
    memcpy(node_record + 1, left_hash, HASH_SIZE)
    memcpy(node_record + 1 + HASH_SIZE, right_hash, HASH_SIZE)
    (<list>levels[depth]).append((where_bytes, PyBytes_FromStringAndSize(<const char*>node_record, INDEX_INNER)))
    kv_sha256_node(left_hash, right_hash, out)
    return 0


def subject_update(latest: dict, get: Callable[[bytes], Any]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Twin of _pure.subject_update: (new root, node records to write sorted by key) for {subject key: latest}."""
    cdef Py_ssize_t n, i = 0
    cdef _SubjectItem* items
    cdef unsigned char root[HASH_SIZE]
    cdef unsigned char prefix[HASH_SIZE]
    cdef uint64_t value
    cdef int r
    cdef list levels, writes
    if type(latest) is not dict:
        return _pure.subject_update(latest, get)
    n = len(latest)
    items = <_SubjectItem*>PyMem_Malloc(max(n, 1) * sizeof(_SubjectItem))
    if items == NULL:
        raise MemoryError()
    try:
        for key, latest_index in (<dict>latest).items():
            if not PyBytes_CheckExact(key) or PyBytes_GET_SIZE(key) != HASH_SIZE or \
                    not kv_u64_of(latest_index, &value):
                return _pure.subject_update(latest, get)
            memcpy(items[i].key, PyBytes_AS_STRING(key), HASH_SIZE)
            items[i].value = value
            i += 1
        qsort(items, n, sizeof(_SubjectItem), _item_order)
        levels = [[] for _ in range(INDEX_MAX_DEPTH + 1)]
        memset(prefix, 0, HASH_SIZE)
        r = _index_go(get, levels, items, 0, prefix, 0, n, NULL, True, root)
    finally:
        PyMem_Free(items)
    if r:
        return _pure.subject_update(latest, get)  # (raises: a damaged record)
    writes = []
    for level in levels:  # each level's records in key order, levels in depth order: sorted by key
        writes.extend(<list>level)
    return _hash_bytes(root), writes
