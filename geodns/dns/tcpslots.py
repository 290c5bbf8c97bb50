"""Who may hold a TCP connection: a global cap, a per-source cap, and room
made for newcomers by closing the connection idle the longest.

TCP answers cannot be spoofed, so TCP is where a client goes when UDP is
truncated or rate limited (geodns.dns.rrl) — one source holding every slot would
lock everyone out of that fallback. So:

- per source (an IPv4 address, an IPv6 /64: hosts pick any address in their
  /64, so one IPv6 host is a /64), at most `max_per_source` connections; a
  source at its cap that opens one more has its own longest-idle connection
  closed (a resolver that leaks connections keeps working, a flooder only
  churns its own slots). The default, 32, is RFC 7766 §6.2.2's "much looser
  than the client guidelines" (one connection per resolver and server): it
  covers a multi-threaded resolver with a connection per thread, or a few
  resolvers behind one NAT address, and still takes 32 sources to fill the
  default global cap of 1,000;
- at the global cap the connection idle the longest is closed to admit the
  newcomer (RFC 7766 §6.2.2: a server may close idle connections; refusing
  newcomers would let whoever came first keep the server to themselves).
  "Idle" is measured from the last complete query answered (or the accept):
  a connection that trickles bytes is not active.

Under attack these happen thousands of times a second, so they are counted
and logged as one line per interval, not one per event (`Tally`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger("geodns.protocol")

LOG_EVERY = 10.0  # seconds between summary lines while connections are being closed


class Slot(Protocol):
    """What the slots need of a connection (geodns.protocol.TCPProtocol)."""

    def evict(self) -> None: ...


def source_key(peer: str) -> str:
    """An IPv4 address as it is; an IPv6 address as its /64."""
    if ":" not in peer:
        return peer
    try:
        return socket.inet_pton(socket.AF_INET6, peer.partition("%")[0])[:8].hex()
    except OSError:
        return peer


class Tally:
    """Counts events and logs them as one line per `interval` seconds: the
    first event of a quiet spell at once, the rest summed up afterwards."""

    def __init__(self, interval: float = LOG_EVERY) -> None:
        self.interval = interval
        self.counts: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self.pending: asyncio.TimerHandle | None = None
        self.lines = 0  # log lines written (tests read it)

    def add(self, what: str, source: str) -> None:
        if self.pending is None:
            self.lines += 1
            log.warning(
                "TCP: %s (from %s); further events summed up every %g s",
                what,
                source,
                self.interval,
            )
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self.pending = loop.call_later(self.interval, self.flush)
            return
        self.counts[what] = self.counts.get(what, 0) + 1
        src = self.sources
        if len(src) < 10_000 or source in src:
            src[source] = src.get(source, 0) + 1

    def flush(self) -> None:
        """Log what was counted since the last line; stay quiet (and re-arm
        the first-event line) when nothing was."""
        counts, sources = self.counts, self.sources
        self.counts, self.sources = {}, {}
        if not counts:
            self.pending = None
            return
        top = sorted(sources.items(), key=lambda kv: -kv[1])[:3]
        self.lines += 1
        log.warning(
            "TCP in the last %g s: %s; busiest sources: %s",
            self.interval,
            ", ".join(f"{n} × {what}" for what, n in sorted(counts.items())),
            ", ".join(f"{s} ({n})" for s, n in top),
        )
        try:
            self.pending = asyncio.get_running_loop().call_later(self.interval, self.flush)
        except RuntimeError:
            self.pending = None

    def cancel(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None


class TCPLimits:
    """Limits and the open connections, ordered by last activity (oldest first)."""

    def __init__(
        self,
        idle_timeout: float = 10.0,
        max_connections: int = 1000,
        max_per_source: int = 32,
        max_pipelined: int = 100,
    ) -> None:
        self.idle_timeout = idle_timeout  # RFC 7766 §6.2.3: seconds, not minutes
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.max_pipelined = max_pipelined
        self.conns: OrderedDict[Slot, str] = OrderedDict()  # connection → source key
        self.by_source: dict[str, OrderedDict[Slot, None]] = {}
        self.tally = Tally()
        self.evicted = {"source_cap": 0, "global_cap": 0}

    @property
    def open(self) -> int:
        return len(self.conns)

    def admit(self, conn: Slot, peer: str) -> bool:
        """Take a slot for a new connection, closing another if a cap is reached."""
        key = source_key(peer)
        mine = self.by_source.get(key)
        if mine is not None and len(mine) >= self.max_per_source > 0:
            victim = next(iter(mine))
            self.evicted["source_cap"] += 1
            self.tally.add(
                f"source over the per-source cap of {self.max_per_source}: "
                "its longest-idle connection closed",
                peer,
            )
            self._drop(victim)
            victim.evict()
        if len(self.conns) >= self.max_connections:
            if not self.conns or self.max_connections <= 0:
                self.tally.add("connection refused (no TCP slots configured)", peer)
                return False
            victim = next(iter(self.conns))
            self.evicted["global_cap"] += 1
            self.tally.add(
                f"global cap of {self.max_connections} reached: the longest-idle connection "
                "closed for a newcomer",
                peer,
            )
            self._drop(victim)
            victim.evict()
        self.conns[conn] = key
        if mine is None:
            mine = self.by_source[key] = OrderedDict()
        mine[conn] = None
        return True

    def touch(self, conn: Slot) -> None:
        """A complete query was answered: this connection is the most recently active."""
        key = self.conns.get(conn)
        if key is None:
            return
        self.conns.move_to_end(conn)
        self.by_source[key].move_to_end(conn)

    def release(self, conn: Slot) -> None:
        self._drop(conn)

    def _drop(self, conn: Slot) -> None:
        key = self.conns.pop(conn, None)
        if key is None:
            return
        mine = self.by_source[key]
        mine.pop(conn, None)
        if not mine:
            del self.by_source[key]
