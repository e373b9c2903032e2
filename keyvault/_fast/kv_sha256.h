/* kv_sha256.h: SHA-256 (FIPS 180-4), portable and with the x86 SHA
   extensions, chosen at run time; RFC 9162 interior nodes (see sha256.pxi).

   Part of keyvault._fast._core: included only by the C file Cython generates from _core.pyx
   (through `cdef extern from "kv_sha256.h"`), after Python.h. Everything here is static, so
   the module stays one translation unit. */
#ifndef KV_SHA256_H
#define KV_SHA256_H

#include <stdint.h>
#include <string.h>

#define KV_SHA256_BLOCK 64       /* bytes per block */
#define KV_SHA256_WORDS 8        /* 32-bit words in the chain value */
#define KV_SHA256_ROUNDS 64      /* rounds per block (one per message schedule word) */
#define KV_SHA256_LENGTH_AT 56   /* the last block ends with the message's bit count, u64 at bytes 56..63 */
#define KV_SHA256_PAD_BYTE 0x80  /* the 1 bit that starts the padding */
#define KV_HASH_BYTES 32         /* bytes of a digest: every leaf hash and node */
#define KV_NODE_PREFIX 0x01      /* RFC 9162: an interior node hashes 0x01 || left || right... */
#define KV_NODE_MESSAGE 65       /* ...65 bytes (1 + 2 * 32), padded to two blocks */

/* Compress count consecutive 64-byte blocks into the chain value h. */
typedef void (*kv_sha256_blocks_fn)(uint32_t* h, const unsigned char* blocks, size_t count);

typedef struct {
    uint32_t h[KV_SHA256_WORDS];         /* chain value */
    uint64_t length;                     /* bytes absorbed so far */
    unsigned char buf[KV_SHA256_BLOCK];  /* input not yet compressed */
    size_t buflen;                       /* bytes used in buf: fewer than a block between calls */
    kv_sha256_blocks_fn blocks;          /* the compression this hash uses */
} kv_sha256_state;

/* Initial hash value (FIPS 180-4 5.3.3): the first 32 bits of the fractional parts of the square
   roots of the first 8 primes. */
static const uint32_t kv_sha256_iv[KV_SHA256_WORDS] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

/* Round constants (4.2.2): the first 32 bits of the fractional parts of the cube roots of the first
   64 primes. */
static const uint32_t kv_sha256_k[KV_SHA256_ROUNDS] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static inline uint32_t kv_rotr32(uint32_t x, unsigned int c) {  /* x rotated right by c, 0 < c < 32 */
    return (x >> c) | (x << (32 - c));
}

static inline uint32_t kv_load_be32(const unsigned char* p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void kv_store_be32(unsigned char* p, uint32_t x) {
    p[0] = (unsigned char)(x >> 24);
    p[1] = (unsigned char)(x >> 16);
    p[2] = (unsigned char)(x >> 8);
    p[3] = (unsigned char)x;
}

/* u64(x): 8 bytes big-endian. */
static inline void kv_store_be64(unsigned char* p, uint64_t x) {
    kv_store_be32(p, (uint32_t)(x >> 32));
    kv_store_be32(p + 4, (uint32_t)x);
}

/* The compression, FIPS 180-4 6.2.2, in plain C. Rotation and shift counts are the standard's
   (4.1.2): sigma0 7, 18, >>3; sigma1 17, 19, >>10; Sigma0 2, 13, 22; Sigma1 6, 11, 25. */
static void kv_sha256_blocks_portable(uint32_t* h, const unsigned char* p, size_t count) {
    uint32_t w[KV_SHA256_ROUNDS];
    uint32_t a, b, c, d, e, f, g, hh, s0, s1, t1, t2;
    int i;
    for (; count > 0; count--, p += KV_SHA256_BLOCK) {
        for (i = 0; i < 16; i++)  /* the block's 16 words, big-endian */
            w[i] = kv_load_be32(p + 4 * i);
        for (i = 16; i < KV_SHA256_ROUNDS; i++) {  /* the message schedule */
            s0 = kv_rotr32(w[i - 15], 7) ^ kv_rotr32(w[i - 15], 18) ^ (w[i - 15] >> 3);
            s1 = kv_rotr32(w[i - 2], 17) ^ kv_rotr32(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
        for (i = 0; i < KV_SHA256_ROUNDS; i++) {
            t1 = hh + (kv_rotr32(e, 6) ^ kv_rotr32(e, 11) ^ kv_rotr32(e, 25)) + ((e & f) ^ (~e & g))
                 + kv_sha256_k[i] + w[i];
            t2 = (kv_rotr32(a, 2) ^ kv_rotr32(a, 13) ^ kv_rotr32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }
}

/* Two independent chains (h0 over p0, h1 over p1), count blocks each. */
typedef void (*kv_sha256_blocks2_fn)(uint32_t* h0, const unsigned char* p0, uint32_t* h1,
                                     const unsigned char* p1, size_t count);

static void kv_sha256_blocks2_portable(uint32_t* h0, const unsigned char* p0, uint32_t* h1,
                                       const unsigned char* p1, size_t count) {
    kv_sha256_blocks_portable(h0, p0, count);
    kv_sha256_blocks_portable(h1, p1, count);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define KV_SHA_NI_AVAILABLE 1
#include <immintrin.h>
#if !(defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__))
#include <cpuid.h>  /* compilers whose __builtin_cpu_supports may not know "sha" */
#endif

/* The same compression with the SHA extensions. The state lives in two registers as
   sha256rnds2 wants it: lanes (A, B, E, F) and (C, D, G, H), highest lane first. Each step does
   four rounds (two per sha256rnds2) with message words m[step & 3], a ring of the last 16. */
__attribute__((target("sha,sse4.1")))
static void kv_sha256_blocks_shani(uint32_t* h, const unsigned char* p, size_t count) {
    /* pshufb mask that reverses the bytes of each 32-bit word: the message is big-endian */
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i abef, cdgh, abef_saved, cdgh_saved, tmp, wk, m[4];
    int step;
    /* Shuffle 0xB1 swaps adjacent words and 0x1B reverses all four; alignr by 8 bytes takes the
       high half of its second operand and the low half of its first; blend 0xF0 takes the high
       half of its second operand. */
    tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h[0]), 0xB1);  /* C D A B */
    cdgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h[4]), 0x1B); /* E F G H */
    abef = _mm_alignr_epi8(tmp, cdgh, 8);                                     /* A B E F */
    cdgh = _mm_blend_epi16(cdgh, tmp, 0xF0);                                  /* C D G H */
    for (; count > 0; count--, p += KV_SHA256_BLOCK) {
        abef_saved = abef;
        cdgh_saved = cdgh;
        #pragma GCC unroll 16
        for (step = 0; step < 16; step++) {  /* rounds 4 * step .. 4 * step + 3 */
            if (step < 4) {  /* the block itself: 16 bytes (4 words) per step */
                m[step] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(p + 16 * step)), bswap);
            } else {
                /* W[t..t+3] from the 16 before (6.2.2 step 1): msg1 adds sigma0 of W[t-15..t-12] to
                   W[t-16..t-13], then W[t-7..t-4] is added and msg2 adds sigma1 of W[t-2], W[t-1]. */
                tmp = _mm_sha256msg1_epu32(m[step & 3], m[(step + 1) & 3]);
                tmp = _mm_add_epi32(tmp, _mm_alignr_epi8(m[(step + 3) & 3], m[(step + 2) & 3], 4));  /* 1 word */
                m[step & 3] = _mm_sha256msg2_epu32(tmp, m[(step + 3) & 3]);
            }
            wk = _mm_add_epi32(m[step & 3], _mm_loadu_si128((const __m128i*)&kv_sha256_k[4 * step]));
            /* Two rounds with the low two words of wk, two with the high two (0x0E moves them down).
               The first call leaves the new A B E F in cdgh, and the old one is the new C D G H:
               the second call swaps them back. */
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
        }
        abef = _mm_add_epi32(abef, abef_saved);
        cdgh = _mm_add_epi32(cdgh, cdgh_saved);
    }
    tmp = _mm_shuffle_epi32(abef, 0x1B);                                    /* F E B A */
    cdgh = _mm_shuffle_epi32(cdgh, 0xB1);                                   /* D C H G */
    _mm_storeu_si128((__m128i*)&h[0], _mm_blend_epi16(tmp, cdgh, 0xF0));   /* D C B A */
    _mm_storeu_si128((__m128i*)&h[4], _mm_alignr_epi8(cdgh, tmp, 8));      /* H G F E */
}

/* kv_sha256_blocks_shani on two independent chains at once, their steps interleaved: one chain's
   rounds wait on the previous round's result, so two chains keep the SHA unit busier. */
__attribute__((target("sha,sse4.1")))
static void kv_sha256_blocks2_shani(uint32_t* h0, const unsigned char* p0, uint32_t* h1,
                                    const unsigned char* p1, size_t count) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i abef0, cdgh0, abef1, cdgh1, abef0_saved, cdgh0_saved, abef1_saved, cdgh1_saved;
    __m128i tmp0, tmp1, k, wk0, wk1, m0[4], m1[4];
    int step;
    tmp0 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h0[0]), 0xB1);
    cdgh0 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h0[4]), 0x1B);
    abef0 = _mm_alignr_epi8(tmp0, cdgh0, 8);
    cdgh0 = _mm_blend_epi16(cdgh0, tmp0, 0xF0);
    tmp1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h1[0]), 0xB1);
    cdgh1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i*)&h1[4]), 0x1B);
    abef1 = _mm_alignr_epi8(tmp1, cdgh1, 8);
    cdgh1 = _mm_blend_epi16(cdgh1, tmp1, 0xF0);
    for (; count > 0; count--, p0 += KV_SHA256_BLOCK, p1 += KV_SHA256_BLOCK) {
        abef0_saved = abef0;
        cdgh0_saved = cdgh0;
        abef1_saved = abef1;
        cdgh1_saved = cdgh1;
        #pragma GCC unroll 16
        for (step = 0; step < 16; step++) {
            if (step < 4) {
                m0[step] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(p0 + 16 * step)), bswap);
                m1[step] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(p1 + 16 * step)), bswap);
            } else {
                tmp0 = _mm_sha256msg1_epu32(m0[step & 3], m0[(step + 1) & 3]);
                tmp1 = _mm_sha256msg1_epu32(m1[step & 3], m1[(step + 1) & 3]);
                tmp0 = _mm_add_epi32(tmp0, _mm_alignr_epi8(m0[(step + 3) & 3], m0[(step + 2) & 3], 4));
                tmp1 = _mm_add_epi32(tmp1, _mm_alignr_epi8(m1[(step + 3) & 3], m1[(step + 2) & 3], 4));
                m0[step & 3] = _mm_sha256msg2_epu32(tmp0, m0[(step + 3) & 3]);
                m1[step & 3] = _mm_sha256msg2_epu32(tmp1, m1[(step + 3) & 3]);
            }
            k = _mm_loadu_si128((const __m128i*)&kv_sha256_k[4 * step]);
            wk0 = _mm_add_epi32(m0[step & 3], k);
            wk1 = _mm_add_epi32(m1[step & 3], k);
            cdgh0 = _mm_sha256rnds2_epu32(cdgh0, abef0, wk0);
            cdgh1 = _mm_sha256rnds2_epu32(cdgh1, abef1, wk1);
            abef0 = _mm_sha256rnds2_epu32(abef0, cdgh0, _mm_shuffle_epi32(wk0, 0x0E));
            abef1 = _mm_sha256rnds2_epu32(abef1, cdgh1, _mm_shuffle_epi32(wk1, 0x0E));
        }
        abef0 = _mm_add_epi32(abef0, abef0_saved);
        cdgh0 = _mm_add_epi32(cdgh0, cdgh0_saved);
        abef1 = _mm_add_epi32(abef1, abef1_saved);
        cdgh1 = _mm_add_epi32(cdgh1, cdgh1_saved);
    }
    tmp0 = _mm_shuffle_epi32(abef0, 0x1B);
    cdgh0 = _mm_shuffle_epi32(cdgh0, 0xB1);
    _mm_storeu_si128((__m128i*)&h0[0], _mm_blend_epi16(tmp0, cdgh0, 0xF0));
    _mm_storeu_si128((__m128i*)&h0[4], _mm_alignr_epi8(cdgh0, tmp0, 8));
    tmp1 = _mm_shuffle_epi32(abef1, 0x1B);
    cdgh1 = _mm_shuffle_epi32(cdgh1, 0xB1);
    _mm_storeu_si128((__m128i*)&h1[0], _mm_blend_epi16(tmp1, cdgh1, 0xF0));
    _mm_storeu_si128((__m128i*)&h1[4], _mm_alignr_epi8(cdgh1, tmp1, 8));
}

/* Whether this CPU has the SHA extensions (and SSE4.1, which the code above also uses). */
static int kv_cpu_has_sha(void) {
#if defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
#else
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1))  /* leaf 1: SSE4.1 in ecx */
        return 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA);  /* leaf 7: SHA in ebx */
#endif
}
#else
#define KV_SHA_NI_AVAILABLE 0
#endif

static kv_sha256_blocks_fn kv_sha256_blocks = kv_sha256_blocks_portable;
static kv_sha256_blocks2_fn kv_sha256_blocks2 = kv_sha256_blocks2_portable;  /* always the same kind */

/* Choose the compression: 0 portable, 1 SHA-NI, -1 the best this CPU runs. Returns the choice, or
   -1 (nothing changed) if this build or CPU lacks it. */
static int kv_sha256_select(int which) {
    int sha = 0;
#if KV_SHA_NI_AVAILABLE
    sha = kv_cpu_has_sha();
#endif
    if (which < 0)
        which = sha ? 1 : 0;
    switch (which) {
    case 0: kv_sha256_blocks = kv_sha256_blocks_portable; kv_sha256_blocks2 = kv_sha256_blocks2_portable; return 0;
#if KV_SHA_NI_AVAILABLE
    case 1:
        if (!sha) return -1;
        kv_sha256_blocks = kv_sha256_blocks_shani;
        kv_sha256_blocks2 = kv_sha256_blocks2_shani;
        return 1;
#endif
    default: return -1;
    }
}

static void kv_sha256_init(kv_sha256_state* S) {
    memcpy(S->h, kv_sha256_iv, sizeof(S->h));
    S->length = 0;
    S->buflen = 0;
    S->blocks = kv_sha256_blocks;
}

static void kv_sha256_update(kv_sha256_state* S, const unsigned char* data, size_t n) {
    size_t take, whole;
    if (n == 0)
        return;
    S->length += n;
    if (S->buflen > 0) {  /* top up the partial block first */
        take = KV_SHA256_BLOCK - S->buflen;
        if (take > n)
            take = n;
        memcpy(S->buf + S->buflen, data, take);
        S->buflen += take;
        data += take;
        n -= take;
        if (S->buflen < KV_SHA256_BLOCK)
            return;  /* (all of data is buffered) */
        S->blocks(S->h, S->buf, 1);
        S->buflen = 0;
    }
    whole = n / KV_SHA256_BLOCK;  /* whole blocks straight from data */
    if (whole > 0) {
        S->blocks(S->h, data, whole);
        data += whole * KV_SHA256_BLOCK;
        n -= whole * KV_SHA256_BLOCK;
    }
    if (n > 0)
        memcpy(S->buf, data, n);
    S->buflen = n;
}

/* Pad (5.1.1: a 1 bit, zeros, the bit count as a u64), compress, write the 32-byte digest. S is spent. */
static void kv_sha256_final(kv_sha256_state* S, unsigned char* out) {
    size_t n = S->buflen;
    int i;
    S->buf[n++] = KV_SHA256_PAD_BYTE;
    if (n > KV_SHA256_LENGTH_AT) {  /* no room for the length here: it goes in one more block */
        memset(S->buf + n, 0, KV_SHA256_BLOCK - n);
        S->blocks(S->h, S->buf, 1);
        n = 0;
    }
    memset(S->buf + n, 0, KV_SHA256_LENGTH_AT - n);
    kv_store_be64(S->buf + KV_SHA256_LENGTH_AT, S->length * 8);  /* 8 bits per byte */
    S->blocks(S->h, S->buf, 1);
    for (i = 0; i < KV_SHA256_WORDS; i++)
        kv_store_be32(out + 4 * i, S->h[i]);
}

/* The two padded blocks of an interior node: 0x01 || left || right, then the padding. */
static void kv_node_blocks(unsigned char* block, const unsigned char* left, const unsigned char* right) {
    block[0] = KV_NODE_PREFIX;
    memcpy(block + 1, left, KV_HASH_BYTES);
    memcpy(block + 1 + KV_HASH_BYTES, right, KV_HASH_BYTES);
    block[KV_NODE_MESSAGE] = KV_SHA256_PAD_BYTE;
    memset(block + KV_NODE_MESSAGE + 1, 0, KV_SHA256_BLOCK + KV_SHA256_LENGTH_AT - KV_NODE_MESSAGE - 1);
    kv_store_be64(block + KV_SHA256_BLOCK + KV_SHA256_LENGTH_AT, KV_NODE_MESSAGE * 8);  /* bit count */
}

static void kv_sha256_digest_out(const uint32_t* h, unsigned char* out) {
    int i;
    for (i = 0; i < KV_SHA256_WORDS; i++)
        kv_store_be32(out + 4 * i, h[i]);
}

/* SHA-256(0x01 || left || right), an RFC 9162 interior node, from two 32-byte hashes; out may be
   either of them. */
static void kv_sha256_node(const unsigned char* left, const unsigned char* right, unsigned char* out) {
    unsigned char block[2 * KV_SHA256_BLOCK];
    uint32_t h[KV_SHA256_WORDS];
    kv_node_blocks(block, left, right);
    memcpy(h, kv_sha256_iv, sizeof(h));
    kv_sha256_blocks(h, block, 2);
    kv_sha256_digest_out(h, out);
}

/* Two nodes at once: out0 = node(left0, right0), out1 = node(left1, right1). Every input is read
   before an output is written, so an output may be any of the inputs. */
static void kv_sha256_node2(const unsigned char* left0, const unsigned char* right0, unsigned char* out0,
                            const unsigned char* left1, const unsigned char* right1, unsigned char* out1) {
    unsigned char block0[2 * KV_SHA256_BLOCK], block1[2 * KV_SHA256_BLOCK];
    uint32_t h0[KV_SHA256_WORDS], h1[KV_SHA256_WORDS];
    kv_node_blocks(block0, left0, right0);
    kv_node_blocks(block1, left1, right1);
    memcpy(h0, kv_sha256_iv, sizeof(h0));
    memcpy(h1, kv_sha256_iv, sizeof(h1));
    kv_sha256_blocks2(h0, block0, h1, block1, 2);
    kv_sha256_digest_out(h0, out0);
    kv_sha256_digest_out(h1, out1);
}

/* Pad the n-byte message at block in place (5.1.1); block must hold n + 9 bytes rounded up to a
   whole block. Returns the blocks it now spans. */
static size_t kv_sha256_pad(unsigned char* block, size_t n) {
    size_t blocks = (n + 1 + 8 + KV_SHA256_BLOCK - 1) / KV_SHA256_BLOCK;
    block[n] = KV_SHA256_PAD_BYTE;
    memset(block + n + 1, 0, blocks * KV_SHA256_BLOCK - 8 - n - 1);
    kv_store_be64(block + blocks * KV_SHA256_BLOCK - 8, (uint64_t)n * 8);
    return blocks;
}

/* SHA-256 of two padded messages of the same number of blocks, at once. */
static void kv_sha256_padded2(const unsigned char* block0, const unsigned char* block1, size_t blocks,
                              unsigned char* out0, unsigned char* out1) {
    uint32_t h0[KV_SHA256_WORDS], h1[KV_SHA256_WORDS];
    memcpy(h0, kv_sha256_iv, sizeof(h0));
    memcpy(h1, kv_sha256_iv, sizeof(h1));
    kv_sha256_blocks2(h0, block0, h1, block1, blocks);
    kv_sha256_digest_out(h0, out0);
    kv_sha256_digest_out(h1, out1);
}

#endif /* KV_SHA256_H */
