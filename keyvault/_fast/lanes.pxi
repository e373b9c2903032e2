# lanes.pxi: part of _core.pyx (included there). The Cython side of kv_lanes.h, and the lane
# count chosen at import.
#
# BLAKE2b in lanes: one compression of several independent one-block messages at
# once, in SIMD vectors of 64-bit words (GCC/Clang vector extensions). The same
# RFC 7693 compression as _compress (blake2b.pxi), with every round unrolled; lane j
# hashes blocks[j]. x86-64 picks AVX-512 (8 lanes) or AVX2 (4 lanes) at run
# time, else 4 lanes in the baseline instruction set (SSE2, NEON); without GCC
# vector extensions there are no lanes and every hash goes through _compress.


cdef extern from "kv_lanes.h":
    enum:
        KV_MAX_LANES
    ctypedef void (*kv_lanes_fn)(const uint64_t* h0, uint64_t t0, const unsigned char* const* blocks,
                                 const uint64_t* lens, unsigned char* const* outs, size_t outlen) noexcept nogil
    kv_lanes_fn kv_lanes
    const kv_lanes_fn kv_one_block  # one message's last block, unrolled (NULL without lanes)
    int kv_lanes_select(int which) noexcept


cdef int _lane_count = kv_lanes_select(-1)
