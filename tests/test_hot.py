"""Hot answers (geodns.dns.hot): the C table (`_udpbatch.Hot`) and its
pure-Python twin (`PyHot`) take the same registrations and give the same
replies and counters; a responder's registrations replay only replies its
Python path would have sent, with the same counters; and a datagram the
table answers never reaches the handler on either engine."""

from __future__ import annotations

import gc
import random
import socket
import struct
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from geodns.config.loader import load_config
from geodns.dns import hot, rrl, udpbatch
from geodns.dns.answer import Responder
from geodns.dns.cookies import Cookies
from geodns.dns.stats import Stats
from geodns.dns.zone import Tables
from geodns.steering.geo import GeoDB
from geodns.steering.steer import Steering

from .conftest import TEST_ZONES
from .test_robustness import mutate, valid_queries
from .test_udpbatch import ENGINES, native_or_skip
from .util import query

SEED = 20261130
SRC = "192.0.2.10"


@pytest.fixture(params=ENGINES)
def path(request: pytest.FixtureRequest) -> str:
    if request.param == "native":
        native_or_skip()
    return str(request.param)


def table(path: str, capacity: int = 64, limiter: rrl.RateLimiter | None = None) -> hot.Table:
    t = hot.new_table(path, limiter, capacity)
    assert t is not None
    return t


def variant(ip: str, aa: bool = True) -> bytes:
    """Flags and counts (QR, AA; one question, one answer), then an A record
    whose owner points at the question."""
    flags = 0x8400 if aa else 0x8000
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    return struct.pack("!HHHHH", flags, 1, 1, 0, 0) + rr


def wire(name: str = "dl.example.org", qid: int = 0x1234, rd: bool = True, **kw: object) -> bytes:
    q = query(name, rd=rd, **kw)  # type: ignore[arg-type]
    q.id = qid
    return q.to_wire()


def key(data: bytes, src: str | None = None) -> bytes:
    k = hot.key_of(data)
    assert k is not None
    return k[0] + (hot.source_suffix(src) if src else b"")


# ----------------------------------------------------------------------------- the table


def test_a_hit_copies_the_id_rd_cd_and_the_question_as_sent(path: str) -> None:
    t = table(path)
    t.put(key(wire()), (variant("198.18.0.1"),), b"")
    q = bytearray(wire("DL.Example.ORG", qid=0xBEEF, rd=False))
    q[3] |= 0x10  # CD
    r = t.answer(bytes(q), SRC)
    assert r is not None
    m = dns.message.from_wire(r)
    assert m.id == 0xBEEF
    assert m.flags & dns.flags.QR and m.flags & dns.flags.AA and m.flags & dns.flags.CD
    assert not m.flags & dns.flags.RD
    assert r[12 : 12 + 16] == bytes(q[12:28])  # the name's case as sent
    assert [str(rr) for rr in m.answer[0]] == ["198.18.0.1"]
    assert (t.hits, t.misses) == (1, 0)


def test_variants_rotate_from_the_start_given(path: str) -> None:
    t = table(path)
    ips = ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    t.put(key(wire()), tuple(variant(ip) for ip in ips), b"", start=1)
    got = []
    for i in range(6):
        r = t.answer(wire(qid=i), SRC)
        assert r is not None
        got.append(str(dns.message.from_wire(r).answer[0][0]))
    assert got == ips[1:] + ips + ips[:1]


def test_anything_not_byte_equal_after_the_id_misses(path: str) -> None:
    t = table(path)
    t.put(key(wire(ecs="192.0.2.0/24")), (variant("198.18.0.1"),), b"")
    assert t.answer(wire(ecs="192.0.2.0/24", qid=7), SRC) is not None
    for other in [
        wire(ecs="192.0.3.0/24"),  # another client subnet
        wire(ecs="192.0.2.0/24", payload=4096),  # another payload size
        wire(ecs="192.0.2.0/24", rdtype="AAAA"),
        wire("dl2.example.org", ecs="192.0.2.0/24"),
        wire(),  # no EDNS
        wire(ecs="192.0.2.0/24")[:-1],  # truncated
        wire(ecs="192.0.2.0/24") + b"\x00",  # trailing garbage
        b"",
        b"\x00" * 11,
        wire(ecs="192.0.2.0/24") + b"\x00" * hot.MAX_QUERY,  # too long to be hot
    ]:
        assert t.answer(other, SRC) is None, other
    # a compression pointer in the question: never hot
    q = bytearray(wire())
    q[12] = 0xC0
    assert t.answer(bytes(q), SRC) is None


def test_answers_by_source_need_the_source(path: str) -> None:
    t = table(path)
    t.put(key(wire(), "192.0.2.10"), (variant("198.18.0.1"),), b"")
    t.put(key(wire(), "2001:db8::10"), (variant("198.18.0.6"),), b"")
    assert t.answer(wire(), "192.0.2.11") is None
    assert t.answer(wire(), "2001:db8::11") is None
    r4, r6 = t.answer(wire(), "192.0.2.10"), t.answer(wire(), "2001:db8::10")
    assert r4 is not None and r6 is not None
    assert str(dns.message.from_wire(r4).answer[0][0]) == "198.18.0.1"
    assert str(dns.message.from_wire(r6).answer[0][0]) == "198.18.0.6"
    assert sorted(t.take()) == [(0, 1, 1)]


def test_the_opt_record_follows_the_sections(path: str) -> None:
    t = table(path)
    q = wire(ecs="192.0.2.0/24")
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    v = bytearray(variant("198.18.0.1"))
    v[9] = 1  # ARCOUNT: the OPT record
    t.put(key(q), (bytes(v),), opt)
    r = t.answer(q, SRC)
    assert r is not None and r.endswith(opt)
    assert dns.message.from_wire(r).edns == 0


def test_counters_by_stat_and_family_are_taken_once(path: str) -> None:
    t = table(path)
    t.put(key(wire()), (variant("198.18.0.1"),), b"", stat=3)
    t.put(key(wire(rdtype="AAAA")), (variant("198.18.0.1"),), b"", stat=1000)
    for src in ["192.0.2.1", "192.0.2.2", "2001:db8::1"]:
        assert t.answer(wire(), src) is not None
    assert t.answer(wire(rdtype="AAAA"), "2001:db8::1") is not None
    assert sorted(t.take()) == [(3, 2, 1), (1000, 0, 1)]
    assert t.take() == []


def test_a_full_set_replaces_round_robin(path: str) -> None:
    t = table(path, capacity=4)  # one set of four ways
    names = [f"n{i}.example.org" for i in range(6)]
    for n in names:
        t.put(key(wire(n)), (variant("198.18.0.1"),), b"")
    assert len(t) == 4 and t.evicted == 2
    held = [n for n in names if t.answer(wire(n), SRC) is not None]
    assert held == names[2:]  # ways 0 and 1 went first
    t.put(key(wire(names[3])), (variant("198.18.0.9"),), b"")  # a re-put replaces in place
    assert len(t) == 4 and t.evicted == 2
    t.clear()
    assert len(t) == 0 and t.answer(wire(names[3]), SRC) is None


def test_bad_registrations_are_errors(path: str) -> None:
    t = table(path)
    k, v = key(wire()), variant("198.18.0.1")
    for args, kwargs in [
        ((b"short", (v,), b""), {}),
        ((k + b"\x00" * 600, (v,), b""), {}),
        ((k, (), b""), {}),
        ((k, (b"123456789",), b""), {}),
        ((k, (v * 500,), b""), {}),
        ((k, (v,), b""), {"stat": -1}),
        ((k, (v,), b""), {"stat": hot.MAX_STATS}),
    ]:
        with pytest.raises(ValueError):
            t.put(*args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        t.put(k, [v], b"")  # type: ignore[arg-type]
    assert len(t) == 0
    with pytest.raises(ValueError):
        hot.new_table(path, None, 2)


def test_rrl_a_hit_only_when_the_limiter_would_send(path: str) -> None:
    """A new network or a client over the rate: the handler is asked (nothing
    changed); under the rate: sent, and the bucket charged as check() does."""
    lim = rrl.RateLimiter(rate=20)
    t = table(path, limiter=lim)
    kind = rrl.kind_key(rrl.ANSWER, b"\x02dl\x07example\x03org\x00")
    t.put(key(wire()), (variant("198.18.0.1"),), b"", kind=kind)
    assert t.answer(wire(), SRC) is None and t.deferred == 1  # the network is new
    assert lim.check(SRC, kind) == rrl.SEND
    bucket = lim.nets[SRC] ^ kind
    for i in range(19):  # the rest of one second's burst, each charged one interval
        tat = lim.new[bucket]
        assert t.answer(wire(), SRC) is not None, i
        assert lim.new[bucket] == pytest.approx(max(tat, time.monotonic()) + lim.interval)
    assert t.answer(wire(), SRC) is None and t.deferred == 2  # over the rate
    assert lim.check(SRC, kind) != rrl.SEND  # the handler limits it (and counts it)
    time.sleep(lim.interval * 1.5)  # a token back
    assert t.answer(wire(), SRC) is not None
    assert t.answer(wire(), SRC) is None and t.deferred == 3
    # an exempt network is never limited and needs no bucket
    ex = rrl.RateLimiter(rate=1, exempt=[rrl.ipaddress.ip_network("192.0.2.0/24")])
    t2 = table(path, limiter=ex)
    t2.put(key(wire()), (variant("198.18.0.1"),), b"", kind=kind)
    assert ex.check(SRC, kind) == rrl.SEND
    assert all(t2.answer(wire(), SRC) is not None for _ in range(50))
    # kind None: registered without a limit
    t.put(key(wire(rdtype="AAAA")), (variant("198.18.0.1"),), b"")
    assert all(t.answer(wire(rdtype="AAAA"), "192.0.2.99") is not None for _ in range(50))


def test_the_native_table_and_its_python_twin_agree_on_12000_packets() -> None:
    """Same registrations (from real queries), then valid, mutated and random
    packets from IPv4 and IPv6 sources: the same reply or None from both, and
    the same counters."""
    native_or_skip()
    rng = random.Random(SEED)
    c, p = hot.new_table("native", None, 64), hot.new_table("python", None, 64)
    assert c is not None and p is not None
    base = [q for q in valid_queries() if hot.key_of(q) is not None]
    for i, q in enumerate(base):
        vs = tuple(variant(f"198.18.{i}.{j}") for j in range(1 + i % 3))
        for t in (c, p):
            t.put(key(q), vs, b"" if i % 2 else b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")
            t.put(key(q, "2001:db8::7"), vs[:1], b"", stat=i)
    srcs = ["192.0.2.1", "2001:db8::7", "2001:db8::8"]
    for n in range(12_000):
        k = n % 4
        q = rng.choice(base)
        if k == 1:
            q = mutate(rng, q)
        elif k == 2:
            q = rng.randbytes(rng.randrange(0, 600))
        elif k == 3:  # the same query in another case, ID and flags
            b = bytearray(q)
            b[0:4] = rng.randbytes(4)
            for j in range(13, min(len(b), 30)):
                if 97 <= b[j] <= 122 and rng.random() < 0.5:
                    b[j] -= 32
            q = bytes(b)
        src = rng.choice(srcs)
        assert c.answer(q, src) == p.answer(q, src), q.hex()
    assert sorted(c.take()) == sorted(p.take())
    assert (c.hits, c.misses) == (p.hits, p.misses) and c.hits > 2000


# ----------------------------------------------------------------------------- the responder


@pytest.fixture(scope="module")
def world(demo_geoip: tuple[Path, Path]) -> tuple[object, GeoDB]:
    return load_config(TEST_ZONES), GeoDB(*demo_geoip)


def responder(world: tuple[object, GeoDB], table_path: str | None) -> Responder:
    config, geodb = world
    r = Responder(Tables(config), Steering(config, geodb), geodb, Stats())  # type: ignore[arg-type]
    if table_path is not None:
        r.hot = hot.new_table(table_path, None, 4096)
    return r


def _replies(r: Responder, data: bytes, src: str, n: int) -> set[bytes]:
    out = set()
    for _ in range(n):
        a = r.handle(data, src)
        assert a is not None
        out.add(a)
    return out


QUERIES = [
    ("dl.example.org", "A", "192.0.2.0/24"),
    ("dl.example.org", "AAAA", "2001:db8:1::/48"),
    ("dl.example.org", "A", "0.0.0.0/0"),  # source prefix 0: by the packet's source
    ("dl.example.org", "A", None),  # no ECS: by the packet's source
    ("www.example.org", "A", "198.51.100.0/24"),  # CNAME into the steered name
    ("mail.example.org", "A", None),
    ("mail.example.org", "A", "192.0.2.0/24"),  # static with ECS: scope 0
    ("mail.example.org", "AAAA", None),  # NODATA
    ("example.org", "SOA", None),
]


def test_replayed_replies_are_ones_the_python_path_sends(
    path: str, world: tuple[object, GeoDB]
) -> None:
    cold = responder(world, None)
    warm = responder(world, path)
    assert warm.hot is not None
    for name, rdtype, ecs in QUERIES:
        for edns in [None, 0] if ecs is None else [0]:
            for src in ["192.0.2.10", "2001:db8::10"]:
                data = wire(name, rdtype=rdtype, ecs=ecs, edns=edns)
                possible = _replies(cold, data, src, 24)  # every variant of a rotation
                # the Python path, which registers the rotation once it has
                # made every variant (as many queries as there are variants)
                firsts = {warm.handle(data, src) for _ in range(24)}
                assert firsts == possible
                again = [warm.hot.answer(data, src) for _ in range(24)]
                assert all(a is not None for a in again), (name, rdtype, ecs, edns, src)
                # the same rotation: every variant, and nothing else
                assert set(again) == possible, (name, rdtype, ecs, edns, src)


def test_counters_are_the_same_with_and_without_the_table(
    path: str, world: tuple[object, GeoDB]
) -> None:
    cold = responder(world, None)
    warm = responder(world, path)
    assert warm.hot is not None
    rng = random.Random(SEED)
    for _ in range(2000):
        name, rdtype, ecs = rng.choice([*QUERIES, ("nope.example.org", "A", None)])
        data = wire(name, rdtype=rdtype, ecs=ecs, qid=rng.randrange(65536))
        src = rng.choice(["192.0.2.10", "2001:db8::10", "198.51.100.7"])
        assert cold.handle(data, src) is not None
        if warm.hot.answer(data, src) is None:
            assert warm.handle(data, src) is not None
    assert warm.hot.hits > 1500
    warm.sync_hot()
    a, b = cold.stats, warm.stats
    assert (a.qtypes, a.rcodes, a.tiers, a.ecs) == (b.qtypes, b.rcodes, b.tiers, b.ecs)


def test_errors_truncated_cookie_tcp_and_logged_answers_are_not_registered(
    path: str, world: tuple[object, GeoDB]
) -> None:
    r = responder(world, path)
    assert r.hot is not None
    for name in ["nope.example.org", "x.other.invalid"]:  # NXDOMAIN, REFUSED: never
        data = wire(name)
        assert r.handle(data, SRC) is not None and r.handle(data, SRC) is not None
        assert r.hot.answer(data, SRC) is None
    big = wire("big.example.org", rdtype="TXT")  # over 512 bytes without EDNS: TC=1
    assert r.handle(big, SRC) is not None
    assert r.hot.answer(big, SRC) is None
    data = wire("mail.example.org")
    r.handle(data, SRC, True)  # TCP
    assert r.hot.answer(data, SRC) is None
    r.handle(data, SRC)
    assert r.hot.answer(data, SRC) is not None
    # a COOKIE option where cookies are on: its reply carries a fresh server cookie
    r.cookies = Cookies([b"k" * 16])
    jar = wire("www.example.org", options=[dns.edns.GenericOption(10, b"\x01" * 8)])
    assert r.handle(jar, SRC) is not None
    assert r.hot.answer(jar, SRC) is None
    # the query log must see every query
    r2 = responder(world, path)
    r2.query_log = True
    r2.handle(data, SRC)
    assert r2.hot is not None and r2.hot.answer(data, SRC) is None


def test_a_new_generation_warms_its_table_from_the_old_one(
    path: str, world: tuple[object, GeoDB]
) -> None:
    """What the old table held is in the new one before it goes live —
    answered by the new generation, and not counted as queries."""
    old = responder(world, path)
    assert old.hot is not None
    asked = []
    for name, rdtype, ecs in QUERIES:
        for src in ["192.0.2.10", "2001:db8::10"]:
            data = wire(name, rdtype=rdtype, ecs=ecs)
            for _ in range(24):  # every variant made: registered
                old.handle(data, src)
            assert old.hot.answer(data, src) is not None
            asked.append((data, src))
    old.hot.put(b"\x00" * 20, (variant("198.18.0.1"),), b"")  # not a query: skipped
    new = responder(world, path)
    assert new.hot is not None
    for _ in new.warm_from(old):
        pass
    cold = responder(world, None)
    for data, src in asked:
        got = new.hot.answer(data, src)
        assert got is not None and got in _replies(cold, data, src, 24), (data, src)
    assert new.stats.qtypes == [[{}, {}], [{}, {}]] and not new.stats.rcodes
    assert len(new.hot) == len(old.hot) - 1


@pytest.mark.parametrize("with_table", [True, False])
def test_a_swapped_out_generation_is_freed_without_the_cyclic_gc(
    path: str, world: tuple[object, GeoDB], with_table: bool
) -> None:
    """The server freezes the GC's view of the heap after every swap
    (gc.freeze), so a generation caught in a reference cycle would never be
    freed: every reload and health change would leak one. Reference counts
    alone must free it."""
    gone = []
    gc.disable()
    try:
        old = responder(world, path if with_table else None)
        for name, rdtype, ecs in QUERIES:
            old.handle(wire(name, rdtype=rdtype, ecs=ecs), "192.0.2.10")
        for _ in range(3):
            new = responder(world, path if with_table else None)
            for _ in new.warm_from(old):
                pass
            gone.append(weakref.ref(old))
            old = new
        assert [r() for r in gone] == [None, None, None]
    finally:
        gc.enable()


def test_retire_frees_a_generation_in_slices(path: str, world: tuple[object, GeoDB]) -> None:
    old = responder(world, path)
    assert old.hot is not None
    for name, rdtype, ecs in QUERIES:
        for _ in range(24):
            old.handle(wire(name, rdtype=rdtype, ecs=ecs), "192.0.2.10")
    assert len(old.cache) and len(old.hot)
    slices = sum(1 for _ in old.retire(slice_s=0.0))
    assert slices >= 1
    assert not len(old.cache) and not len(old.ecs_clients) and not len(old.src_geo)
    assert not old.steer_cache and len(old.hot) == 0


def test_keys_unpack_into_the_queries_they_came_from(path: str) -> None:
    t = table(path)
    plain, ecs = wire(qid=0), wire(ecs="192.0.2.0/24", qid=0, rd=False)
    t.put(key(plain), (variant("198.18.0.1"),), b"")
    t.put(key(ecs, "2001:db8::9"), (variant("198.18.0.1"),), b"")
    t.put(key(plain, "192.0.2.9"), (variant("198.18.0.1"),), b"")
    got = sorted((hot.unpack(k) for k in t.keys()), key=repr)
    assert got == sorted(
        [(plain[:2] + bytes((plain[2] & 0xFE,)) + plain[3:], None), (ecs, "2001:db8::9"),
         (plain[:2] + bytes((plain[2] & 0xFE,)) + plain[3:], "192.0.2.9")],
        key=repr,
    )  # fmt: skip
    for bad in [b"", b"\x00" * 20, key(plain) + b"\x04\x01", key(ecs)[:-3]]:
        assert hot.unpack(bad) is None


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setblocking(False)
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.bind(("127.0.0.1", 0))
    cli.settimeout(2)
    yield srv, cli
    srv.close()
    cli.close()


def test_a_drain_answers_hits_without_the_handler(
    path: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    srv, cli = pair
    t = table(path)
    t.put(key(wire()), (variant("198.18.0.1"),), b"")
    calls: list[bytes] = []

    def handler(data: bytes, src: str) -> bytes | None:
        calls.append(data)
        return data[:2] + b"\x81\x05" + data[4:12]  # REFUSED, no question

    engine = udpbatch.make_engine(path)
    dst = srv.getsockname()
    sent = [wire(qid=i) if i % 2 else wire("mail.example.org", qid=i) for i in range(40)]
    for p in sent:
        cli.sendto(p, dst)
    deadline = time.monotonic() + 5
    got: list[bytes] = []
    while len(got) < len(sent) and time.monotonic() < deadline:
        engine.drain(srv, handler, None, 256, t)
        cli.settimeout(0.05)
        try:
            while True:
                got.append(cli.recv(4096))
        except OSError:
            pass
    assert len(got) == 40
    assert len(calls) == 20 and all(b"\x04mail" in c for c in calls)
    hits = [g for g in got if g[3] & 0x0F == 0]
    assert len(hits) == 20 and t.hits == 20
    assert sorted(struct.unpack("!H", g[:2])[0] for g in hits) == list(range(1, 40, 2))
