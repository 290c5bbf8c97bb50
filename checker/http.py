"""A small HTTP/1.1 keep-alive client that connects to one *address*.

Why not aiohttp: the probes must reach a given IP while sending the mirror's
name as SNI and Host, and the objects probe needs thousands of HEADs per
second from one process. aiohttp's client reached roughly a third of that on
the 2-core reference machine (measured with bench/checker_heads.py), most of it
spent in per-request machinery we do not need. This client is an asyncio
Protocol per connection with a byte-level parser: HEAD and GET, Content-Length,
chunked and close-delimited bodies, keep-alive, optional pipelining, a
per-request timeout, and a byte limit per response (`stop_after`: the
connection is closed once that many body bytes are read). No redirects,
cookies, compression or proxies — a health check wants to see exactly what
the mirror answers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

USER_AGENT = "geodns-checker/0.1"
_MAX_HEAD = 64 * 1024


class HTTPError(Exception):
    """A transport or protocol failure; `.reason` is text a person understands."""

    def __init__(
        self, reason: str, *, timeout: bool = False, refused: bool = False, connect: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout
        self.refused = refused
        self.connect = connect  # no connection could be made (vs. a failed request)
        self.retry = False  # the request never reached a live connection: resend it
        # a timeout mid-body: the head that did arrive (status, headers), else None
        self.response: Response | None = None


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps the last value
    body: bytes = b""
    version: str = "1.1"
    truncated: bool = False  # `stop_after` bytes were read and the rest left unread

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None or not value.strip().isdigit():
            return None
        return int(value)


@dataclass(slots=True)
class _Pending:
    method: str
    future: asyncio.Future[Response]
    max_body: int
    sink: Callable[[bytes], None] | None
    limit: int | None = None  # stop_after: body bytes to read at most
    # parser state for this response
    response: Response | None = None
    mode: str = ""  # "none" | "length" | "chunked" | "close"
    remaining: int = 0
    chunk_state: str = "size"  # size | data | data_crlf | trailer
    body: bytearray = field(default_factory=bytearray)
    received: int = 0


class _Connection(asyncio.Protocol):
    """One TCP/TLS connection; responses are matched to requests in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: deque[_Pending] = deque()
        self.reusable = True
        self.closed = False
        self.served = 0  # complete responses on this connection
        self.tls_object: ssl.SSLObject | None = None

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.tls_object = transport.get_extra_info("ssl_object")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        # A close-delimited body ends here; anything else still waiting has failed.
        if self.pending and self.pending[0].mode == "close" and self.pending[0].response:
            self._finish(self.pending.popleft())
        while self.pending:
            p = self.pending.popleft()
            if not p.future.done():
                why = f": {exc}" if exc else ""
                err = HTTPError(f"connection closed by the mirror{why}")
                # Nothing of the answer arrived on a connection that had served
                # others: the server closed an idle or exhausted keep-alive
                # connection (or dropped pipelined requests). Safe to resend.
                err.retry = p.response is None and self.served > 0
                p.future.set_exception(err)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._parse()
        except HTTPError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # let connection_lost run

    # ---------------------------------------------------------------- requests

    def send(
        self,
        method: str,
        target: str,
        host: str,
        *,
        max_body: int,
        sink: Callable[[bytes], None] | None,
        headers: dict[str, str] | None = None,
        limit: int | None = None,
    ) -> asyncio.Future[Response]:
        fut: asyncio.Future[Response] = self.loop.create_future()
        if self.closed or self.transport is None:
            err = HTTPError("connection already closed")
            err.retry = True
            fut.set_exception(err)
            return fut
        self.pending.append(_Pending(method, fut, max_body, sink, limit))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.transport.write(
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Accept: */*\r\n{extra}\r\n".encode("latin-1")
        )
        return fut

    def partial(self, fut: asyncio.Future[Response]) -> Response | None:
        """The head received so far for the request behind `fut`, if any."""
        for p in self.pending:
            if p.future is fut:
                return p.response
        return None

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # ---------------------------------------------------------------- parser

    def _fail(self, exc: HTTPError) -> None:
        while self.pending:
            p = self.pending.popleft()
            if not p.future.done():
                p.future.set_exception(exc)
        self.abort()

    def _finish(self, p: _Pending) -> None:
        assert p.response is not None
        self.served += 1
        p.response.body = bytes(p.body)
        if not p.future.done():
            p.future.set_result(p.response)

    def _parse(self) -> None:
        buf = self.buf
        while self.pending:
            p = self.pending[0]
            if p.response is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise HTTPError("response header larger than 64 KiB")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                resp = self._head(head)
                if 100 <= resp.status < 200:
                    continue  # interim response (100 Continue); the real one follows
                p.response = resp
                h = resp.headers
                conn = h.get("connection", "").lower()
                if "close" in conn or (resp.version == "1.0" and "keep-alive" not in conn):
                    self.reusable = False
                if p.method == "HEAD" or resp.status in (204, 304):
                    p.mode = "none"
                elif "chunked" in h.get("transfer-encoding", "").lower():
                    p.mode = "chunked"
                elif resp.content_length is not None:
                    p.mode = "length"
                    p.remaining = resp.content_length
                else:
                    p.mode = "close"
                    self.reusable = False
            if p.mode == "none":
                self.pending.popleft()
                self._finish(p)
                continue
            if p.mode == "length":
                if not self._take(p):
                    self._stop_if_limited(p)
                    return
                self.pending.popleft()
                self._finish(p)
                continue
            if p.mode == "close":
                if buf:
                    take = len(buf) if p.limit is None else min(len(buf), p.limit - p.received)
                    self._body(p, bytes(buf[:take]))
                    buf.clear()
                self._stop_if_limited(p)
                return
            if not self._chunked(p):
                self._stop_if_limited(p)
                return
            self.pending.popleft()
            self._finish(p)

    def _stop_if_limited(self, p: _Pending) -> None:
        """`stop_after` bytes are in: finish the response as truncated and close
        the connection, which is the only way to not read the rest."""
        if p.limit is None or p.received < p.limit or not self.pending:
            return
        self.pending.popleft()
        assert p.response is not None
        p.response.truncated = True
        self._finish(p)
        self.buf.clear()
        self.abort()

    def _take(self, p: _Pending) -> bool:
        """Consume up to `p.remaining` body bytes; True when none remain."""
        buf = self.buf
        take = min(p.remaining, len(buf))
        if p.limit is not None:
            take = min(take, p.limit - p.received)
        if take:
            self._body(p, bytes(buf[:take]))
            del buf[:take]
            p.remaining -= take
        return not p.remaining

    def _chunked(self, p: _Pending) -> bool:
        """Consume chunked body bytes; True when the body is complete."""
        buf = self.buf
        while True:
            if p.chunk_state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return False
                line = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    p.remaining = int(line, 16)
                except ValueError:
                    raise HTTPError(f"bad chunk size {line[:20]!r}") from None
                p.chunk_state = "data" if p.remaining else "trailer"
            elif p.chunk_state == "data":
                if not self._take(p):
                    return False
                p.chunk_state = "data_crlf"
            elif p.chunk_state == "data_crlf":
                if len(buf) < 2:
                    return False
                del buf[:2]
                p.chunk_state = "size"
            else:  # trailer section: lines until an empty one
                end = buf.find(b"\r\n")
                if end < 0:
                    return False
                del buf[: end + 2]
                if end == 0:
                    return True

    def _body(self, p: _Pending, data: bytes) -> None:
        p.received += len(data)
        if p.sink is not None:
            p.sink(data)
            return
        if p.received > p.max_body:
            raise HTTPError(f"response body larger than {p.max_body} bytes")
        p.body += data

    @staticmethod
    def _head(head: bytes) -> Response:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HTTPError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        version = parts[0][5:].decode("latin-1")  # 1.0 means no keep-alive unless asked for
        return Response(int(parts[1]), reason, headers, version=version)


class HTTPClient:
    """Requests to one mirror address over a bounded pool of keep-alive connections.

    `address`/`port` is where to connect; `host` is the Host header and
    `server_hostname` the SNI (both the mirror URL's name). `pipeline` > 1
    sends that many requests on a connection before the first answer arrives
    (HTTP/1.1 pipelining; safe for HEAD on nginx/Apache, off by default).
    """

    def __init__(
        self,
        address: str,
        port: int,
        *,
        host: str,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,
        max_connections: int = 8,
        pipeline: int = 1,
    ) -> None:
        self.address = address
        self.port = port
        self.host = host
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname if ssl_context is not None else None
        self.timeout = timeout
        self.max_connections = max(1, max_connections)
        self.pipeline = max(1, pipeline)
        self._conns: list[_Connection] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._connecting = 0
        self._closed = False

    @property
    def where(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{addr}:{self.port}"

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, proto = await loop.create_connection(
                    lambda: _Connection(loop),
                    self.address,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.server_hostname,
                    ssl_handshake_timeout=self.timeout if self.ssl_context else None,
                )
        except TimeoutError:
            raise HTTPError(
                f"connect to {self.where} timed out after {self.timeout:g}s",
                timeout=True,
                connect=True,
            ) from None
        except ConnectionRefusedError:
            raise HTTPError(
                f"connection to {self.where} refused (nothing listening)",
                refused=True,
                connect=True,
            ) from None
        except ssl.SSLError as exc:
            raise HTTPError(
                f"TLS handshake with {self.where} failed: {exc.reason}", connect=True
            ) from None
        except OSError as exc:
            raise HTTPError(
                f"connect to {self.where} failed: {exc.strerror or exc}", connect=True
            ) from None
        return proto

    async def _acquire(self) -> _Connection:
        while True:
            if self._closed:
                raise HTTPError("client closed")
            best: _Connection | None = None
            for c in self._conns:
                if c.closed or not c.reusable:
                    continue
                if len(c.pending) < self.pipeline and (
                    best is None or len(c.pending) < len(best.pending)
                ):
                    best = c
                    if not c.pending:
                        break
            if best is not None and not best.pending:
                return best
            if len(self._conns) + self._connecting < self.max_connections:
                self._connecting += 1
                try:
                    conn = await self._connect()
                except BaseException:
                    self._wake()  # the slot is free again: a waiter may try its own connect
                    raise
                finally:
                    self._connecting -= 1
                self._conns.append(conn)
                return conn
            if best is not None:
                return best
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()

    def _release(self, conn: _Connection) -> None:
        if conn.closed or not conn.reusable:
            # Out of the pool at once, even with requests still pending on it (an
            # aborted connection fails them from connection_lost): a dying
            # connection must not hold one of the max_connections slots.
            if conn in self._conns:
                self._conns.remove(conn)
            if not conn.pending:
                conn.close()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                break

    async def request(
        self,
        method: str,
        target: str,
        *,
        max_body: int = 1 << 20,
        sink: Callable[[bytes], None] | None = None,
        headers: dict[str, str] | None = None,
        stop_after: int | None = None,
    ) -> Response:
        """Send one request; `target` must already be percent-encoded.

        `headers` are sent beside Host, User-Agent and Accept. With
        `stop_after`, at most that many body bytes are read (and handed to
        `sink`); a longer body ends the response there, `truncated`, and
        closes its connection.

        GET and HEAD are idempotent, so a request lost to a keep-alive
        connection closing under it is sent once more on a fresh connection.
        """
        if stop_after is not None and stop_after < 1:
            raise ValueError("stop_after must be at least 1")
        try:
            return await self._request(method, target, max_body, sink, headers, stop_after)
        except HTTPError as exc:
            if not exc.retry:
                raise
        return await self._request(method, target, max_body, sink, headers, stop_after)

    async def _request(
        self,
        method: str,
        target: str,
        max_body: int,
        sink: Callable[[bytes], None] | None,
        headers: dict[str, str] | None,
        stop_after: int | None,
    ) -> Response:
        conn = await self._acquire()
        fut = conn.send(
            method,
            target,
            self.host,
            max_body=max_body,
            sink=sink,
            headers=headers,
            limit=stop_after,
        )
        try:
            async with asyncio.timeout(self.timeout):
                return await fut
        except TimeoutError:
            partial = conn.partial(fut)
            # The answer may still come and would be read as the next one's: drop it.
            conn.abort()
            err = HTTPError(
                f"{method} {target} on {self.where}: no answer within {self.timeout:g}s",
                timeout=True,
            )
            err.response = partial
            raise err from None
        except HTTPError as exc:
            err = HTTPError(
                f"{method} {target} on {self.where}: {exc.reason}",
                timeout=exc.timeout,
                refused=exc.refused,
            )
            err.retry = exc.retry
            raise err from None
        finally:
            self._release(conn)

    async def head(self, target: str) -> Response:
        return await self.request("HEAD", target)

    async def get(
        self,
        target: str,
        *,
        max_body: int = 1 << 20,
        sink: Callable[[bytes], None] | None = None,
        headers: dict[str, str] | None = None,
        stop_after: int | None = None,
    ) -> Response:
        return await self.request(
            "GET", target, max_body=max_body, sink=sink, headers=headers, stop_after=stop_after
        )

    async def close(self) -> None:
        self._closed = True
        for c in self._conns:
            c.close()
        self._conns.clear()
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()
        await asyncio.sleep(0)  # let transports run their close callbacks

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
