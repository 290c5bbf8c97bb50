"""asyncio protocols: UDP datagrams and TCP streams ↔ the current Responder.

Bytes in, bytes out; policy lives in `geodns.dns.answer`. The responder is read
through a holder on every packet, so a reload swaps one reference and the
next packet sees the new generation.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from time import perf_counter
from typing import Any, Protocol

from geodns.dns.tcpslots import TCPLimits

log = logging.getLogger("geodns.protocol")

__all__ = ["Current", "Handler", "TCPLimits", "TCPProtocol", "UDPHandler", "UDPProtocol"]


class Handler(Protocol):
    def handle(self, data: bytes, src: str, tcp: bool = False) -> bytes | None: ...


# One UDP datagram in, the reply bytes out (None: no reply).
UDPHandler = Callable[[bytes, str], "bytes | None"]


class Current:
    """Holds the responder of the running generation."""

    __slots__ = ("responder",)

    def __init__(self, responder: Handler) -> None:
        self.responder = responder

    def udp_handler(self) -> UDPHandler:
        """The one function every UDP datagram goes through, on every UDP path
        (UDPProtocol here, the batched drains in geodns.dns.udpbatch), called
        as handler(data, source address): the responder's `handle` with
        tcp=False, which also applies response rate limiting. Read per
        datagram (asyncio) or per burst (batched): a reload's swap is seen by
        the next one."""
        return self.responder.handle


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, current: Current, latency: Any = None) -> None:
        self.current = current
        self.transport: asyncio.DatagramTransport | None = None
        self.latency = latency
        self.n = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.n += 1
        handler = self.current.udp_handler()
        if self.n & 15 or self.latency is None:
            resp = handler(data, addr[0])
        else:  # 1 in 16 queries is timed for the latency histogram
            t0 = perf_counter()
            resp = handler(data, addr[0])
            self.latency.observe(perf_counter() - t0)
        if resp is not None and self.transport is not None:
            self.transport.sendto(resp, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from earlier sends (client gone); nothing to do, never fatal
        log.debug("UDP error: %s", exc)


class TCPProtocol(asyncio.Protocol):
    """RFC 7766: two-byte length framing, pipelined queries answered in order,
    idle connections closed after `idle_timeout`; slots (global and per source)
    are handed out by geodns.dns.tcpslots."""

    def __init__(self, current: Current, limits: TCPLimits) -> None:
        self.current = current
        self.limits = limits
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False
        self.write_paused = False  # the client is not reading (pause_writing)
        self.scheduled = False  # a _drain is queued with call_soon

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        if not self.limits.admit(self, self.peer):
            transport.close()
            return
        self.counted = True
        self._arm()

    def evict(self) -> None:
        """Closed to make room for another connection (geodns.dns.tcpslots)."""
        self.counted = False
        if self.transport is not None:
            self.transport.close()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.limits.idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buf += data
        self._drain()

    def _drain(self) -> None:
        """Answer the complete queries in the buffer, at most max_pipelined at
        a time (the rest after other connections had their turn), and none
        while the client is not reading its answers (backpressure)."""
        self.scheduled = False
        tr = self.transport
        if tr is None or tr.is_closing() or self.write_paused:
            return
        handled = 0
        out: list[bytes] = []
        buf = self.buf
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + n:
                break
            if handled >= self.limits.max_pipelined:
                # more complete queries wait: stop reading until they are answered
                tr.pause_reading()
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._drain)
                break
            msg = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            resp = self.current.responder.handle(msg, self.peer, True)
            if resp is None:
                # unanswerable garbage on a stream: the framing can't be trusted;
                # the answers already made still go out first
                if out:
                    tr.write(b"".join(out))
                tr.close()
                return
            out.append(struct.pack("!H", len(resp)) + resp)
            handled += 1
        if out:
            tr.write(b"".join(out))  # may call pause_writing
        if not self.scheduled:
            if len(buf) > 2 + 65535:  # an incomplete message can't be this long
                tr.close()
                return
            if not self.write_paused:
                tr.resume_reading()
        if handled:
            self._arm()  # idle = no complete query; a trickle of bytes is not activity
            if self.counted:
                self.limits.touch(self)

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its queries, so
        # the write buffer stays at the transport's high-water mark.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.counted:
            self.limits.release(self)
            self.counted = False
        self.transport = None
