"""Hot answers: replies the responder made, replayed for the same query bytes.

The batched UDP path (geodns.dns.udpbatch) looks every datagram up in the
running responder's table before it calls the Python handler; a hit is
answered there — in C for the native engine (`_udpbatch.Hot`, see
geodns/dns/_hot.c for the rules), in `PyHot` below for the pure-Python
engine, which behaves identically (same keys, same set-associative table on
Python's bytes hash, same rotation, same counters).

A key is the query after its ID with the RD and CD bits cleared and the
query name lower-cased; answers that depend on the packet's source carry the
source address after it (`source_suffix`). The responder registers what it
answered on its fast path (`geodns.dns.answer.Responder._hot_put`, through
its `Registry`) and folds the counters back into its Stats (`Registry.sync`).
"""

from __future__ import annotations

import socket
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from geodns.dns._udpbatch import Hot
    from geodns.dns.rrl import RateLimiter
    from geodns.dns.stats import Stats

MAX_QUERY = 512  # longer queries are never hot (the C table's HOT_MAX_QUERY)
MAX_REPLY = 4096  # longer replies are never hot (HOT_MAX_REPLY)
CAPACITY = 65536  # entries per responder generation (4-way sets; keep it well above
# the distinct queries resolvers repeat: a set over 4 keys evicts in turn)
WAYS = 4
MAX_CAPACITY = (1 << 20) * WAYS
MAX_STATS = 1024


def key_of(data: bytes) -> tuple[bytes, int] | None:
    """(key, end of the question) of a query, None when it cannot be hot.
    The C table's make_key."""
    n = len(data)
    if n < 17 or n > MAX_QUERY:
        return None
    pos = 12
    ln = data[12]
    while ln:
        if ln > 63 or pos + 1 + ln >= n:
            return None
        pos += 1 + ln
        ln = data[pos]
    if pos + 5 > n:
        return None
    # label lengths are <= 63, so lower() leaves them alone
    key = bytes((data[2] & 0xFE, data[3] & 0xEF)) + data[4:12] + data[12:pos].lower() + data[pos:]
    return key, pos + 5


def unpack(key: bytes) -> tuple[bytes, str | None] | None:
    """A key back into a query (ID 0) and the source it was registered for
    (None: any source), so a new generation can answer it and register it
    in its own table; None for a key that is not one `key_of` made."""
    if len(key) < 15 or key[2:4] != b"\x00\x01":  # QDCOUNT 1
        return None
    pos = 10  # the question (offset 12 in the query)
    n = len(key)
    while pos < n and key[pos]:
        pos += 1 + key[pos]
    end = pos + 5
    if key[8:10] == b"\x00\x01":  # OPT: name, type, class, TTL, RDLENGTH, RDATA
        if end + 11 > n:
            return None
        end += 11 + int.from_bytes(key[end + 9 : end + 11], "big")
    if end > n:
        return None
    data, tail = b"\x00\x00" + key[:end], key[end:]
    try:
        if not tail:
            return data, None
        if len(tail) == 5 and tail[0] == 4:
            return data, socket.inet_ntop(socket.AF_INET, tail[1:])
        if len(tail) == 17 and tail[0] == 6:
            return data, socket.inet_ntop(socket.AF_INET6, tail[1:])
    except (OSError, ValueError):
        pass
    return None


def source_suffix(src: str) -> bytes:
    """What follows the key of an answer that depends on the source address."""
    if ":" in src:
        return b"\x06" + socket.inet_pton(socket.AF_INET6, src.partition("%")[0])
    return b"\x04" + socket.inet_pton(socket.AF_INET, src)


class PyHot:
    """The pure-Python twin of `_udpbatch.Hot`."""

    def __init__(self, capacity: int = CAPACITY, limiter: RateLimiter | None = None) -> None:
        if not WAYS <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be {WAYS}..{MAX_CAPACITY}, not {capacity}")
        sets = 1
        while sets * WAYS < capacity:
            sets <<= 1
        self.nsets = sets
        # each way: [key, variants, opt, kind|None, next, stat] or None
        self.sets: list[list[list[Any] | None]] = [[None] * WAYS for _ in range(sets)]
        self.victim = [0] * sets
        self.counts = [0] * (MAX_STATS * 2)
        self.limiter = limiter
        self.size = 0
        self.hits = self.misses = self.deferred = self.puts = self.evicted = 0

    @property
    def capacity(self) -> int:
        return self.nsets * WAYS

    def __len__(self) -> int:
        return self.size

    def _find(self, key: bytes) -> list[Any] | None:
        for e in self.sets[hash(key) & (self.nsets - 1)]:
            if e is not None and e[0] == key:
                return e
        return None

    def put(
        self,
        key: bytes,
        variants: tuple[bytes, ...],
        opt: bytes,
        stat: int = 0,
        kind: int | None = None,
        start: int = 0,
    ) -> None:
        if type(key) is not bytes or type(opt) is not bytes or type(variants) is not tuple:
            raise TypeError("key and opt must be bytes, variants a tuple of bytes")
        if not 15 <= len(key) <= MAX_QUERY + 17:
            raise ValueError(f"key must be 15..{MAX_QUERY + 17} bytes, not {len(key)}")
        if not 1 <= len(variants) <= 4096:
            raise ValueError(f"1..4096 variants, not {len(variants)}")
        if any(type(v) is not bytes or not 10 <= len(v) <= MAX_REPLY for v in variants):
            raise ValueError("each variant must be bytes: 10 bytes of flags and counts, then ...")
        if not 0 <= stat < MAX_STATS:
            raise ValueError(f"stat must be 0..{MAX_STATS - 1}")
        entry = [key, variants, opt, kind, start % len(variants), stat]
        e = self._find(key)
        if e is not None:
            e[:] = entry
            self.puts += 1
            return
        i = hash(key) & (self.nsets - 1)
        ways = self.sets[i]
        for w in range(WAYS):
            if ways[w] is None:
                break
        else:
            w = self.victim[i]
            self.victim[i] = (w + 1) % WAYS
            self.evicted += 1
            self.size -= 1
        ways[w] = entry
        self.size += 1
        self.puts += 1

    def take(self) -> list[tuple[int, int, int]]:
        out = []
        c = self.counts
        for s in range(MAX_STATS):
            a, b = c[2 * s], c[2 * s + 1]
            if a or b:
                out.append((s, a, b))
                c[2 * s] = c[2 * s + 1] = 0
        return out

    def keys(self) -> list[bytes]:
        return [e[0] for ways in self.sets for e in ways if e is not None]

    def clear(self) -> None:
        self.sets = [[None] * WAYS for _ in range(self.nsets)]
        self.victim = [0] * self.nsets
        self.size = 0

    def answer(self, data: bytes, src: str) -> bytes | None:
        """The hot reply to this datagram from `src`, None for "ask the handler"."""
        k = key_of(data)
        if k is None:
            self.misses += 1
            return None
        key, qend = k
        e = self._find(key)
        if e is None:
            e = self._find(key + source_suffix(src))
            if e is None:
                self.misses += 1
                return None
        variants, opt, kind = e[1], e[2], e[3]
        i = e[4] if e[4] < len(variants) else 0
        v = variants[i]
        total = 2 + len(v) + (qend - 12) + len(opt)
        if total > MAX_REPLY:
            self.misses += 1
            return None
        if kind is not None and self.limiter is not None and not _admit(self.limiter, src, kind):
            self.deferred += 1
            return None
        e[4] = i + 1 if i + 1 < len(variants) else 0
        self.counts[e[5] * 2 + (":" in src)] += 1
        self.hits += 1
        return b"".join(
            (
                data[:2],
                bytes((v[0] | (data[2] & 0x01), v[1] | (data[3] & 0x10))),
                v[2:10],
                data[12:qend],
                v[10:],
                opt,
            )
        )


# either table: the same methods and counters (geodns/dns/_udpbatch.pyi has the C one's)
Table: TypeAlias = "Hot | PyHot"


class Registry:
    """A responder's side of its table: registrations, each with the id of the
    counters its replies bump (qtype, steering tier, ECS; the responder
    registers NOERROR answers only), and those counters folded back into
    Stats."""

    __slots__ = ("table", "stats", "ids", "keys")

    def __init__(self, table: Table, stats: Stats) -> None:
        self.table = table
        self.stats = stats
        self.ids: dict[tuple[Any, ...], int] = {}
        self.keys: list[tuple[Any, ...]] = []

    def put(
        self,
        data: bytes,
        src: str,
        variants: tuple[bytes, ...],
        opt: bytes,
        counts: tuple[Any, ...],
        kind: int | None,
        start: int,
        by_source: bool,
        limit: int,
    ) -> None:
        """Register the answer to `data` (from `src` when `by_source`) unless
        some variant would not fit `limit` (the responder truncates those)."""
        k = key_of(data)
        if k is None:
            return
        key, qend = k
        longest = 2 + max(map(len, variants)) + (qend - 12) + len(opt)
        if longest > limit or longest > MAX_REPLY:
            return
        stat = self.ids.get(counts)
        if stat is None:
            if len(self.keys) >= MAX_STATS:
                return
            stat = self.ids[counts] = len(self.keys)
            self.keys.append(counts)
        if by_source:
            key += source_suffix(src)
        self.table.put(key, variants, opt, stat, kind, start)

    def sync(self) -> None:
        """Add what the table answered since the last call to Stats."""
        stats = self.stats
        q4, q6 = stats.qtypes[0]
        rc, tiers = stats.rcodes, stats.tiers
        for s, v4, v6 in self.table.take():
            qtype, tier, ecs = self.keys[s]
            n = v4 + v6
            if v4:
                q4[qtype] = q4.get(qtype, 0) + v4
            if v6:
                q6[qtype] = q6.get(qtype, 0) + v6
            rc[0] = rc.get(0, 0) + n  # NOERROR
            if tier is not None:
                tiers[tier] = tiers.get(tier, 0) + n
            if ecs:
                stats.ecs += n
            stats.udp_hot += n


def _admit(limiter: RateLimiter, src: str, kind: int) -> bool:
    """RateLimiter.check when it sends: True to send (the bucket charged);
    False leaves the whole check to the handler, with nothing changed (a new
    network, a bucket to rotate in, a client over the rate)."""
    net = limiter.nets.get(src)
    if net is None:
        return False
    if not net:
        return True  # an exempt network
    key = net ^ kind
    new = limiter.new
    tat = new.get(key)
    if tat is None:
        return False
    now = monotonic()
    if tat < now:
        tat = now
    elif tat - now > limiter.tau:
        return False
    new[key] = tat + limiter.interval
    return True


def new_table(path: str, limiter: RateLimiter | None, capacity: int = CAPACITY) -> Table | None:
    """The table for a UDP path: C for 'native', PyHot for 'python', none for
    the asyncio endpoint (it answers every datagram in Python)."""
    if path == "native":
        from geodns.dns import _udpbatch

        return _udpbatch.Hot(capacity, limiter)
    if path == "python":
        return PyHot(capacity, limiter)
    return None
