/* The lexical scan of an HTTP/1.1 head, in C: dataplane/h1scan.py's scan_py, the reference
 * whose docstring says what it returns (tests/unit/test_h1scan.py holds the two to the same
 * answers). Built with the mypyc-compiled modules (setup.py, tools/build_compiled.py); the
 * readers' quick path calls it once per message instead of splitting the head into a list of
 * lines and checking its bytes with translate. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* LINE for the bytes a line may hold (HTAB, 0x20-0x7E), TOKEN added for token characters. */
#define LINE 1
#define TOKEN 2
static unsigned char kind[256];

static void init_kinds(void) {
    static const char token[] =
        "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    kind[9] = LINE;
    for (int c = 0x20; c < 0x7F; c++)
        kind[c] = LINE;
    for (const char *t = token; *t; t++)
        kind[(unsigned char)*t] |= TOKEN;
}

/* Whether any of the 8 bytes of x is below 0x20 or above 0x7E: a word of printable ASCII needs
 * no look at its bytes one by one. (x - 0x20 sets a byte's high bit when it is below 0x20 or
 * already >= 0x80, x + 1 when it is 0x7F or >= 0x80; a borrow or a carry only follows a byte
 * that set its own.) */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline int unusual(uint64_t x) {
    return (((x - ONES * 0x20) | (x + ONES) | x) & HIGHS) != 0;
}

/* Where the line from pos ends (its CRLF), or -1 (see _line_end in h1scan.py). */
static Py_ssize_t line_end(const unsigned char *p, Py_ssize_t n, Py_ssize_t pos) {
    for (;;) {
        while (pos + 8 <= n) {
            uint64_t x;
            memcpy(&x, p + pos, 8);
            if (unusual(x))
                break;
            pos += 8;
        }
        /* The word with an unusual byte (or the last bytes), one by one. */
        Py_ssize_t stop = pos + 8 < n ? pos + 8 : n;
        while (pos < stop && (kind[p[pos]] & LINE))
            pos++;
        if (pos < stop || pos >= n)
            break;
    }
    if (pos + 1 < n && p[pos] == '\r' && p[pos + 1] == '\n')
        return pos;
    return -1;
}

/* Whether the name at p (len bytes) is names[place]. */
static inline int same_name(PyObject *names, Py_ssize_t place, const unsigned char *p,
                            Py_ssize_t len) {
    if (place >= PyList_GET_SIZE(names))
        return 0;
    PyObject *name = PyList_GET_ITEM(names, place);
    return PyBytes_Check(name) && PyBytes_GET_SIZE(name) == len &&
           memcmp(PyBytes_AS_STRING(name), p, (size_t)len) == 0;
}

static int changed(void) {
    PyErr_SetString(PyExc_RuntimeError, "scan(): names or wanted changed during the call");
    return -1;
}

/* Sets found[*at] to v and moves on; -1 on failure (an exception set). (Bounded: making an
 * object may run a finalizer, and one that changed ``names`` or ``wanted`` would change
 * what the second pass lists.) */
static inline int put(PyObject *found, Py_ssize_t *at, Py_ssize_t v) {
    if (*at >= PyList_GET_SIZE(found))
        return changed();
    PyObject *o = PyLong_FromSsize_t(v);
    if (o == NULL)
        return -1;
    PyList_SET_ITEM(found, *at, o);
    (*at)++;
    return 0;
}

/* Listed lines whose places are kept while the head is checked; a head with more is read
 * again from the last one kept. */
#define BUF_LINES 32
#define NOT_LISTED PY_SSIZE_T_MIN

static PyObject *scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan() takes data, names, wanted, max_fields");
        return NULL;
    }
    PyObject *data = args[0], *names = args[1], *wanted = args[2];
    if (!PyBytes_Check(data) || !PyList_Check(names) || !PyByteArray_Check(wanted)) {
        PyErr_SetString(PyExc_TypeError, "scan() takes bytes, a list and a bytearray");
        return NULL;
    }
    Py_ssize_t max_fields = PyLong_AsSsize_t(args[3]);
    if (max_fields == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    Py_ssize_t n_wanted = PyByteArray_GET_SIZE(wanted);
    const char *want = PyByteArray_AS_STRING(wanted);

    /* First the whole head is checked, and where its listed lines are kept (the first
     * BUF_LINES of them), before any object is made: a read that holds only part of a head
     * is answered without an allocation. */
    Py_ssize_t first = line_end(p, n, 0);
    if (first <= 0)
        Py_RETURN_NONE;
    Py_ssize_t buf[BUF_LINES * 5];
    Py_ssize_t pos = first + 2, place = 0, listed = 0;
    for (;;) {
        if (pos + 1 >= n)
            Py_RETURN_NONE;
        if (p[pos] == '\r') {
            if (p[pos + 1] != '\n')
                Py_RETURN_NONE;
            break; /* the empty line */
        }
        if (place >= max_fields)
            Py_RETURN_NONE;
        Py_ssize_t colon = pos;
        while (colon < n && (kind[p[colon]] & TOKEN))
            colon++;
        if (colon == pos || colon >= n || p[colon] != ':')
            Py_RETURN_NONE;
        Py_ssize_t end = line_end(p, n, colon + 1);
        if (end < 0)
            Py_RETURN_NONE;
        Py_ssize_t mark = place;
        if (!same_name(names, place, p + pos, colon - pos))
            mark = -1 - place;
        else if (!(place < n_wanted && want[place]))
            mark = NOT_LISTED;
        if (mark != NOT_LISTED) {
            if (listed < BUF_LINES) {
                Py_ssize_t value = colon + 1;
                while (p[value] == ' ' || p[value] == '\t')
                    value++;
                Py_ssize_t *at = buf + listed * 5;
                at[0] = mark;
                at[1] = pos;
                at[2] = colon - pos;
                at[3] = value - pos;
                at[4] = end - pos;
            }
            listed++;
        }
        pos = end + 2;
        place++;
    }
    Py_ssize_t head_end = pos + 2, fields = place;

    /* Then the list. */
    PyObject *found = PyList_New(3 + 5 * listed);
    if (found == NULL)
        return NULL;
    Py_ssize_t at = 0;
    if (put(found, &at, head_end) < 0 || put(found, &at, first) < 0 || put(found, &at, fields) < 0)
        goto fail; /* (a list with NULL items is freed as such) */
    Py_ssize_t kept = listed < BUF_LINES ? listed : BUF_LINES;
    for (Py_ssize_t i = 0; i < kept * 5; i++)
        if (put(found, &at, buf[i]) < 0)
            goto fail;
    if (listed > kept) {
        /* More listed lines than kept (a long head of new names): found again from the
         * last one kept on (the head is known good: each line is a name, a colon, a value
         * and CRLF). */
        pos = buf[kept * 5 - 4] + buf[kept * 5 - 1] + 2; /* (its start and length) */
        for (place = (buf[kept * 5 - 5] < 0 ? -1 - buf[kept * 5 - 5] : buf[kept * 5 - 5]) + 1;
             place < fields; place++) {
            Py_ssize_t start = pos, colon = pos;
            while (kind[p[colon]] & TOKEN)
                colon++;
            Py_ssize_t value = colon + 1;
            while (p[value] == ' ' || p[value] == '\t')
                value++;
            Py_ssize_t end = value;
            while (p[end] != '\r')
                end++;
            pos = end + 2;
            Py_ssize_t mark = place;
            if (!same_name(names, place, p + start, colon - start))
                mark = -1 - place;
            else if (!(place < PyByteArray_GET_SIZE(wanted) &&
                       PyByteArray_AS_STRING(wanted)[place])) /* (read again: see put) */
                continue; /* a line passed through as it is */
            if (put(found, &at, mark) < 0 || put(found, &at, start) < 0 ||
                put(found, &at, colon - start) < 0 || put(found, &at, value - start) < 0 ||
                put(found, &at, end - start) < 0)
                goto fail;
        }
    }
    if (at != PyList_GET_SIZE(found)) {
        changed();
        goto fail;
    }
    return found;
fail:
    Py_DECREF(found);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, names, wanted, max_fields) -> list[int] | None: see dataplane.h1scan."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_h1scan", "The lexical scan of an HTTP/1.1 head (dataplane.h1scan).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__h1scan(void) {
    init_kinds();
    return PyModule_Create(&module);
}
