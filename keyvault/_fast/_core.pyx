# cython: annotation_typing=False
# (The annotations below are _pure's, for introspection only: arguments are
# checked by hand so that other types can be handed to _pure.)
"""Compiled twin of ``keyvault._fast._pure``: the same functions, in C.

_pure is the specification; names here follow it. Every public function takes
the same arguments and returns the same results (or raises the same exception)
as its _pure twin, and ``tests/test_fast_twins.py`` holds the two to that.

The work happens in C for the argument types the hot path uses: ``str`` text,
``int`` numbers and ``bytes`` or ``bytearray`` binary data. Any other argument
type is handed to the _pure function of the same name, so odd calls behave
(and fail) exactly as the specification does. Text that is not ASCII is
normalised by ``_pure.normalize`` (NFKC belongs to Python) and then read here.

BLAKE2b is written from RFC 7693; _core.pxd declares its C API for other
Cython modules. check_keys, the batch check, also hashes several keys at once in
SIMD lanes (same compression, vectorised) where the compiler and CPU allow.
SHA-256 (FIPS 180-4), portable and with the x86 SHA extensions, serves the
provenance functions: key commitments, event leaves, the Merkle tree.

issue_keys, commitments and merkle_root do their hashing without the GIL when
they are given NOGIL_ITEMS items or more (issue_batch runs the last two on a
second thread while the first makes the next chunk).

This file is the module's hub: the parts below are included into it (one extension
module, one C file, so every part sees every other's cdef names), in an order in
which each module-level statement finds what it uses already set: the key
format's tables, then BLAKE2b's constants, then the parts that hash. Their C
lives in the kv_*.h headers beside them, each declared by the part that uses it.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLongMask, PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport (PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_AsUTF8AndSize, PyUnicode_DATA,
                              PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_New, PyUnicode_READ)
cimport cython
from libc.stdint cimport UINT64_MAX, uint32_t, uint64_t
from libc.string cimport memcpy, memset, strlen

# Only for what C does not do here: NFKC, and arguments of unexpected types.
from keyvault._fast import _pure


cdef extern from "kv_util.h":
    int keyvault_unicode_ready(object text) except -1
    const Py_ssize_t PY_SSIZE_T_MAX
    void KV_PREFETCH(const void* p) noexcept nogil  # a hint: bring *p into the cache soon
    unsigned int kv_popcount64(uint64_t x) noexcept nogil
    bint kv_u64_of(object value, uint64_t* out) noexcept


include "keyformat.pxi"  # the key format: constants, GF(32), check symbols, tables, parse and encode
include "blake2b.pxi"  # BLAKE2b (RFC 7693): the C API of _core.pxd
include "keyhashes.pxi"  # verifier, tag, locator, store_locator, tags_equal
include "lanes.pxi"  # BLAKE2b in SIMD lanes (kv_lanes.h)
include "issuance.pxi"  # issue_keys, export_rows, card_records
include "batchcheck.pxi"  # format_serial_text, judge, check_keys, check_one, accept_redeems, fold_records
include "sha256.pxi"  # SHA-256 (kv_sha256.h)
include "provenance.pxi"  # key_salt, commitments, merkle_root, event_leaf, ledger_leaves, node_key, tree_append
include "subjectindex.pxi"  # subject_latest, subject_update (the subject index at checkpoint time)
include "answers.pxi"  # results_json
include "testhooks.pxi"  # _constants, _blake2b, _select_lanes, _profile_check_keys, _select_sha256, ...
