"""RFC 7766 streams under pressure: long pipelined bursts, clients that do not
read their answers, garbage after good queries. Real sockets, in-process server."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import dns.message

from .conftest import TEST_ZONES
from .util import ServerThread, query, settings_for


def _frame(msg: dns.message.Message) -> bytes:
    wire = msg.to_wire()
    return struct.pack("!H", len(wire)) + wire


def _read_answers(s: socket.socket, want: int, limit: float = 20.0) -> int:
    """Count length-framed messages until `want` arrived, EOF or the time limit."""
    s.settimeout(1.0)
    buf = b""
    got = 0
    deadline = time.monotonic() + limit
    while got < want and time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 16)
        except TimeoutError:
            continue
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
            n = struct.unpack("!H", buf[:2])[0]
            if got % 1000 == 0:
                dns.message.from_wire(buf[2 : 2 + n])  # a whole DNS message
            buf = buf[2 + n :]
            got += 1
    return got


def _tcp(server: ServerThread) -> socket.socket:
    s = socket.create_connection(server.addr(), timeout=5)
    return s


def test_a_long_pipelined_burst_is_answered_whole(server: ServerThread) -> None:
    burst = _frame(query("mail.example.org")) * 2500  # 90 KB in one write
    assert len(burst) > 65537
    with _tcp(server) as s:
        s.sendall(burst)
        assert _read_answers(s, 2500) == 2500


def test_answers_made_before_garbage_are_still_sent(server: ServerThread) -> None:
    good = _frame(query("mail.example.org"))
    garbage = struct.pack("!H", 12) + b"\x00\x01\x80\x00" + b"\x00" * 8  # a response (QR=1)
    with _tcp(server) as s:
        s.sendall(good + good + garbage)
        assert _read_answers(s, 3, limit=5) == 2  # then the connection is closed


def test_a_client_that_does_not_read_is_not_buffered_without_bound(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    """Backpressure: once the client stops reading, the server stops reading
    its queries, so the client's sends block instead of the server's memory
    growing; when it reads again, every query sent is answered."""
    settings = settings_for(TEST_ZONES, tmp_path, demo_geoip, tcp_idle_timeout=30.0)
    q = _frame(query("big.example.org", "TXT")) * 100  # blocks of 100 frames
    with ServerThread(settings) as st:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(st.addr())
        s.setblocking(False)
        sent = 0  # queries wholly sent
        pending = b""  # the unsent tail of the last block (send may be partial)
        blocked_since = None
        blocked = False
        deadline = time.monotonic() + 30
        cap = 1_000_000  # 36 MB of queries, ~1 GB of answers: beyond any buffer
        while sent < cap and time.monotonic() < deadline:
            if not pending:
                pending = q
            try:
                n = s.send(pending)
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 1.0:
                    blocked = True  # the server has stopped reading us
                    break
                time.sleep(0.01)
                continue
            blocked_since = None
            pending = pending[n:]
            if not pending:
                sent += 100
        assert blocked, (
            f"the server kept reading (and buffering) {sent} queries of a client that never reads"
        )
        if pending:  # whole frames of the block we were in the middle of
            sent += (len(q) - len(pending)) // (len(q) // 100)
        s.setblocking(True)
        assert _read_answers(s, sent, limit=60) == sent
        s.close()
