/* geodns.dns._udpbatch: answer UDP datagrams in bursts, many per system call.
 *
 * One `Batch` object belongs to one UDP socket. `Batch.drain(sock, handler,
 * observe, limit)` receives up to `batch` datagrams with one recvmmsg(2),
 * calls `handler(data: bytes, source: str)` once per datagram (the same
 * per-datagram function the asyncio path calls; it returns the reply bytes or
 * None to drop), sends every reply of the batch with one sendmmsg(2) to the
 * exact address the query came from, and repeats until the socket is empty
 * (EAGAIN), at most `limit` datagrams per call. The event loop calls it when
 * the socket is readable (loop.add_reader), so it shares the loop with TCP,
 * metrics, reload and the watchdog.
 *
 * Memory rules followed throughout: every buffer is allocated once in the
 * constructor and freed in dealloc; every length that comes from the kernel
 * is checked against the buffer it refers to before it is used; a reply
 * bytes object is referenced from the moment its pointer goes into an iovec
 * until sendmmsg has returned; a drain cannot re-enter itself on the same
 * object (the arrays would be reused under the outer call). Errors become
 * Python exceptions; a failing handler does not stop the other datagrams of
 * its batch (the first exception is raised after the batch is sent).
 *
 * The GIL is held across the system calls: with MSG_DONTWAIT they never
 * block, and releasing it would let a background thread (health polling)
 * take the interpreter for up to the switch interval in the middle of a burst.
 */

#include "_hot.h"

#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_BATCH 1024     /* datagrams per system call, upper bound */
#define MAX_SLOT 65536     /* a UDP payload is at most 65535 bytes */
#define MIN_SLOT 16
#define MAX_LIMIT (1 << 20) /* datagrams per drain call, upper bound */
#define CACHE_SLOTS 256    /* source address → str cache (direct mapped) */
#define SAMPLE_EVERY 16    /* 1 in 16 handler calls is timed, as on the asyncio path */
#define MAX_EINTR 8

typedef struct {
    int family; /* 0: empty */
    unsigned char addr[16];
    PyObject *text; /* owned */
} AddrEntry;

typedef struct {
    PyObject_HEAD
    unsigned int batch;
    size_t slot;
    unsigned char *buf;              /* batch * slot bytes of receive space */
    struct mmsghdr *rmsg;            /* batch */
    struct iovec *riov;              /* batch */
    struct sockaddr_storage *addrs;  /* batch: where each datagram came from */
    struct mmsghdr *smsg;            /* batch */
    struct iovec *siov;              /* batch */
    PyObject **replies;              /* batch: owned between handling and sending */
    unsigned char *out;              /* batch * HOT_MAX_REPLY: replies made by a Hot table */
    AddrEntry cache[CACHE_SLOTS];
    int busy;
    unsigned int sample;
    /* counters (cumulative, read-only from Python) */
    unsigned long long received;     /* datagrams taken from the socket */
    unsigned long long replied;      /* replies the kernel accepted */
    unsigned long long send_errors;  /* replies the kernel refused (dropped) */
    unsigned long long truncated;    /* datagrams longer than a slot (dropped) */
    unsigned long long bad_source;   /* datagrams without a usable source address */
    unsigned long long recv_calls;   /* recvmmsg calls that returned datagrams */
    unsigned long long send_calls;   /* sendmmsg calls that sent something */
} Batch;

static void
batch_free_buffers(Batch *self)
{
    if (self->replies != NULL) {
        for (unsigned int i = 0; i < self->batch; i++) {
            Py_CLEAR(self->replies[i]);
        }
    }
    PyMem_RawFree(self->buf);
    PyMem_Free(self->rmsg);
    PyMem_Free(self->riov);
    PyMem_Free(self->addrs);
    PyMem_Free(self->smsg);
    PyMem_Free(self->siov);
    PyMem_Free(self->replies);
    PyMem_Free(self->out);
    self->out = NULL;
    self->buf = NULL;
    self->rmsg = self->smsg = NULL;
    self->riov = self->siov = NULL;
    self->addrs = NULL;
    self->replies = NULL;
    for (int i = 0; i < CACHE_SLOTS; i++) {
        Py_CLEAR(self->cache[i].text);
        self->cache[i].family = 0;
    }
}

static void
Batch_dealloc(Batch *self)
{
    batch_free_buffers(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Batch_init(Batch *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"batch", "slot", NULL};
    int batch = 64;
    Py_ssize_t slot = MAX_SLOT;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|in:Batch", kwlist, &batch, &slot)) {
        return -1;
    }
    if (batch < 1 || batch > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "batch must be 1..%d, not %d", MAX_BATCH, batch);
        return -1;
    }
    if (slot < MIN_SLOT || slot > MAX_SLOT) {
        PyErr_Format(PyExc_ValueError, "slot must be %d..%d bytes, not %zd", MIN_SLOT, MAX_SLOT,
                     slot);
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Batch.__init__ during drain");
        return -1;
    }
    batch_free_buffers(self); /* __init__ may be called twice */
    self->batch = (unsigned int)batch;
    self->slot = (size_t)slot;
    /* at most 1024 * 65536 = 64 MiB: no overflow; untouched pages cost nothing */
    self->buf = PyMem_RawMalloc((size_t)batch * (size_t)slot);
    self->rmsg = PyMem_Calloc((size_t)batch, sizeof(struct mmsghdr));
    self->riov = PyMem_Calloc((size_t)batch, sizeof(struct iovec));
    self->addrs = PyMem_Calloc((size_t)batch, sizeof(struct sockaddr_storage));
    self->smsg = PyMem_Calloc((size_t)batch, sizeof(struct mmsghdr));
    self->siov = PyMem_Calloc((size_t)batch, sizeof(struct iovec));
    self->replies = PyMem_Calloc((size_t)batch, sizeof(PyObject *));
    self->out = PyMem_Malloc((size_t)batch * HOT_MAX_REPLY);
    if (!self->buf || !self->rmsg || !self->riov || !self->addrs || !self->smsg || !self->siov ||
        !self->replies || !self->out) {
        batch_free_buffers(self);
        self->batch = 0;
        PyErr_NoMemory();
        return -1;
    }
    for (unsigned int i = 0; i < self->batch; i++) {
        self->riov[i].iov_base = self->buf + (size_t)i * self->slot;
        self->riov[i].iov_len = self->slot;
        struct msghdr *h = &self->rmsg[i].msg_hdr;
        h->msg_name = &self->addrs[i];
        h->msg_namelen = sizeof(struct sockaddr_storage);
        h->msg_iov = &self->riov[i];
        h->msg_iovlen = 1;
    }
    self->sample = 0;
    return 0;
}

/* The source address as text, as uvloop gives it to datagram_received
 * (inet_ntop, no %scope): a new reference, or NULL. NULL without an exception
 * means the address is not IPv4/IPv6 or its length is short. */
static PyObject *
source_text(Batch *self, const struct sockaddr_storage *ss, socklen_t len)
{
    const unsigned char *a;
    size_t alen;
    int fam = ss->ss_family;
    uint32_t h;
    if (fam == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        uint32_t w;
        a = (const unsigned char *)&sin->sin_addr;
        alen = 4;
        memcpy(&w, a, 4);
        h = w;
    }
    else if (fam == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        uint32_t w[4];
        a = (const unsigned char *)&sin6->sin6_addr;
        alen = 16;
        memcpy(w, a, 16);
        h = w[0] ^ w[1] ^ w[2] ^ w[3];
    }
    else {
        return NULL;
    }
    h = (h * 2654435761u) >> 24; /* Fibonacci hashing: the top byte */
    AddrEntry *e = &self->cache[h & (CACHE_SLOTS - 1)];
    if (e->text != NULL && e->family == fam && memcmp(e->addr, a, alen) == 0) {
        Py_INCREF(e->text);
        return e->text;
    }
    char buf[INET6_ADDRSTRLEN];
    if (inet_ntop(fam, a, buf, sizeof(buf)) == NULL) {
        return NULL;
    }
    PyObject *text = PyUnicode_DecodeASCII(buf, (Py_ssize_t)strnlen(buf, sizeof(buf)), NULL);
    if (text == NULL) {
        return NULL;
    }
    Py_INCREF(text);
    Py_XSETREF(e->text, text); /* the cache's reference; the old str is released */
    e->family = fam;
    memcpy(e->addr, a, alen);
    return text;
}

/* The first exception of a drain, kept while the rest of the batch is
 * answered (no Python code may run with an exception set) and raised at the
 * end; later ones are dropped. */
typedef struct {
    PyObject *type, *value, *tb;
} SavedError;

/* Must be called with an exception set. */
static void
keep_first_error(SavedError *first)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (first->type == NULL && type != NULL) {
        first->type = type;
        first->value = value;
        first->tb = tb;
        return;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* Send replies[0..n) (each to the address it answers), then release them.
 * A reply the kernel refuses is skipped and counted; when the send queue is
 * full (EAGAIN/ENOBUFS) the rest of the batch is dropped and counted — a
 * resolver retries, and buffering answers in memory is what makes a server
 * fall behind for good. Each iteration sends or skips at least one message,
 * so the loop ends. */
static void
send_replies(Batch *self, int fd, unsigned int n)
{
    unsigned int i = 0;
    int eintr = 0;
    while (i < n) {
        int r = sendmmsg(fd, self->smsg + i, n - i, MSG_DONTWAIT);
        if (r > 0) {
            self->send_calls++;
            self->replied += (unsigned int)r;
            i += (unsigned int)r;
            continue;
        }
        if (r < 0 && errno == EINTR && ++eintr < MAX_EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            self->send_errors += n - i;
            break;
        }
        /* this message failed (too large, no route, ...): skip it */
        self->send_errors++;
        i++;
    }
    for (unsigned int j = 0; j < n; j++) {
        Py_CLEAR(self->replies[j]);
        self->siov[j].iov_base = NULL;
        self->siov[j].iov_len = 0;
    }
}

static double
now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* observe(seconds): 0, or -1 with an exception set */
static int
call_observe(PyObject *observe, double seconds)
{
    PyObject *f = PyFloat_FromDouble(seconds);
    PyObject *r = f ? PyObject_CallOneArg(observe, f) : NULL;
    Py_XDECREF(f);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* Reply slot `k` goes back to where datagram `i` came from. */
static void
queue_reply(Batch *self, unsigned int k, unsigned int i)
{
    struct msghdr *s = &self->smsg[k].msg_hdr;
    s->msg_name = &self->addrs[i];
    s->msg_namelen = self->rmsg[i].msg_hdr.msg_namelen;
    s->msg_iov = &self->siov[k];
    s->msg_iovlen = 1;
    s->msg_control = NULL;
    s->msg_controllen = 0;
    s->msg_flags = 0;
}

static PyObject *
Batch_drain(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError,
                        "drain(sock, handler, observe=None, limit=256, hot=None)");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]); /* an int, or a socket's fileno() */
    if (fd < 0) {
        return NULL;
    }
    PyObject *handler = args[1];
    if (!PyCallable_Check(handler)) {
        PyErr_SetString(PyExc_TypeError, "handler must be callable");
        return NULL;
    }
    PyObject *observe = nargs > 2 ? args[2] : Py_None;
    if (observe != Py_None && !PyCallable_Check(observe)) {
        PyErr_SetString(PyExc_TypeError, "observe must be callable or None");
        return NULL;
    }
    long limit = 256;
    if (nargs > 3) {
        limit = PyLong_AsLong(args[3]);
        if (limit == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (limit < 1 || limit > MAX_LIMIT) {
            PyErr_Format(PyExc_ValueError, "limit must be 1..%d", MAX_LIMIT);
            return NULL;
        }
    }
    PyObject *hot = nargs > 4 && args[4] != Py_None ? args[4] : NULL;
    if (hot != NULL && !PyObject_TypeCheck(hot, &HotType)) {
        PyErr_SetString(PyExc_TypeError, "hot must be a geodns.dns._udpbatch.Hot or None");
        return NULL;
    }
    if (self->buf == NULL || self->batch == 0) {
        PyErr_SetString(PyExc_RuntimeError, "Batch is not initialised");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Batch.drain is not re-entrant");
        return NULL;
    }
    self->busy = 1;
    /* the handler may drop the caller's last references to these */
    Py_INCREF(handler);
    Py_INCREF(observe);
    Py_XINCREF(hot);

    long total = 0;
    int oserr = 0;
    int eintr = 0;
    SavedError first_error = {NULL, NULL, NULL};
    while (total < limit) {
        unsigned int want = self->batch;
        if ((long)want > limit - total) {
            want = (unsigned int)(limit - total);
        }
        for (unsigned int i = 0; i < want; i++) {
            self->rmsg[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
            self->rmsg[i].msg_hdr.msg_flags = 0;
            self->rmsg[i].msg_len = 0;
        }
        int got = recvmmsg(fd, self->rmsg, want, MSG_DONTWAIT, NULL);
        if (got < 0) {
            int e = errno;
            if (e == EINTR && ++eintr < MAX_EINTR) {
                continue;
            }
            if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR) {
                break;
            }
            if (e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == ENOMEM ||
                e == ENOBUFS) {
                /* a queued ICMP error or a memory squeeze: not ours to fix;
                 * the next readiness event comes back here */
                break;
            }
            oserr = e;
            break;
        }
        if (got == 0) {
            break;
        }
        unsigned int n = (unsigned int)got;
        if (n > want) { /* the kernel never does this; the arrays are `want` long */
            n = want;
        }
        self->recv_calls++;
        self->received += n;
        total += (long)n;

        unsigned int nsend = 0;
        for (unsigned int i = 0; i < n; i++) {
            struct msghdr *h = &self->rmsg[i].msg_hdr;
            unsigned int len = self->rmsg[i].msg_len;
            if ((h->msg_flags & MSG_TRUNC) || len > self->slot) {
                self->truncated++;
                continue;
            }
            if (h->msg_namelen > (socklen_t)sizeof(struct sockaddr_storage)) {
                self->bad_source++;
                continue;
            }
            PyObject *src = source_text(self, &self->addrs[i], h->msg_namelen);
            if (src == NULL) {
                if (PyErr_Occurred()) {
                    keep_first_error(&first_error);
                }
                self->bad_source++;
                continue;
            }
            /* 1 in 16 datagrams is timed for `observe`, as on the asyncio path */
            int timed = observe != Py_None && ++self->sample >= SAMPLE_EVERY;
            double t0 = 0.0;
            if (timed) {
                self->sample = 0;
                t0 = now_seconds();
            }
            if (hot != NULL) {
                /* nsend <= i < n <= batch: the slot is in bounds */
                unsigned char *o = self->out + (size_t)nsend * HOT_MAX_REPLY;
                Py_ssize_t r = hot_answer(hot, self->riov[i].iov_base, (Py_ssize_t)len, src,
                                          &self->addrs[i], h->msg_namelen, o, HOT_MAX_REPLY);
                if (r > 0) {
                    Py_DECREF(src);
                    if (timed && call_observe(observe, now_seconds() - t0) < 0) {
                        keep_first_error(&first_error);
                    }
                    self->replies[nsend] = NULL;
                    self->siov[nsend].iov_base = o;
                    self->siov[nsend].iov_len = (size_t)r;
                    queue_reply(self, nsend, i);
                    nsend++;
                    continue;
                }
                if (r < 0) { /* the handler still answers this datagram */
                    keep_first_error(&first_error);
                }
            }
            PyObject *data =
                PyBytes_FromStringAndSize((const char *)self->riov[i].iov_base, (Py_ssize_t)len);
            if (data == NULL) {
                Py_DECREF(src);
                keep_first_error(&first_error);
                continue;
            }
            PyObject *cargs[2] = {data, src};
            PyObject *resp = PyObject_Vectorcall(handler, cargs, 2, NULL);
            Py_DECREF(data);
            Py_DECREF(src);
            if (resp == NULL) {
                keep_first_error(&first_error);
                continue;
            }
            if (timed && call_observe(observe, now_seconds() - t0) < 0) {
                keep_first_error(&first_error);
            }
            if (resp == Py_None) {
                Py_DECREF(resp);
                continue;
            }
            if (!PyBytes_CheckExact(resp)) {
                PyErr_Format(PyExc_TypeError, "handler returned %.100s, not bytes or None",
                             Py_TYPE(resp)->tp_name);
                Py_DECREF(resp);
                keep_first_error(&first_error);
                continue;
            }
            /* nsend <= i < n <= batch: in bounds */
            self->replies[nsend] = resp; /* owned until send_replies */
            self->siov[nsend].iov_base = PyBytes_AS_STRING(resp);
            self->siov[nsend].iov_len = (size_t)PyBytes_GET_SIZE(resp);
            queue_reply(self, nsend, i);
            nsend++;
        }
        if (nsend > 0) {
            send_replies(self, fd, nsend);
        }
        /* on until the socket is empty (EAGAIN) or `limit`: datagrams that
         * arrived while this batch was answered are taken now, without a
         * round through epoll and the loop's callback */
    }

    self->busy = 0;
    Py_DECREF(handler);
    Py_DECREF(observe);
    Py_XDECREF(hot);
    if (first_error.type != NULL) {
        /* datagrams were answered around it; the caller logs it and goes on */
        PyErr_Restore(first_error.type, first_error.value, first_error.tb);
        return NULL;
    }
    if (oserr) {
        errno = oserr;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(total);
}

static PyMethodDef Batch_methods[] = {
    {"drain", (PyCFunction)(void (*)(void))Batch_drain, METH_FASTCALL,
     "drain(sock, handler, observe=None, limit=256) -> int\n\n"
     "Receive datagrams from the UDP socket `sock` (or file descriptor) in\n"
     "batches, call\n"
     "handler(data, source) for each, send the bytes it returns (None: no reply)\n"
     "back to the sender in batches; stop when the socket is empty or `limit`\n"
     "datagrams were taken. Returns the number taken. observe(seconds) gets the\n"
     "handler time of 1 in 16 datagrams."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Batch_members[] = {
    {"batch", T_UINT, offsetof(Batch, batch), READONLY, "datagrams per system call"},
    {"received", T_ULONGLONG, offsetof(Batch, received), READONLY, "datagrams received"},
    {"replied", T_ULONGLONG, offsetof(Batch, replied), READONLY, "replies sent"},
    {"send_errors", T_ULONGLONG, offsetof(Batch, send_errors), READONLY,
     "replies the kernel refused (dropped)"},
    {"truncated", T_ULONGLONG, offsetof(Batch, truncated), READONLY,
     "datagrams longer than a slot (dropped)"},
    {"bad_source", T_ULONGLONG, offsetof(Batch, bad_source), READONLY,
     "datagrams without an IPv4/IPv6 source (dropped)"},
    {"recv_calls", T_ULONGLONG, offsetof(Batch, recv_calls), READONLY,
     "receive system calls that returned datagrams"},
    {"send_calls", T_ULONGLONG, offsetof(Batch, send_calls), READONLY,
     "send system calls that sent replies"},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *
Batch_get_slot(Batch *self, void *closure)
{
    return PyLong_FromSize_t(self->slot);
}

static PyGetSetDef Batch_getset[] = {
    {"slot", (getter)Batch_get_slot, NULL, "bytes of receive space per datagram", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "geodns.dns._udpbatch.Batch",
    .tp_basicsize = sizeof(Batch),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Batch(batch=64, slot=65536): recvmmsg/sendmmsg buffers for one UDP socket",
    .tp_methods = Batch_methods,
    .tp_members = Batch_members,
    .tp_getset = Batch_getset,
    .tp_init = (initproc)Batch_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef udpbatch_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "geodns.dns._udpbatch",
    .m_doc = "recvmmsg/sendmmsg bursts for the UDP fast path (see geodns.dns.udpbatch)",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__udpbatch(void)
{
    if (PyType_Ready(&BatchType) < 0 || PyType_Ready(&HotType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&udpbatch_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(m, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(&BatchType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&HotType);
    if (PyModule_AddObject(m, "Hot", (PyObject *)&HotType) < 0) {
        Py_DECREF(&HotType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0 ||
        PyModule_AddIntConstant(m, "HOT_MAX_QUERY", HOT_MAX_QUERY) < 0 ||
        PyModule_AddIntConstant(m, "HOT_MAX_REPLY", HOT_MAX_REPLY) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SLOT", MAX_SLOT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
