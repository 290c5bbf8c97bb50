"""Garbage in: the server answers or drops, never raises, never stops — and
every answer it gives is a DNS message that two independent decoders accept.

dnspython and dnslib both decode every response of the fuzz and property
tests: a response only one of them takes is a bug in our wire code until shown
otherwise. Shown otherwise so far: dnslib refuses labels that are not UTF-8
(`Invalid label`), which RFC 2181 §11 allows and which our responses carry
when they echo such a question; that one case is told apart exactly
(`_dnslib_limitation`)."""

from __future__ import annotations

import json
import random
import socket
import struct
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.rcode
import dnslib
import pytest

from .conftest import TEST_ZONES
from .util import (
    ServerProcess,
    ServerThread,
    free_port,
    query,
    rrset_texts,
    serve_args,
    settings_for,
    udp,
)

SEED = 20261123
FUZZ_DATAGRAMS = 60_000


def valid_queries() -> list[bytes]:
    out = []
    for name, t, ecs in [
        ("dl.example.org", "A", "192.0.2.0/24"),
        ("mail.example.org", "A", None),
        ("example.org", "ANY", None),
        ("x.lab.example.org", "AAAA", "2001:db8:1::/48"),
        ("big.example.org", "TXT", None),
        ("nope.example.org", "MX", "198.51.100.0/24"),
    ]:
        out.append(query(name, t, ecs=ecs).to_wire())
        out.append(query(name, t, edns=0).to_wire())
    # DNS Cookies: a client cookie alone, with a server cookie, and a query
    # for a cookie without a question (RFC 7873 §5.4)
    cookie = b"\x00\x0a\x00\x08" + bytes(range(8))
    both = b"\x00\x0a\x00\x18" + bytes(range(8)) + b"\x01\x00\x00\x00" + bytes(12)
    for c in (cookie, both):
        q = query("www.example.org", "A", edns=0).to_wire()
        out.append(_with_options(q, c))
        out.append(
            struct.pack("!HHHHHH", 0x4242, 0x0100, 0, 0, 0, 1)
            + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"
            + struct.pack("!H", len(c))
            + c
        )
    return out


def _with_options(q: bytes, options: bytes) -> bytes:
    """A query ending in an OPT record with `options` appended to it."""
    rdlen = struct.unpack("!H", q[-2:])[0]
    assert rdlen == 0
    return q[:-2] + struct.pack("!H", len(options)) + options


def _hostile_edns(rng: random.Random) -> bytes:
    """OPT records built to hurt: many options, lengths past the end, odd
    versions and payloads, bad ECS and COOKIE shapes, several OPTs."""
    opts = b""
    for _ in range(rng.choice([0, 1, 2, 5, 40])):
        code = rng.choice([8, 10, 10, 12, 3, 15, 65001, rng.randrange(65536)])
        if code == 10:
            body = rng.randbytes(rng.choice([0, 1, 7, 8, 9, 15, 16, 24, 32, 40, 41, 48]))
        elif code == 8:
            fam, src = rng.choice([(1, 24), (2, 56), (1, 33), (3, 8), (2, 129), (0, 0)])
            body = struct.pack("!HBB", fam, src, rng.choice([0, 0, 5])) + rng.randbytes(
                rng.randrange(0, 18)
            )
        else:
            body = rng.randbytes(rng.randrange(0, 30))
        olen = len(body) if rng.random() < 0.8 else rng.randrange(65536)
        opts += struct.pack("!HH", code, olen) + body
    ttl = rng.choice([0, 0x8000, 0x00010000, 0xFF008000, rng.randrange(1 << 32)])
    payload = rng.choice([0, 511, 512, 1232, 4096, 65535])
    rdlen = len(opts) if rng.random() < 0.85 else rng.randrange(65536)
    owner = b"\x00" if rng.random() < 0.9 else b"\x01a\x00"
    return owner + struct.pack("!HHIH", 41, payload, ttl, rdlen) + opts


def mutate(rng: random.Random, pkt: bytes) -> bytes:
    b = bytearray(pkt)
    kind = rng.randrange(10)
    if kind == 0:  # flip bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        b = b[: rng.randrange(len(b))]
    elif kind == 2:  # random header counts / flags
        b[2:12] = rng.randbytes(10)
    elif kind == 3:  # overwrite a random run
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
    elif kind == 4:  # append junk
        b += rng.randbytes(rng.randint(1, 64))
    elif kind == 5:  # label lengths pointing anywhere
        b[12] = rng.choice([0x3F, 0x40, 0x80, 0xC0, 0xFF, 0x00, len(b) & 0xFF])
    elif kind == 6:  # EDNS area garbage
        b[-rng.randint(1, min(20, len(b))) :] = rng.randbytes(rng.randint(1, 20))
    elif kind == 7:  # compression pointers: loops, forwards, into the header
        target = rng.choice([0, 2, 12, 13, len(b) - 1, rng.randrange(0x4000)])
        ptr = struct.pack("!H", 0xC000 | target)
        at = rng.choice([12, 12 + 1 + b[12] if len(b) > 13 and b[12] < 60 else 12])
        b[at : at + 2] = ptr
    else:  # hostile EDNS: replace the additional section, ARCOUNT 1..many
        q = bytes(b)
        end = 12
        try:
            while q[end]:
                end += 1 + q[end]
            end += 5
        except IndexError:
            end = len(q)
        extra = b"".join(_hostile_edns(rng) for _ in range(rng.choice([1, 1, 1, 2, 3])))
        b = bytearray(q[:end] + extra)
        if len(b) >= 12:
            b[10:12] = struct.pack("!H", rng.choice([1, 1, 2, 3, 0xFFFF]))
    return bytes(b)


def fuzz_packets(n: int) -> list[bytes]:
    rng = random.Random(SEED)
    base = valid_queries()
    out = []
    for i in range(n):
        if i % 5 == 0:
            out.append(rng.randbytes(rng.randrange(0, 600)))
        else:
            out.append(mutate(rng, rng.choice(base)))
    return out


def _dnslib_limitation(msg: dns.message.Message) -> bool:
    """dnslib decodes labels as UTF-8 and refuses others; DNS labels are any
    octets (RFC 2181 §11), and we echo the question as it came."""
    for section in (msg.question, msg.answer, msg.authority, msg.additional):
        for rrset in section:
            for label in rrset.name.labels:
                try:
                    label.decode()
                except UnicodeDecodeError:
                    return True
    return False


def decode_both(resp: bytes) -> str | None:
    """None if dnspython and dnslib both decode `resp`; else why not."""
    try:
        msg = dns.message.from_wire(resp, ignore_trailing=False)
    except Exception as e:  # noqa: BLE001 — any failure is the finding
        return f"dnspython: {type(e).__name__}: {e}"
    try:
        dnslib.DNSRecord.parse(resp)
    except Exception as e:  # noqa: BLE001
        if "Invalid label" in str(e) and _dnslib_limitation(msg):
            return None
        return f"dnslib: {type(e).__name__}: {e}"
    return None


def _metric(port: int, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_60000_mutated_datagrams_both_decoders(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    """60,000 random and mutated datagrams (bit flips, truncation, compression
    pointers, hostile EDNS options and counts, cookies) from 32 loopback
    networks, RRL on so that slipped answers are decoded too: every answer
    decodes with both dnspython and dnslib, the server lives and serves."""
    port, mport = free_port(), free_port()
    args = serve_args(
        TEST_ZONES,
        port,
        demo_geoip,
        tmp_path / "state",
        "--tcp-idle-timeout",
        "1",
        "--rrl-rate",
        "20",
        "--rrl-slip",
        "2",
        "--metrics",
        f"127.0.0.1:{mport}",
    )
    addr = ("127.0.0.1", port)
    packets = fuzz_packets(FUZZ_DATAGRAMS)
    with ServerProcess(args, port, tmp_path / "server.log") as sp:
        socks = []
        for k in range(32):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((f"127.0.{k}.7", 0))
            s.setblocking(False)
            socks.append(s)
        answers: list[bytes] = []
        try:
            t0 = time.monotonic()
            batch = 256
            for i in range(0, len(packets), batch):
                for j, p in enumerate(packets[i : i + batch]):
                    socks[(i + j) % 32].sendto(p, addr)
                # collect until the server has been quiet for a moment
                quiet_until = time.monotonic() + 0.01
                while time.monotonic() < quiet_until:
                    got = False
                    for s in socks:
                        try:
                            while True:
                                answers.append(s.recv(65535))
                                got = True
                        except BlockingIOError:
                            pass
                    if got:
                        quiet_until = time.monotonic() + 0.01
                    else:
                        time.sleep(0.001)
            sent_for = time.monotonic() - t0
        finally:
            for s in socks:
                s.close()
        # the ID never changes how a message decodes: each distinct rest once
        distinct = {a[2:] for a in answers}
        bad = [(why, r.hex()) for r in distinct if (why := decode_both(b"\0\0" + r)) is not None]
        assert not bad, f"{len(bad)} answers only one decoder accepts, e.g. {bad[:3]}"
        # and some over TCP, framed and unframed
        rng = random.Random(SEED + 1)
        for p in packets[:150]:
            try:
                with socket.create_connection(addr, timeout=2) as c:
                    c.sendall(struct.pack("!H", len(p)) + p if rng.random() < 0.7 else p)
                    c.settimeout(0.1)
                    try:
                        data = c.recv(65535)
                        if len(data) > 2:
                            n = struct.unpack("!H", data[:2])[0]
                            if len(data) == 2 + n:
                                assert decode_both(data[2:]) is None, data.hex()
                    except (TimeoutError, ConnectionResetError):
                        pass
            except OSError:
                pass
        assert sp.proc is not None and sp.proc.poll() is None, sp.log()
        r = udp(query("mail.example.org"), addr)
        assert rrset_texts(r.answer) == ["mail.example.org. 3600 IN A 192.0.2.25"]
        r = udp(query("pad.example.org", ecs="192.0.2.0/24"), addr)
        assert r.rcode() == dns.rcode.NOERROR and len(r.answer[0]) == 2
        log = sp.log()
        assert "internal error" not in log and "Traceback" not in log, log[-3000:]
        # Most datagrams are answered or limited (RRL at 20/s per source
        # network); the rest are not queries (drop) or were lost in a full
        # socket buffer of this busy machine.
        responses = sum(_metric(mport, "geodns_dns_responses_total").values())
        limited = _metric(mport, "geodns_rrl_limited_total")
        assert responses > FUZZ_DATAGRAMS // 2, (responses, sent_for)
        assert len(answers) > 5000 and len(distinct) > 1000
        assert all(limited.values())  # slips were made (and decoded above), drops too
        cookies = _metric(mport, "geodns_dns_cookies_total")
        assert sum(cookies.values()) > 100, json.dumps(cookies)


@pytest.mark.parametrize("size", [0, 1, 11, 12, 13])
def test_tiny_packets(server: ServerThread, size: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.sendto(b"\x00" * size, server.addr())
        try:
            data = s.recv(600)
            msg = dns.message.from_wire(data, ignore_trailing=True, question_only=True)
            assert msg.rcode() in (dns.rcode.FORMERR, dns.rcode.NOTIMP)
        except TimeoutError:
            pass
    assert udp(query("mail.example.org"), server.addr()).rcode() == 0


def test_hypothesis_parser_never_raises(tmp_path: Path, demo_geoip: tuple[Path, Path]) -> None:
    """The responder itself, fed arbitrary bytes in-process: never an exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    s = settings_for(TEST_ZONES, tmp_path, demo_geoip)
    from geodns.runtime.server import Server

    srv = Server(s)
    srv.load_initial()
    responder = srv.current.responder  # type: ignore[union-attr]
    base = valid_queries()
    from geodns.dns.rrl import RateLimiter

    limiter = RateLimiter(1, slip=1)

    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(
            st.binary(max_size=700),
            st.tuples(st.sampled_from(base), st.integers(0, 200), st.binary(max_size=40)).map(
                lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]
            ),
        ),
        st.booleans(),
    )
    def check(pkt: bytes, tcp: bool) -> None:
        before = responder.stats.dropped
        out = responder._fast(pkt, "127.0.0.1", tcp)  # noqa: SLF001 — no catch-all here
        assert out is None or len(out) >= 12
        assert responder.stats.dropped >= before
        if out is not None:
            assert decode_both(out) is None, (pkt.hex(), out.hex())
        # the same through the rate limiter: over the rate at once, every
        # answer slipped (TC=1, or BADCOOKIE to a cookie client)
        responder.rrl = limiter
        try:
            slipped = responder.handle(pkt, "127.0.0.1", False)
        finally:
            responder.rrl = None
        if slipped is not None:
            assert decode_both(slipped) is None, (pkt.hex(), slipped.hex())

    check()


@pytest.mark.parametrize(
    "zone_entry,echoed",
    [
        (b"\x00\x00\x06\x00\x01", True),  # root SOA IN: a well-formed zone section
        (b"\x00\x00\x00\x00\x00", False),  # type 0 class 0 (found by the fuzz)
        (b"\x00\x00\x01\x00\x01", False),  # type A: not a zone
        (b"\x00\x00\x06\x00\xff", False),  # class ANY: a meta class
    ],
)
def test_notimp_update_echoes_only_a_valid_zone_section(
    server: ServerThread, zone_entry: bytes, echoed: bool
) -> None:
    """RFC 2136 §3.1.1: an UPDATE (opcode 5) names its zone as SOA in a real
    class. NOTIMP echoes that section only when it is one; echoing anything
    else made an answer that dnspython refused as a malformed UPDATE."""
    pkt = b"\x12\x34\x28\x00\x00\x01\x00\x00\x00\x00\x00\x00" + zone_entry
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(pkt, server.addr())
        out = s.recv(600)
    assert decode_both(out) is None, out.hex()
    msg = dns.message.from_wire(out)
    assert msg.rcode() == dns.rcode.NOTIMP and msg.opcode() == 5
    assert struct.unpack("!H", out[4:6])[0] == (1 if echoed else 0)
