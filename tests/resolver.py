"""A real caching resolver (Unbound) in front of geodns, for tests.

Clients do not see the authoritative's record order: a caching resolver keeps
one answer per ECS scope for the TTL and reorders it for every client
(Unbound's `rrset-roundrobin`). `Unbound` runs the Debian `unbound` binary as
a foreground child process on a loopback port with a generated configuration
that does what a public resolver with Client Subnet does:

- `module-config: "subnetcache validator iterator"`: the ECS cache, keyed by
  the scope the authoritative returns;
- `send-client-subnet` for the authoritative's address: a client's own ECS
  option is passed on (truncated to `max-client-subnet-ipv4: 24`), so one
  resolver can stand for clients in any network;
- `rrset-roundrobin: yes`: every answer, also from the cache, starts at a
  different record;
- a `stub-zone` for the test zone at 127.0.0.1@PORT (with
  `do-not-query-localhost: no`); the zone is `domain-insecure` and there is no
  trust anchor, so the validator has nothing to check.

`QueryTap` is a UDP relay put between Unbound and geodns that records every
query Unbound sends (name, type, ECS option): it shows what the authoritative
received. `ask_many` sends a batch of queries with a bounded window.

Everything binds to 127.0.0.1 and everything started is stopped again.
"""

from __future__ import annotations

import os
import random
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rdataclass
import dns.rdatatype

from .util import free_port

UNBOUND_PATHS = ("/usr/sbin/unbound", "/usr/local/sbin/unbound")


def unbound_binary() -> str | None:
    """The unbound daemon, if installed (tests/run installs Debian's package)."""
    found = shutil.which("unbound")
    if found:
        return found
    return next((p for p in UNBOUND_PATHS if os.access(p, os.X_OK)), None)


def unbound_config(
    *,
    port: int,
    directory: Path,
    zone: str,
    upstream: tuple[str, int],
    ecs_tree_size: int = 4096,
) -> str:
    """The unbound.conf text (see the module docstring for why each part)."""
    host, uport = upstream
    zone = zone.rstrip(".")
    return f"""\
server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    outgoing-interface: 127.0.0.1
    access-control: 127.0.0.0/8 allow
    num-threads: 1
    so-reuseport: no
    # a test process: no chroot, no privilege change, no pid file, log to stderr
    username: ""
    chroot: ""
    directory: "{directory}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    log-time-ascii: yes
    verbosity: 1
    identity: "geodns-test-unbound"

    module-config: "subnetcache validator iterator"
    rrset-roundrobin: yes
    send-client-subnet: {host}
    max-client-subnet-ipv4: 24
    max-client-subnet-ipv6: 56
    # answers kept per name and type, one per ECS scope (default 100)
    max-ecs-tree-size-ipv4: {ecs_tree_size}
    max-ecs-tree-size-ipv6: {ecs_tree_size}
    msg-cache-size: 32m
    rrset-cache-size: 32m
    prefetch: no
    serve-expired: no
    domain-insecure: "{zone}"
    val-permissive-mode: yes
    do-not-query-localhost: no

remote-control:
    control-enable: no

stub-zone:
    name: "{zone}"
    stub-addr: {host}@{uport}
"""


class UnboundProcess:
    """`unbound -d -c <conf>` on 127.0.0.1:`port`, as a context manager: the
    configuration checked, the process started in its own session, ready when
    it answers, stopped (TERM, then KILL) at the end. `Unbound` below and
    tests/validator.py write the configurations."""

    def __init__(self, workdir: Path, port: int, conf: str) -> None:
        binary = unbound_binary()
        if binary is None:
            raise RuntimeError("unbound is not installed (tests/run installs it)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.conf = self.workdir / "unbound.conf"
        self.logpath = self.workdir / "unbound.log"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def log(self) -> str:
        return self.logpath.read_text(errors="replace") if self.logpath.exists() else ""

    def __enter__(self) -> Unbound:
        checkconf = Path(self.binary).with_name("unbound-checkconf")
        if checkconf.exists():
            r = subprocess.run(
                [str(checkconf), str(self.conf)], capture_output=True, text=True, timeout=30
            )
            if r.returncode != 0:
                raise RuntimeError(f"unbound-checkconf: {r.stdout}{r.stderr}")
        self._logfile = open(self.logpath, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, "-d", "-c", str(self.conf)],
            stdout=self._logfile,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        try:
            self._wait_ready(20.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready when it answers `id.server CH TXT` (answered locally, no upstream)."""
        q = dns.message.make_query("id.server", "TXT", rdclass=dns.rdataclass.CH)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited ({self.proc.returncode}): {self.log()}")
            try:
                r = udp_query(q, self.addr, timeout=0.3)
            except (dns.exception.Timeout, OSError):
                continue
            if r.answer:
                return
        raise RuntimeError(f"unbound did not answer within {timeout:.0f} s: {self.log()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc = None
        if getattr(self, "_logfile", None) is not None:
            self._logfile.close()


class Unbound(UnboundProcess):
    """The caching resolver with Client Subnet of the module docstring."""

    def __init__(
        self,
        workdir: Path,
        *,
        zone: str,
        upstream: tuple[str, int],
        ecs_tree_size: int = 4096,
    ) -> None:
        port = free_port()
        conf = unbound_config(
            port=port,
            directory=Path(workdir),
            zone=zone,
            upstream=upstream,
            ecs_tree_size=ecs_tree_size,
        )
        super().__init__(workdir, port, conf)


# ----------------------------------------------------------------------------- tap


@dataclass(frozen=True, slots=True)
class Seen:
    """One query the relay passed to the authoritative."""

    name: str  # lower case, no trailing dot
    rdtype: str
    ecs: tuple[str, int] | None  # (address, source prefix) of the ECS option, if any


class QueryTap:
    """UDP relay 127.0.0.1:port → upstream that records each query it forwards.

    One upstream socket per query (so answers go back to the right sender
    without tracking ids); a query unanswered for `stale` seconds is dropped.
    """

    def __init__(self, upstream: tuple[str, int], *, stale: float = 5.0) -> None:
        self.upstream = upstream
        self.stale = stale
        self.seen: list[Seen] = []
        self.unparsed = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._stop = False

    @property
    def addr(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return (str(host), int(port))

    def queries(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def __enter__(self) -> QueryTap:
        self._thread = threading.Thread(target=self._run, name="query-tap", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(10)
        for s in (self._sock, self._wake_r, self._wake_w):
            s.close()

    def _record(self, packet: bytes) -> None:
        try:
            msg = dns.message.from_wire(packet)
        except dns.exception.DNSException:
            with self._lock:
                self.unparsed += 1
            return
        if not msg.question:
            return
        q = msg.question[0]
        ecs = None
        for opt in msg.options:
            if isinstance(opt, dns.edns.ECSOption):
                ecs = (str(opt.address), int(opt.srclen))
        seen = Seen(
            q.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(q.rdtype), ecs
        )
        with self._lock:
            self.seen.append(seen)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        pending: dict[socket.socket, tuple[tuple[str, int], float]] = {}
        try:
            while not self._stop:
                for key, _ in sel.select(timeout=0.5):
                    if key.data == "wake":
                        continue
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._sock:
                        self._from_client(sel, pending)
                    else:
                        self._from_upstream(sock, sel, pending)
                now = time.monotonic()
                for s, (_, since) in list(pending.items()):
                    if now - since > self.stale:
                        sel.unregister(s)
                        s.close()
                        del pending[s]
        finally:
            for s in pending:
                s.close()
            sel.close()

    def _from_client(
        self,
        sel: selectors.BaseSelector,
        pending: dict[socket.socket, tuple[tuple[str, int], float]],
    ) -> None:
        for _ in range(256):  # drain what is queued, bounded
            try:
                packet, src = self._sock.recvfrom(65535)
            except BlockingIOError:
                return
            self._record(packet)
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.setblocking(False)
            up.connect(self.upstream)
            try:
                up.send(packet)
            except OSError:
                up.close()
                continue
            sel.register(up, selectors.EVENT_READ, "up")
            pending[up] = (src, time.monotonic())

    def _from_upstream(
        self,
        up: socket.socket,
        sel: selectors.BaseSelector,
        pending: dict[socket.socket, tuple[tuple[str, int], float]],
    ) -> None:
        src, _ = pending.pop(up)
        sel.unregister(up)
        try:
            answer = up.recv(65535)
            self._sock.sendto(answer, src)
        except OSError:
            pass
        finally:
            up.close()


# ----------------------------------------------------------------------------- clients


def ecs_query(name: str, rdtype: str, subnet: str | None) -> dns.message.Message:
    """A recursive query (RD=1) with EDNS and, if given, an ECS option for `subnet`."""
    opts: list[dns.edns.Option] = []
    if subnet is not None:
        addr, _, plen = subnet.partition("/")
        opts.append(dns.edns.ECSOption(addr, int(plen)))
    return dns.message.make_query(name, rdtype, use_edns=0, payload=1232, options=opts)


def udp_query(
    q: dns.message.Message, addr: tuple[str, int], timeout: float = 3.0
) -> dns.message.Message:
    return dns.query.udp(q, addr[0], port=addr[1], timeout=timeout)


# Batches of thousands of queries: dnspython's message objects cost about a
# millisecond per answer on a busy CI machine, so the batch path builds and
# reads the few fields it needs by hand (cross-checked against dnspython in
# test_resolver_locality).

_TYPES = {"A": 1, "AAAA": 28}


def query_wire(name: str, rdtype: str, subnet: str | None, qid: int = 0) -> bytes:
    """Wire form of a recursive IN query with EDNS (1232) and an optional ECS
    option (RFC 7871: address truncated to the source prefix)."""
    qname = b"".join(
        bytes([len(label)]) + label.encode("ascii") for label in name.rstrip(".").split(".")
    )
    opts = b""
    if subnet is not None:
        net = ip_network(subnet, strict=True)
        plen = net.prefixlen
        body = struct.pack("!HBB", 1 if net.version == 4 else 2, plen, 0)
        body += net.network_address.packed[: (plen + 7) // 8]
        opts = struct.pack("!HH", 8, len(body)) + body
    return (
        struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1)
        + qname
        + b"\x00"
        + struct.pack("!HH", _TYPES[rdtype], 1)
        + b"\x00"
        + struct.pack("!HHIH", 41, 1232, 0, len(opts))
        + opts
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """What the tests read from a response."""

    id: int
    rcode: int
    addresses: tuple[str, ...]  # A/AAAA of the answer section, in wire order
    scope: int | None  # ECS scope prefix, None without an ECS option


def _skip_name(data: bytes, off: int) -> int:
    for _ in range(128):
        n = data[off]
        if n & 0xC0 == 0xC0:
            return off + 2
        if n == 0:
            return off + 1
        off += 1 + n
    raise ValueError("name too long")


def parse_answer(data: bytes) -> Answer:
    """Header, answer-section addresses and the ECS scope of a response."""
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    rcode = flags & 0xF
    off = 12
    for _ in range(qd):
        off = _skip_name(data, off) + 4
    addrs: list[str] = []
    scope = None
    for i in range(an + ns + ar):
        off = _skip_name(data, off)
        rtype, _cls, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
        off += 10
        rdata = data[off : off + rdlen]
        if len(rdata) != rdlen:
            raise ValueError("truncated record")
        off += rdlen
        if i < an and rtype == 1 and rdlen == 4:
            addrs.append(str(IPv4Address(rdata)))
        elif i < an and rtype == 28 and rdlen == 16:
            addrs.append(str(IPv6Address(rdata)))
        elif rtype == 41:
            rcode |= (ttl >> 24) << 4
            o = 0
            while o + 4 <= len(rdata):
                code, length = struct.unpack_from("!HH", rdata, o)
                if code == 8 and length >= 4:
                    scope = rdata[o + 7]
                o += 4 + length
    return Answer(qid, rcode, tuple(addrs), scope)


def ask_many(
    addr: tuple[str, int],
    packets: Sequence[bytes],
    *,
    window: int = 64,
    retry_after: float = 2.0,
    tries: int = 2,
    timeout: float = 60.0,
    seed: int = 0,
) -> list[bytes | None]:
    """Send query `packets` (their ids are replaced) over one UDP socket with
    at most `window` outstanding; the responses in the same order (None for
    a query unanswered after `tries` sends, or when `timeout` runs out for
    the whole batch).

    Each query gets a random id unique among those in flight: a resolver may
    derive its rotation from the id, so sequential ids could correlate with
    the order in which the test sends its clients."""
    rng = random.Random(seed)
    out: list[bytes | None] = [None] * len(packets)
    inflight: dict[int, tuple[int, float, int, bytes]] = {}  # id -> (index, sent, sends, pkt)
    nxt = 0
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.settimeout(0.2)
        while (nxt < len(packets) or inflight) and time.monotonic() < deadline:
            while nxt < len(packets) and len(inflight) < window:
                qid = rng.randrange(65536)
                while qid in inflight:
                    qid = rng.randrange(65536)
                pkt = struct.pack("!H", qid) + packets[nxt][2:]
                s.send(pkt)
                inflight[qid] = (nxt, time.monotonic(), 1, pkt)
                nxt += 1
            try:
                data = s.recv(65535)
            except TimeoutError:
                data = b""
            if len(data) >= 12:
                (rid,) = struct.unpack_from("!H", data)
                entry = inflight.get(rid)
                # a response (QR) to this very question: same question bytes
                if entry is not None and data[2] & 0x80:
                    q = entry[3]
                    question = q[12 : _skip_name(q, 12) + 4]
                    if data[12 : 12 + len(question)].lower() == question.lower():
                        out[entry[0]] = data
                        del inflight[rid]
            now = time.monotonic()
            for qid, (idx, sent, n, pkt) in list(inflight.items()):
                if now - sent < retry_after:
                    continue
                if n >= tries:
                    del inflight[qid]  # given up: stays None
                else:
                    s.send(pkt)
                    inflight[qid] = (idx, now, n + 1, pkt)
    return out


def addresses(msg: dns.message.Message | None) -> list[str]:
    """The A/AAAA addresses of an answer, in the order the server sent them."""
    if msg is None:
        return []
    return [
        str(rd.address)
        for rrset in msg.answer
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rd in rrset
    ]


def ecs_scope(msg: dns.message.Message | None) -> int | None:
    if msg is None:
        return None
    for opt in msg.options:
        if isinstance(opt, dns.edns.ECSOption):
            return int(opt.scopelen)
    return None
