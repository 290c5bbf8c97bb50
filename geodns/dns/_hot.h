/* geodns.dns._udpbatch: the hot-answer table (_hot.c) as the drain sees it. */
#ifndef GEODNS_HOT_H
#define GEODNS_HOT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sys/socket.h>

#define HOT_MAX_QUERY 512 /* longer queries are never hot (a real one is < 300 bytes) */
#define HOT_MAX_REPLY 4096 /* the room a drain keeps per datagram for a hot reply */

extern PyTypeObject HotType;

/* Answer the query q[0..len) from the table when it holds its key: writes the
 * reply into out[0..cap) and returns its length; 0 means "not hot, ask the
 * Python handler" (nothing was changed); -1 is an error with an exception set
 * (nothing was sent: the caller still asks the handler). `src` is the source
 * address as text (the rate limiter's key), `ss`/`sslen` the same as the
 * kernel gave it (the key of answers that depend on the source). */
Py_ssize_t hot_answer(PyObject *hot, const unsigned char *q, Py_ssize_t len, PyObject *src,
                      const struct sockaddr_storage *ss, socklen_t sslen, unsigned char *out,
                      Py_ssize_t cap);

#endif
