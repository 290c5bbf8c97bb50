"""The server on the batched UDP paths: fuzzing the native path, counters,
the path in /healthz and metrics, reload, and IPv4 + IPv6 sockets.

tests/run runs this file (with the DNS semantics, ECS, robustness, RRL and
cookie tests) a second time with GEODNS_UDP_BATCH=python, so the protocol
tests pass on both engines."""

from __future__ import annotations

import json
import random
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import pytest

from geodns.dns import udpbatch
from geodns.settings import ServerSettings, default_udp_batch

from .conftest import TEST_ZONES
from .test_robustness import mutate, valid_queries
from .test_udpbatch import native_or_skip
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

SEED = 20261130
DE = "192.0.2.0/24"  # the demo GeoIP's German network (tests/data)


def test_the_server_serves_udp_on_the_path_it_is_told(server: ServerThread) -> None:
    """GEODNS_UDP_BATCH (tests/run's second pass sets it) reaches the server."""
    want = udpbatch.choose(default_udp_batch())
    assert server.server.udp_path == want
    assert len(server.server.udp_endpoints) == (0 if want == "off" else 2)  # IPv4 and IPv6
    for addr in (server.addr(0), server.addr(1)):
        r = udp(query("mail.example.org"), addr)
        assert rrset_texts(r.answer) == ["mail.example.org. 3600 IN A 192.0.2.25"]


def fuzz_packets(rng: random.Random, n: int) -> list[bytes]:
    """Valid queries mutated one to three times, random bytes, long packets, and
    valid queries again with another ID and name case (the hot table's hits)."""
    base = valid_queries()
    base += [
        query("dl.example.org", "AAAA", ecs="2001:db8::/32").to_wire(),
        query("dl.example.org", "A", ecs="0.0.0.0/0").to_wire(),
        query(
            "dl.example.org", "A", options=[dns.edns.GenericOption(10, b"\x01" * 8)]
        ).to_wire(),  # a client cookie
        query("example.org", "SOA", edns=0, payload=65535).to_wire(),
    ]
    out = []
    for i in range(n):
        k = i % 10
        if k == 0:
            out.append(rng.randbytes(rng.randrange(0, 700)))
        elif k == 9:
            p = bytearray(rng.choice(base))
            p[0:2] = rng.randbytes(2)
            for j in range(13, min(len(p), 40)):
                if 97 <= p[j] <= 122 and rng.random() < 0.3:
                    p[j] -= 32  # the question goes back as sent
            out.append(bytes(p))
        elif k == 1:  # long: up to past 4 KiB, the tail random
            p = rng.choice(base)
            out.append(p + rng.randbytes(rng.randrange(0, 4200)))
        else:
            p = rng.choice(base)
            for _ in range(1 + (k % 3)):
                # (mutate() needs more than a header to work on)
                p = mutate(rng, p if len(p) > 12 else p + rng.randbytes(13))
            out.append(p)
    return out


def _exchange(
    s: socket.socket, dst: tuple[str, int], packets: list[bytes], burst: int
) -> list[bytes]:
    """Send in bursts without waiting (so the server sees full batches) and
    collect what comes back: after each burst until the replies pause, and at
    the end until they stop (bounded; slow on a loaded machine, never stuck)."""
    replies: list[bytes] = []

    def collect(quiet: float, limit: float) -> None:
        end = time.monotonic() + limit
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < quiet:
            try:
                replies.append(s.recv(65535))
                last = time.monotonic()
            except BlockingIOError:
                time.sleep(0.001)

    for i in range(0, len(packets), burst):
        for p in packets[i : i + burst]:
            try:
                s.sendto(p, dst)
            except BlockingIOError:
                time.sleep(0.001)
        collect(0.05, 2.0)
    collect(1.0, 10.0)
    return replies


def _scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def _metric(text: str, name: str) -> float:
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise KeyError(name)
    return total


def test_fuzz_the_native_path_12000_packets_every_reply_parses(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    """12,000 mutated and random datagrams in bursts of 200 against the C
    engine over IPv4 and IPv6: the server lives, says nothing bad, and every
    reply it sends is a DNS message dnspython parses."""
    native_or_skip()
    port, port6, mport = free_port(), free_port("::1"), free_port()
    args = serve_args(
        TEST_ZONES,
        port,
        demo_geoip,
        tmp_path / "state",
        "--listen",
        f"[::1]:{port6}",
        "--udp-batch",
        "native",
        "--metrics",
        f"127.0.0.1:{mport}",
    )
    rng = random.Random(SEED)
    packets = fuzz_packets(rng, 12_000)
    with ServerProcess(args, port, tmp_path / "server.log") as sp:
        assert sp.wait_log("listening on", count=2), sp.log()
        assert "UDP path native" in sp.log()
        replies: list[bytes] = []
        for fam, dst, part in (
            (socket.AF_INET, ("127.0.0.1", port), packets[:8000]),
            (socket.AF_INET6, ("::1", port6), packets[8000:]),
        ):
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                s.setblocking(False)
                replies += _exchange(s, dst, part, 200)
        assert sp.proc is not None and sp.proc.poll() is None, sp.log()
        unparsable = []
        for r in replies:
            try:
                dns.message.from_wire(r)
            except Exception as e:  # noqa: BLE001 — collected and shown
                unparsable.append((r[:40].hex(), repr(e)))
        assert not unparsable, unparsable[:5]
        assert len(replies) > 6000  # most mutated queries still get an answer (FORMERR etc.)
        # and it still answers properly, on both sockets
        for dst in (("127.0.0.1", port), ("::1", port6)):
            r = udp(query("mail.example.org"), dst)
            assert rrset_texts(r.answer) == ["mail.example.org. 3600 IN A 192.0.2.25"]
            r = udp(query("pad.example.org", ecs=DE), dst)
            assert r.rcode() == dns.rcode.NOERROR and len(r.answer[0]) == 2
        text = _scrape(mport)
        assert 'geodns_udp_path_info{path="native"} 1.0' in text
        received = _metric(text, 'geodns_dns_requests_total{family="4",proto="udp"') + _metric(
            text, 'geodns_dns_requests_total{family="6",proto="udp"'
        )
        calls = _metric(text, "geodns_udp_receive_calls_total")
        assert 0 < calls < len(packets) / 4, (calls, received)  # many datagrams per call
        assert _metric(text, "geodns_udp_hot_answers_total") > 500  # replayed, and parsed
        log = sp.log()
        assert "internal error" not in log and "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("path", ["native", "python"])
def test_counters_latency_and_path_on_the_batched_paths(
    tmp_path: Path, demo_geoip: tuple[Path, Path], path: str
) -> None:
    if path == "native":
        native_or_skip()
    mport = free_port()
    s = settings_for(TEST_ZONES, tmp_path, demo_geoip, udp_batch=path, metrics=("127.0.0.1", mport))
    with ServerThread(s) as st:
        before = _scrape(mport)
        key = 'geodns_dns_requests_total{family="4",proto="udp",qtype="A"}'
        n = 320
        q = query("dl.example.org", ecs=DE).to_wire()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.setblocking(False)
            replies = _exchange(c, st.addr(), [q] * n, 80)
        assert len(replies) == n
        assert all(dns.message.from_wire(r).rcode() == 0 for r in replies)
        after = _scrape(mport)
        assert _metric(after, key) - (_metric(before, key) if key in before else 0) == n
        assert _metric(after, "geodns_dns_ecs_requests_total") >= n
        assert _metric(after, "geodns_dns_request_duration_seconds_count") >= n // 16
        assert _metric(after, "geodns_udp_receive_calls_total") > 0
        assert _metric(after, "geodns_udp_send_errors_total") == 0
        # the first ones made every variant of the rotation and registered it;
        # the others were replayed (and counted)
        assert n - 40 <= _metric(after, "geodns_udp_hot_answers_total") <= n - 1
        assert f'geodns_udp_path_info{{path="{path}"}} 1.0' in after
        assert _metric(after, "geodns_udp_receive_buffer_bytes") > 0
        body = json.loads(_scrape(mport, "/healthz"))
        assert body["udp_path"] == path and body["udp_receive_buffer_bytes"] > 0


@pytest.mark.parametrize("path", ["native", "python"])
def test_a_reload_reaches_the_batched_path(
    tmp_path: Path, demo_geoip: tuple[Path, Path], path: str
) -> None:
    if path == "native":
        native_or_skip()
    zones = tmp_path / "zones"
    shutil.copytree(TEST_ZONES, zones)
    s: ServerSettings = settings_for(zones, tmp_path, demo_geoip, udp_batch=path)
    with ServerThread(s) as st:
        r = udp(query("mail.example.org"), st.addr())
        assert rrset_texts(r.answer) == ["mail.example.org. 3600 IN A 192.0.2.25"]
        f = zones / "example.org.yaml"
        f.write_text(f.read_text().replace("192.0.2.25", "192.0.2.26"))
        assert st.reload()
        # the new generation's table was warmed from the old one's: the first
        # query after the swap is replayed — with the new answer
        table = st.server.current.responder.hot
        assert table is not None and len(table) >= 1 and table.hits == 0
        r = udp(query("mail.example.org"), st.addr())
        assert rrset_texts(r.answer) == ["mail.example.org. 3600 IN A 192.0.2.26"]
        assert table.hits == 1
        # the old generation is freed in slices between queries, and then done
        deadline = time.monotonic() + 10
        while st.server.retiring and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not st.server.retiring


def test_forcing_native_where_it_is_not_built_fails_at_start(
    tmp_path: Path, demo_geoip: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(udpbatch, "_native", None)
    monkeypatch.setattr(udpbatch, "NATIVE_ERROR", "no compiler")
    s = settings_for(TEST_ZONES, tmp_path, demo_geoip, udp_batch="native")
    with pytest.raises(RuntimeError, match="not built: no compiler"):
        with ServerThread(s):
            pass
