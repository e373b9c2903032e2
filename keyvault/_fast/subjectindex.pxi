# subjectindex.pxi: part of _core.pyx (included there). The subject index's work when a checkpoint
# is signed (docs/provenance.md, "Complete histories"): twins of _pure's subject_latest and
# subject_update, hashed with kv_sha256.h (sha256.pxi). Input of another shape, a damaged leaf or a
# damaged node record is handed to the _pure twin, which gives the specification's answer or error.
# A subtree of up to INDEX_BUCKET subjects is stored as one bucket record (L || entries in key order),
# a larger one as an inner node (N || left hash || right hash).

from libc.string cimport memcmp
from libc.stdlib cimport qsort


cdef enum:
    SUBJECT_TAG_SIZE = 11  # len(b"kv1/subject")
    INDEX_NODE_KEY = 35  # b"#" || u16 depth || 32-byte prefix
    INDEX_ENTRY = 40  # one subject in a bucket: subject key || u64 latest event index
    INDEX_BUCKET = 16  # _pure._INDEX_BUCKET: the most subjects a bucket holds
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


cdef inline bint _index_bit(const unsigned char* key, unsigned int depth) noexcept nogil:
    return (key[depth >> 3] >> (7 - (depth & 7))) & 1


cdef inline Py_ssize_t _index_split(const _SubjectItem* items, Py_ssize_t n, unsigned int depth) noexcept nogil:
    """The first of ``items`` (sorted, all under one node at ``depth``) whose bit ``depth`` is set."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if _index_bit(items[mid].key, depth):
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef void _index_sparse(const _SubjectItem* items, Py_ssize_t n, unsigned int depth,
                        unsigned char* out) noexcept nogil:
    """_pure._index_sparse: the hash of the subtree at ``depth`` holding exactly ``items`` (sorted)."""
    cdef unsigned char left[HASH_SIZE]
    cdef unsigned char right[HASH_SIZE]
    cdef Py_ssize_t mid
    if n == 0:
        memset(out, 0, HASH_SIZE)
        return
    if n == 1:
        _index_leaf_hash(items[0].key, items[0].value, out)
        return
    mid = _index_split(items, n, depth)
    _index_sparse(items, mid, depth + 1, left)
    _index_sparse(items + mid, n - mid, depth + 1, right)
    kv_sha256_node(left, right, out)


cdef bytes _index_where(unsigned int depth, const unsigned char* prefix):
    cdef unsigned char where[INDEX_NODE_KEY]
    where[0] = b'#'
    where[1] = <unsigned char>(depth >> 8)
    where[2] = <unsigned char>(depth & 0xFF)
    memcpy(where + 3, prefix, HASH_SIZE)
    return PyBytes_FromStringAndSize(<const char*>where, INDEX_NODE_KEY)


cdef int _index_build(list levels, const _SubjectItem* items, Py_ssize_t n, unsigned int depth,
                      const unsigned char* prefix, unsigned char* out) except -1:
    """_pure.subject_update's ``build``: store ``items`` (sorted, at least one) as the subtree at ``depth``."""
    cdef unsigned char right_prefix[HASH_SIZE]
    cdef unsigned char left_hash[HASH_SIZE]
    cdef unsigned char right_hash[HASH_SIZE]
    cdef unsigned char node_record[INDEX_INNER]
    cdef bytes record
    cdef char* at
    cdef Py_ssize_t i, mid
    if n <= INDEX_BUCKET:
        record = PyBytes_FromStringAndSize(NULL, 1 + n * INDEX_ENTRY)
        at = PyBytes_AS_STRING(record)
        at[0] = b'L'
        for i in range(n):
            memcpy(at + 1 + i * INDEX_ENTRY, items[i].key, HASH_SIZE)
            kv_store_be64(<unsigned char*>at + 1 + i * INDEX_ENTRY + HASH_SIZE, items[i].value)
        (<list>levels[depth]).append((_index_where(depth, prefix), record))
        _index_sparse(items, n, depth, out)
        return 0
    memcpy(right_prefix, prefix, HASH_SIZE)
    right_prefix[depth >> 3] |= <unsigned char>(0x80 >> (depth & 7))
    mid = _index_split(items, n, depth)
    if mid:
        _index_build(levels, items, mid, depth + 1, prefix, left_hash)
    else:
        memset(left_hash, 0, HASH_SIZE)
    if mid < n:
        _index_build(levels, items + mid, n - mid, depth + 1, right_prefix, right_hash)
    else:
        memset(right_hash, 0, HASH_SIZE)
    node_record[0] = b'N'
    memcpy(node_record + 1, left_hash, HASH_SIZE)
    memcpy(node_record + 1 + HASH_SIZE, right_hash, HASH_SIZE)
    (<list>levels[depth]).append((_index_where(depth, prefix),
                                  PyBytes_FromStringAndSize(<const char*>node_record, INDEX_INNER)))
    kv_sha256_node(left_hash, right_hash, out)
    return 0


cdef int _index_go(object get, dict overlay, list levels, const _SubjectItem* items, unsigned int depth,
                   const unsigned char* prefix, Py_ssize_t lo, Py_ssize_t hi, unsigned char* out) except -1:
    """_pure.subject_update's ``go``: the new hash of the stored subtree at ``depth`` under ``prefix`` with the
    changes items[lo:hi] into ``out``, its changed records appended to levels[depth]; INDEX_DAMAGED for a
    record _pure must judge."""
    cdef unsigned char right_prefix[HASH_SIZE]
    cdef unsigned char left_hash[HASH_SIZE]
    cdef unsigned char right_hash[HASH_SIZE]
    cdef unsigned char node_record[INDEX_INNER]
    cdef unsigned char mask
    cdef const unsigned char* rec = NULL
    cdef const unsigned char* entry
    cdef Py_ssize_t rec_size = 0, count = 0, mid, i, j, k, whole = depth >> 3
    cdef _SubjectItem* merged
    cdef int r, order
    cdef object record
    cdef bytes where = _index_where(depth, prefix)
    record = overlay.get(where) if overlay is not None else None
    if record is None:
        record = get(where)
    if record is not None:
        if not PyBytes_CheckExact(record):
            return INDEX_DAMAGED  # (not bytes: _pure reads it its own way)
        rec = <const unsigned char*>PyBytes_AS_STRING(record)
        rec_size = PyBytes_GET_SIZE(record)
    if rec != NULL and rec_size == INDEX_INNER and rec[0] == b'N':
        if lo == hi:
            kv_sha256_node(rec + 1, rec + 1 + HASH_SIZE, out)
            return 0
        memcpy(right_prefix, prefix, HASH_SIZE)
        right_prefix[depth >> 3] |= <unsigned char>(0x80 >> (depth & 7))
        mid = _items_bisect(items, right_prefix, lo, hi)
        if lo < mid:
            r = _index_go(get, overlay, levels, items, depth + 1, prefix, lo, mid, left_hash)
            if r:
                return r
        else:
            memcpy(left_hash, rec + 1, HASH_SIZE)
        if mid < hi:
            r = _index_go(get, overlay, levels, items, depth + 1, right_prefix, mid, hi, right_hash)
            if r:
                return r
        else:
            memcpy(right_hash, rec + 1 + HASH_SIZE, HASH_SIZE)
        node_record[0] = b'N'
        memcpy(node_record + 1, left_hash, HASH_SIZE)
        memcpy(node_record + 1 + HASH_SIZE, right_hash, HASH_SIZE)
        (<list>levels[depth]).append((where, PyBytes_FromStringAndSize(<const char*>node_record, INDEX_INNER)))
        kv_sha256_node(left_hash, right_hash, out)
        return 0
    if rec != NULL:  # a bucket: 1 to INDEX_BUCKET entries in strictly increasing key order, on this path
        if rec_size < 1 + INDEX_ENTRY or (rec_size - 1) % INDEX_ENTRY or rec[0] != b'L':
            return INDEX_DAMAGED
        count = (rec_size - 1) // INDEX_ENTRY
        if count > INDEX_BUCKET:
            return INDEX_DAMAGED
        mask = <unsigned char>(0xFF00 >> (depth & 7))
        for i in range(count):
            entry = rec + 1 + i * INDEX_ENTRY
            if memcmp(entry, prefix, whole) != 0 or (depth & 7 and (entry[whole] & mask) != prefix[whole]):
                return INDEX_DAMAGED
            if i and memcmp(entry - INDEX_ENTRY, entry, HASH_SIZE) >= 0:
                return INDEX_DAMAGED
    merged = <_SubjectItem*>PyMem_Malloc((count + hi - lo + 1) * sizeof(_SubjectItem))
    if merged == NULL:
        raise MemoryError()
    try:
        i, j, k = 0, lo, 0  # bucket entries, changes, merged: a change replaces its key's entry
        while i < count or j < hi:
            if i < count and j < hi:
                order = memcmp(rec + 1 + i * INDEX_ENTRY, items[j].key, HASH_SIZE)
            else:
                order = -1 if i < count else 1
            if order < 0:
                memcpy(merged[k].key, rec + 1 + i * INDEX_ENTRY, HASH_SIZE)
                merged[k].value = _be64(rec + 1 + i * INDEX_ENTRY + HASH_SIZE)
                i += 1
            else:
                merged[k] = items[j]
                j += 1
                if order == 0:
                    i += 1
            k += 1
        if lo == hi:
            _index_sparse(merged, k, depth, out)
        else:
            _index_build(levels, merged, k, depth, prefix, out)
    finally:
        PyMem_Free(merged)
    return 0


def subject_update(latest: dict, get: Callable[[bytes], Any],
                   overlay: dict | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Twin of _pure.subject_update: (new root, node records to write sorted by key) for {subject key: latest}."""
    cdef Py_ssize_t n, i = 0
    cdef _SubjectItem* items
    cdef unsigned char root[HASH_SIZE]
    cdef unsigned char prefix[HASH_SIZE]
    cdef uint64_t value
    cdef int r
    cdef list levels, writes
    if type(latest) is not dict or (overlay is not None and type(overlay) is not dict):
        return _pure.subject_update(latest, get, overlay)
    n = len(latest)
    items = <_SubjectItem*>PyMem_Malloc(max(n, 1) * sizeof(_SubjectItem))
    if items == NULL:
        raise MemoryError()
    try:
        for key, latest_index in (<dict>latest).items():
            if not PyBytes_CheckExact(key) or PyBytes_GET_SIZE(key) != HASH_SIZE or \
                    not kv_u64_of(latest_index, &value):
                return _pure.subject_update(latest, get, overlay)
            memcpy(items[i].key, PyBytes_AS_STRING(key), HASH_SIZE)
            items[i].value = value
            i += 1
        qsort(items, n, sizeof(_SubjectItem), _item_order)
        levels = [[] for _ in range(INDEX_MAX_DEPTH + 1)]
        memset(prefix, 0, HASH_SIZE)
        r = _index_go(get, overlay, levels, items, 0, prefix, 0, n, root)
    finally:
        PyMem_Free(items)
    if r:
        return _pure.subject_update(latest, get, overlay)  # (raises: a damaged record)
    writes = []
    for level in levels:  # each level's records in key order, levels in depth order: sorted by key
        writes.extend(<list>level)
    return _hash_bytes(root), writes
