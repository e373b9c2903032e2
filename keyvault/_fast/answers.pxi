# answers.pxi: part of _core.pyx (included there). results_json: the service's JSON answers,
# one template per result shape with the serial set in.


cdef bint _canonical_serial(object text):
    """ASCII letters, digits and '-' only (what a printed serial is made of), and not empty."""
    cdef Py_ssize_t i, n
    cdef const unsigned char* data
    cdef unsigned char c
    if type(text) is not str or PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND:
        return False
    n = PyUnicode_GET_LENGTH(text)
    if n == 0:
        return False
    data = <const unsigned char*>PyUnicode_1BYTE_DATA(text)
    for i in range(n):
        c = data[i]
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 45):
            return False
    return True


def results_json(results: list, templates: dict, render: Callable[[Any, str | None], str]) -> str:
    """The JSON texts of ``results`` joined with ", ", each exactly ``render(result, None)``.

    Compiled twin of _pure.results_json: one template per result shape, the serial set in. A result
    whose fields (but the serial) are the very objects of the one before it (results of one batch
    are) reuses its template without a lookup.
    """
    cdef Py_ssize_t i, j, n, size
    cdef PyObject* found
    cdef bint same
    if type(results) is not list or type(templates) is not dict:
        return _pure.results_json(results, templates, render)
    n = PyList_GET_SIZE(results)
    parts = []
    previous = None  # the last result that went through a template (keeps its fields alive)
    head = tail = None
    for i in range(n):
        result = <object>PyList_GET_ITEM(results, i)
        if not isinstance(result, tuple):
            return _pure.results_json(results, templates, render)
        if i:
            parts.append(", ")
        size = PyTuple_GET_SIZE(result)
        serial = result[1] if size > 1 else None
        if not _canonical_serial(serial):
            parts.append(render(result, None))
            continue
        same = previous is not None and PyTuple_GET_SIZE(previous) == size
        if same:
            for j in range(size):
                if j != 1 and PyTuple_GET_ITEM(result, j) != PyTuple_GET_ITEM(previous, j):
                    same = False
                    break
        if not same:
            shape = result[:1] + result[2:]
            found = PyDict_GetItemWithError(templates, shape)
            if found == NULL:
                text_head, _, text_tail = render(result, _pure._MARK).partition(_pure._MARK_JSON)
                template = (text_head + '"', '"' + text_tail)
                templates[shape] = template
            else:
                template = <object>found
            head, tail = template
            previous = result
        parts.append(head)
        parts.append(serial)
        parts.append(tail)
    return "".join(parts)
