"""Garbage in: the server answers or drops, never raises, never stops."""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path

import dns.message
import dns.rcode
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
    return out


def mutate(rng: random.Random, pkt: bytes) -> bytes:
    b = bytearray(pkt)
    kind = rng.randrange(7)
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
        b[12] = rng.choice([0x3F, 0x40, 0x80, 0xC0, 0xFF, 0x00, len(b)])
    else:  # EDNS area garbage
        b[-rng.randint(1, min(20, len(b))) :] = rng.randbytes(rng.randint(1, 20))
    return bytes(b)


def fuzz_packets(n: int) -> list[bytes]:
    rng = random.Random(SEED)
    base = valid_queries()
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(rng.randbytes(rng.randrange(0, 600)))
        else:
            out.append(mutate(rng, rng.choice(base)))
    return out


def test_10000_random_and_mutated_packets(tmp_path: Path, demo_geoip: tuple[Path, Path]) -> None:
    port = free_port()
    args = serve_args(TEST_ZONES, port, demo_geoip, tmp_path / "state", "--tcp-idle-timeout", "1")
    addr = ("127.0.0.1", port)
    with ServerProcess(args, port, tmp_path / "server.log") as sp:
        packets = fuzz_packets(10_000)
        answered = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for i in range(0, len(packets), 50):
                for p in packets[i : i + 50]:
                    s.sendto(p, addr)
                deadline = time.monotonic() + 0.05
                while time.monotonic() < deadline:
                    try:
                        s.recv(65535)
                        answered += 1
                    except BlockingIOError:
                        time.sleep(0.002)
        # and a few hundred over TCP, framed and unframed
        rng = random.Random(SEED + 1)
        for p in packets[:300]:
            try:
                with socket.create_connection(addr, timeout=2) as c:
                    c.sendall(struct.pack("!H", len(p)) + p if rng.random() < 0.7 else p)
                    c.settimeout(0.2)
                    try:
                        c.recv(65535)
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
        assert answered > 1000  # most mutated queries still get an answer (FORMERR etc.)


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

    check()
