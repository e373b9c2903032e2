/* kv_util.h: small C helpers shared by the module's parts: a Python
   version shim, a prefetch hint, a popcount and reading an int as a u64.

   Part of keyvault._fast._core: included only by the C file Cython generates from _core.pyx
   (through `cdef extern from "kv_util.h"`), after Python.h. Everything here is static, so
   the module stays one translation unit. */
#ifndef KV_UTIL_H
#define KV_UTIL_H

#include <Python.h>
#include <stdint.h>

/* Strings made by the legacy (pre-PEP 393) API must be made ready before
   their kind and data can be read; Python 3.12 removed that API. */
#if PY_VERSION_HEX < 0x030C0000
#define keyvault_unicode_ready(op) PyUnicode_READY(op)
#else
#define keyvault_unicode_ready(op) 0
#endif

#if defined(__GNUC__)
#define KV_PREFETCH(p) __builtin_prefetch((const void*)(p))
#else
#define KV_PREFETCH(p) ((void)0)
#endif

#if defined(__GNUC__)
#define kv_popcount64(x) ((unsigned int)__builtin_popcountll(x))
#else
static unsigned int kv_popcount64(uint64_t x) {
    unsigned int n = 0;
    for (; x; x &= x - 1)  /* clears the lowest set bit */
        n++;
    return n;
}
#endif

/* Whether value is an int in 0..2**64-1 (stored in *out); no exception is left set. */
static int kv_u64_of(PyObject* value, uint64_t* out) {
    unsigned long long u;
    long long v;
    int overflow;
    if (!PyLong_CheckExact(value))
        return 0;
    v = PyLong_AsLongLongAndOverflow(value, &overflow);  /* the quick way, for 0..2**63-1 (cannot fail on an int) */
    if (overflow == 0) {
        *out = (uint64_t)v;
        return v >= 0;
    }
    if (overflow < 0)
        return 0;
    u = PyLong_AsUnsignedLongLong(value);  /* 2**63 and up */
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = (uint64_t)u;
    return 1;
}

#endif /* KV_UTIL_H */
