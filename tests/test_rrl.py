"""Response rate limiting (geodns.dns.rrl): the bucket arithmetic with a fake
clock, the memory bound under a 150,000-source flood, and real-socket floods
against a running server (one source, many loopback sources, TCP)."""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from geodns.dns import rrl
from geodns.runtime.metrics import ServerCollector

from .conftest import TEST_ZONES
from .util import ServerThread, query, raw_tcp_many, settings_for, udp

KIND = rrl.kind_key(rrl.ANSWER, b"\x03big\x07example\x03org\x00")
OTHER = rrl.kind_key(rrl.ANSWER, b"\x03www\x07example\x03org\x00")


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(rrl, "monotonic", c)
    return c


def test_bucket_allows_the_rate_then_drops_and_slips(clock: Clock) -> None:
    lim = rrl.RateLimiter(10, slip=2)
    assert [lim.check("192.0.2.1", KIND) for _ in range(10)] == [rrl.SEND] * 10
    # over the rate: every 2nd limited response slips, the others are dropped
    assert [lim.check("192.0.2.1", KIND) for _ in range(6)] == [rrl.DROP, rrl.SLIP] * 3
    clock.advance(0.1)  # one interval: one more token
    assert lim.check("192.0.2.1", KIND) == rrl.SEND
    assert lim.check("192.0.2.1", KIND) != rrl.SEND
    clock.advance(1.0)  # a full second: the whole bucket again, no more
    got = [lim.check("192.0.2.1", KIND) for _ in range(11)]
    assert got[:10] == [rrl.SEND] * 10 and got[10] != rrl.SEND


def test_sustained_flood_gets_exactly_the_rate(clock: Clock) -> None:
    lim = rrl.RateLimiter(50, slip=0)
    sent = 0
    for _ in range(10 * 1000):  # 10 s at 1,000 queries per second
        clock.advance(0.001)
        sent += lim.check("192.0.2.1", KIND) == rrl.SEND
    assert 50 * 10 <= sent <= 50 * 11  # the rate, plus one bucket of burst


@pytest.mark.parametrize("slip,expect", [(0, [rrl.DROP] * 4), (1, [rrl.SLIP] * 4)])
def test_slip_zero_drops_all_and_one_slips_all(clock: Clock, slip: int, expect: list[int]) -> None:
    lim = rrl.RateLimiter(1, slip=slip)
    assert lim.check("192.0.2.1", KIND) == rrl.SEND
    assert [lim.check("192.0.2.1", KIND) for _ in range(4)] == expect


def test_buckets_are_per_network_and_kind(clock: Clock) -> None:
    lim = rrl.RateLimiter(1, slip=0)
    assert lim.check("192.0.2.1", KIND) == rrl.SEND
    assert lim.check("192.0.2.200", KIND) == rrl.DROP  # same /24
    assert lim.check("192.0.3.1", KIND) == rrl.SEND  # another /24
    assert lim.check("192.0.2.1", OTHER) == rrl.SEND  # another name
    nx = rrl.kind_key(rrl.NXDOMAIN, b"\x07example\x03org\x00")
    assert lim.check("192.0.2.1", nx) == rrl.SEND  # NXDOMAIN for the zone: its own bucket
    assert lim.check("192.0.2.1", nx) == rrl.DROP
    assert lim.check("2001:db8:0:ff::1", KIND) == rrl.SEND
    assert lim.check("2001:db8:0:1::2", KIND) == rrl.DROP  # same /56
    assert lim.check("2001:db8:0:100::1", KIND) == rrl.SEND  # another /56


def test_prefix_lengths_and_exemptions_are_configurable(clock: Clock) -> None:
    import ipaddress

    lim = rrl.RateLimiter(
        1, slip=0, v4_prefix=32, v6_prefix=64, exempt=[ipaddress.ip_network("198.51.100.0/24")]
    )
    assert lim.check("192.0.2.1", KIND) == rrl.SEND
    assert lim.check("192.0.2.2", KIND) == rrl.SEND  # /32: another bucket
    assert lim.check("2001:db8::1", KIND) == rrl.SEND
    assert lim.check("2001:db8::2", KIND) == rrl.DROP  # same /64
    assert all(lim.check("198.51.100.7", KIND) == rrl.SEND for _ in range(100))


def _table_bytes(lim: rrl.RateLimiter) -> int:
    """What the limiter's tables hold: the dicts and their keys and values."""
    total = 0
    for d in (lim.new, lim.old, lim.nets):
        total += sys.getsizeof(d)
        total += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())
    return total


def test_random_source_flood_keeps_memory_bounded(clock: Clock) -> None:
    """200,000 spoofed /24s (one packet each, 100k pps) against the default
    table: it never holds more than its 200,000 buckets, the memory stays
    under the bound stated in the README, and a victim flooded all along stays
    limited."""
    lim = rrl.RateLimiter(5, slip=0)
    sources = [f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.1" for i in range(200_000)]
    victim_sent = 0
    most = most_bytes = 0
    for i, src in enumerate(sources):
        clock.advance(0.00001)
        assert lim.check(src, KIND) == rrl.SEND  # each spoofed /24 asks once
        if i % 10 == 0:
            victim_sent += lim.check("192.0.2.1", KIND) == rrl.SEND
        if i % 20_000 == 0:
            most = max(most, lim.buckets())
            most_bytes = max(most_bytes, _table_bytes(lim))
    most = max(most, lim.buckets())
    most_bytes = max(most_bytes, _table_bytes(lim))
    assert most <= rrl.DEFAULT_MAX_BUCKETS
    assert len(lim.nets) <= rrl.NETS_MAX
    # README: ~29 MB at most for the default 200,000 buckets + 50,000 sources
    assert most_bytes < 34_000_000, most_bytes
    # 2 s of flood: the victim's /24 got its rate (5/s, 5 of burst), no more
    assert 5 <= victim_sent <= 5 * 2 + 5 + 1


def test_generations_rotate_when_idle(clock: Clock) -> None:
    lim = rrl.RateLimiter(10, max_buckets=1000)
    for i in range(300):
        lim.check(f"10.0.{i}.1", KIND)
    assert lim.buckets() == 300
    clock.advance(rrl.ROTATE_S + 0.1)
    lim.check("10.9.9.9", KIND)  # a miss after the generation aged: rotates
    clock.advance(rrl.ROTATE_S + 0.1)
    lim.check("10.9.10.9", KIND)
    assert lim.buckets() <= 2  # the idle buckets are gone, memory back


# ----------------------------------------------------------------------------- real sockets


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, demo_geoip: tuple[Path, Path]
) -> Iterator[ServerThread]:
    """The test zones with RRL at 20/s, slip 2; buckets for at most 1,000 keys."""
    tmp = tmp_path_factory.mktemp("rrl")
    settings = settings_for(
        TEST_ZONES,
        tmp,
        demo_geoip,
        rrl_rate=20,
        rrl_slip=2,
        rrl_max_buckets=1000,
        tcp_idle_timeout=2.0,
    )
    with ServerThread(settings) as st:
        yield st


def _flood(addr: tuple[str, int], packets: list[bytes], src: str = "127.0.0.1") -> list[bytes]:
    """Send all packets from one socket as fast as the kernel takes them, then
    collect every answer that comes within half a second of the last one."""
    out: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((src, 0))
        s.setblocking(False)
        for p in packets:
            s.sendto(p, addr)
            try:
                while True:
                    out.append(s.recv(65535))
            except BlockingIOError:
                pass
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                out.append(s.recv(65535))
                deadline = time.monotonic() + 0.5
            except BlockingIOError:
                time.sleep(0.005)
    return out


def test_one_source_flood_is_cut_to_the_rate_with_tc_slips(limited: ServerThread) -> None:
    """400 queries from one address: about `rate` full answers
    per second, every second limited one a TC=1 answer without records (the
    client's cue to use TCP), the rest dropped."""
    stats = limited.server.stats
    before = (stats.rrl_dropped, stats.rrl_slipped)
    q = query("example.org", "MX", edns=0)
    packets = []
    for i in range(400):
        q.id = i
        packets.append(q.to_wire())
    t0 = time.monotonic()
    answers = [dns.message.from_wire(a) for a in _flood(limited.addr(), packets)]
    elapsed = time.monotonic() - t0
    full = [m for m in answers if not m.flags & dns.flags.TC]
    slips = [m for m in answers if m.flags & dns.flags.TC]
    assert all(m.answer and m.rcode() == dns.rcode.NOERROR for m in full)
    assert 20 <= len(full) <= 20 + 20 * elapsed + 2, (len(full), elapsed)
    assert slips and all(not m.answer and not m.authority for m in slips)
    assert all(m.question[0].name.to_text() == "example.org." for m in slips)
    dropped = stats.rrl_dropped - before[0]
    slipped = stats.rrl_slipped - before[1]
    assert slipped == len(slips)
    assert abs(slipped - dropped) <= 1  # slip 2: every second limited answer
    assert len(full) + slipped + dropped == 400


def test_tcp_is_never_limited(limited: ServerThread) -> None:
    """The same flood over TCP (one connection, pipelined) is answered whole:
    a TCP source cannot be spoofed."""
    q = query("big.example.org", "TXT", edns=0)
    packets = []
    for i in range(300):
        q.id = i
        packets.append(q.to_wire())
    got = raw_tcp_many(packets, limited.addr(), timeout=10)
    assert len(got) == 300
    msgs = [dns.message.from_wire(a) for a in got]
    assert all(m.answer and not m.flags & dns.flags.TC for m in msgs)


def test_many_source_flood_answers_each_and_keeps_the_table_bounded(
    limited: ServerThread,
) -> None:
    """2,048 loopback /24s (127.1-8.x.1) send a few queries each, as a spoofed
    flood would: each is under the rate and answered, and the server's table
    stays within its 1,000 buckets; a victim flooded meanwhile stays limited."""
    lim = limited.server.rrl
    assert lim is not None
    addr = limited.addr()
    wire_q = query("www.example.org", "A", edns=0).to_wire()
    answered = 0
    most = 0
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.1", 0))
    victim.setblocking(False)
    victim_got = 0
    try:
        for a in range(1, 9):
            socks = []
            for b in range(256):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((f"127.{a}.{b}.1", 0))
                s.settimeout(2)
                socks.append(s)
            for s in socks:
                for _ in range(3):
                    s.sendto(wire_q, addr)
                victim.sendto(wire_q, addr)
            for s in socks:
                for _ in range(3):
                    try:
                        s.recv(2000)
                        answered += 1
                    except TimeoutError:
                        pass
                s.close()
            while True:
                try:
                    victim_got += len(victim.recv(2000)) > 0
                except BlockingIOError:
                    break
            most = max(most, lim.buckets())
    finally:
        victim.close()
    assert answered == 8 * 256 * 3
    assert most <= 1000
    assert victim_got < 8 * 256  # the victim's /24 was limited (slips count as answers)


def test_rrl_counters_reach_the_metrics(limited: ServerThread) -> None:
    packets = [query("mail.example.org", "A").to_wire() for _ in range(60)]
    _flood(limited.addr(), packets)
    fams = {f.name: f for f in ServerCollector(limited.server).collect()}
    samples = {s.labels["action"]: s.value for s in fams["geodns_rrl_limited"].samples}
    assert samples["drop"] > 0 and samples["slip"] > 0
    assert samples["drop"] == limited.server.stats.rrl_dropped


def test_kinds_follow_the_answer(limited: ServerThread) -> None:
    """NXDOMAINs for random names in one zone share the zone's bucket (a
    random-subdomain flood is one bucket), and a limited error is still small."""
    responder = limited.server.current.responder  # type: ignore[union-attr]
    kinds = set()
    for i in range(5):
        responder.handle(query(f"nx{i}.example.org").to_wire(), "192.0.2.1", True)
        kinds.add(responder.kind)
    assert kinds == {rrl.kind_key(rrl.NXDOMAIN, b"\x07example\x03org\x00")}
    responder.handle(query("www.example.org").to_wire(), "192.0.2.1", True)
    assert responder.kind == rrl.kind_key(rrl.ANSWER, b"\x03www\x07example\x03org\x00")
    responder.handle(query("example.com").to_wire(), "192.0.2.1", True)
    assert responder.kind == rrl.ERROR_KIND  # REFUSED: not our zone


def test_slipped_error_answers_stay_small(limited: ServerThread) -> None:
    garbage = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
    answers = _flood(limited.addr(), [garbage] * 100, src="127.0.9.9")
    assert answers and all(len(a) <= len(garbage) + 11 for a in answers)
    tc = [a for a in answers if struct.unpack("!H", a[2:4])[0] & 0x0200]
    assert tc  # FORMERR floods are limited too, the slips carry TC=1
    assert all(dns.message.from_wire(a).rcode() == dns.rcode.FORMERR for a in answers)


def test_rrl_off_answers_everything(server: ServerThread) -> None:
    """The shared fixture runs without RRL (rate 0): a burst is answered whole."""
    assert server.server.rrl is None
    packets = [query("mail.example.org").to_wire() for _ in range(100)]
    assert len(_flood(server.addr(), packets)) == 100
    assert udp(query("mail.example.org"), server.addr()).rcode() == 0
