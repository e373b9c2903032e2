/* kv_lanes.h: BLAKE2b in SIMD lanes: one compression of several
   independent one-block messages at once, chosen at run time (see lanes.pxi).

   Part of keyvault._fast._core: included only by the C file Cython generates from _core.pyx
   (through `cdef extern from "kv_lanes.h"`), after Python.h. Everything here is static, so
   the module stays one translation unit. */
#ifndef KV_LANES_H
#define KV_LANES_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ \
    && (defined(__x86_64__) || defined(__aarch64__))
#define KV_LANES_AVAILABLE 1
#else
#define KV_LANES_AVAILABLE 0
#endif
#define KV_MAX_LANES 8

/* Hash lanes one-block messages: lane j is the BLAKE2b state with chain value
   h0 and byte counter t0 (nothing buffered), followed by the lens[j] bytes at
   blocks[j] (zero-padded to 128 bytes) as the last block; its first outlen
   (<= 64) digest bytes go to outs[j]. */
typedef void (*kv_lanes_fn)(const uint64_t* h0, uint64_t t0, const unsigned char* const* blocks,
                            const uint64_t* lens, unsigned char* const* outs, size_t outlen);

#if KV_LANES_AVAILABLE
static const uint64_t kv_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};

#define KV_ROTR(x, c) (((x) >> (c)) | ((x) << (64 - (c))))
#define KV_G(a, b, c, d, x, y) do { \
    a = a + b + (x); d = KV_ROTR(d ^ a, 32); c = c + d; b = KV_ROTR(b ^ c, 24); \
    a = a + b + (y); d = KV_ROTR(d ^ a, 16); c = c + d; b = KV_ROTR(b ^ c, 63); } while (0)
#define KV_ROUND(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) do { \
    KV_G(v0, v4, v8, v12, m[s0], m[s1]); KV_G(v1, v5, v9, v13, m[s2], m[s3]); \
    KV_G(v2, v6, v10, v14, m[s4], m[s5]); KV_G(v3, v7, v11, v15, m[s6], m[s7]); \
    KV_G(v0, v5, v10, v15, m[s8], m[s9]); KV_G(v1, v6, v11, v12, m[s10], m[s11]); \
    KV_G(v2, v7, v8, v13, m[s12], m[s13]); KV_G(v3, v4, v9, v14, m[s14], m[s15]); } while (0)
/* The message schedule (RFC 7693 section 2.7), rounds 0-11. */
#define KV_ROUNDS do { \
    KV_ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); \
    KV_ROUND(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3); \
    KV_ROUND(11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4); \
    KV_ROUND(7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8); \
    KV_ROUND(9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13); \
    KV_ROUND(2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9); \
    KV_ROUND(12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11); \
    KV_ROUND(13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10); \
    KV_ROUND(6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5); \
    KV_ROUND(10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0); \
    KV_ROUND(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); \
    KV_ROUND(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3); } while (0)

/* dst (a vector) = expr for each lane j, through the array w. */
#define KV_SPLAT(dst, expr) do { \
    for (j = 0; j < sizeof(w) / sizeof(w[0]); j++) \
        w[j] = (expr); \
    memcpy(&(dst), w, sizeof(dst)); } while (0)

/* One lanes function: vectors of L words (type VT), compiled with ATTR. */
#define KV_DEFINE_LANES(NAME, VT, L, ATTR) \
ATTR static void NAME(const uint64_t* h0, uint64_t t0, const unsigned char* const* blocks, \
                      const uint64_t* lens, unsigned char* const* outs, size_t outlen) { \
    VT m[16], h[8], v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15; \
    uint64_t w[L]; \
    size_t i, j; \
    for (i = 0; i < 16; i++) { \
        for (j = 0; j < L; j++) memcpy(&w[j], blocks[j] + 8 * i, 8); \
        memcpy(&m[i], w, sizeof(VT)); \
    } \
    for (i = 0; i < 8; i++) \
        KV_SPLAT(h[i], h0[i]); \
    v0 = h[0]; v1 = h[1]; v2 = h[2]; v3 = h[3]; v4 = h[4]; v5 = h[5]; v6 = h[6]; v7 = h[7]; \
    KV_SPLAT(v8, kv_iv[0]); KV_SPLAT(v9, kv_iv[1]); KV_SPLAT(v10, kv_iv[2]); KV_SPLAT(v11, kv_iv[3]); \
    KV_SPLAT(v12, kv_iv[4] ^ (t0 + lens[j])); /* the byte counter (its high word t1 is 0) */ \
    KV_SPLAT(v13, kv_iv[5]); KV_SPLAT(v14, ~kv_iv[6]); /* the last block */ KV_SPLAT(v15, kv_iv[7]); \
    KV_ROUNDS; \
    h[0] ^= v0 ^ v8; h[1] ^= v1 ^ v9; h[2] ^= v2 ^ v10; h[3] ^= v3 ^ v11; \
    h[4] ^= v4 ^ v12; h[5] ^= v5 ^ v13; h[6] ^= v6 ^ v14; h[7] ^= v7 ^ v15; \
    for (i = 0; i < (outlen + 7) / 8; i++) { \
        memcpy(w, &h[i], sizeof(VT)); \
        for (j = 0; j < L; j++) { \
            size_t k, n = outlen - 8 * i < 8 ? outlen - 8 * i : 8; \
            for (k = 0; k < n; k++) outs[j][8 * i + k] = (unsigned char)(w[j] >> (8 * k)); \
        } \
    } \
}

/* One lane of plain words: a last block's compression with every round unrolled, for one message
   (the single-key hashes; _compress's loops over the message schedule cost about twice as much). */
KV_DEFINE_LANES(kv_lanes1, uint64_t, 1, )
typedef uint64_t kv_u64x4 __attribute__((vector_size(32)));
KV_DEFINE_LANES(kv_lanes4, kv_u64x4, 4, )
#if defined(__x86_64__)
typedef uint64_t kv_u64x8 __attribute__((vector_size(64)));
KV_DEFINE_LANES(kv_lanes4_avx2, kv_u64x4, 4, __attribute__((target("avx2"))))
KV_DEFINE_LANES(kv_lanes8_avx512, kv_u64x8, 8, __attribute__((target("avx512f"))))
#endif
#endif

static kv_lanes_fn kv_lanes = NULL;

/* kv_lanes1 where lanes are built (else NULL: _compress does every hash). */
#if KV_LANES_AVAILABLE
static const kv_lanes_fn kv_one_block = kv_lanes1;
#else
static const kv_lanes_fn kv_one_block = NULL;
#endif

/* Choose the lanes function: 0 none, 1 baseline (4 lanes), 2 AVX2 (4), 3 AVX-512 (8), -1 the best
   this CPU runs. Returns the lanes of the choice, or -1 if this build or CPU lacks it. */
static int kv_lanes_select(int which) {
#if KV_LANES_AVAILABLE
    int avx2 = 0, avx512 = 0;
    #if defined(__x86_64__)
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2");
    avx512 = __builtin_cpu_supports("avx512f");
    #endif
    if (which < 0)
        which = avx512 ? 3 : avx2 ? 2 : 1;
    switch (which) {
    case 0: kv_lanes = NULL; return 0;
    case 1: kv_lanes = kv_lanes4; return 4;
    #if defined(__x86_64__)
    case 2: if (!avx2) return -1; kv_lanes = kv_lanes4_avx2; return 4;
    case 3: if (!avx512) return -1; kv_lanes = kv_lanes8_avx512; return 8;
    #endif
    default: return -1;
    }
#else
    if (which <= 0) { kv_lanes = NULL; return 0; }
    return -1;
#endif
}

#endif /* KV_LANES_H */
