"""A real HTTP(S) mirror with injectable faults, for tests, the demo and the bench.

    pki = DemoPKI()                                   # a throw-away CA (trustme)
    tree = Tree.generate(200, critical=("releases/latest.iso",))
    tree.add_apt_suite("bookworm")
    async with DemoMirror(host="127.1.0.1", port=8441, hostname="mirror-a.test",
                          pki=pki, tree=tree) as m:
        m.faults.stale = 9 * 3600                     # faults change at run time
        m.set_cert("expired")                         # new handshakes get the new cert
        ...
    with MirrorThread(DemoMirror(...)) as m:          # the same from sync code
        ...

What it serves, under `base_path` (default "/"):
  * the tree: a generated in-memory `Tree` (content derived from the path, so
    100,000 objects cost no memory) or a directory on disk (`root=`);
  * timestamp files computed at request time as "now - faults.stale":
    `timestamp.txt` and `lastsync` (Unix epoch, Void/Arch), `timestamp-rfc3339.txt`,
    and `project/trace/<hostname>` plus `project/trace/master` (Debian trace);
  * apt suites added with `Tree.add_apt_suite()`: `dists/<suite>/InRelease` and
    `Release` listing index files with sizes and hashes, plus by-hash copies.

Faults (`Faults`, mutable while running): certificate kind (good, expired,
not-yet-valid, wrong-host, self-signed, untrusted, expiring), stale
timestamps, missing / short (wrong size) / corrupt (same size, other bytes)
objects, mid-sync apt indices (InRelease is new, the index files are old),
a delay before every response, 503 answers (with any reason phrase: remote
text the reports must escape), `hang` (accept TCP and never answer — fixed
at start) for handshake timeouts, `throttle` (GET bodies paced to that many
bytes per second, really: chunked writes with sleeps, over TLS) and
`no_range` (`Range:` ignored, the whole object sent with 200).

Single byte ranges (RFC 9110 §14.2: `bytes=a-b`, `a-`, `-n`) are answered 206
with Content-Range, unsatisfiable ones 416; several ranges at once are
ignored (a server may). `body_bytes` counts every GET body byte written, and
`gets` the last GETs as (path, status, bytes): what a client made the mirror
send.

trustme and cryptography are test extras; only this module needs them.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import os
import shutil
import ssl
import tempfile
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from demo.tree import Tree
from geodns.model import Config, Mirror, Pool

CertKind = Literal[
    "good", "expired", "not-yet-valid", "wrong-host", "self-signed", "untrusted", "expiring"
]
CERT_KINDS: tuple[str, ...] = CertKind.__args__  # type: ignore[attr-defined]

TIMESTAMP_FILES = {
    "timestamp.txt": "epoch",
    "lastsync": "epoch",
    "timestamp-rfc3339.txt": "rfc3339",
    "project/trace/master": "debian-trace",
}


# --------------------------------------------------------------------------- certificates


class DemoPKI:
    """A throw-away CA and the certificates of every fault kind."""

    def __init__(self) -> None:
        import trustme

        self._trustme = trustme
        self.ca = trustme.CA(organization_name="geodns demo CA")
        self._dir = Path(tempfile.mkdtemp(prefix="geodns-pki-"))
        # Removed by cleanup(), or at the latest when this object or the process goes.
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        self.ca_bundle = self._dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_bundle))

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def load(self, ctx: ssl.SSLContext, kind: str, hostnames: Iterable[str]) -> None:
        """Load a certificate of `kind` for `hostnames` into a server context."""
        names = list(hostnames)
        now = datetime.now(UTC)
        if kind == "good":
            leaf = self.ca.issue_cert(*names, not_after=now + timedelta(days=90))
        elif kind == "expired":
            leaf = self.ca.issue_cert(
                *names, not_before=now - timedelta(days=60), not_after=now - timedelta(days=3)
            )
        elif kind == "not-yet-valid":
            leaf = self.ca.issue_cert(
                *names, not_before=now + timedelta(days=2), not_after=now + timedelta(days=90)
            )
        elif kind == "expiring":
            leaf = self.ca.issue_cert(
                *names, not_before=now - timedelta(days=80), not_after=now + timedelta(days=5)
            )
        elif kind == "wrong-host":
            leaf = self.ca.issue_cert("wrong-host.invalid")
        elif kind == "untrusted":
            leaf = self._trustme.CA(organization_name="someone else").issue_cert(*names)
        elif kind == "self-signed":
            cert_pem, key_pem = _self_signed(names)
            path = self._dir / f"self-signed-{os.getpid()}-{id(ctx)}.pem"
            path.write_bytes(key_pem + cert_pem)
            ctx.load_cert_chain(str(path))
            return
        else:
            raise ValueError(f"unknown certificate kind {kind!r}; one of {', '.join(CERT_KINDS)}")
        leaf.configure_cert(ctx)

    def cleanup(self) -> None:
        self._finalizer()


def _self_signed(names: list[str]) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.now(UTC)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# --------------------------------------------------------------------------- faults and server


@dataclass
class Faults:
    """What is wrong with the mirror; change fields while it runs."""

    stale: float = 0.0  # seconds the timestamp files lag behind now
    missing: set[str] = field(default_factory=set)  # paths answered 404
    short: set[str] = field(default_factory=set)  # paths served shorter than the manifest says
    corrupt: set[str] = field(default_factory=set)  # same size, other bytes
    mid_sync: bool = False  # InRelease lists index files the mirror has not got yet
    delay: float = 0.0  # seconds before every HTTP response
    hang: bool = False  # at start: accept TCP connections and never answer
    errors: set[str] = field(default_factory=set)  # paths answered 503 (overload, not sync)
    error_reason: str = ""  # the 503's reason phrase ("" = Service Unavailable); remote text
    no_length: bool = False  # HEAD answers are chunked: no Content-Length (some servers)
    throttle: float = 0.0  # bytes per second for GET bodies; 0 = as fast as it goes
    no_range: bool = False  # ignore Range: always the whole object, 200


class DemoMirror:
    """An aiohttp HTTPS (or HTTP) mirror bound to `host:port` (port 0 = ephemeral)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hostname: str = "mirror.test",
        tls: bool = True,
        pki: DemoPKI | None = None,
        cert: str = "good",
        cert_names: Iterable[str] = (),
        tree: Tree | None = None,
        root: Path | None = None,
        base_path: str = "/",
        faults: Faults | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.hostname = hostname
        self.tls = tls
        self._own_pki = tls and pki is None
        self.pki = pki if pki is not None or not tls else DemoPKI()
        self.cert = cert
        self.cert_names = tuple(cert_names) or (hostname,)
        if root is not None:
            tree = Tree.from_dir(root)
        self.tree = tree if tree is not None else Tree()
        self.base_path = "/" + base_path.strip("/") + "/" if base_path.strip("/") else "/"
        self.faults = faults if faults is not None else Faults()
        self._ssl: ssl.SSLContext | None = None
        self._runner: web.AppRunner | None = None
        self._hang_server: asyncio.Server | None = None
        self._hung: set[asyncio.StreamWriter] = set()
        self.requests = 0  # answered HTTP requests, for tests and the bench
        self.body_bytes = 0  # GET body bytes written to clients
        self.gets: collections.deque[tuple[str, int, int]] = collections.deque(maxlen=1000)

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.hostname}:{self.port}{self.base_path}"

    @property
    def ca_bundle(self) -> Path | None:
        return self.pki.ca_bundle if self.pki else None

    def set_cert(self, kind: str) -> None:
        """Serve a certificate of another kind from the next handshake on."""
        self.cert = kind
        if self._ssl is not None and self.pki is not None:
            self.pki.load(self._ssl, kind, self.cert_names)

    async def start(self) -> DemoMirror:
        if self.tls:
            assert self.pki is not None
            self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.pki.load(self._ssl, self.cert, self.cert_names)
        if self.faults.hang:
            self._hang_server = await asyncio.start_server(self._hang, self.host, self.port)
            self.port = self._hang_server.sockets[0].getsockname()[1]
            return self
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self._ssl, reuse_address=True
        )
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server  # the asyncio.Server: the only way to learn an ephemeral port
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._hang_server is not None:
            self._hang_server.close()
            for w in list(self._hung):
                w.transport.abort()
            self._hung.clear()
            self._hang_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_pki and self.pki is not None:
            self.pki.cleanup()

    async def __aenter__(self) -> DemoMirror:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _hang(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._hung.add(writer)
        try:
            await reader.read()  # until the client gives up
        except Exception:
            pass
        finally:
            self._hung.discard(writer)
            writer.transport.abort()

    # ---------------------------------------------------------------- requests

    def _timestamp(self, fmt: str) -> bytes:
        when = datetime.now(UTC) - timedelta(seconds=self.faults.stale)
        when = when.replace(microsecond=0)
        if fmt == "epoch":
            return f"{int(when.timestamp())}\n".encode()
        if fmt == "rfc3339":
            return when.strftime("%Y-%m-%dT%H:%M:%SZ\n").encode()
        date = format_datetime(when, usegmt=True).replace("GMT", "+0000")
        started = format_datetime(when - timedelta(minutes=20), usegmt=True)
        return (
            f"Date: {date}\nDate-Started: {started.replace('GMT', '+0000')}\n"
            f"Archive serial: {when:%Y%m%d}01\nCreator: ftpsync 20180513\n"
            f"Running on host: {self.hostname}\n"
        ).encode()

    def _body(self, rel: str) -> bytes | None:
        """The bytes served for `rel`, with faults applied; None = 404."""
        f = self.faults
        if rel in f.missing:
            return None
        fmt = TIMESTAMP_FILES.get(rel)
        if fmt is None and rel == f"project/trace/{self.hostname}":
            fmt = "debian-trace"
        if fmt is not None:
            return self._timestamp(fmt)
        if rel not in self.tree.files:
            return None
        if f.mid_sync and rel.startswith("dists/") and not rel.endswith(("InRelease", "Release")):
            # The archive moved on: InRelease is new, these files are last sync's.
            if "/by-hash/" in rel:
                return None
            return self.tree.content(rel) + b"\nold"
        data = self.tree.content(rel)
        if rel in f.short:
            return data[: len(data) // 2]
        if rel in f.corrupt:
            return bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        return data

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.faults.delay:
            await asyncio.sleep(self.faults.delay)
        self.requests += 1
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        path = request.path
        if not path.startswith(self.base_path):
            return web.Response(status=404)
        rel = path[len(self.base_path) :]
        f = self.faults
        if rel in f.errors:
            return web.Response(status=503, reason=f.error_reason or None, text="busy\n")
        tf = self.tree.files.get(rel)
        if request.method == "HEAD" and f.no_length and self._body(rel) is not None:
            sresp = web.StreamResponse(status=200)
            sresp.enable_chunked_encoding()
            await sresp.prepare(request)
            return sresp
        if (
            request.method == "HEAD"
            and tf is not None
            and tf.data is None
            and rel not in f.missing
            and rel not in f.short
        ):
            # Fast path for generated objects: no body to build for a HEAD.
            sresp = web.StreamResponse(status=200)
            sresp.content_length = tf.size
            sresp.headers["Last-Modified"] = format_datetime(
                datetime.fromtimestamp(tf.mtime, UTC), usegmt=True
            )
            await sresp.prepare(request)
            return sresp
        body = self._body(rel)
        if body is None:
            return web.Response(status=404, text="not found\n")
        headers = {}
        if tf is not None:
            headers["Last-Modified"] = format_datetime(
                datetime.fromtimestamp(tf.mtime, UTC), usegmt=True
            )
        status = 200
        if not f.no_range:
            headers["Accept-Ranges"] = "bytes"
            span = byte_range(request.headers.get("Range"), len(body))
            if isinstance(span, str):  # unsatisfiable
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
            if span is not None:
                first, last = span
                headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
                body, status = body[first : last + 1], 206
        if request.method == "GET" and f.throttle > 0:
            return await self._paced(request, rel, status, headers, body)
        if request.method == "GET":
            self.body_bytes += len(body)
            self.gets.append((rel, status, len(body)))
        return web.Response(
            status=status, body=body, headers=headers, content_type="application/octet-stream"
        )

    async def _paced(
        self, request: web.Request, rel: str, status: int, headers: dict[str, str], body: bytes
    ) -> web.StreamResponse:
        """Write `body` at `faults.throttle` bytes per second: chunks of about a
        twentieth of a second's worth, each sent when the rate allows. The rate
        is re-read per chunk, so lifting the throttle speeds up a running transfer."""
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_type = "application/octet-stream"
        resp.content_length = len(body)
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        sent = base_sent = 0
        base_time = loop.time()
        rate = self.faults.throttle
        try:
            while sent < len(body):
                if self.faults.throttle != rate:  # changed while sending: pace from here
                    rate, base_sent, base_time = self.faults.throttle, sent, loop.time()
                step = len(body) - sent if rate <= 0 else max(1024, min(16384, int(rate / 20)))
                part = body[sent : sent + step]
                await resp.write(part)
                sent += len(part)
                self.body_bytes += len(part)
                if rate > 0:
                    wait = base_time + (sent - base_sent) / rate - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client closed (it had enough): stop sending
        finally:
            self.gets.append((rel, status, sent))
        return resp


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) of a single `Range: bytes=...` (RFC 9110 §14.1.2), clamped
    to `size`; "unsatisfiable" for a range starting past the end; None to
    serve the whole object (no Range, several ranges, or syntax we ignore)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first_text, sep, last_text = header[6:].strip().partition("-")
    if not sep or not (first_text + last_text).isdigit():
        return None  # also "bytes=-": neither end given
    if not first_text:  # suffix: the last n bytes
        n = int(last_text)
        if n == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1) if size else "unsatisfiable"
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # invalid: RFC 9110 says ignore it
    if first >= size:
        return "unsatisfiable"
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


def mirror_entry(
    name: str,
    mirror: DemoMirror,
    *,
    also: Iterable[DemoMirror] = (),
    enabled: bool = True,
    weight: int = 100,
) -> Mirror:
    """A config `Mirror` for a running DemoMirror (plus others sharing its URL,
    e.g. the same port on ::1 for an IPv6 address)."""
    addrs = [ipaddress.ip_address(m.host) for m in (mirror, *also)]
    return Mirror(
        name=name,
        url=mirror.url,
        ipv4=tuple(a for a in addrs if isinstance(a, ipaddress.IPv4Address)),
        ipv6=tuple(a for a in addrs if isinstance(a, ipaddress.IPv6Address)),
        enabled=enabled,
        weight=weight,
    )


def demo_config(pools: Iterable[Pool], root: Path) -> Config:
    """A Config holding just these pools (no zones), for tests and the demo."""
    return Config(zones=(), pools={p.name: p for p in pools}, root=root, digest="demo")


class MirrorThread:
    """Run a DemoMirror on its own event loop in a daemon thread (for sync code)."""

    def __init__(self, mirror: DemoMirror, *, start_timeout: float = 15.0) -> None:
        self.mirror = mirror
        self.start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> DemoMirror:
        self._thread = threading.Thread(
            target=self._run, name=f"demomirror-{self.mirror.hostname}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(self.start_timeout):
            raise RuntimeError(f"demo mirror {self.mirror.hostname} did not start in time")
        if self._error is not None:
            self._thread.join(5)
            raise self._error
        return self.mirror

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.mirror.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.mirror.stop()

    def call(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on the mirror's loop (e.g. `m.call(m.mirror.set_cert, "expired")`)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # loop already closed
        if self._thread is not None:
            self._thread.join(15)

    def __enter__(self) -> DemoMirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main() -> None:  # pragma: no cover - manual use
    """`python -m demo.mirror --host 127.0.0.1 --port 8441 --fault stale=36000`."""
    import argparse

    ap = argparse.ArgumentParser(description=_main.__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8441)
    ap.add_argument("--hostname", default="mirror.test")
    ap.add_argument("--http", action="store_true", help="plain HTTP instead of HTTPS")
    ap.add_argument("--cert", default="good", choices=CERT_KINDS)
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--stale", type=float, default=0.0, help="seconds behind")
    ap.add_argument("--apt", action="append", default=[], help="apt suite to serve")
    ap.add_argument("--throttle", type=float, default=0.0, help="GET bodies at bytes/second")
    ap.add_argument("--no-range", action="store_true", help="ignore Range (always 200)")
    args = ap.parse_args()
    tree = Tree.generate(args.objects)
    for suite in args.apt:
        tree.add_apt_suite(suite)
    mirror = DemoMirror(
        host=args.host,
        port=args.port,
        hostname=args.hostname,
        tls=not args.http,
        cert=args.cert,
        tree=tree,
        faults=Faults(stale=args.stale, throttle=args.throttle, no_range=args.no_range),
    )

    async def serve() -> None:
        async with mirror:
            print(f"serving {mirror.url} on {args.host}:{mirror.port}", flush=True)
            if mirror.ca_bundle:
                print(f"CA bundle: {mirror.ca_bundle}", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":  # pragma: no cover
    _main()
