/* kv_batch.h: what the batch check and the ledger fold build in C:
   Result tuples, the answer slots, untracked pairs (see batchcheck.pxi).

   Part of keyvault._fast._core: included only by the C file Cython generates from _core.pyx
   (through `cdef extern from "kv_batch.h"`), after Python.h. Everything here is static, so
   the module stays one translation unit. */
#ifndef KV_BATCH_H
#define KV_BATCH_H

#include <Python.h>

/* A Result (a NamedTuple: a tuple subclass with no instance dict) made as
   tuple.__new__(Result, items) makes it: allocated by the type, items set.
   From Python 3.14 a tuple caches its hash in a field tp_alloc would leave 0
   (a valid hash) instead of -1, so there, and in free-threaded builds,
   tuple.__new__ itself is called. */
#if PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define KEYVAULT_DIRECT_TUPLES 1
#else
#define KEYVAULT_DIRECT_TUPLES 0
#endif

static int keyvault_tuple_subtype(PyObject* type) {
    PyTypeObject* t = (PyTypeObject*)type;
    if (!KEYVAULT_DIRECT_TUPLES || !PyType_Check(type) || !PyType_IsSubtype(t, &PyTuple_Type))
        return 0;
    return t->tp_basicsize == PyTuple_Type.tp_basicsize && t->tp_itemsize == PyTuple_Type.tp_itemsize
        && t->tp_alloc == PyType_GenericAlloc;
}

/* The fields of keyvault.results.Result: the last two (uses_left, expires_at) are None here. */
#define KEYVAULT_RESULT_ITEMS 15

static PyObject* keyvault_result_items(PyObject* type, int direct, PyObject** items);

static PyObject* keyvault_result(PyObject* type, int direct, PyObject* status, PyObject* serial,
                                 PyObject* batch, PyObject* supplier, PyObject* supplier_name,
                                 PyObject* product, PyObject* message) {
    PyObject* items[KEYVAULT_RESULT_ITEMS] = {status, serial, batch, supplier, supplier_name, product,
                           Py_None, Py_None, Py_None, Py_None, Py_None, Py_None, message, Py_None, Py_None};
    return keyvault_result_items(type, direct, items);
}

/* A Result of KEYVAULT_RESULT_ITEMS items (borrowed references). */
static PyObject* keyvault_result_items(PyObject* type, int direct, PyObject** items) {
    PyObject *result, *plain, *args;
    Py_ssize_t i;
    int atomic = 1;
    if (direct) {
        result = ((PyTypeObject*)type)->tp_alloc((PyTypeObject*)type, KEYVAULT_RESULT_ITEMS);
        if (result == NULL)
            return NULL;
        for (i = 0; i < KEYVAULT_RESULT_ITEMS; i++) {
            Py_INCREF(items[i]);
            PyTuple_SET_ITEM(result, i, items[i]);
        }
    } else {
        plain = PyTuple_New(KEYVAULT_RESULT_ITEMS);
        if (plain == NULL)
            return NULL;
        for (i = 0; i < KEYVAULT_RESULT_ITEMS; i++) {
            Py_INCREF(items[i]);
            PyTuple_SET_ITEM(plain, i, items[i]);
        }
        args = PyTuple_Pack(1, plain);
        Py_DECREF(plain);
        if (args == NULL)
            return NULL;
        result = PyTuple_Type.tp_new((PyTypeObject*)type, args, NULL);
        Py_DECREF(args);
        if (result == NULL)
            return NULL;
    }
    /* A Result of str and None besides its status cannot be part of cyclic garbage: str and None
       refer to nothing, and the status (a Status member, which this module also holds) is
       never garbage. So the cycle collector need not track it (as CPython untracks tuples of
       untracked items): a batch of results then costs the collector nothing. */
    for (i = 1; i < KEYVAULT_RESULT_ITEMS; i++)
        if (items[i] != Py_None && !PyUnicode_CheckExact(items[i]))
            atomic = 0;
    if (atomic && PyObject_GC_IsTracked(result))
        PyObject_GC_UnTrack(result);
    return result;
}

/* check_keys' answers, held in a C array until the list is made: a list of 100 000 items,
   made early, would be traversed by every collection the batch's allocations trigger. */
static void kv_slot_set(PyObject** slots, Py_ssize_t i, PyObject* o) {
    Py_INCREF(o);
    Py_XSETREF(slots[i], o);
}

/* The list of the n slots (None where empty), which takes over their references. */
static PyObject* kv_list_from_slots(PyObject** slots, Py_ssize_t n) {
    PyObject* list = PyList_New(n);
    PyObject* o;
    Py_ssize_t i;
    if (list == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        o = slots[i];
        if (o == NULL) {
            o = Py_None;
            Py_INCREF(o);
        }
        slots[i] = NULL;
        PyList_SET_ITEM(list, i, o);
    }
    return list;
}

static void kv_slots_clear(PyObject** slots, Py_ssize_t n) {
    Py_ssize_t i;
    if (slots != NULL)
        for (i = 0; i < n; i++)
            Py_CLEAR(slots[i]);
}

/* (a, b) of two bytes objects, which cannot be part of cyclic garbage: untracked, so a fold's
   200,000 pairs cost the cycle collector nothing (CPython would untrack them itself, later). */
static PyObject* kv_untracked_pair(PyObject* a, PyObject* b) {
    PyObject* pair = PyTuple_Pack(2, a, b);
    if (pair != NULL && PyObject_GC_IsTracked(pair))
        PyObject_GC_UnTrack(pair);
    return pair;
}

#endif /* KV_BATCH_H */
