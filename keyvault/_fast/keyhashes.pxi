# keyhashes.pxi: part of _core.pyx (included there). The per-key hashes, BLAKE2b-128 with one
# personalisation each: verifier, tag, locator, store_locator, and tags_equal; with the helpers
# that read bytes and bytearray arguments in place.


# BLAKE2b personalisations (the `person` parameter), one per kind of hash.
cdef const char* PERSON_VERIFIER = b"kv1/verifier"
cdef const char* PERSON_TAG = b"kv1/tag"
cdef const char* PERSON_LOCATE = b"kv1/locate"
cdef const char* PERSON_STORE_LOCATE = b"kv1/slocate"
cdef const char* PERSON_SEAL = b"kv1/seal"

cdef enum:
    SEAL_BYTES = 16  # the keyed checksum ending every card and outcome record (_pure.seal)
    SEAL_CARD_INPUT = 26  # what a card's seal covers: b"c" || serial (u64) || state || tag


cdef inline void _card_seal(const blake2b_state* sealed, uint64_t serial, const unsigned char* body,
                            unsigned char* out) noexcept nogil:
    """_pure.seal(pepper, SEAL_CARD, serial, body) for a card body (state || tag, 17 bytes), sealed being
    fresh from blake2b_init_keyed(pepper, PERSON_SEAL): one compression."""
    cdef unsigned char block[BLAKE2B_BLOCKBYTES]
    cdef int b
    memset(block, 0, BLAKE2B_BLOCKBYTES)
    block[0] = b"c"
    for b in range(8):
        block[8 - b] = <unsigned char>(serial >> (8 * b))
    memcpy(block + 9, body, 17)
    _digest_block(sealed, block, SEAL_CARD_INPUT, out)


cdef inline int _init_sealed(blake2b_state* sealed, const unsigned char* pepper, size_t pepper_len) except -1:
    """The seal's hash state keyed with the pepper (nothing absorbed)."""
    if blake2b_init_keyed(sealed, SEAL_BYTES, pepper, pepper_len, <const unsigned char*>PERSON_SEAL,
                          strlen(PERSON_SEAL)) < 0:
        raise ValueError("the pepper is too long for a seal")
    return 0


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
