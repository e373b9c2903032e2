# sha256.pxi: part of _core.pyx (included there). The Cython side of kv_sha256.h, and the
# compression chosen at import.
#
# SHA-256 (FIPS 180-4), for provenance (docs/provenance.md). A portable C
# compression and, on x86-64, one with the SHA extensions (SHA-NI), chosen at
# run time as the BLAKE2b lanes are; no libcrypto. kv_sha256_update and
# kv_sha256_final stream any message; kv_sha256_node hashes an RFC 9162
# interior node (65 bytes: exactly two padded blocks) without a state, and
# kv_sha256_node2 and kv_sha256_padded2 two independent messages at once.


cdef extern from "kv_sha256.h":
    ctypedef void (*kv_sha256_blocks_fn)(uint32_t* h, const unsigned char* blocks, size_t count) noexcept nogil
    ctypedef struct kv_sha256_state:
        kv_sha256_blocks_fn blocks
    void kv_sha256_blocks_portable(uint32_t* h, const unsigned char* blocks, size_t count) noexcept nogil
    int kv_sha256_select(int which) noexcept nogil
    void kv_sha256_init(kv_sha256_state* S) noexcept nogil
    void kv_sha256_update(kv_sha256_state* S, const unsigned char* data, size_t n) noexcept nogil
    void kv_sha256_final(kv_sha256_state* S, unsigned char* out) noexcept nogil
    void kv_sha256_node(const unsigned char* left, const unsigned char* right, unsigned char* out) noexcept nogil
    void kv_sha256_node2(const unsigned char* left0, const unsigned char* right0, unsigned char* out0,
                         const unsigned char* left1, const unsigned char* right1, unsigned char* out1) noexcept nogil
    size_t kv_sha256_pad(unsigned char* block, size_t n) noexcept nogil
    void kv_sha256_padded2(const unsigned char* block0, const unsigned char* block1, size_t blocks,
                           unsigned char* out0, unsigned char* out1) noexcept nogil
    void kv_store_be64(unsigned char* p, uint64_t x) noexcept nogil


kv_sha256_select(-1)  # the best compression this CPU runs
