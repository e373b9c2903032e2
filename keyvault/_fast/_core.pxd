"""C-level API of keyvault._fast._core for other Cython modules.

``from keyvault._fast._core cimport blake2b_state, blake2b_init_keyed, ...``

BLAKE2b (RFC 7693) with the parameter block fields hashlib.blake2b exposes as
``digest_size``, ``key`` and ``person`` (fanout 1, depth 1, no salt, no tree).
All functions are ``noexcept nogil``; the ones that take sizes from the caller
return 0 on success and -1 when a size is out of range (nothing is hashed then).

Hashing many short messages under one key (the store's pepper)::

    cdef blake2b_state keyed
    blake2b_init_keyed(&keyed, 16, pepper, pepper_len, b"kv1/tag", 7)  # once
    for ...:
        blake2b_digest_from(&keyed, verifier, 16, out)  # one compression each

The state is a plain struct: copying it (``cdef blake2b_state s = keyed``) forks
the hash, which is what blake2b_digest_from does internally.
"""

from libc.stdint cimport uint64_t


cdef enum:
    BLAKE2B_BLOCKBYTES = 128  # bytes per compressed block (16 words of 64 bits)
    BLAKE2B_OUTBYTES = 64  # largest digest
    BLAKE2B_KEYBYTES = 64  # longest key
    BLAKE2B_PERSONALBYTES = 16  # the parameter block's personalisation field


ctypedef struct blake2b_state:
    uint64_t h[8]  # chain value
    uint64_t t[2]  # bytes compressed so far (t[0] low word, t[1] high word)
    unsigned char buf[BLAKE2B_BLOCKBYTES]  # input not yet compressed
    size_t buflen  # bytes used in buf; the last block is compressed by final only
    size_t outlen  # digest size, 1..BLAKE2B_OUTBYTES
    size_t keylen  # 0..BLAKE2B_KEYBYTES; with person, lets final redo the key block
    uint64_t person[2]  # personalisation as parameter words 6 and 7


# Start an unkeyed hash of outlen bytes (1..64) with a person string (0..16 bytes).
cdef int blake2b_init(blake2b_state* S, size_t outlen,
                      const unsigned char* person, size_t personlen) noexcept nogil

# Start a keyed hash (keylen 0..64; 0 is unkeyed) and compress the key block
# now, so S is the state after the key and can be copied for every message.
cdef int blake2b_init_keyed(blake2b_state* S, size_t outlen,
                            const unsigned char* key, size_t keylen,
                            const unsigned char* person, size_t personlen) noexcept nogil

# Absorb n bytes.
cdef void blake2b_update(blake2b_state* S, const unsigned char* data, size_t n) noexcept nogil

# Write the S.outlen-byte digest to out. S is spent afterwards (init it again).
cdef void blake2b_final(blake2b_state* S, unsigned char* out) noexcept nogil

# Digest of S's input followed by data, written to out; S itself is not changed.
cdef void blake2b_digest_from(const blake2b_state* S, const unsigned char* data, size_t n,
                              unsigned char* out) noexcept nogil

# One-shot hash: blake2b(data, key=key, digest_size=outlen, person=person).
cdef int blake2b_digest(unsigned char* out, size_t outlen,
                        const unsigned char* key, size_t keylen,
                        const unsigned char* person, size_t personlen,
                        const unsigned char* data, size_t n) noexcept nogil

# Constant-time equality of two n-byte buffers (1 if equal).
cdef bint digests_equal(const unsigned char* a, const unsigned char* b, size_t n) noexcept nogil
