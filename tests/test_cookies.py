"""DNS Cookies: RFC 9018 server cookies (its Appendix A vectors), the secret
file and its rotation, and RFC 7873 §5.2 behaviour against a running server."""

from __future__ import annotations

import os
import signal
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from geodns.dns import cookies
from geodns.dns.cookies import Cookies, CookieSecretError, server_cookie

from .conftest import TEST_ZONES
from .util import (
    ServerProcess,
    ServerThread,
    free_port,
    query,
    raw_udp,
    serve_args,
    settings_for,
    tcp,
    udp,
)

SECRET = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")
IP4 = socket.inet_aton("198.51.100.100")


# ----------------------------------------------------------------------------- RFC 9018 vectors


@pytest.mark.parametrize(
    "secret,client,ip,ts,want",
    [
        # A.1 learning a new server cookie
        (SECRET, "2464c4abcf10c957", "198.51.100.100", 1559731985,
         "010000005cf79f111f8130c3eee29480"),
        # A.2 the same client, renewed
        (SECRET, "2464c4abcf10c957", "198.51.100.100", 1559734385,
         "010000005cf7a871d4a564a1442aca77"),
        # A.3 another client
        (SECRET, "fc93fc62807ddb86", "203.0.113.203", 1559734700,
         "010000005cf7a9acf73a7810aca2381e"),
        # A.4 an IPv6 client after the secret rolled over
        (bytes.fromhex("445536bcd2513298075a5d379663c962"), "22681ab97d52c298",
         "2001:db8:220:1:59de:d0f4:8769:82b8", 1559741961,
         "010000005cf7c609a6bb79d16625507a"),
    ],
)  # fmt: skip
def test_rfc9018_appendix_a_server_cookies(
    secret: bytes, client: str, ip: str, ts: int, want: str
) -> None:
    packed = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    assert server_cookie(secret, bytes.fromhex(client), packed, ts).hex() == want


def test_rfc9018_reserved_bytes_as_sent_are_hashed() -> None:
    """A.3: the client brought back a cookie with nonzero reserved bytes; its
    hash is over the bytes as received (§4.2)."""
    got = server_cookie(
        SECRET,
        bytes.fromhex("fc93fc62807ddb86"),
        socket.inet_aton("203.0.113.203"),
        0x5CF78F71,
        bytes.fromhex("01abcdef"),
    )
    assert got.hex() == "01abcdef5cf78f71a314227b6679ebf5"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_verdicts_follow_rfc9018_lifetimes() -> None:
    clock = Clock(1559731985)
    jar = Cookies([SECRET], clock)
    client = bytes.fromhex("2464c4abcf10c957")
    verdict, opt = jar.check(client, "198.51.100.100")
    assert verdict == cookies.CLIENT_ONLY
    assert opt == struct.pack("!HH", 10, 24) + client + bytes.fromhex(
        "010000005cf79f111f8130c3eee29480"
    )
    sent = opt[4:]
    clock.t += 60  # young: echoed as it is
    assert jar.check(sent, "198.51.100.100") == (cookies.VALID, opt)
    assert jar.check(sent, "198.51.100.101")[0] == cookies.INVALID  # another address
    clock.t = 1559734385  # 40 minutes: still valid, renewed (A.2)
    verdict, opt2 = jar.check(sent, "198.51.100.100")
    assert verdict == cookies.VALID
    assert opt2[4:].hex() == "2464c4abcf10c957010000005cf7a871d4a564a1442aca77"
    clock.t = 1559731985 + 3601  # older than an hour: not valid any more
    assert jar.check(sent, "198.51.100.100")[0] == cookies.INVALID
    clock.t = 1559731985 - 301  # from more than five minutes in the future
    assert jar.check(sent, "198.51.100.100")[0] == cookies.INVALID
    bad = sent[:-1] + bytes((sent[-1] ^ 1,))
    clock.t = 1559731985
    assert jar.check(bad, "198.51.100.100")[0] == cookies.INVALID


def test_rotation_accepts_the_previous_secret() -> None:
    """A.4: a cookie made with the old secret is still valid after the roll,
    and is answered with one made with the new secret."""
    old = bytes.fromhex("dd3bdf9344b678b185a6f5cb60fca715")
    new = bytes.fromhex("445536bcd2513298075a5d379663c962")
    jar = Cookies([old], Clock(1559741961))
    assert jar.rotate([new]) and not jar.rotate([new])
    sent = bytes.fromhex("22681ab97d52c298010000005cf7c57926556bd0934c72f8")
    verdict, opt = jar.check(sent, "2001:db8:220:1:59de:d0f4:8769:82b8")
    assert verdict == cookies.VALID
    assert opt[4:].hex() == "22681ab97d52c298010000005cf7c609a6bb79d16625507a"
    jar.rotate([bytes(16)])  # two rolls later the first secret is gone
    assert jar.check(sent, "2001:db8:220:1:59de:d0f4:8769:82b8")[0] == cookies.INVALID


def test_secret_file_generated_once_and_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cookie-secret"
    cookies.ensure_secret_file(path)
    first = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    cookies.ensure_secret_file(path)
    assert path.read_text() == first and len(cookies.read_secrets(path)[0]) == 16
    bad = tmp_path / "bad"
    bad.write_text("# ours\n" + "ab" * 16 + "\nnot-hex\n")
    with pytest.raises(CookieSecretError, match=r"bad:3: cookie secret: not hexadecimal"):
        cookies.read_secrets(bad)
    bad.write_text("abcd\n")
    with pytest.raises(CookieSecretError, match=r"bad:1: .*16 bits, expected 128"):
        cookies.read_secrets(bad)
    bad.write_text("# nothing\n")
    with pytest.raises(CookieSecretError, match="holds no secret"):
        cookies.read_secrets(bad)
    with pytest.raises(CookieSecretError, match="does not exist"):
        cookies.read_secrets(tmp_path / "missing")


# ----------------------------------------------------------------------------- a server


@pytest.fixture(scope="module")
def cserver(
    tmp_path_factory: pytest.TempPathFactory, demo_geoip: tuple[Path, Path]
) -> Iterator[ServerThread]:
    """Cookies on (the default), RRL at 5/s with every limited answer slipped."""
    tmp = tmp_path_factory.mktemp("cookies")
    settings = settings_for(TEST_ZONES, tmp, demo_geoip, rrl_rate=5, rrl_slip=1)
    with ServerThread(settings) as st:
        yield st


def _secret(st: ServerThread) -> bytes:
    return cookies.read_secrets(st.settings.resolved_cookie_secret_file())[0]


def _cookie_of(msg: dns.message.Message) -> dns.edns.CookieOption | None:
    for o in msg.options:
        if o.otype == dns.edns.OptionType.COOKIE:
            assert isinstance(o, dns.edns.CookieOption)
            return o
    return None


def _cq(name: str, client: bytes, server: bytes = b"", src_id: int = 0) -> dns.message.Message:
    q = query(name, "A", options=[dns.edns.CookieOption(client, server)])
    q.id = src_id or q.id
    return q


def test_client_cookie_only_gets_an_answer_and_our_cookie(cserver: ServerThread) -> None:
    """RFC 7873 §5.2.3 (3): processed normally, with a server cookie added."""
    client = os.urandom(8)
    r = udp(_cq("www.example.org", client), cserver.addr())
    assert r.rcode() == dns.rcode.NOERROR and r.answer
    c = _cookie_of(r)
    assert c is not None and c.client == client and len(c.server) == 16
    ts = struct.unpack("!I", c.server[4:8])[0]
    assert c.server == server_cookie(_secret(cserver), client, IP4_LOCAL, ts)


IP4_LOCAL = socket.inet_aton("127.0.0.1")


def test_valid_cookie_is_echoed_and_exempt_from_rrl(cserver: ServerThread) -> None:
    """A resolver that proved its address with our cookie is never limited:
    60 queries at once (12x the rate) all get full answers."""
    client = os.urandom(8)
    first = udp(_cq("mail.example.org", client), cserver.addr())
    server = _cookie_of(first).server  # type: ignore[union-attr]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for i in range(60):
            s.sendto(_cq("mail.example.org", client, server, i + 1).to_wire(), cserver.addr())
        got = [dns.message.from_wire(s.recv(4096)) for _ in range(60)]
    assert all(m.answer and not m.flags & dns.flags.TC for m in got)
    assert all(_cookie_of(m).server == server for m in got)  # type: ignore[union-attr]
    # without the cookie the same burst is limited
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for i in range(60):
            q = query("mail.example.org", "A", edns=0)
            q.id = i + 1
            s.sendto(q.to_wire(), cserver.addr())
        plain = [dns.message.from_wire(s.recv(4096)) for _ in range(60)]
    assert sum(1 for m in plain if m.flags & dns.flags.TC) >= 50


def test_limited_cookie_client_gets_badcookie_with_a_fresh_cookie(cserver: ServerThread) -> None:
    """RFC 7873 §5.2.3 (2): a client that sent a cookie but no valid server
    cookie, over the rate: BADCOOKIE and our cookie, instead of TC=1, so it
    retries over UDP with proof of its address."""
    client = os.urandom(8)
    bogus = bytes((1, 0, 0, 0)) + os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for i in range(30):
            s.sendto(_cq("ns1.example.org", client, bogus, i + 1).to_wire(), cserver.addr())
        got = [dns.message.from_wire(s.recv(4096)) for _ in range(30)]
    normal = [m for m in got if m.rcode() == dns.rcode.NOERROR]
    bad = [m for m in got if m.rcode() == dns.rcode.BADCOOKIE]
    assert normal and all(m.answer for m in normal)  # under the rate: answered (§5.2.4)
    assert len(normal) + len(bad) == 30 and len(bad) >= 20
    for m in (*normal, *bad):
        c = _cookie_of(m)
        assert c is not None and c.client == client and c.server != bogus
    assert all(not m.answer and m.question for m in bad)
    # the retry with the cookie we handed out goes through
    fresh = _cookie_of(bad[0]).server  # type: ignore[union-attr]
    r = udp(_cq("ns1.example.org", client, fresh), cserver.addr())
    assert r.rcode() == dns.rcode.NOERROR and r.answer


@pytest.mark.parametrize("length", [1, 7, 9, 15, 41])
def test_malformed_cookie_lengths_are_formerr(cserver: ServerThread, length: int) -> None:
    """RFC 7873 §5.2.2: shorter than 8, 9 to 15, or longer than 40 octets."""
    q = query("www.example.org", options=[dns.edns.GenericOption(10, os.urandom(length))])
    r = dns.message.from_wire(raw_udp(q.to_wire(), cserver.addr()) or b"")
    assert r.rcode() == dns.rcode.FORMERR and r.edns == 0


def test_two_cookie_options_are_formerr(cserver: ServerThread) -> None:
    opts = [dns.edns.CookieOption(os.urandom(8), b""), dns.edns.CookieOption(os.urandom(8), b"")]
    r = udp(query("www.example.org", options=opts), cserver.addr())
    assert r.rcode() == dns.rcode.FORMERR


def test_query_without_question_asks_for_a_cookie(cserver: ServerThread) -> None:
    """RFC 7873 §5.4: QDCOUNT 0 with a COOKIE: NOERROR and our cookie; with a
    server cookie that is not ours: BADCOOKIE."""
    client = os.urandom(8)
    q = dns.message.Message()
    q.use_edns(0, options=[dns.edns.CookieOption(client, b"")])
    r = dns.message.from_wire(raw_udp(q.to_wire(), cserver.addr()) or b"")
    assert r.rcode() == dns.rcode.NOERROR and not r.question
    good = _cookie_of(r)
    assert good is not None and good.client == client and len(good.server) == 16
    q = dns.message.Message()
    q.use_edns(0, options=[dns.edns.CookieOption(client, bytes(16))])
    r = dns.message.from_wire(raw_udp(q.to_wire(), cserver.addr()) or b"")
    assert r.rcode() == dns.rcode.BADCOOKIE
    q = dns.message.Message()
    q.use_edns(0, options=[dns.edns.CookieOption(client, good.server)])
    r = dns.message.from_wire(raw_udp(q.to_wire(), cserver.addr()) or b"")
    assert r.rcode() == dns.rcode.NOERROR
    # without a COOKIE an empty question stays FORMERR
    q = dns.message.Message()
    q.use_edns(0)
    r = dns.message.from_wire(raw_udp(q.to_wire(), cserver.addr()) or b"")
    assert r.rcode() == dns.rcode.FORMERR


def test_cookie_over_tcp_and_in_truncated_answers(cserver: ServerThread) -> None:
    client = os.urandom(8)
    r = tcp(_cq("www.example.org", client), cserver.addr())
    assert r.answer and _cookie_of(r).client == client  # type: ignore[union-attr]
    q = query("big.example.org", "TXT", options=[dns.edns.CookieOption(client, b"")])
    r = udp(q, cserver.addr())
    assert r.flags & dns.flags.TC and _cookie_of(r).client == client  # type: ignore[union-attr]


def test_rotation_on_reload(cserver: ServerThread) -> None:
    """A new secret in the file (SIGHUP → reload): new cookies use it at once,
    cookies made with the old one still verify."""
    path = cserver.settings.resolved_cookie_secret_file()
    old_secret = _secret(cserver)
    client = os.urandom(8)
    old = _cookie_of(udp(_cq("mail.example.org", client), cserver.addr())).server  # type: ignore[union-attr]
    new_secret = os.urandom(16)
    path.write_text(new_secret.hex() + "\n")
    try:
        assert cserver.reload()
        r = udp(_cq("mail.example.org", client, old), cserver.addr())
        assert r.rcode() == dns.rcode.NOERROR
        c = _cookie_of(r)
        assert c is not None and c.server != old  # renewed with the new secret
        ts = struct.unpack("!I", c.server[4:8])[0]
        assert c.server == server_cookie(new_secret, client, IP4_LOCAL, ts)
        assert cserver.server.stats.cookies[cookies.VALID] > 0
        # a broken file keeps the secrets in use
        path.write_text("garbage\n")
        assert cserver.reload()
        r = udp(_cq("mail.example.org", client, c.server), cserver.addr())
        assert _cookie_of(r).server == c.server  # type: ignore[union-attr]
    finally:
        path.write_text(old_secret.hex() + "\n")
        cserver.reload()


def test_cookies_off_ignores_the_option(tmp_path: Path, demo_geoip: tuple[Path, Path]) -> None:
    settings = settings_for(TEST_ZONES, tmp_path, demo_geoip, cookies=False)
    with ServerThread(settings) as st:
        r = udp(_cq("www.example.org", os.urandom(8)), st.addr())
        assert r.answer and _cookie_of(r) is None
        q = query("www.example.org", options=[dns.edns.GenericOption(10, b"\x01")])
        assert udp(q, st.addr()).rcode() == dns.rcode.NOERROR  # an unknown option
    assert not (tmp_path / "state" / "cookie-secret").exists()


def test_workers_share_the_generated_secret(tmp_path: Path, demo_geoip: tuple[Path, Path]) -> None:
    """--workers 2: the secret is made once in the state directory, and every
    worker's cookies verify with it; SIGHUP rotates them all."""
    port = free_port()
    state = tmp_path / "state"
    args = serve_args(TEST_ZONES, port, demo_geoip, state, "--workers", "2")
    with ServerProcess(args, port, tmp_path / "server.log") as sp:
        assert sp.wait_log("worker 1 (pid", timeout=30)
        secret = cookies.read_secrets(state / "cookie-secret")[0]
        addr = ("127.0.0.1", port)
        client = os.urandom(8)
        for _ in range(20):  # new source ports: the kernel spreads them over both workers
            c = _cookie_of(udp(_cq("www.example.org", client), addr))
            assert c is not None
            ts = struct.unpack("!I", c.server[4:8])[0]
            assert c.server == server_cookie(secret, client, IP4_LOCAL, ts)
        new = os.urandom(16)
        (state / "cookie-secret").write_text(new.hex() + "\n")
        sp.signal(signal.SIGHUP)
        assert sp.wait_log("DNS cookie secret rotated", count=2, timeout=20), sp.log()
        for _ in range(10):
            c = _cookie_of(udp(_cq("www.example.org", client), addr))
            assert c is not None
            ts = struct.unpack("!I", c.server[4:8])[0]
            assert c.server == server_cookie(new, client, IP4_LOCAL, ts)


def test_explicit_secret_file_must_exist(tmp_path: Path, demo_geoip: tuple[Path, Path]) -> None:
    from geodns.errors import ConfigError
    from geodns.runtime.server import Server

    settings = settings_for(TEST_ZONES, tmp_path, demo_geoip, cookie_secret_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match="nope: cookie secret file does not exist"):
        Server(settings).load_initial()
