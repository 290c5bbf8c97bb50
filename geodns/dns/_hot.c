/* geodns.dns._udpbatch.Hot: answers the Python responder already made, replayed
 * in C for queries that are the same bytes again.
 *
 * A query is "the same" when every byte after the ID is equal, except the RD
 * and CD bits (copied into the reply) and the case of the query name (the
 * question goes back as sent). That covers the ECS option byte for byte, the
 * EDNS payload size, the DO bit: everything the Python fast path looks at, so
 * a hit gets exactly the reply the responder would make. The responder
 * decides what may be replayed (geodns.dns.answer, `_hot_put`) and registers
 * it with `put(key, variants, opt, stat, kind, start)`:
 *
 * - `variants`: the reply without the ID and question, one per answer of a
 *   weighted rotation (10 bytes of flags and counts, then the sections); a
 *   hit takes the next one, as the responder's own rotation does;
 * - `opt`: the OPT record to append (the ECS echo with its scope), or b"";
 * - `stat`: which counters a reply bumps (folded into Stats by `take()`);
 * - `kind`: the response-rate-limiting kind, or None when there is no limit.
 *
 * Answers that depend on the packet's source (steered without ECS, or ECS
 * from a source the trust list must judge) are registered with the source
 * address appended to the key; a lookup tries the plain key first.
 *
 * Response rate limiting stays in the Python limiter's tables: a hit does
 * RateLimiter.check's sending half on them (a known network, a bucket in the
 * current generation, under the rate: charged one interval) and leaves
 * everything else — a new network, a bucket to rotate in, a client over the
 * rate (drop or slip) — to the handler, which then does the whole check
 * once. A miss changes nothing.
 *
 * The table is set-associative (4 ways, round-robin replacement): bounded
 * memory, no resizing, no probe chains an attacker could lengthen; keys are
 * hashed with Python's keyed bytes hash. One table per responder generation:
 * a reload or a health change starts with an empty one.
 */

#include "_hot.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>
#include <time.h>

#define WAYS 4
#define MAX_STATS 1024
#define MAX_SETS (1 << 20)
#define MAX_VARIANTS 4096
#define KEY_ROOM (HOT_MAX_QUERY + 17) /* the query after its ID, + family + address */

typedef struct {
    Py_hash_t hash;
    PyObject *key;      /* bytes, owned; NULL: an empty way */
    PyObject *variants; /* tuple of bytes, owned */
    PyObject *opt;      /* bytes, owned */
    long long kind;     /* RRL kind when `limited` */
    int limited;
    Py_ssize_t next;    /* the variant the next hit takes */
    unsigned int stat;
} HotEntry;

typedef struct {
    PyObject_HEAD
    HotEntry *ways;         /* nsets * WAYS */
    unsigned char *victim;  /* per set: the way the next insert replaces */
    size_t nsets;           /* a power of two */
    unsigned long long *counts; /* MAX_STATS * 2: replies per stat, IPv4 and IPv6 sources */
    PyObject *limiter;      /* geodns.dns.rrl.RateLimiter or NULL */
    PyObject *nets;         /* limiter.nets (never rebound) */
    double interval;        /* limiter.interval */
    double tau;             /* limiter.tau: how far ahead a bucket may be charged */
    Py_ssize_t size;        /* entries held */
    unsigned long long hits, misses, deferred, puts, evicted;
} Hot;

static PyObject *str_new; /* "new": the limiter's current bucket generation */

static void
hot_entry_clear(HotEntry *e)
{
    Py_CLEAR(e->key);
    Py_CLEAR(e->variants);
    Py_CLEAR(e->opt);
    e->hash = 0;
    e->limited = 0;
    e->next = 0;
}

static void
hot_free(Hot *self)
{
    if (self->ways != NULL) {
        for (size_t i = 0; i < self->nsets * WAYS; i++) {
            hot_entry_clear(&self->ways[i]);
        }
    }
    PyMem_Free(self->ways);
    PyMem_Free(self->victim);
    PyMem_Free(self->counts);
    self->ways = NULL;
    self->victim = NULL;
    self->counts = NULL;
    self->nsets = 0;
    self->size = 0;
    Py_CLEAR(self->limiter);
    Py_CLEAR(self->nets);
}

static void
Hot_dealloc(Hot *self)
{
    hot_free(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Hot_init(Hot *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "limiter", NULL};
    Py_ssize_t capacity = 65536;
    PyObject *limiter = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nO:Hot", kwlist, &capacity, &limiter)) {
        return -1;
    }
    if (capacity < WAYS || capacity > (Py_ssize_t)MAX_SETS * WAYS) {
        PyErr_Format(PyExc_ValueError, "capacity must be %d..%d, not %zd", WAYS,
                     MAX_SETS * WAYS, capacity);
        return -1;
    }
    if (str_new == NULL && (str_new = PyUnicode_InternFromString("new")) == NULL) {
        return -1;
    }
    PyObject *nets = NULL;
    double interval = 0.0, tau = 0.0;
    if (limiter != Py_None) {
        nets = PyObject_GetAttrString(limiter, "nets");
        if (nets == NULL) {
            return -1;
        }
        if (!PyDict_CheckExact(nets)) {
            Py_DECREF(nets);
            PyErr_SetString(PyExc_TypeError, "limiter.nets must be a dict");
            return -1;
        }
        PyObject *iv = PyObject_GetAttrString(limiter, "interval");
        interval = iv ? PyFloat_AsDouble(iv) : -1.0;
        Py_XDECREF(iv);
        PyObject *tv = PyObject_GetAttrString(limiter, "tau");
        tau = tv ? PyFloat_AsDouble(tv) : -1.0;
        Py_XDECREF(tv);
        if (PyErr_Occurred()) {
            Py_DECREF(nets);
            return -1;
        }
    }
    hot_free(self); /* __init__ may be called twice */
    size_t sets = 1;
    while (sets * WAYS < (size_t)capacity) {
        sets <<= 1;
    }
    self->ways = PyMem_Calloc(sets * WAYS, sizeof(HotEntry));
    self->victim = PyMem_Calloc(sets, 1);
    self->counts = PyMem_Calloc((size_t)MAX_STATS * 2, sizeof(unsigned long long));
    if (!self->ways || !self->victim || !self->counts) {
        Py_XDECREF(nets);
        hot_free(self);
        PyErr_NoMemory();
        return -1;
    }
    self->nsets = sets;
    if (limiter != Py_None) {
        Py_INCREF(limiter);
        self->limiter = limiter;
        self->nets = nets;
        self->interval = interval;
        self->tau = tau;
    }
    return 0;
}

/* The lookup key of q[0..len) into key[]: its length, or 0 when the query
 * cannot be hot (too short or long, a name that is not plain labels). `*qend`
 * gets the end of the question (name, type, class). Python's twin:
 * geodns.dns.hot.key_of. */
static Py_ssize_t
make_key(const unsigned char *q, Py_ssize_t len, unsigned char *key, Py_ssize_t *qend)
{
    if (len < 17 || len > HOT_MAX_QUERY) {
        return 0;
    }
    Py_ssize_t pos = 12;
    for (;;) {
        unsigned int l = q[pos];
        if (l == 0) {
            break;
        }
        if (l > 63 || pos + 1 + (Py_ssize_t)l >= len) {
            return 0;
        }
        pos += 1 + l;
    }
    if (pos + 5 > len) {
        return 0;
    }
    memcpy(key, q + 2, (size_t)(len - 2)); /* len <= HOT_MAX_QUERY < KEY_ROOM */
    key[0] &= 0xFE; /* RD */
    key[1] &= 0xEF; /* CD */
    for (Py_ssize_t i = 12; i < pos; i++) {
        unsigned char c = q[i]; /* label lengths are <= 63: never touched */
        if (c >= 'A' && c <= 'Z') {
            key[i - 2] = (unsigned char)(c | 0x20);
        }
    }
    *qend = pos + 5;
    return len - 2;
}

static HotEntry *
find(Hot *self, const unsigned char *key, Py_ssize_t klen, Py_hash_t h)
{
    HotEntry *set = &self->ways[((size_t)h & (self->nsets - 1)) * WAYS];
    for (int w = 0; w < WAYS; w++) {
        HotEntry *e = &set[w];
        if (e->key != NULL && e->hash == h && PyBytes_GET_SIZE(e->key) == klen &&
            memcmp(PyBytes_AS_STRING(e->key), key, (size_t)klen) == 0) {
            return e;
        }
    }
    return NULL;
}

/* time.monotonic() as Python computes it (the limiter's clock) */
static double
monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (ns % 1000000000LL == 0) {
        return (double)(ns / 1000000000LL);
    }
    return (double)ns / 1e9;
}

/* geodns.dns.rrl.RateLimiter.check when it sends, on the limiter's own
 * tables: 1 send (the bucket charged), 0 ask the handler (nothing changed),
 * -1 error. */
static int
rrl_admit(Hot *self, PyObject *src, long long kind)
{
    PyObject *net = PyDict_GetItemWithError(self->nets, src); /* borrowed */
    if (net == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyLong_CheckExact(net)) {
        return 0;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(net, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    if (v == 0) {
        return 1; /* an exempt network: the limiter sends without a bucket */
    }
    PyObject *bucket = PyLong_FromLongLong(v ^ kind);
    if (bucket == NULL) {
        return -1;
    }
    PyObject *gen = PyObject_GetAttr(self->limiter, str_new);
    if (gen == NULL) {
        Py_DECREF(bucket);
        return -1;
    }
    int verdict = 0;
    if (PyDict_CheckExact(gen)) {
        PyObject *tat = PyDict_GetItemWithError(gen, bucket); /* borrowed */
        if (tat == NULL) {
            verdict = PyErr_Occurred() ? -1 : 0;
        }
        else if (PyFloat_CheckExact(tat)) {
            double now = monotonic_seconds();
            double t = PyFloat_AS_DOUBLE(tat);
            if (t < now) {
                t = now;
            }
            if (!(t - now > self->tau)) { /* over the rate: the handler drops or slips */
                PyObject *next = PyFloat_FromDouble(t + self->interval);
                verdict = next == NULL ? -1 : PyDict_SetItem(gen, bucket, next) < 0 ? -1 : 1;
                Py_XDECREF(next);
            }
        }
    }
    Py_DECREF(gen);
    Py_DECREF(bucket);
    return verdict;
}

Py_ssize_t
hot_answer(PyObject *hot, const unsigned char *q, Py_ssize_t len, PyObject *src,
           const struct sockaddr_storage *ss, socklen_t sslen, unsigned char *out, Py_ssize_t cap)
{
    Hot *self = (Hot *)hot;
    unsigned char key[KEY_ROOM];
    Py_ssize_t qend = 0;
    if (self->ways == NULL) {
        return 0;
    }
    Py_ssize_t klen = make_key(q, len, key, &qend);
    if (klen == 0) {
        self->misses++;
        return 0;
    }
    int v6 = ss->ss_family == AF_INET6;
    HotEntry *e = find(self, key, klen, _Py_HashBytes(key, klen));
    if (e == NULL) { /* an answer that depends on the source? */
        if (ss->ss_family == AF_INET && sslen >= (socklen_t)sizeof(struct sockaddr_in)) {
            key[klen] = 4;
            memcpy(key + klen + 1, &((const struct sockaddr_in *)ss)->sin_addr, 4);
            klen += 5;
        }
        else if (v6 && sslen >= (socklen_t)sizeof(struct sockaddr_in6)) {
            key[klen] = 6;
            memcpy(key + klen + 1, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
            klen += 17;
        }
        else {
            self->misses++;
            return 0;
        }
        e = find(self, key, klen, _Py_HashBytes(key, klen));
        if (e == NULL) {
            self->misses++;
            return 0;
        }
    }
    PyObject *variants = e->variants;
    Py_ssize_t n = PyTuple_GET_SIZE(variants);
    Py_ssize_t i = e->next < n ? e->next : 0;
    PyObject *v = PyTuple_GET_ITEM(variants, i);
    Py_ssize_t vlen = PyBytes_GET_SIZE(v);
    Py_ssize_t olen = PyBytes_GET_SIZE(e->opt);
    Py_ssize_t qlen = qend - 12;
    Py_ssize_t total = 2 + vlen + qlen + olen; /* vlen >= 10: checked by put() */
    if (total > cap) {
        self->misses++;
        return 0;
    }
    if (e->limited && self->limiter != NULL) {
        /* no Python code runs in here: `e` stays valid */
        int ok = rrl_admit(self, src, e->kind);
        if (ok <= 0) {
            self->deferred += ok == 0;
            return ok;
        }
    }
    const unsigned char *vb = (const unsigned char *)PyBytes_AS_STRING(v);
    out[0] = q[0];
    out[1] = q[1];
    out[2] = vb[0] | (q[2] & 0x01); /* RD */
    out[3] = vb[1] | (q[3] & 0x10); /* CD */
    memcpy(out + 4, vb + 2, 8);
    memcpy(out + 12, q + 12, (size_t)qlen);
    memcpy(out + 12 + qlen, vb + 10, (size_t)(vlen - 10));
    memcpy(out + 2 + vlen + qlen, PyBytes_AS_STRING(e->opt), (size_t)olen);
    e->next = i + 1 < n ? i + 1 : 0;
    self->counts[(size_t)e->stat * 2 + (size_t)v6]++;
    self->hits++;
    return total;
}

static PyObject *
Hot_put(Hot *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", "variants", "opt", "stat", "kind", "start", NULL};
    PyObject *key, *variants, *opt, *kind = Py_None;
    int stat = 0;
    Py_ssize_t start = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "SO!S|iOn:put", kwlist, &key, &PyTuple_Type,
                                     &variants, &opt, &stat, &kind, &start)) {
        return NULL;
    }
    Py_ssize_t klen = PyBytes_GET_SIZE(key);
    if (klen < 15 || klen > KEY_ROOM) {
        PyErr_Format(PyExc_ValueError, "key must be 15..%d bytes, not %zd", KEY_ROOM, klen);
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(variants);
    if (n < 1 || n > MAX_VARIANTS) {
        PyErr_Format(PyExc_ValueError, "1..%d variants, not %zd", MAX_VARIANTS, n);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(variants, i);
        if (!PyBytes_CheckExact(v) || PyBytes_GET_SIZE(v) < 10 ||
            PyBytes_GET_SIZE(v) > HOT_MAX_REPLY) {
            PyErr_SetString(PyExc_ValueError,
                            "each variant must be bytes: 10 bytes of flags and counts, then "
                            "the sections (at most HOT_MAX_REPLY in all)");
            return NULL;
        }
    }
    if (stat < 0 || stat >= MAX_STATS) {
        PyErr_Format(PyExc_ValueError, "stat must be 0..%d", MAX_STATS - 1);
        return NULL;
    }
    long long k = 0;
    if (kind != Py_None) {
        k = PyLong_AsLongLong(kind);
        if (k == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (self->ways == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Hot is not initialised");
        return NULL;
    }
    Py_hash_t h = _Py_HashBytes(PyBytes_AS_STRING(key), klen);
    HotEntry *e = find(self, (const unsigned char *)PyBytes_AS_STRING(key), klen, h);
    PyObject *old_key = NULL;
    if (e == NULL) {
        size_t set = (size_t)h & (self->nsets - 1);
        HotEntry *ways = &self->ways[set * WAYS];
        for (int w = 0; w < WAYS && e == NULL; w++) {
            if (ways[w].key == NULL) {
                e = &ways[w];
            }
        }
        if (e == NULL) {
            e = &ways[self->victim[set]];
            self->victim[set] = (unsigned char)((self->victim[set] + 1) % WAYS);
            self->evicted++;
            self->size--;
        }
        old_key = e->key; /* NULL for an empty way */
        Py_INCREF(key);
        e->key = key;
        e->hash = h;
        self->size++;
    }
    /* a new or replaced entry alike; the old objects go last: their release
     * may run Python code */
    PyObject *ov = e->variants, *oo = e->opt;
    Py_INCREF(variants);
    Py_INCREF(opt);
    e->variants = variants;
    e->opt = opt;
    e->limited = kind != Py_None;
    e->kind = k;
    e->stat = (unsigned int)stat;
    e->next = ((start % n) + n) % n;
    self->puts++;
    Py_XDECREF(old_key);
    Py_XDECREF(ov);
    Py_XDECREF(oo);
    Py_RETURN_NONE;
}

static PyObject *
Hot_take(Hot *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(0);
    if (out == NULL || self->counts == NULL) {
        return out;
    }
    for (int s = 0; s < MAX_STATS; s++) {
        unsigned long long a = self->counts[s * 2], b = self->counts[s * 2 + 1];
        if (a == 0 && b == 0) {
            continue;
        }
        PyObject *t = Py_BuildValue("(iKK)", s, a, b);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
        self->counts[s * 2] = self->counts[s * 2 + 1] = 0;
    }
    return out;
}

/* keys() -> [bytes]: every key held (a new generation replays them to warm
 * its own table: geodns.dns.hot.unpack) */
static PyObject *
Hot_keys(Hot *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(0);
    if (out == NULL || self->ways == NULL) {
        return out;
    }
    for (size_t i = 0; i < self->nsets * WAYS; i++) {
        PyObject *k = self->ways[i].key;
        if (k != NULL && PyList_Append(out, k) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static PyObject *
Hot_clear(Hot *self, PyObject *Py_UNUSED(ignored))
{
    if (self->ways != NULL) {
        for (size_t i = 0; i < self->nsets * WAYS; i++) {
            hot_entry_clear(&self->ways[i]);
        }
        memset(self->victim, 0, self->nsets);
    }
    self->size = 0;
    Py_RETURN_NONE;
}

/* answer(data, src) -> bytes | None: what a drain would send for this
 * datagram from `src` (an IPv4/IPv6 address as text), None for "ask the
 * handler". For tests and the fuzzer: the same code as the drain's. */
static PyObject *
Hot_answer(Hot *self, PyObject *args)
{
    Py_buffer data;
    PyObject *src;
    if (!PyArg_ParseTuple(args, "y*U:answer", &data, &src)) {
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof(ss));
    const char *text = PyUnicode_AsUTF8(src);
    if (text == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
        ss.ss_family = AF_INET;
        sslen = sizeof(*sin);
    }
    else if (inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1) {
        ss.ss_family = AF_INET6;
        sslen = sizeof(*sin6);
    }
    else {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "not an IP address: %R", src);
        return NULL;
    }
    unsigned char out[HOT_MAX_REPLY];
    Py_ssize_t n = hot_answer((PyObject *)self, data.buf, data.len, src, &ss, sslen, out,
                              sizeof(out));
    PyBuffer_Release(&data);
    if (n < 0) {
        return NULL;
    }
    if (n == 0) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize((const char *)out, n);
}

static Py_ssize_t
Hot_len(Hot *self)
{
    return self->size;
}

static PyObject *
Hot_get_capacity(Hot *self, void *closure)
{
    return PyLong_FromSize_t(self->nsets * WAYS);
}

static PyMethodDef Hot_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Hot_put, METH_VARARGS | METH_KEYWORDS,
     "put(key, variants, opt, stat=0, kind=None, start=0): replay these answers for key"},
    {"take", (PyCFunction)Hot_take, METH_NOARGS,
     "take() -> [(stat, replies to IPv4 sources, to IPv6 sources)], counted since the last "
     "take"},
    {"clear", (PyCFunction)Hot_clear, METH_NOARGS, "forget every entry"},
    {"keys", (PyCFunction)Hot_keys, METH_NOARGS, "keys() -> [bytes]: every key held"},
    {"answer", (PyCFunction)Hot_answer, METH_VARARGS,
     "answer(data, src) -> bytes | None: the hot reply to this datagram, or None"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Hot_members[] = {
    {"hits", T_ULONGLONG, offsetof(Hot, hits), READONLY, "queries answered here"},
    {"misses", T_ULONGLONG, offsetof(Hot, misses), READONLY, "queries not in the table"},
    {"deferred", T_ULONGLONG, offsetof(Hot, deferred), READONLY,
     "hits the rate limiter's inline check left to the handler"},
    {"puts", T_ULONGLONG, offsetof(Hot, puts), READONLY, "entries registered"},
    {"evicted", T_ULONGLONG, offsetof(Hot, evicted), READONLY, "entries replaced when full"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Hot_getset[] = {
    {"capacity", (getter)Hot_get_capacity, NULL, "entries the table holds at most", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Hot_as_sequence = {
    .sq_length = (lenfunc)Hot_len,
};

PyTypeObject HotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "geodns.dns._udpbatch.Hot",
    .tp_basicsize = sizeof(Hot),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Hot_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Hot(capacity=65536, limiter=None): answers replayed for repeated queries",
    .tp_methods = Hot_methods,
    .tp_members = Hot_members,
    .tp_getset = Hot_getset,
    .tp_as_sequence = &Hot_as_sequence,
    .tp_init = (initproc)Hot_init,
    .tp_new = PyType_GenericNew,
};
