# provenance.pxi: part of _core.pyx (included there). Provenance: twins of _pure's key_salt,
# commitments, merkle_root, ledger_leaves and tree_append (docs/provenance.md), hashed with
# kv_sha256.h (sha256.pxi). Per item they read the input in place and make only the Python
# objects they return. event_leaf and node_key are _pure's own.


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object text)  # an ASCII str: its 1-byte data is its UTF-8


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
    # A version 2 change leaf puts its links section before the body: u8(1) || u8(9) || "K" || u64(serial) || u64(link).
    CHANGE_LINKS_SIZE = 19  # 1 + 1 + 1 + U64_SIZE + U64_SIZE

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
cdef const char* EVENT_TAG_V2 = b"kv2/event"


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
def ledger_leaves(first_index: int, prev: bytes, changes: list,
                  links: bytes | None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The event leaves of redeems and voids, (serial, state, at ms, text) each; version 2 leaves with ``links``
    (see _pure)."""
    cdef uint64_t first, serial, at_ms
    cdef long long state
    cdef Py_ssize_t i, n, text_size, extra, body_at
    cdef const unsigned char* link_data = NULL
    cdef const unsigned char* text_data
    cdef const unsigned char* previous
    cdef unsigned char first_prev[HASH_SIZE]
    cdef unsigned char* leaf_data
    cdef unsigned char* hash_out
    cdef list pairs = []
    cdef tuple change
    if not (kv_u64_of(first_index, &first) and _binary(prev) and _binary_size(prev) == HASH_SIZE
            and type(changes) is list):
        return _pure.ledger_leaves(first_index, prev, changes, links)
    n = PyList_GET_SIZE(changes)
    extra = 0
    if links is not None:
        if type(links) is not bytes or PyBytes_GET_SIZE(links) != n * U64_SIZE:
            return _pure.ledger_leaves(first_index, prev, changes, links)
        link_data = <const unsigned char*>PyBytes_AS_STRING(links)
        extra = CHANGE_LINKS_SIZE
    body_at = EVENT_BODY_AT + extra
    if n > 0 and first > UINT64_MAX - <uint64_t>(n - 1):
        return _pure.ledger_leaves(first_index, prev, changes, links)
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
            return _pure.ledger_leaves(first_index, prev, changes, links)
        change = <tuple>item
        if not (kv_u64_of(change[0], &serial) and _int64_of(change[1], &state) and (state == REDEEMED or state == VOIDED)
                and kv_u64_of(change[2], &at_ms) and type(change[3]) is str):
            return _pure.ledger_leaves(first_index, prev, changes, links)
        text = change[3]
        if PyUnicode_IS_COMPACT_ASCII(text):
            text_data = PyUnicode_1BYTE_DATA(text)
            text_size = PyUnicode_GET_LENGTH(text)
        else:
            try:
                text_data = <const unsigned char*>PyUnicode_AsUTF8AndSize(text, &text_size)
            except UnicodeEncodeError:  # a lone surrogate
                return _pure.ledger_leaves(first_index, prev, changes, links)
        leaf = PyBytes_FromStringAndSize(NULL, CHANGE_TEXT_AT + extra + text_size)
        leaf_data = <unsigned char*>PyBytes_AS_STRING(leaf)
        memcpy(leaf_data, EVENT_TAG_V2 if extra else EVENT_TAG, EVENT_TAG_SIZE)
        kv_store_be64(leaf_data + EVENT_INDEX_AT, first + <uint64_t>i)
        memcpy(leaf_data + EVENT_PREV_AT, previous, HASH_SIZE)
        leaf_data[EVENT_KIND_AT] = KIND_REDEEM if state == REDEEMED else KIND_VOID
        kv_store_be64(leaf_data + EVENT_AT_MS_AT, at_ms)
        if extra:
            leaf_data[EVENT_BODY_AT] = 1
            leaf_data[EVENT_BODY_AT + 1] = 1 + U64_SIZE
            leaf_data[EVENT_BODY_AT + 2] = 75  # "K": the subject is a key
            kv_store_be64(leaf_data + EVENT_BODY_AT + 3, serial)
            memcpy(leaf_data + EVENT_BODY_AT + 3 + U64_SIZE, link_data + i * U64_SIZE, U64_SIZE)
        kv_store_be64(leaf_data + body_at, serial)
        memcpy(leaf_data + body_at + U64_SIZE, text_data, text_size)
        _leaf_hash(leaf_data, CHANGE_TEXT_AT + extra + text_size, hash_out)
        previous = hash_out
        hash_out += HASH_SIZE
        pairs.append((_u64_bytes(first + <uint64_t>i), leaf))
    return pairs, hashes


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
