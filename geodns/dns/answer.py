"""Queries in, response bytes out — from caches of prebuilt wire answers.

One `Responder` serves one generation of (config, health, GeoIP). Answers are
encoded once per (qname, qtype) — and for steered names once per client GeoIP
profile, as a short cycle of variants that spreads load by weight — and then
only the ID, RD/CD bits, the question as sent (QNAME case) and the OPT/ECS
echo are spliced in per query. Everything unusual (other opcodes, malformed
packets, EDNS oddities) takes `_slow()`, which parses completely and answers
exactly. A new generation gets a new Responder, warmed from the running one
(`warm_from`) while that one keeps answering, then swapped in.

Why this module is over 500 lines: it is the hot path. `Responder._fast` and
the small encoded-answer classes it walks (`_Body`, `_Geo`, `_Cycle`) are kept
in one module so that the per-query code reads top to bottom and its helpers
are module globals, not attribute lookups across imports; `_hot_put`, which
hands what `_fast` answered to the UDP drain's replay table (geodns.dns.hot),
reads those same classes.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from time import monotonic
from typing import Any

from geodns.dns import hot as hot_mod
from geodns.dns import rrl as rrl_mod
from geodns.dns import wire
from geodns.dns.cookies import BADCOOKIE, VALID, Cookies, well_formed
from geodns.dns.gencache import TwoGen
from geodns.dns.stats import Stats
from geodns.dns.zone import RR, Resolution, Tables
from geodns.dnssec.sections import sign_sections
from geodns.steering.geo import GeoDB, GeoInfo
from geodns.steering.steer import Steering, SteerResult, tier_name

log = logging.getLogger("geodns.query")

CACHE_MAX = 100_000  # entries per cache generation (geodns.dns.gencache: at most twice this)
HOT_WARM_SECONDS = 0.3  # wall time a new generation spends filling its hot table, at most
UNKNOWN_CLIENT = GeoInfo(None, None, None, None, 0)

# What a steered answer depends on: (asn, country, continent, location). The
# network prefix is left out, so every network of one place shares one answer.
Profile = tuple[Any, ...]


def profile(info: GeoInfo) -> Profile:
    return (info.asn, info.country, info.continent, info.location)


_UNKNOWN = (UNKNOWN_CLIENT, profile(UNKNOWN_CLIENT))

_OPT_PLAIN = wire.opt_record(False)
_OPT_DO = wire.opt_record(True)


@dataclass(slots=True)
class _Body:
    """Encoded sections of one answer, ready to follow the question."""

    flags: int  # QR|AA|rcode (RD/CD are copied per query)
    counts: bytes  # ANCOUNT, NSCOUNT, ARCOUNT without OPT
    counts_opt: bytes  # the same with ARCOUNT + 1
    body: bytes
    rcode: int
    kind: int = rrl_mod.ERROR_KIND  # the RRL response kind (geodns.dns.rrl.kind_key)
    # DNSSEC (signed zones only): the DO=1 form of this answer, made on first
    # use from `sign_src`; `ar_sigs` RRSIGs end the additional section
    signed: _Body | None = None
    sign_src: tuple[Any, ...] | None = None
    ar_sigs: int = 0
    # flags+counts after the ID, indexed by the query's RD | CD<<1 bits
    heads: tuple[bytes, ...] = ()
    heads_opt: tuple[bytes, ...] = ()
    # the hot table's variant (geodns.dns.hot): flags, counts, sections —
    # without and with the OPT record counted; made on first registration
    hot_plain: bytes = b""
    hot_opt: bytes = b""

    def __post_init__(self) -> None:
        flag_words = [
            struct.pack("!HH", self.flags | (i & 1) << 8 | (i & 2) << 3, 1) for i in range(4)
        ]
        self.heads = tuple(f + self.counts for f in flag_words)
        self.heads_opt = tuple(f + self.counts_opt for f in flag_words)


class _Geo:
    """A steered entry: per client profile, a cycle of encoded variants."""

    __slots__ = ("qname", "res", "profiles")

    def __init__(self, qname: bytes, res: Resolution) -> None:
        self.qname = qname
        self.res = res
        self.profiles: dict[tuple[Any, ...], _Cycle] = {}


class _Cycle:
    """The rotation of answers for one client profile. Variants are encoded on
    first use: a cycle can hold up to 256 of them and a cold client needs one."""

    __slots__ = ("bodies", "i", "tier_key", "make", "hot")

    def __init__(
        self,
        bodies: list[_Body | None],
        pool: str,
        tier: str,
        make: Callable[[int], _Body] | None = None,
    ) -> None:
        self.bodies = bodies
        # Start anywhere: most profiles see a few queries per generation, and
        # all starting at variant 0 would hand the first mirror nearly all of
        # them; a random start keeps the weights over many small rotations.
        self.i = random.randrange(len(bodies)) if len(bodies) > 1 else 0
        self.tier_key = (pool, tier)  # for the steered-answers counter
        self.make = make
        # hot-table variants, by (EDNS, signed): every body encoded
        self.hot: dict[tuple[bool, bool], tuple[bytes, ...]] = {}

    def prime(self, at: int) -> None:
        """Continue at position `at` (of the generation before), encoded now."""
        self.i = at % len(self.bodies)
        self.next_at(self.i)

    def next_at(self, i: int) -> _Body:
        """Variant `i`, encoded now if it was not yet (the rotation is not moved)."""
        body = self.bodies[i]
        if body is None:
            body = self.bodies[i] = self.make(i)  # type: ignore[misc]
        return body

    def next(self) -> _Body:
        i = self.i
        self.i = i + 1 if i + 1 < len(self.bodies) else 0
        body = self.bodies[i]
        if body is None:
            body = self.bodies[i] = self.make(i)  # type: ignore[misc]
        return body


class Responder:
    def __init__(
        self,
        tables: Tables,
        steering: Steering,
        geodb: GeoDB | None,
        stats: Stats,
        *,
        ecs_trusted: Callable[[str], bool] | None = None,
        query_log: bool = False,
        rrl: rrl_mod.RateLimiter | None = None,
        cookies: Cookies | None = None,
    ) -> None:
        self.tables = tables
        self.steering = steering
        self.geodb = geodb
        self.stats = stats
        self.ecs_trusted = ecs_trusted
        self.query_log = query_log
        self.cache: TwoGen[tuple[bytes, int], _Body | _Geo] = TwoGen(CACHE_MAX)
        self.src_geo: TwoGen[str, tuple[GeoInfo, Profile]] = TwoGen(CACHE_MAX)
        self.steer_cache: dict[tuple[Any, ...], SteerResult] = {}
        self.ecs_clients: TwoGen[bytes, tuple[Any, ...]] = TwoGen(CACHE_MAX)
        self.geo_generation = geodb.generation if geodb is not None else 0
        # Abuse defences; both outlive generations (the server owns them).
        self.rrl = rrl
        self.cookies = cookies
        # The RRL kind of the response just made, set by whichever path made
        # it (fast path, _finish, _error); None when the query carried a valid
        # server cookie (its source is proven: exempt from RRL).
        self.kind: int | None = rrl_mod.ERROR_KIND
        self.signing = tables.signing  # some zone is signed: DO=1 gets signed bodies
        # the hot table and its counter ids (see `hot`)
        self._hot: hot_mod.Registry | None = None
        self._hot_eager = False  # warming: register rotations not yet complete

    # ------------------------------------------------------------------ fast path

    def handle(self, data: bytes, src: str, tcp: bool = False) -> bytes | None:
        """Answer one query; None means drop. Never raises for any input.

        The one per-datagram entry point (UDP one by one or batched, and TCP):
        response rate limiting is applied here, to every UDP response, with
        the kind the answering path left in `self.kind`."""
        try:
            resp = self._fast(data, src, tcp)
            if tcp or resp is None:
                return resp  # RRL never limits TCP: its source is real
            limiter = self.rrl
            if limiter is None:
                return resp
            kind = self.kind
            if kind is None:
                return resp  # a valid server cookie (RFC 7873): source proven
            # The common case inline (a known network whose bucket is full:
            # it was last answered more than an interval ago); it saves the
            # call into the limiter, which does everything else.
            net = limiter.nets.get(src)
            if net:
                key = net ^ kind
                new = limiter.new
                tat = new.get(key)
                if tat is not None:
                    now = monotonic()
                    if tat <= now:
                        new[key] = now + limiter.interval
                        return resp
            action = limiter.check(src, kind)
            if action:
                return self._limited(data, src, resp, action)
            return resp
        except Exception:  # noqa: BLE001 — a garbage packet must never stop the server
            log.exception("internal error answering a query from %s", src)
            self.stats.dropped += 1
            return None

    def _fast(self, data: bytes, src: str, tcp: bool) -> bytes | None:
        n = len(data)
        # plain QUERY, QR=0, one question, no answer/authority records
        if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
            return self._slow(data, src, tcp)
        off = 12
        ln = data[12]
        while ln:
            if ln > 63:
                return self._slow(data, src, tcp)
            off += ln + 1
            if off >= n:
                return self._slow(data, src, tcp)
            ln = data[off]
        qend = off + 5
        if (
            qend > n
            or off > 266
            or data[off + 3 : qend] != b"\x00\x01"
            or data[off + 2] == 41
            and data[off + 1] == 0
        ):
            return self._slow(data, src, tcp)
        qtype = (data[off + 1] << 8) | data[off + 2]
        ar = data[11] | (data[10] << 8)
        ecs_opt = None
        cookie_at = 0  # offset of a COOKIE option (never 0: the header is there)
        if ar == 0:
            if qend != n:
                return self._slow(data, src, tcp)
            edns = False
            limit = 65535 if tcp else 512
        elif ar == 1:
            # OPT: root owner, type 41, version 0, options to the end of the packet
            if (
                n < qend + 11
                or data[qend : qend + 3] != b"\x00\x00\x29"
                or data[qend + 6] != 0
                or qend + 11 + ((data[qend + 9] << 8) | data[qend + 10]) != n
            ):
                return self._slow(data, src, tcp)
            edns = True
            payload = (data[qend + 3] << 8) | data[qend + 4]
            limit = (
                65535
                if tcp
                else (
                    wire.EDNS_PAYLOAD
                    if payload > wire.EDNS_PAYLOAD
                    else 512
                    if payload < 512
                    else payload
                )
            )
            o = qend + 11
            while o < n:
                if o + 4 > n:
                    return self._slow(data, src, tcp)
                olen = (data[o + 2] << 8) | data[o + 3]
                if data[o] == 0:
                    code = data[o + 1]
                    if code == 8:
                        if ecs_opt is not None or not _ecs_ok(data, o + 4, olen):
                            return self._slow(data, src, tcp)
                        ecs_opt = data[o : o + 4 + olen]
                    elif code == 10 and self.cookies is not None:
                        if cookie_at or not well_formed(olen):
                            return self._slow(data, src, tcp)  # FORMERR there
                        cookie_at = o
                o += 4 + olen
            if o != n:
                return self._slow(data, src, tcp)
        else:
            return self._slow(data, src, tcp)
        question = data[12:qend]
        key = (question[:-4].lower(), qtype)
        entry: Any = self.cache.new.get(key)  # _Body or _Geo; tested by class below
        if entry is None:
            entry = self._entry(key[0], qtype)
        stats = self.stats
        geo = entry.__class__ is not _Body
        kind = None
        if edns:
            if ecs_opt is not None:
                stats.ecs += 1
                ec = self.ecs_clients.new.get(ecs_opt)
                if ec is None or self.ecs_trusted is not None:
                    # (the cache holds options as trusted resolvers send them)
                    ec = self._ecs_client(ecs_opt, src)
                # ec: (info, profile, OPT scope 0, same with DO, OPT true scope, same w/ DO, scope)
                body = self._geo_body(entry, ec[0], ec[1]) if geo else entry
                opt = ec[(4 if geo else 2) + (data[qend + 7] >> 7)]
            else:
                body = self._geo_body(entry, *self._src_client(src)) if geo else entry
                opt = _OPT_DO if data[qend + 7] & 0x80 else _OPT_PLAIN
            if data[qend + 7] & 0x80 and self.signing:
                body = body.signed or self._signed(body)
            kind = body.kind
            if cookie_at:
                # RFC 7873 §5.2.3-5: answer with the client cookie and ours
                clen = (data[cookie_at + 2] << 8) | data[cookie_at + 3]
                verdict, copt = self.cookies.check(  # type: ignore[union-attr]
                    data[cookie_at + 4 : cookie_at + 4 + clen], src
                )
                stats.cookies[verdict] += 1
                opt = _with_option(opt, copt)
                if verdict == VALID:
                    kind = None
            resp = b"".join(
                (
                    data[:2],
                    body.heads_opt[(data[2] & 1) | ((data[3] >> 3) & 2)],
                    question,
                    body.body,
                    opt,
                )
            )
        else:
            body = self._geo_body(entry, *self._src_client(src)) if geo else entry
            kind = body.kind
            opt = b""
            resp = b"".join(
                (
                    data[:2],
                    body.heads[(data[2] & 1) | ((data[3] >> 3) & 2)],
                    question,
                    body.body,
                )
            )
        if len(resp) > limit:
            # The answer is chosen (and counted); only its size needs the full path.
            return self._oversize(data, src, tcp, body, geo)
        self.kind = kind
        qd = stats.qtypes[tcp][":" in src]
        qd[qtype] = qd.get(qtype, 0) + 1
        rc = stats.rcodes
        rc[body.rcode] = rc.get(body.rcode, 0) + 1
        if self.query_log:
            log.info(
                "%s %s %s %s",
                src,
                wire.TYPE_NAMES.get(qtype, qtype),
                question[:-4].decode("ascii", "replace"),
                wire.RCODE_NAMES.get(body.rcode),
            )
        elif self._hot is not None and not tcp and not cookie_at and not body.rcode:
            # NOERROR only: a flood of random names (NXDOMAIN, REFUSED) must not
            # evict the answers real resolvers repeat
            self._hot_put(data, src, qend, entry, geo, ecs_opt, edns, opt, qtype, limit)
        return resp

    # ------------------------------------------------------------------ hot table

    @property
    def hot(self) -> hot_mod.Table | None:
        """The table the batched UDP drain answers repeats from (geodns.dns.hot),
        set by the server for its UDP path; None elsewhere (asyncio endpoint,
        TCP-only use, tests of this class)."""
        return self._hot.table if self._hot is not None else None

    @hot.setter
    def hot(self, table: hot_mod.Table | None) -> None:
        self._hot = hot_mod.Registry(table, self.stats) if table is not None else None

    def sync_hot(self) -> None:
        """Fold what the hot table answered into Stats (before they are read,
        and when this generation is swapped out)."""
        if self._hot is not None:
            self._hot.sync()

    def _hot_put(
        self,
        data: bytes,
        src: str,
        qend: int,
        entry: Any,
        geo: bool,
        ecs_opt: bytes | None,
        edns: bool,
        opt: bytes,
        qtype: int,
        limit: int,
    ) -> None:
        """Register the answer just made on the fast path with the hot table, so
        that the same query again is answered by the UDP drain without a call
        into Python. A steered rotation goes in whole, once every variant is
        made: the table rotates through them as `_Cycle` does."""
        assert self._hot is not None
        signed = edns and bool(data[qend + 7] & 0x80) and self.signing
        if geo:
            if ecs_opt is not None:
                # as _fast found it (with a trust list, per source)
                ec = self.ecs_clients.new.get(ecs_opt) if self.ecs_trusted is None else None
                prof = (ec or self._ecs_client(ecs_opt, src))[1]
            else:
                prof = self._src_client(src)[1]
            cyc = entry.profiles.get(prof)
            if cyc is None:
                return
            variants = cyc.hot.get((edns, signed))
            if variants is None:
                # On the query path, only a rotation whose every variant was
                # already made (and signed, for DO=1) is registered: encoding
                # and signing them all at a first query would turn the misses
                # after a swap into a burst that overflows the socket. A
                # rotation is complete after as many queries as it has
                # variants; warming (`_warm_hot`) makes them all at once.
                if not self._hot_eager and any(
                    b is None or (signed and b.signed is None) for b in cyc.bodies
                ):
                    return
                variants = cyc.hot[(edns, signed)] = tuple(
                    self._hot_variant(cyc.next_at(i), edns, signed) for i in range(len(cyc.bodies))
                )
            start, tier, kind = cyc.i, cyc.tier_key, cyc.bodies[0].kind
            # the source decides the client (no ECS, or ECS the trust list
            # judges per source, or SOURCE PREFIX-LENGTH 0)
            by_source = ecs_opt is None or self.ecs_trusted is not None or not ecs_opt[6]
        else:
            variants = (self._hot_variant(entry, edns, signed),)
            start, tier, kind, by_source = 0, None, entry.kind, False
        self._hot.put(
            data,
            src,
            variants,
            opt,
            (qtype, tier, ecs_opt is not None),
            # what the rate limiter buckets this answer under (None: no limiter)
            kind if self.rrl is not None else None,
            start,
            by_source,
            limit,
        )

    def _hot_variant(self, body: _Body, edns: bool, signed: bool) -> bytes:
        if signed:
            body = body.signed or self._signed(body)
        if edns:
            v = body.hot_opt
            if not v:
                v = body.hot_opt = body.heads_opt[0] + body.body
        else:
            v = body.hot_plain
            if not v:
                v = body.hot_plain = body.heads[0] + body.body
        return v

    def _ecs_client(self, ecs_opt: bytes, src: str) -> tuple[Any, ...]:
        """Everything a query with this exact ECS option needs, computed once:
        the client's GeoIP profile and the OPT records to send back (scope 0
        for answers that do not depend on the client, the true scope for
        steered ones; without and with the DO bit)."""
        trusted = self.ecs_trusted is None or self.ecs_trusted(src)
        if trusted:
            ec = self.ecs_clients.get(ecs_opt)
            if ec is not None:
                return ec
        geodb = self.geodb
        by_source = geodb is not None and (not ecs_opt[6] or not trusted)
        if geodb is None or by_source:
            # No GeoIP, SOURCE PREFIX-LENGTH 0 (RFC 7871 §7.1.2), or a resolver we
            # do not take ECS from: steer by the packet source, claim scope 0.
            (info, prof), scope = self._src_client(src), 0
        else:
            fam = ecs_opt[5]
            addr = ecs_opt[8:]
            info = geodb.lookup(addr + b"\x00" * ((4 if fam == 1 else 16) - len(addr)))
            prof, scope = profile(info), info.prefix
        echo0 = ecs_opt[:7] + b"\x00" + ecs_opt[8:]
        echo = ecs_opt[:7] + bytes((scope,)) + ecs_opt[8:]
        ec = (
            info,
            prof,
            wire.opt_record(False, echo0),
            wire.opt_record(True, echo0),
            wire.opt_record(False, echo),
            wire.opt_record(True, echo),
            scope,
        )
        if by_source:
            return ec  # depends on the packet source too: never cache it by option alone
        self.ecs_clients.put(ecs_opt, ec)
        return ec

    def _src_client(self, src: str) -> tuple[GeoInfo, Profile]:
        """GeoIP of the packet source (when there is no usable ECS)."""
        geodb = self.geodb
        if geodb is None:
            return _UNKNOWN
        found = self.src_geo.get(src)
        if found is None:
            info = geodb.lookup(_packed(src))
            found = (info, profile(info))
            self.src_geo.put(src, found)
        return found

    def _geo_body(self, entry: _Geo, client: GeoInfo, prof: Profile) -> _Body:
        cyc = entry.profiles.get(prof)
        if cyc is None:
            cyc = self._cycle(entry.qname, entry.res, client)
            if len(entry.profiles) > CACHE_MAX // 8:
                entry.profiles.clear()
            entry.profiles[prof] = cyc
        tiers = self.stats.tiers
        t = cyc.tier_key
        tiers[t] = tiers.get(t, 0) + 1
        return cyc.next()

    # ------------------------------------------------------------------ building

    def _entry(self, qname: bytes, qtype: int) -> _Body | _Geo:
        found = self.cache.promote((qname, qtype))
        if found is not None:
            return found
        res = self.resolve(qname, qtype)
        entry: _Body | _Geo
        if res.steer is not None:
            entry = _Geo(qname, res)
        else:
            entry = _encode_for(
                self.signing,
                qname,
                qtype,
                res,
                res.answer,
                res.authority,
                res.additional,
                self._zone(qname),
            )
        self.cache.put((qname, qtype), entry)
        return entry

    def _zone(self, qname: bytes) -> bytes:
        """The apex of the zone `qname` is in (lower wire), b"" if none: the
        RRL kind of NXDOMAIN and error answers."""
        cz = self.tables.find_zone(qname)
        return cz.apex if cz is not None else b""

    def resolve(self, qname: bytes, qtype: int) -> Resolution:
        if qtype in (wire.AXFR, wire.IXFR):
            return Resolution(wire.REFUSED, False, [], [], [])  # no zone transfers
        if qtype in (wire.MAILA, wire.MAILB):
            return Resolution(wire.NOTIMP, False, [], [], [])
        res = self.tables.lookup(qname, qtype)
        if res is None:
            return Resolution(wire.REFUSED, False, [], [], [])
        return res

    def steer(self, res: Resolution, client: GeoInfo) -> SteerResult:
        """Ranking for (steered name, family, client profile), shared by every
        query name that leads to it (dl, www → dl, downloads → www → dl)."""
        st = res.steer
        assert st is not None
        key = (st, res.steer_family, *profile(client))
        sr = self.steer_cache.get(key)
        if sr is None:
            if len(self.steer_cache) > CACHE_MAX // 8:
                self.steer_cache.clear()
            sr = self.steer_cache[key] = self.steering.steer(st, res.steer_family, client)
        return sr

    def warm_from(
        self, old: Responder, limit: int = 50_000, hot_seconds: float = HOT_WARM_SECONDS
    ) -> Iterator[int]:
        """Build this generation's answers for the old one's busiest keys before
        it goes live, so a swap does not turn every query into a cache miss.
        A generator: the server runs it in slices between queries."""
        # Rankings stay valid when their pool, its down addresses and the GeoIP
        # data are unchanged — true for every pool on a zone-only edit.
        if old.geo_generation == self.geo_generation:
            same = self.steering.unchanged_pools(old.steering)
            for key, sr in list(old.steer_cache.items())[-limit:]:
                if key[0].pool in same:
                    self.steer_cache[key] = sr
        done = 0
        for key, entry in old.cache.items()[-limit:]:
            if key in self.cache:
                continue
            new = self._entry(*key)
            done += 1
            yield done
            # DNSSEC: answers that were asked for with DO=1 get their signed form
            # now, off the query path (after a re-sign every signature is new)
            if isinstance(entry, _Body) and entry.signed is not None and isinstance(new, _Body):
                self._signed(new)
            if isinstance(entry, _Geo) and isinstance(new, _Geo):
                for prof in list(entry.profiles)[-limit:]:
                    client = GeoInfo(prof[0], prof[1], prof[2], prof[3], 0)
                    cyc = new.profiles[prof] = self._cycle(new.qname, new.res, client)
                    # carry on where the old rotation was (a swap must not
                    # restart every rotation), encoding that variant now
                    was = entry.profiles[prof]
                    cyc.prime(was.i)
                    if self.signing and any(b is not None and b.signed for b in was.bodies):
                        self._signed(cyc.bodies[cyc.i])  # type: ignore[arg-type]
                    done += 1
                    yield done
        if old.geo_generation == self.geo_generation:
            for src, found in old.src_geo.items()[-limit:]:
                self.src_geo.put(src, found)
        if self._hot is not None and old._hot is not None:
            yield from self._warm_hot(old._hot.table.keys()[:limit], done, hot_seconds)
        yield done

    def retire(self, slice_s: float = 0.001) -> Iterator[None]:
        """Free this generation a slice at a time (a generator: the server runs
        it between queries once the generation is swapped out). Dropped at
        once, a warm generation's million objects are deallocated in one go,
        which stalls the loop long enough for the socket to overflow."""
        if self._hot is not None:
            self._hot.table.clear()
        self.steer_cache = {}
        for cache in (self.cache, self.src_geo, self.ecs_clients):
            for d in (cache.old, cache.new):
                while d:
                    end = monotonic() + slice_s
                    while True:  # at least one chunk per slice: always progress
                        for _ in range(min(64, len(d))):
                            d.popitem()
                        if not d or monotonic() >= end:
                            break
                    yield

    def _warm_hot(self, keys: list[bytes], done: int, seconds: float) -> Iterator[int]:
        """Answer what the old generation's hot table held, so that this one's
        table has it too when it goes live (a health change must not send
        every repeated query through Python once). Not queries: counted
        nowhere; answered as this generation decides, registered only if it
        would register them itself. For `seconds` at most: under load the
        slices between query bursts stretch this work, and a reload should
        not wait for it — what is left registers on its first query."""
        real, scratch = self.stats, Stats()
        end = monotonic() + seconds
        for key in keys:
            if monotonic() > end:
                return
            q = hot_mod.unpack(key)
            if q is None:
                continue
            data, src = q
            self.stats, self._hot_eager = scratch, True
            try:
                # any source for an answer that does not depend on it
                self._fast(data, src or "127.0.0.1", False)
            except Exception:  # noqa: BLE001 — as in handle(): a reload must go on
                log.exception("warming the hot table: a query failed")
            finally:
                self.stats, self._hot_eager = real, False
            done += 1
            yield done

    def _cycle(self, qname: bytes, res: Resolution, client: GeoInfo) -> _Cycle:
        sr = self.steer(res, client)
        st = res.steer
        assert st is not None
        zone = self._zone(qname)
        if sr.rcode != wire.NOERROR:
            body = _encode(b"", Resolution(sr.rcode, False, [], [], []), [], [], [], zone)
            return _Cycle([body], st.pool, sr.case)
        if not sr.variants:  # NODATA: the pool has no address of this family
            assert res.steer_negative is not None
            body = _encode_for(
                self.signing, qname, 0, res, res.answer, [res.steer_negative], [], zone
            )
            return _Cycle([body], st.pool, sr.case)
        rtype = wire.AAAA if res.steer_family == 6 else wire.A
        variants = sr.variants
        # not self._enc: a closure over `self` would make every cycle a
        # reference cycle back to this responder, which then outlives its
        # generation (swap_in freezes the GC's view of the heap)
        signing = self.signing

        def make(i: int) -> _Body:
            rrs = [
                (res.steer_owner, wire.rr_tail(rtype, st.ttl, r.candidate.address.packed))
                for r in variants[i]
            ]
            return _encode_for(
                signing, qname, 0, res, res.answer + rrs, res.authority, res.additional, zone
            )

        tier = tier_name(variants[0][0]) if sr.case == "nearest" else sr.case
        return _Cycle([None] * len(variants), st.pool, tier, make)

    def _signed(self, body: _Body) -> _Body:
        """The DO=1 form of a DO=0 body, made once (geodns.dnssec.sections):
        RRSIGs precomputed with the tables, or signed now and cached. It keeps
        the RRL kind of the unsigned answer (a black-lie NODATA is still an
        NXDOMAIN to the rate limiter)."""
        src = body.sign_src
        if src is None:
            return body  # already a signed body, or nothing of ours to sign
        qname, qtype, rcode, aa, answer, authority, additional = src
        s = sign_sections(self.tables, qname, qtype, rcode, aa, answer, authority, additional)
        if s is None:  # no signed zone involved: the same bytes (a copy, not a cycle)
            out = replace(body, signed=None, sign_src=None)
        else:
            out = _encode(
                qname, Resolution(s.rcode, aa, [], [], []), s.answer, s.authority, s.additional
            )
            out.ar_sigs = s.ar_sigs
            out.kind = body.kind
        body.signed = out
        body.sign_src = None
        return out

    # ------------------------------------------------------------------ slow path

    def _slow(self, data: bytes, src: str, tcp: bool) -> bytes | None:
        stats = self.stats
        try:
            q = wire.parse_query(data, empty_ok=self.cookies is not None)
        except wire.BadVersion as e:
            # RFC 6891 §6.1.3: BADVERS, with our version (0) in the OPT
            return self._error(data, wire.BADVERS, tcp, edns_do=e.edns.do)
        except wire.WireError as e:
            if e.rcode < 0:
                stats.dropped += 1
                return None
            return self._error(data, e.rcode, tcp, edns_do=e.opt_do)
        verdict, copt = -1, b""
        edns = q.edns
        if edns is not None and edns.cookie is not None and self.cookies is not None:
            if edns.cookie_dup or not well_formed(len(edns.cookie)):
                # RFC 7873 §5.2.2: a malformed COOKIE option is FORMERR
                stats.cookies[3] += 1
                return self._error(data, wire.FORMERR, tcp, edns_do=edns.do)
            verdict, copt = self.cookies.check(edns.cookie, src)
            stats.cookies[verdict] += 1
        if not q.question:
            if not copt:
                return self._error(data, wire.FORMERR, tcp, edns_do=edns.do if edns else None)
            return self._cookie_only(q, verdict, copt)
        qd = stats.qtypes[tcp][":" in src]
        qd[q.qtype] = qd.get(q.qtype, 0) + 1
        if q.qclass != wire.CLASS_IN:
            resp = self._finish(q, _plain(wire.REFUSED), 0, tcp, copt)
        else:
            key = (q.qname_lower, q.qtype)
            entry = self.cache.new.get(key) or self._entry(q.qname_lower, q.qtype)
            if isinstance(entry, _Geo):
                ecs = edns.ecs if edns else None
                if ecs is not None:
                    stats.ecs += 1
                    ec = self._ecs_client(ecs.echo(0), src)
                    info, prof, scope = ec[0], ec[1], ec[6]
                else:
                    (info, prof), scope = self._src_client(src), 0
                resp = self._finish(q, self._geo_body(entry, info, prof), scope, tcp, copt)
            else:
                if edns is not None and edns.ecs is not None:
                    stats.ecs += 1
                resp = self._finish(q, entry, 0, tcp, copt)
        if verdict == VALID:
            self.kind = None
        return resp

    def _cookie_only(self, q: wire.Query, verdict: int, copt: bytes) -> bytes:
        """RFC 7873 §5.4: a query without a question asks for a server cookie:
        NOERROR with our cookie, or BADCOOKIE if the one it brought is not ours."""
        assert q.edns is not None
        rcode = wire.NOERROR if verdict != 2 else BADCOOKIE  # 2: invalid server cookie
        self.stats.rcodes[rcode] = self.stats.rcodes.get(rcode, 0) + 1
        self.kind = None if verdict == VALID else rrl_mod.ERROR_KIND
        flags = 0x8000 | (q.flags & 0x0110) | (rcode & 0xF)
        opt = wire.opt_record(q.edns.do, copt, ext_rcode=rcode >> 4)
        return struct.pack("!HHHHHH", q.id, flags, 0, 0, 0, 1) + opt

    def _limited(self, data: bytes, src: str, resp: bytes, action: int) -> bytes | None:
        """A UDP response over its RRL rate: dropped, or (every slip-th) sent as
        a small truncated answer so that a real client retries over TCP. To a
        client that sent a cookie the small answer is BADCOOKIE with our server
        cookie instead (RFC 7873 §5.2.3 (2)): it retries over UDP with proof."""
        stats = self.stats
        if action == rrl_mod.DROP:
            stats.rrl_dropped += 1
            return None
        stats.rrl_slipped += 1
        try:
            q = wire.parse_query(data)
        except wire.WireError:
            # an error response, no bigger than the query it refuses: TC=1 on it
            return resp[:2] + bytes((resp[2] | 0x02,)) + resp[3:]
        flags = ((resp[2] << 8) | resp[3]) | 0x0200
        opt = b""
        edns = q.edns
        if edns is not None:
            opts = edns.ecs.echo(0) if edns.ecs is not None else b""
            cookie = edns.cookie
            if (
                cookie is not None
                and self.cookies is not None
                and not edns.cookie_dup
                and well_formed(len(cookie))
            ):
                _, copt = self.cookies.check(cookie, src)
                flags = 0x8000 | (q.flags & 0x0110) | (BADCOOKIE & 0xF)
                opt = wire.opt_record(edns.do, opts + copt, ext_rcode=BADCOOKIE >> 4)
            else:
                opt = wire.opt_record(edns.do, opts)
        return struct.pack("!HHHHHH", q.id, flags, 1, 0, 0, 1 if opt else 0) + q.question + opt

    def _oversize(self, data: bytes, src: str, tcp: bool, body: _Body, geo: bool) -> bytes | None:
        """A fast-path answer too big for this UDP query: the same answer, fitted
        (glue dropped, or TC=1) — without choosing or counting it again."""
        try:
            q = wire.parse_query(data)
        except wire.WireError:  # cannot happen after the fast checks; be exact anyway
            return self._slow(data, src, tcp)
        qd = self.stats.qtypes[tcp][":" in src]
        qd[q.qtype] = qd.get(q.qtype, 0) + 1
        edns = q.edns
        ecs = edns.ecs if edns else None
        scope = self._ecs_client(ecs.echo(0), src)[6] if geo and ecs is not None else 0
        verdict, copt = -1, b""
        if edns is not None and edns.cookie is not None and self.cookies is not None:
            verdict, copt = self.cookies.check(edns.cookie, src)  # (counted by the fast path)
        resp = self._finish(q, body, scope, tcp, copt)
        if verdict == VALID:
            self.kind = None
        return resp

    def _finish(
        self, q: wire.Query, body: _Body, scope: int, tcp: bool, cookie: bytes = b""
    ) -> bytes:
        """The response for a parsed query; `cookie` is the COOKIE option to
        send (RFC 7873: with the client cookie the query had), or b"" for none."""
        edns = q.edns
        if edns is not None and edns.do and self.signing:
            body = body.signed or self._signed(body)
        self.kind = body.kind
        limit = 65535 if tcp else (min(edns.payload, wire.EDNS_PAYLOAD) if edns else 512)
        opt = b""
        if edns is not None:
            opts = edns.ecs.echo(scope) if edns.ecs is not None else b""
            opt = wire.opt_record(edns.do, opts + cookie)
        flags = body.flags | (q.flags & 0x0110)  # copy RD and CD
        counts = body.counts_opt if opt else body.counts
        resp = struct.pack("!HH", q.id, flags) + b"\x00\x01" + counts + q.question + body.body + opt
        if len(resp) > limit:
            resp = self._fit(q, body, flags, opt, limit)
        self.stats.rcodes[body.rcode] = self.stats.rcodes.get(body.rcode, 0) + 1
        if self.query_log:
            log.info(
                "%s %s %s",
                wire.TYPE_NAMES.get(q.qtype, q.qtype),
                q.qname.decode("ascii", "replace"),
                wire.RCODE_NAMES.get(body.rcode),
            )
        return resp

    def _fit(self, q: wire.Query, body: _Body, flags: int, opt: bytes, limit: int) -> bytes:
        """Too big for UDP: drop the additional section's RRSIGs, then the
        whole additional section, if that is enough (extra records for an answer
        are optional; signatures in the answer and authority never are), else
        TC=1 (RFC 2181 §9, RFC 4035 §3.1.1). A referral's additional section is
        its glue, which RFC 9471 requires: a referral whose glue does not fit
        is always TC=1."""
        an, ns, ar = struct.unpack("!HHH", body.counts)
        referral = an == 0 and ns > 0 and not body.flags & 0x0400 and body.rcode == 0
        head = struct.pack("!HH", q.id, flags) + b"\x00\x01"
        arc = 1 if opt else 0
        b = body.body
        # keep AN+NS and the first `keep` additional records, cut the rest
        for keep in (ar - body.ar_sigs, 0) if body.ar_sigs else (0,):
            off = 0
            try:
                for _ in range(an + ns + keep):
                    off = wire.skip_rr(b, off)
            except wire.WireError:
                break
            short = head + struct.pack("!HHH", an, ns, keep + arc) + q.question + b[:off] + opt
            if len(short) <= limit and not referral:
                return short
        self.stats.truncated += 1
        return (
            struct.pack("!HH", q.id, flags | 0x0200)
            + b"\x00\x01"
            + struct.pack("!HHH", 0, 0, arc)
            + q.question
            + opt
        )

    def _error(
        self, data: bytes, rcode: int, tcp: bool, edns_do: bool | None = None
    ) -> bytes | None:
        """FORMERR/NOTIMP/BADVERS: echo ID, opcode, RD; the question only if it parses."""
        self.stats.rcodes[rcode] = self.stats.rcodes.get(rcode, 0) + 1
        self.kind = rrl_mod.ERROR_KIND
        if len(data) < 12:
            return None
        qid, flags = struct.unpack_from("!HH", data, 0)
        out_flags = 0x8000 | (flags & 0x7900) | (rcode & 0xF)  # QR, opcode, RD
        question = b""
        try:
            if struct.unpack_from("!H", data, 4)[0] == 1:
                _, off = wire.read_name(data, 12)
                if off + 4 <= len(data):
                    question = data[12 : off + 4]
                    ztype, zclass = struct.unpack_from("!HH", data, off)
                    if (flags >> 11) & 0xF == 5 and (ztype != wire.SOA or zclass in (254, 255)):
                        # RFC 2136 §3.1.1: an UPDATE's one "question" is its zone, of
                        # type SOA and a real class; echoing anything else makes
                        # the answer a malformed UPDATE message (dnspython refuses it)
                        question = b""
        except wire.WireError:
            question = b""
        opt = b""
        if edns_do is not None:
            opt = wire.opt_record(edns_do, ext_rcode=rcode >> 4)
        return (
            struct.pack("!HHHHHH", qid, out_flags, 1 if question else 0, 0, 0, 1 if opt else 0)
            + question
            + opt
        )


# ----------------------------------------------------------------------------- helpers


def _with_option(opt: bytes, option: bytes) -> bytes:
    """An OPT record with one more option at its end (RDLEN grows with it)."""
    rdlen = ((opt[9] << 8) | opt[10]) + len(option)
    return opt[:9] + bytes((rdlen >> 8, rdlen & 0xFF)) + opt[11:] + option


def _plain(rcode: int) -> _Body:
    return _Body(0x8000 | rcode, b"\x00\x00" * 3, b"\x00\x00\x00\x00\x00\x01", b"", rcode)


def _encode_for(
    signing: bool,
    qname: bytes,
    qtype: int,
    res: Resolution,
    answer: list[RR],
    authority: list[RR],
    additional: list[RR],
    zone: bytes,
) -> _Body:
    """`_encode`, keeping what a DO=1 query needs to sign it when a zone is signed."""
    body = _encode(qname, res, answer, authority, additional, zone)
    if signing:
        body.sign_src = (qname, qtype, res.rcode, res.aa, answer, authority, additional)
    return body


def _encode(
    qname: bytes,
    res: Resolution,
    answer: list[RR],
    authority: list[RR],
    additional: list[RR],
    zone: bytes = b"",
) -> _Body:
    """Encode sections to follow a question for `qname` (offsets assume the
    question starts at 12; owner names compress against it and each other)."""
    comp = wire.NameCompressor()
    if qname:
        comp.add(qname, 12)
    pos = 12 + len(qname) + 4
    parts = []
    for owner, tail in (*answer, *authority, *additional):
        enc = comp.encode(owner, pos)
        parts.append(enc)
        parts.append(tail)
        pos += len(enc) + len(tail)
    flags = 0x8000 | (0x0400 if res.aa else 0) | res.rcode
    counts = struct.pack("!HHH", len(answer), len(authority), len(additional))
    counts_opt = struct.pack("!HHH", len(answer), len(authority), len(additional) + 1)
    kind = _kind(qname, res, answer, authority, zone)
    return _Body(flags, counts, counts_opt, b"".join(parts), res.rcode, kind)


def _kind(qname: bytes, res: Resolution, answer: list[RR], authority: list[RR], zone: bytes) -> int:
    """The RRL response kind (BIND/Knot categories): positive answers by the
    queried name, referrals by the delegation point, NODATA by name,
    NXDOMAIN and errors by zone."""
    if res.rcode == wire.NOERROR:
        if answer:
            return rrl_mod.kind_key(rrl_mod.ANSWER, qname)
        if authority and not res.aa and authority[0][1][:2] == b"\x00\x02":  # NS: a referral
            return rrl_mod.kind_key(rrl_mod.REFERRAL, authority[0][0])
        return rrl_mod.kind_key(rrl_mod.NODATA, qname)
    if res.rcode == wire.NXDOMAIN:
        if authority and authority[0][1][:2] == b"\x00\x06":  # the SOA of the zone that said so
            zone = authority[0][0]
        return rrl_mod.kind_key(rrl_mod.NXDOMAIN, zone)
    return rrl_mod.kind_key(rrl_mod.ERROR, zone)


def _ecs_ok(data: bytes, o: int, olen: int) -> bool:
    """The common well-formed ECS shape; anything else goes to the full parser."""
    if olen < 4:
        return False
    fam = (data[o] << 8) | data[o + 1]
    src = data[o + 2]
    if data[o + 3] != 0 or (fam != 1 and fam != 2) or src > (32 if fam == 1 else 128):
        return False
    if olen - 4 != (src + 7) >> 3:
        return False
    return not (src & 7 and data[o + olen - 1] & (0xFF >> (src & 7)))


def _packed(src: str) -> bytes:
    try:
        return socket.inet_pton(
            socket.AF_INET6 if ":" in src else socket.AF_INET, src.split("%")[0]
        )
    except OSError:
        return ipaddress.ip_address(src).packed
