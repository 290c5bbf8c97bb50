"""Response rate limiting (RRL) with the semantics of BIND and Knot.

A spoofed-source flood makes an authoritative server send its answers to a
victim; RRL caps what one client network can be sent per *response kind*:

- bucket = (client network, kind): IPv4 /24 and IPv6 /56 by default (BIND's
  defaults: one customer's allocation), kind = the owner name of the answer
  (positive answers and referrals: the queried name or the delegation point;
  NODATA: the queried name) or the zone (NXDOMAIN and errors, so a random
  subdomain flood is one bucket, not millions), tagged with the response class
  so that answers and NXDOMAINs for one name never share a bucket;
- a token bucket per key, `rate` responses per second with room for one
  second's worth (`rate` tokens), kept as GCRA: one float per bucket, the
  "theoretical arrival time" of the next allowed response (floats: cheaper
  per query than nanosecond integers, and exact enough at any sane rate);
- a response over the rate is dropped, except every `slip`-th one, which goes
  out as a small TC=1 answer (the querier, if real, retries over TCP, which is
  never limited); slip 0 drops all, slip 1 slips all.

The per-query cost is two dict look-ups and a few integer operations: the
answer's kind is a precomputed `hash()` stored on the prebuilt answer (see
`kind_key`), the client network's hash comes from a cache keyed by the
source address string the socket gave us, and the bucket key is their XOR.
Both hashes come from Python's keyed (per-process random) string hash, so
an attacker cannot aim two buckets at one key.

Memory is bounded under a random-source flood: buckets live in two dict
generations of at most `max_buckets // 2` entries each. A miss promotes the
entry from the older generation; when the newer one is full, or older than
`ROTATE_S` seconds, the older one is dropped whole. An entry dropped that way
had not been touched for a whole generation; with fewer than `max_buckets / 2`
new buckets per `ROTATE_S` seconds that means its bucket was full again
anyway (nothing is lost); beyond that (a flood of more distinct networks per
second than the table holds) a quiet bucket may restart full, which gives at
most `rate` extra answers to a network that was not being flooded. A victim
being flooded is touched on every packet and is never dropped.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from time import monotonic

# response classes (the first byte of a kind; BIND's and Knot's categories)
ANSWER, NODATA, NXDOMAIN, REFERRAL, ERROR = b"A", b"N", b"X", b"R", b"E"

SEND, DROP, SLIP = 0, 1, 2

DEFAULT_RATE = 50
DEFAULT_SLIP = 2
DEFAULT_V4_PREFIX = 24
DEFAULT_V6_PREFIX = 56
DEFAULT_MAX_BUCKETS = 200_000
NETS_MAX = 50_000  # source-address → network cache entries (cleared when full)
ROTATE_S = 2.0  # seconds a bucket generation lives at most (≥ the one-second bucket)


def kind_key(cls: bytes, name: bytes) -> int:
    """The precomputed half of a bucket key: response class + lower-case wire
    name (the owner, or the zone for NXDOMAIN and errors)."""
    return hash(cls + name)


ERROR_KIND = kind_key(ERROR, b"")  # errors with no zone: unparsable, not ours


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimiter:
    """Token buckets per (client network, response kind). Not thread-safe: one
    per event loop (each `--workers` process has its own, as BIND's and Knot's
    per-process tables; the kernel spreads one source over the workers by its
    port hash, so a flood from one address mostly meets one of them)."""

    __slots__ = (
        "rate",
        "slip",
        "v4_shift",
        "v6_shift",
        "exempt",
        "interval",
        "tau",
        "half",
        "rotate_s",
        "new",
        "old",
        "born",
        "nets",
        "limited",
    )

    def __init__(
        self,
        rate: int,
        slip: int = DEFAULT_SLIP,
        *,
        v4_prefix: int = DEFAULT_V4_PREFIX,
        v6_prefix: int = DEFAULT_V6_PREFIX,
        exempt: Iterable[Network] = (),
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1 response per second (0 = no limiter)")
        if slip < 0:
            raise ValueError("slip must be 0 (drop all) or more")
        if not 0 <= v4_prefix <= 32 or not 0 <= v6_prefix <= 128:
            raise ValueError("prefix lengths: IPv4 0..32, IPv6 0..128")
        self.rate = rate
        self.slip = slip
        self.v4_shift = 32 - v4_prefix
        self.v6_shift = 128 - v6_prefix
        self.exempt = tuple(exempt)
        self.interval = 1.0 / rate  # seconds between responses at the rate
        # GCRA burst tolerance for a bucket of `rate` tokens: rate - 1 intervals
        # (a hair more, so that float rounding never costs a token)
        self.tau = (rate - 1) * self.interval + self.interval * 1e-6
        self.half = max(1, max_buckets // 2)
        self.rotate_s = ROTATE_S
        self.new: dict[int, float] = {}
        self.old: dict[int, float] = {}
        self.born = monotonic()
        self.nets: dict[str, int] = {}
        self.limited = 0  # responses over the rate so far (the slip counter)

    def check(self, src: str, kind: int) -> int:
        """SEND, DROP or SLIP for one UDP response of `kind` to `src`."""
        net = self.nets.get(src)
        if net is None:
            net = self._net(src)
        if not net:
            return SEND  # --rrl-exempt
        key = net ^ kind
        now = monotonic()
        tat = self.new.get(key)
        if tat is None:
            tat = self._miss(key, now)
        if tat < now:
            tat = now
        elif tat - now > self.tau:
            self.limited = n = self.limited + 1
            slip = self.slip
            return SLIP if slip and not n % slip else DROP
        self.new[key] = tat + self.interval
        return SEND

    def _miss(self, key: int, now: float) -> float:
        """A key not in the newer generation: take it from the older one (or
        start empty), rotating the generations when the newer is full or old."""
        new = self.new
        if len(new) >= self.half or now - self.born > self.rotate_s:
            self.old = new
            self.new = {}
            self.born = now
        tat = self.old.pop(key, 0.0)
        if tat > now:
            self.new[key] = tat  # still owed: keep it where check() will find it
        return tat

    def _net(self, src: str) -> int:
        """Hash of the client network of `src`; 0 for an exempt source."""
        nets = self.nets
        if len(nets) >= NETS_MAX:
            nets.clear()
        addr = src.partition("%")[0]
        try:
            if ":" in addr:
                packed = socket.inet_pton(socket.AF_INET6, addr)
                shift, fam = self.v6_shift, 6
            else:
                packed = socket.inet_pton(socket.AF_INET, addr)
                shift, fam = self.v4_shift, 4
        except OSError:
            nets[src] = v = hash(("?", src)) | 1  # not an address: a bucket of its own
            return v
        v = 0
        if not self._exempt(packed):
            v = hash((fam, int.from_bytes(packed, "big") >> shift)) | 1  # never 0
        nets[src] = v
        return v

    def _exempt(self, packed: bytes) -> bool:
        if not self.exempt:
            return False
        ip = ipaddress.ip_address(packed)
        return any(ip in n for n in self.exempt if n.version == ip.version)

    def buckets(self) -> int:
        """Buckets held now (both generations)."""
        return len(self.new) + len(self.old)
