"""Test helpers: real servers on ephemeral loopback ports, and DNS clients.

`ServerThread` runs a whole `geodns.runtime.server.Server` on its own uvloop in a
thread (so dnspython's blocking client can talk to it from the test);
`ServerProcess` runs `geodns serve` as a real process for signal tests.
Both always stop what they start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from geodns.runtime.server import Server
from geodns.settings import ServerSettings

REPO = Path(__file__).resolve().parent.parent


class ServerThread:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.server = Server(settings)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> ServerThread:
        self.server.load_initial()
        self.thread = threading.Thread(target=self._run, name="geodns-test-server", daemon=True)
        self.thread.start()
        if not self.ready.wait(15):
            raise RuntimeError("server did not start within 15 s")
        if self.error:
            raise self.error
        return self

    def _run(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as e:  # noqa: BLE001
            self.error = e
            self.ready.set()
            return
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.server.stop())
            self.loop.close()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def reload(self) -> bool:
        return bool(self.call(self.server.reload()))

    def poll_health(self) -> None:
        self.call(self.server.poll_health())

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(15)

    @property
    def port(self) -> int:
        return self.server.bound[0][1]

    def addr(self, i: int = 0) -> tuple[str, int]:
        return self.server.bound[i]


def settings_for(
    config: Path, tmp: Path, geoip: tuple[Path, Path] | None = None, **kw: Any
) -> ServerSettings:
    listen = kw.pop("listen", [("127.0.0.1", 0)])
    # Tests send many queries from one address: rate limiting only where a
    # test asks for it (tests/test_rrl.py, tests/test_cookies.py).
    kw.setdefault("rrl_rate", 0)
    return ServerSettings(
        config_dir=config,
        listen=listen,
        geoip_asn=geoip[0] if geoip else None,
        geoip_city=geoip[1] if geoip else None,
        geoip_dirs=(tmp / "no-geoip",) if geoip is None else None,
        state_dir=tmp / "state",
        store_url=kw.pop("store_url", ""),
        **kw,
    )


# ----------------------------------------------------------------------------- clients


def query(
    name: str,
    rdtype: str = "A",
    *,
    edns: int | None = None,
    ecs: str | None = None,
    rd: bool = True,
    payload: int = 1232,
    options: list[Any] | None = None,
) -> dns.message.Message:
    opts = list(options or [])
    if ecs is not None:
        addr, _, plen = ecs.partition("/")
        opts.append(dns.edns.ECSOption(addr, int(plen) if plen else None))
    if opts and edns is None:
        edns = 0
    use_edns: int | bool = False if edns is None else edns
    q = dns.message.make_query(
        name, rdtype, use_edns=use_edns, payload=payload, options=opts or None
    )
    if not rd:
        q.flags &= ~dns.flags.RD
    return q


def udp(q: dns.message.Message, addr: tuple[str, int], timeout: float = 3) -> dns.message.Message:
    return dns.query.udp(q, addr[0], port=addr[1], timeout=timeout, ignore_trailing=False)


def tcp(q: dns.message.Message, addr: tuple[str, int], timeout: float = 3) -> dns.message.Message:
    return dns.query.tcp(q, addr[0], port=addr[1], timeout=timeout)


def raw_udp(packet: bytes, addr: tuple[str, int], timeout: float = 2) -> bytes | None:
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, addr)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def raw_tcp_many(packets: list[bytes], addr: tuple[str, int], timeout: float = 3) -> list[bytes]:
    """Send all queries in one write (pipelined) and read as many answers."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(b"".join(struct.pack("!H", len(p)) + p for p in packets))
        out = []
        buf = b""
        deadline = time.monotonic() + timeout
        while len(out) < len(packets) and time.monotonic() < deadline:
            chunk = s.recv(65535)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                out.append(buf[2 : 2 + n])
                buf = buf[2 + n :]
        return out


def rrset_texts(section: list[Any]) -> list[str]:
    """One line per record, sorted: whole sections compare as lists."""
    return sorted(line for rrset in section for line in rrset.to_text().splitlines())


def ecs_of(msg: dns.message.Message) -> dns.edns.ECSOption | None:
    for o in msg.options:
        if isinstance(o, dns.edns.ECSOption):
            return o
    return None


# ----------------------------------------------------------------------------- processes


class ServerProcess:
    """`geodns serve` as a real process (for SIGHUP and crash tests)."""

    def __init__(
        self, args: list[str], port: int, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self.port = port
        self.logpath = log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.logfile = open(self.logpath, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geodns.cli", *self.args],
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=self.env,
            start_new_session=True,  # its own process group: __exit__ stops workers too
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            if "listening on" in self.log():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log()}")

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGHUP) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait_log(self, text: str, count: int = 1, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return True
            time.sleep(0.05)
        return False

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            try:  # whatever is left of the group (workers, forked builds)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.logfile.close()


def serve_args(
    zones: Path, port: int, geoip: tuple[Path, Path], state: Path, *extra: str
) -> list[str]:
    """`geodns serve` on 127.0.0.1:port with generated GeoIP and no health store."""
    return [
        "serve",
        "--config",
        str(zones),
        "--listen",
        f"127.0.0.1:{port}",
        "--geoip-asn",
        str(geoip[0]),
        "--geoip-city",
        str(geoip[1]),
        "--state-dir",
        str(state),
        "--store",
        "none",
        "--rrl-rate",  # tests query fast from one address; a later --rrl-rate wins
        "0",
        *extra,
    ]


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host`, for a server started later.

    Picked below the kernel's ephemeral range: a port the kernel handed to
    bind(0) can be given to some outgoing connection before our server binds
    it (CI once lost a test to exactly that). Never the same port twice per
    run; bounded tries.
    """
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    lo, _ = _ephemeral_range()
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(max(1024, lo - 12000), lo)
        if port in _handed_out:
            continue
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(fam, kind) as s:
                    s.bind((host, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free UDP+TCP port on {host}")


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def silence_region(store: Any, region: str, ago: timedelta) -> None:
    """Make `region`'s checker look silent since `ago` (its states' last checks)."""
    from sqlalchemy import update

    from geodns.store.schema import AddressStateRow

    with store._session("test") as session:
        session.execute(
            update(AddressStateRow)
            .where(AddressStateRow.region == region)
            .values(checked_at=datetime.now(UTC) - ago)
        )
