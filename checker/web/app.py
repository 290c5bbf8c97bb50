"""`checker web`: the read-only status site on aiohttp.

    /                       overview per pool: ?state=down&pool=P&sort=lag&dir=desc
    /mirror/{pool}/{name}   one mirror: addresses, lag chart (7 days), TLS, probes, history
    /regions                each regional checker's last check
    /api/v1/status.json     the document `checker report --json` prints
    /healthz                200 while the store can be read, 503 (JSON) when not

Store reads and rendering run in a worker thread; the event loop only moves
bytes. Every response carries a Content-Security-Policy without scripts, as a
second line behind the templates' escaping. Errors never show a traceback or
the store's URL: the log gets the details, the page a sentence.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from geodns.model import Config

from . import render
from .data import StatusSource
from .views import Query

log = logging.getLogger("checker.web")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class PageCache:
    """Overview pages made from the current store read, one per query: viewers
    refreshing every 30 s share a render instead of each paying for one. A
    page is kept at most `seconds`, so its "5m ago" words stay true enough
    when the read itself lasts (an outage keeps the last read for hours)."""

    def __init__(self, seconds: float = 5.0, most: int = 64) -> None:
        self.seconds = seconds
        self.most = most
        self._lock = threading.Lock()
        self._of: tuple[object, object, int] | None = None  # (snapshot, outage, time slot)
        self._pages: dict[Query, str] = {}

    def _same(self, of: tuple[object, object, int]) -> bool:
        o = self._of
        return o is not None and o[0] is of[0] and o[1] is of[1] and o[2] == of[2]

    def get(self, snap: object, outage: object, query: Query, make: Callable[[], str]) -> str:
        if self.seconds <= 0:  # off (the benchmark times the render itself)
            return make()
        of = (snap, outage, int(time.monotonic() // self.seconds))
        with self._lock:
            if not self._same(of):
                self._of, self._pages = of, {}
            page = self._pages.get(query)
        if page is None:
            page = make()
            with self._lock:
                if self._same(of):
                    if len(self._pages) >= self.most:
                        self._pages.clear()
                    self._pages[query] = page
        return page


SOURCE: web.AppKey[StatusSource] = web.AppKey("source", StatusSource)
PAGES: web.AppKey[PageCache] = web.AppKey("pages", PageCache)
_TITLES = {404: "Not found", 405: "Method not allowed", 500: "Internal error"}


def _root(request: web.Request) -> str:
    """The relative way back to the site root, so the site also works below a
    reverse proxy's sub-path: "" for /regions, "../../" for /mirror/p/m."""
    # the path as the browser sent it: an escaped "/" inside a mirror name is no level
    return "../" * max(0, request.rel_url.raw_path.count("/") - 1)


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = _TITLES.get(exc.status, exc.reason)
        message = {
            404: "There is no page at this address.",
            405: "This site is read-only: only GET and HEAD are answered.",
        }.get(exc.status, title)
        response = _html(render.error_html(exc.status, title, message, root=_root(request)))
        response.set_status(exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:  # noqa: BLE001 - a page must never show a traceback
        log.exception("status page: %s failed", request.path)
        response = _html(
            render.error_html(
                500,
                _TITLES[500],
                "The page could not be made; the log says why.",
                root=_root(request),
            ),
            500,
        )
    response.headers.update(SECURITY_HEADERS)
    return response


async def overview(request: web.Request) -> web.Response:
    source = request.app[SOURCE]
    query = Query.parse(request.query)

    def page() -> str:
        snap, outage = source.snapshot()
        return request.app[PAGES].get(
            snap,
            outage,
            query,
            lambda: render.overview_html(
                snap, query, outage=outage, config=source.config, max_age=source.max_age
            ),
        )

    return _html(await asyncio.to_thread(page))


async def mirror(request: web.Request) -> web.Response:
    source = request.app[SOURCE]
    pool, name = request.match_info["pool"], request.match_info["mirror"]

    def page() -> tuple[int, str] | None:
        detail, outage = source.mirror(pool, name)
        if detail is None and outage is None:
            return None
        if detail is None:  # nothing read before the outage to show instead
            message = "The health store cannot be read right now; the log says why."
            return 503, render.error_html(503, "Store unavailable", message, root=_root(request))
        return 200, render.mirror_html(
            detail,
            outage=outage,
            config=source.config,
            max_age=source.max_age,
            root=_root(request),
        )

    answer = await asyncio.to_thread(page)
    if answer is None:
        raise web.HTTPNotFound()
    return _html(answer[1], answer[0])


async def regions(request: web.Request) -> web.Response:
    source = request.app[SOURCE]

    def page() -> str:
        snap, outage = source.snapshot()
        return render.regions_html(
            snap, outage=outage, config=source.config, max_age=source.max_age
        )

    return _html(await asyncio.to_thread(page))


async def status_json(request: web.Request) -> web.Response:
    snap, outage = await asyncio.to_thread(request.app[SOURCE].snapshot)
    if snap is None:
        body = {"error": "the health store cannot be read", "since": _iso(outage)}
        return web.json_response(body, status=503)
    response = web.Response(
        text=snap.json_text + "\n", content_type="application/json", charset="utf-8"
    )
    if outage is not None:
        # still the last good document, as the pages show it; say so
        response.headers["X-Geodns-Store"] = f"unreachable since {_iso(outage)}"
    return response


async def healthz(request: web.Request) -> web.Response:
    snap, outage = await asyncio.to_thread(request.app[SOURCE].snapshot)
    body: dict[str, Any] = {
        "status": "ok" if outage is None else "degraded",
        "store": "ok" if outage is None else "unreachable",
        "data_read_at": snap.read_at.isoformat(timespec="seconds") if snap else None,
        "addresses": len(snap.rows) if snap else 0,
    }
    if outage is not None:
        body["store_unreachable_since"] = _iso(outage)
    return web.json_response(body, status=200 if outage is None else 503)


def _iso(outage: Any) -> str | None:
    return outage.since.isoformat(timespec="seconds") if outage is not None else None


def make_app(source: StatusSource, *, page_seconds: float = 5.0) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[SOURCE] = source
    app[PAGES] = PageCache(page_seconds)
    app.router.add_get("/", overview)
    app.router.add_get("/regions", regions)
    app.router.add_get("/mirror/{pool}/{mirror}", mirror)
    app.router.add_get("/api/v1/status.json", status_json)
    app.router.add_get("/healthz", healthz)
    return app


class StatusServer:
    """The site on one address, started and stopped by its owner (the
    `checker web` command, the demo, tests)."""

    def __init__(
        self,
        source: StatusSource,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        page_seconds: float = 5.0,
    ) -> None:
        self.source = source
        self.page_seconds = page_seconds
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> StatusServer:
        self._runner = web.AppRunner(
            make_app(self.source, page_seconds=self.page_seconds),
            access_log=None,
            handle_signals=False,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server  # the asyncio.Server: the only way to learn an ephemeral port
        if server is not None and self.port == 0:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.to_thread(self.source.close)

    async def __aenter__(self) -> StatusServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(
    source: StatusSource,
    host: str,
    port: int,
    *,
    reload_config: Callable[[], Config | None] | None = None,
) -> None:
    """Until SIGINT/SIGTERM; SIGHUP re-reads the configuration (a bad one is
    logged and the old one kept, as `checker run` does)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if reload_config is not None:

        def reload() -> None:
            try:
                source.set_config(reload_config())
                log.info("configuration reloaded")
            except Exception as exc:  # noqa: BLE001 - keep serving with the old one
                log.error("reload failed, keeping the old configuration: %s", exc)

        loop.add_signal_handler(signal.SIGHUP, reload)
    async with StatusServer(source, host, port) as server:
        log.info("status page on %s (read-only)", server.url)
        await stop.wait()
