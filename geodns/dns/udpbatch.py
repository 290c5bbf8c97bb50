"""The UDP fast path: datagrams drained in bursts when the socket is readable.

The socket is registered with the event loop (`loop.add_reader`), so it lives
on the same uvloop loop as TCP, metrics, reload and the watchdog. Each time it
is readable, an engine takes up to `LIMIT` datagrams and passes each through
ONE call, `current.udp_handler()(data, source)` — the same function the
asyncio path (`protocol.UDPProtocol`) calls — sending back the bytes it
returns (None: no reply). Before that call, the running responder's hot
table (geodns.dns.hot) may answer a datagram that repeats an earlier query:
the reply the handler made then, replayed without entering Python.

Engines (`GEODNS_UDP_BATCH` or `geodns serve --udp-batch`):
- ``native``: `geodns.dns._udpbatch` (C), recvmmsg/sendmmsg with `BATCH`
  datagrams per system call — what a query costs is then mostly the answer.
- ``python``: the same drain in Python with one recvfrom/sendto per datagram,
  identical in behaviour (counters, sampling, drops); for platforms without
  the extension and to test the drain logic both ways.
- ``off``: asyncio's datagram endpoint (`protocol.UDPProtocol`), as before.
- ``auto`` (default): native when the extension is built, else off.

Difference from the asyncio path, on purpose: a reply the kernel will not
take (send queue full) is dropped and counted (`geodns_udp_send_errors_total`)
instead of queued in memory — what gdnsd and Knot do too; the resolver asks
again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from geodns.dns.hot import Table
    from geodns.dns.protocol import Current
    from geodns.dns.stats import Stats

log = logging.getLogger("geodns.udp")

MODES = ("auto", "native", "python", "off")
BATCH = 64  # datagrams per recvmmsg/sendmmsg
LIMIT = 256  # datagrams per readiness event before other callbacks get the loop
SLOT = 65536  # receive space per datagram: any UDP payload fits
RCVBUF = 4 << 20  # requested; Linux doubles it for bookkeeping (8 MiB effective)
SAMPLE_EVERY = 16  # 1 in 16 handler calls timed, as on the asyncio path
# receive errors that end a drain quietly (the C engine's list)
_TRANSIENT = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENOMEM,
    errno.ENOBUFS,
}

try:
    from geodns.dns import _udpbatch as _native

    NATIVE_ERROR: str | None = None
except ImportError as e:  # not built (no compiler, not Linux): the fallbacks serve
    _native = None  # type: ignore[assignment]
    NATIVE_ERROR = str(e)


def native_available() -> bool:
    return _native is not None


def choose(mode: str) -> str:
    """The path to serve UDP with: 'native', 'python' or 'off'. Asking for
    native where the extension is not built is an error, not a quiet
    fallback (a test or an operator that forces it means it)."""
    if mode not in MODES:
        raise ValueError(f"UDP batch mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "auto":
        return "native" if _native is not None else "off"
    if mode == "native" and _native is None:
        raise RuntimeError(f"the native UDP path (_udpbatch) is not built: {NATIVE_ERROR}")
    return mode


class Engine(Protocol):
    """What both engines offer (geodns.dns._udpbatch.Batch and PyBatch)."""

    received: int
    replied: int
    send_errors: int
    truncated: int
    bad_source: int
    recv_calls: int
    send_calls: int

    def drain(
        self,
        sock: socket.socket,
        handler: Callable[[bytes, str], bytes | None],
        observe: Callable[[float], None] | None = None,
        limit: int = LIMIT,
        hot: Any = None,  # the engine's own table: _udpbatch.Hot, or hot.PyHot
    ) -> int: ...


def make_engine(path: str, batch: int = BATCH, slot: int = SLOT) -> Engine:
    if path == "native":
        if _native is None:
            raise RuntimeError(f"geodns.dns._udpbatch is not built: {NATIVE_ERROR}")
        return _native.Batch(batch, slot)
    if path == "python":
        return PyBatch(batch, slot)
    raise ValueError(f"no UDP batch engine for path {path!r}")


class PyBatch:
    """The pure-Python engine: `_udpbatch.Batch`'s drain, one datagram per
    system call. Same arguments, counters and outcomes; `sock` must be a
    socket object (the native engine also takes a file descriptor)."""

    def __init__(self, batch: int = BATCH, slot: int = SLOT) -> None:
        if not 1 <= batch <= 1024:
            raise ValueError(f"batch must be 1..1024, not {batch}")
        if not 16 <= slot <= 65536:
            raise ValueError(f"slot must be 16..65536 bytes, not {slot}")
        self.batch = batch
        self.slot = slot
        self.received = self.replied = self.send_errors = 0
        self.truncated = self.bad_source = self.recv_calls = self.send_calls = 0
        self._sample = 0
        self._busy = False

    def drain(
        self,
        sock: socket.socket,
        handler: Callable[[bytes, str], bytes | None],
        observe: Callable[[float], None] | None = None,
        limit: int = LIMIT,
        hot: Table | None = None,
    ) -> int:
        if not 1 <= limit <= 1 << 20:
            raise ValueError("limit must be 1..1048576")
        if self._busy:
            raise RuntimeError("PyBatch.drain is not re-entrant")
        self._busy = True
        try:
            return self._drain(sock, handler, observe, limit, hot)
        finally:
            self._busy = False

    def _drain(
        self,
        sock: socket.socket,
        handler: Callable[[bytes, str], bytes | None],
        observe: Callable[[float], None] | None,
        limit: int,
        hot: Table | None,
    ) -> int:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        size = self.slot + 1  # one byte more: a longer datagram shows as truncated
        total = 0
        first: BaseException | None = None
        failed: OSError | None = None
        while total < limit:
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno not in _TRANSIENT:
                    failed = e
                break  # transient: a queued ICMP error or a memory squeeze; next time
            total += 1
            self.received += 1
            self.recv_calls += 1
            if len(data) > self.slot:
                self.truncated += 1
                continue
            if not isinstance(addr, tuple) or not addr or not isinstance(addr[0], str):
                self.bad_source += 1
                continue
            src = addr[0]
            if "%" in src:  # Python adds %scope to link-local sources; uvloop does not
                src = src.partition("%")[0]
            try:
                self._sample += 1
                timed = observe is not None and self._sample >= SAMPLE_EVERY
                if timed:
                    self._sample = 0
                    t0 = time.perf_counter()
                resp = None
                if hot is not None:
                    try:
                        resp = hot.answer(data, src)
                    except Exception as e:  # noqa: BLE001 — the handler still answers
                        if first is None:
                            first = e
                if resp is None:
                    resp = handler(data, src)
                if timed:
                    observe(time.perf_counter() - t0)  # type: ignore[misc]
            except BaseException as e:  # noqa: BLE001 — raised after the batch, like C
                if first is None:
                    first = e
                continue
            if resp is None:
                continue
            if type(resp) is not bytes:
                if first is None:
                    first = TypeError(f"handler returned {type(resp).__name__}, not bytes or None")
                continue
            try:
                sendto(resp, addr)
            except OSError:  # queue full, too large, no route: dropped, counted
                self.send_errors += 1
                continue
            self.replied += 1
            self.send_calls += 1
        if first is not None:  # as in C: the handler's error first, then the socket's
            raise first
        if failed is not None:
            raise failed
        return total


def size_receive_buffer(sock: socket.socket, want: int = RCVBUF) -> int:
    """Ask for a receive buffer that absorbs bursts (a reload swap, a GC pass,
    another process on our CPU). SO_RCVBUFFORCE passes net.core.rmem_max when
    we may (CAP_NET_ADMIN, e.g. root); otherwise SO_RCVBUF, which the kernel
    caps at rmem_max. Returns the effective size (the kernel's doubled value)."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    done = False
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, want)
            done = True
        except OSError:
            pass  # EPERM without CAP_NET_ADMIN
    if not done:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
        except OSError:
            pass
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError:
        return 0


class BatchedUDP:
    """One UDP socket served by an engine from the loop's reader callback."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        current: Current,
        stats: Stats,
        engine: Engine,
        limit: int = LIMIT,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.current = current
        self.stats = stats
        self.engine = engine
        self.limit = limit
        self.observe: Callable[[float], None] = stats.latency.observe
        self._seen = (0, 0, 0)  # engine counters already added to stats
        self._errors = 0
        self.fd = sock.fileno()
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            responder = self.current.responder
            self.engine.drain(
                self.sock,
                self.current.udp_handler(),
                self.observe,
                self.limit,
                getattr(responder, "hot", None),
            )
        except Exception:  # noqa: BLE001 — a reader callback must not die with one packet
            self._errors += 1
            if self._errors <= 10 or self._errors % 10000 == 0:
                log.exception("UDP drain on %s failed (%d so far)", self._name(), self._errors)

    def sync_counters(self) -> None:
        """Add what the engine counted since the last call to `stats` — at scrape
        and publish time, not per burst."""
        e, st = self.engine, self.stats
        calls, errs, drops = e.recv_calls, e.send_errors, e.truncated + e.bad_source
        c0, e0, d0 = self._seen
        st.udp_recv_calls += calls - c0
        st.udp_send_errors += errs - e0
        st.dropped += drops - d0
        self._seen = (calls, errs, drops)

    def _name(self) -> str:
        try:
            return str(self.sock.getsockname()[:2])
        except OSError:
            return "a closed socket"

    def close(self) -> None:
        self.sync_counters()
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.fd = -1
        self.sock.close()


def describe(path: str) -> str:
    return {
        "native": f"native (recvmmsg/sendmmsg, up to {BATCH} datagrams per call)",
        "python": "python (recvfrom/sendto per datagram, drained in bursts)",
        "off": "asyncio datagram endpoint",
    }.get(path, path)
