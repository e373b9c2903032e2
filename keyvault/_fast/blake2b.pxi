# blake2b.pxi: part of _core.pyx (included there). BLAKE2b (RFC 7693) in Cython: the C API that
# _core.pxd declares for other Cython modules, and _digest_block, the one-compression shortcut
# the batch check and the key salts use. 64-bit words, little-endian.


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


cdef inline void _digest_block(const blake2b_state* S, const unsigned char* block, size_t n,
                               unsigned char* out) noexcept nogil:
    """blake2b_digest_from(S, block, n, out) for 0 < n <= BLAKE2B_BLOCKBYTES bytes, given zero-padded
    to a whole block, when S has nothing buffered (fresh from blake2b_init or blake2b_init_keyed).

    The message is the last block: one compression from S's chain value (kv_lanes.h's unrolled one where
    it is built, the same compression as _compress).
    """
    cdef blake2b_state fork
    cdef size_t i
    cdef uint64_t length = n
    if kv_one_block != NULL and S.t[1] == 0 and S.t[0] <= UINT64_MAX - BLAKE2B_BLOCKBYTES:
        kv_one_block(S.h, S.t[0], &block, &length, &out, S.outlen)
        return
    memcpy(fork.h, S.h, sizeof(fork.h))
    fork.t[0] = S.t[0]
    fork.t[1] = S.t[1]
    _count(&fork, n)
    _compress(&fork, block, True)
    for i in range(S.outlen):
        out[i] = <unsigned char>(fork.h[i // WORD_BYTES] >> (8 * (i % WORD_BYTES)))
