"""The server's lifecycle: load, bind, serve, reload, poll health, stop.

The health store's side (poll, snapshot, fail-static) is runtime.healthpoll.

One `Server` owns everything a running node has. Signal handlers only set
flags/schedule coroutines. Reloads and health/GeoIP refreshes build a whole
new generation off the event loop (in a thread) and then swap one reference;
a config that fails validation is logged and the running one keeps serving.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import logging
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geodns.config import FileCache, load_config
from geodns.dns import cookies as cookie_mod
from geodns.dns import hot, rrl, udpbatch
from geodns.dns.answer import Responder
from geodns.dns.protocol import Current, TCPLimits, TCPProtocol, UDPProtocol
from geodns.dns.stats import PUBLISH_EVERY, PeerStats, Stats, publish_stats
from geodns.dns.zone import Tables
from geodns.dnssec.signer import resign_due
from geodns.errors import ConfigError
from geodns.model import Config
from geodns.runtime import metrics, sdnotify, service_addr
from geodns.runtime.forked import run_forked
from geodns.runtime.healthpoll import HealthPoller
from geodns.settings import GEOIP_DIRS, ServerSettings
from geodns.steering.eligibility import drained_keys
from geodns.steering.geo import GeoDB
from geodns.steering.steer import Steering

log = logging.getLogger("geodns.server")

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # <linux/in.h>; Python has no name for it
WARM_SECONDS = 2.0  # at most this long warming a new generation before it goes live
WARM_SLICE = 0.001  # warm in slices this long, answering queries in between
RESIGN_RETRY = 60.0  # seconds between attempts when re-signing failed


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.s = settings
        self.stats = Stats()
        # the health store: polled, snapshot kept, fail-static (runtime.healthpoll)
        self.poller = HealthPoller(settings)
        self.health = self.poller.state
        self.config: Config | None = None
        self.tables: Tables | None = None
        self.geodb: GeoDB | None = None
        self.current: Current | None = None
        self.generation = 0
        self.last_reload_ok = True
        self.reload_seconds = 0.0
        self.transports: list[asyncio.BaseTransport] = []
        self.udp_endpoints: list[udpbatch.BatchedUDP] = []
        self.udp_path = ""  # native / python / off, chosen in start()
        self.udp_rcvbuf = 0  # effective receive buffer of the UDP sockets (bytes)
        self.servers: list[asyncio.base_events.Server] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.retiring: set[asyncio.Task[None]] = set()  # old generations being freed
        self.stopping: asyncio.Event | None = None  # created in start(), inside the loop
        self._reload_lock: asyncio.Lock | None = None
        self._file_cache: FileCache = {}  # parsed YAML files, reused by reloads
        self._trusted = self._make_trust()
        self.tcp_limits = TCPLimits(
            settings.tcp_idle_timeout, settings.tcp_max_connections, settings.tcp_max_per_source
        )
        self.rrl: rrl.RateLimiter | None = None
        if settings.rrl_rate > 0:
            self.rrl = rrl.RateLimiter(
                settings.rrl_rate,
                settings.rrl_slip,
                v4_prefix=settings.rrl_v4_prefix,
                v6_prefix=settings.rrl_v6_prefix,
                exempt=settings.rrl_exempt,
                max_buckets=settings.rrl_max_buckets,
            )
        self.cookies: cookie_mod.Cookies | None = None  # load_initial() reads the secret
        self.metrics_server: Any = None  # aiohttp AppRunner when --metrics is on
        self.bound: list[tuple[str, int]] = []
        self.metrics_bound: tuple[str, int] | None = None
        self.peer_stats = PeerStats()  # --workers: the others' counters (worker 0)

    # ------------------------------------------------------------------ building

    def _make_trust(self) -> Callable[[str], bool] | None:
        nets = self.s.ecs_trust
        if not nets:
            return None
        cache: dict[str, bool] = {}

        def trusted(src: str) -> bool:
            v = cache.get(src)
            if v is None:
                ip = ipaddress.ip_address(src.split("%")[0])
                v = any(ip in n for n in nets if n.version == ip.version)
                if len(cache) > 10000:
                    cache.clear()
                cache[src] = v
            return v

        return trusted

    def load_initial(self) -> None:
        """Synchronous first load; raises ConfigError so start-up fails loudly."""
        self.geodb = GeoDB.discover(
            self.s.geoip_asn, self.s.geoip_city, dirs=self.s.geoip_dirs or GEOIP_DIRS
        )
        if self.s.cookies and self.cookies is None:
            self.cookies = cookie_mod.Cookies(self._read_cookie_secrets())
        self.poller.start()
        config = self._load_config()
        self._install(config, Tables(config))
        gc.freeze()
        log.info(
            "config generation %d loaded: %d zones, %d pools from %s",
            self.generation,
            len(config.zones),
            len(config.pools),
            self.s.config_dir,
        )

    def _read_cookie_secrets(self) -> list[bytes]:
        """The secrets from the file (made in the state directory if that is
        where it is and it does not exist yet); ConfigError when unusable."""
        path = self.s.resolved_cookie_secret_file()
        try:
            if self.s.cookie_secret_file is None:
                cookie_mod.ensure_secret_file(path)
            return cookie_mod.read_secrets(path)
        except (cookie_mod.CookieSecretError, OSError) as e:
            raise ConfigError([str(e)]) from None

    def rotate_cookie_secret(self) -> None:
        """Re-read the cookie secret file (on reload): a new secret makes new
        cookies at once, the previous one is still accepted."""
        if self.cookies is None:
            return
        try:
            new = self._read_cookie_secrets()
        except ConfigError as e:
            log.error("DNS cookie secret kept, the file is unusable: %s", e.problems[0])
            return
        if self.cookies.rotate(new):
            log.info(
                "DNS cookie secret rotated from %s (the previous one is still accepted)",
                self.s.resolved_cookie_secret_file(),
            )

    def _load_config(self) -> Config:
        state = self.s.resolved_state_dir()
        return load_config(
            self.s.config_dir, serial_state=state / "serials.json", cache=self._file_cache
        )

    def _build(self, config: Config, tables: Tables) -> Responder:
        drained = drained_keys(config, self.health.drains)
        steering = Steering(
            config, self.geodb, self.health.down, drained=drained, slow=self.health.slow
        )
        return Responder(
            tables,
            steering,
            self.geodb,
            self.stats,
            ecs_trusted=self._trusted,
            query_log=self.s.query_log,
            rrl=self.rrl,
            cookies=self.cookies,
        )

    def _install(self, config: Config, tables: Tables, responder: Responder | None = None) -> None:
        responder = responder or self._build(config, tables)
        self.config, self.tables = config, tables
        self.generation += 1
        if responder.hot is None:  # (a warmed one has its table already)
            self._attach_hot(responder)
        if self.current is None:
            self.current = Current(responder)
        else:
            old = self.current.responder
            self.current.responder = responder
            if isinstance(old, Responder):
                old.sync_hot()  # what its table answered counts once, now
                self._retire_later(old)

    def _retire_later(self, old: Responder) -> None:
        """Free a swapped-out generation in slices between queries
        (Responder.retire); without a running loop (start-up) at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._retire(old))
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def _retire(self, old: Responder) -> None:
        for _ in old.retire():
            await asyncio.sleep(0)

    def _attach_hot(self, responder: Responder) -> None:
        """Give a responder the hot table of the UDP path in use (geodns.dns.hot):
        none before the sockets exist, on the asyncio path, or with the query
        log on (every query must reach the log line)."""
        n = self.s.hot_answers
        if self.udp_path in ("native", "python") and n and not self.s.query_log:
            responder.hot = hot.new_table(self.udp_path, self.rrl, max(n, hot.WAYS))

    async def swap_in(self, config: Config, tables: Tables, *, reason: str) -> None:
        """Build the next generation on the loop, warm it from the running one in
        slices (queries keep being answered between slices), then swap."""
        t0 = time.perf_counter()
        # Warming allocates a lot; a full collection over it would pause the loop.
        gc.disable()
        try:
            warmed = await self._warm_and_install(config, tables)
        finally:
            # The caches are long-lived and acyclic: keep them out of the cyclic
            # GC's full passes, which otherwise pause the loop for tens of ms.
            gc.freeze()
            gc.enable()
        log.debug(
            "%s: generation %d live after %.0f ms (%d answers warmed)",
            reason,
            self.generation,
            (time.perf_counter() - t0) * 1000,
            warmed,
        )

    async def _warm_and_install(self, config: Config, tables: Tables) -> int:
        new = self._build(config, tables)
        self._attach_hot(new)  # warmed from the old table too
        old = self.current.responder if self.current is not None else None
        warmed = 0
        if isinstance(old, Responder):
            deadline = time.monotonic() + WARM_SECONDS
            slice_end = time.monotonic() + WARM_SLICE
            for warmed in new.warm_from(old):  # noqa: B007 — logged below
                now = time.monotonic()
                if now > slice_end:  # let the loop answer what arrived meanwhile
                    await asyncio.sleep(0)
                    slice_end = time.monotonic() + WARM_SLICE
                    if now > deadline:
                        break
        self._install(config, tables, new)
        return warmed

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        if self.current is None:
            self.load_initial()
        current = self.current
        assert current is not None
        self.udp_path = udpbatch.choose(self.s.udp_batch)
        if isinstance(current.responder, Responder):
            self._attach_hot(current.responder)
        service = {str(a.ip) for a in self.s.service_addresses}
        for host, port in self.s.listen:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            # a service address is not on the device yet (see below): bind to it anyway
            freebind = str(ipaddress.ip_address(host)) in service
            udp_sock, tcp_sock = _bind_pair(host, port, fam, self.s.reuse_port, freebind)
            port = udp_sock.getsockname()[1]
            self.udp_rcvbuf = udp_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            if self.udp_path == "off":
                tr, _ = await loop.create_datagram_endpoint(
                    lambda: UDPProtocol(current, self.stats.latency), sock=udp_sock
                )
                self.transports.append(tr)
            else:  # bursts from the loop's reader callback (geodns.dns.udpbatch)
                engine = udpbatch.make_engine(self.udp_path)
                self.udp_endpoints.append(
                    udpbatch.BatchedUDP(loop, udp_sock, current, self.stats, engine)
                )
            srv = await loop.create_server(
                lambda: TCPProtocol(current, self.tcp_limits), sock=tcp_sock, backlog=1024
            )
            self.servers.append(srv)
            self.bound.append((host, port))
            log.info(
                "listening on %s port %d (UDP and TCP; UDP path %s, receive buffer %d KiB)",
                host,
                port,
                udpbatch.describe(self.udp_path),
                self.udp_rcvbuf // 1024,
            )
        if 0 < self.udp_rcvbuf < 2 * udpbatch.RCVBUF:
            log.warning(
                "UDP receive buffer is %d KiB, not the %d KiB asked for (net.core.rmem_max "
                "caps it without CAP_NET_ADMIN): bursts may be dropped",
                self.udp_rcvbuf // 1024,
                2 * udpbatch.RCVBUF // 1024,
            )
        if self.s.metrics:
            self.metrics_server = await metrics.start_metrics(self, *self.s.metrics)
        self.tasks.append(
            asyncio.create_task(self._every(self.s.health_interval, self.poll_health))
        )
        self.tasks.append(
            asyncio.create_task(self._every(self.s.geoip_interval, self.refresh_geoip))
        )
        self.tasks.append(asyncio.create_task(self._resign_loop()))
        watchdog = sdnotify.watchdog_interval()
        if watchdog is not None:
            self.tasks.append(asyncio.create_task(self._every(watchdog, self.watchdog)))
        if self.s.service_addresses:
            # Last: the routing daemon announces an address as soon as it is on
            # the device, so a route must not point here before every socket
            # answers (a node restarting under load took seconds to get from
            # binding to its first answer, and queries sent to it meanwhile
            # waited). In a thread: pyroute2's sync API runs a loop of its own.
            await asyncio.to_thread(service_addr.add, self.s.service_addresses, self.s.service_dev)
        if self.s.stats_dir is not None:  # --workers: counters, and the supervisor's heartbeat
            self.publish_stats()  # now: "listening" for the supervisor
            self.tasks.append(asyncio.create_task(self._every(PUBLISH_EVERY, self.publish_stats)))

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    def request_stop(self) -> None:
        if self.stopping is not None:
            self.stopping.set()

    async def serve_forever(self) -> None:
        await self.start()
        self.install_signal_handlers()
        sdnotify.notify("READY=1", self._status())
        assert self.stopping is not None
        await self.stopping.wait()
        sdnotify.notify("STOPPING=1")
        await self.stop()

    def _status(self) -> str:
        down = len(self.health.down)
        return f"STATUS=serving generation {self.generation}, {down} mirror addresses down"

    def watchdog(self) -> None:
        """Ping systemd's watchdog from the loop that answers queries: if it
        stops turning (a wedged process), the pings stop and systemd restarts
        the service, which withdraws any anycast address first."""
        if self.current is not None:
            sdnotify.notify("WATCHDOG=1")

    async def stop(self) -> None:
        if self.s.service_addresses:
            # Withdraw first, so the routing daemon moves traffic away, then keep
            # answering what is still in flight for a moment before closing.
            try:
                await asyncio.to_thread(
                    service_addr.remove, self.s.service_addresses, self.s.service_dev
                )
            except Exception:  # noqa: BLE001 — still stop; ExecStopPost=geodns withdraw retries
                log.exception("could not withdraw the service addresses")
            if self.transports or self.udp_endpoints:
                await asyncio.sleep(self.s.service_drain)
        tasks = [*self.tasks, *self.retiring]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self.tasks.clear()
        for tr in self.transports:
            tr.close()
        for ep in self.udp_endpoints:
            ep.close()
        self.udp_endpoints.clear()
        for srv in self.servers:
            srv.close()
        for srv in self.servers:
            await srv.wait_closed()
        self.transports.clear()
        self.servers.clear()
        self.tcp_limits.tally.cancel()
        if self.metrics_server is not None:
            await self.metrics_server.cleanup()
            self.metrics_server = None
        self.poller.close()
        log.info("stopped")

    def sync_udp_counters(self) -> None:
        """The batched UDP engines' counters into self.stats (before they are read)."""
        for ep in self.udp_endpoints:
            ep.sync_counters()
        if self.current is not None and isinstance(self.current.responder, Responder):
            self.current.responder.sync_hot()

    def publish_stats(self) -> None:
        assert self.s.stats_dir is not None
        self.sync_udp_counters()
        path = self.s.stats_dir / f"worker-{self.s.worker}.json"
        publish_stats(path, self.stats, self.tcp_limits.open, self.tcp_limits.evicted)

    def tcp_open(self) -> int:
        return self.tcp_limits.open

    def tcp_evicted(self) -> dict[str, int]:
        return self.tcp_limits.evicted

    def store_configured(self) -> bool:
        return bool(self.s.resolved_store_url())

    def peer_stats_paths(self) -> list[Path]:
        """The other workers' counter snapshots (worker 0 serves metrics)."""
        d = self.s.stats_dir
        if d is None:
            return []
        return [d / f"worker-{i}.json" for i in range(1, self.s.workers)]

    async def _every(self, interval: float, fn: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                res = fn()
                if asyncio.iscoroutine(res):
                    await res
            except Exception:  # noqa: BLE001 — a timer must never die
                log.exception("periodic task %s failed", getattr(fn, "__name__", fn))

    # ------------------------------------------------------------------ reload & refresh

    async def reload(self) -> bool:
        """Re-read the YAML; swap only if it validates. Returns success."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            sdnotify.reloading()
            try:
                self.rotate_cookie_secret()  # whatever becomes of the YAML
                return await self._reload()
            finally:
                sdnotify.notify("READY=1", self._status())

    async def _reload(self) -> bool:
        t0 = time.perf_counter()
        try:
            config, tables, self._file_cache = await run_forked(self._load_and_compile)
        except ConfigError as e:
            self.last_reload_ok = False
            log.error(
                "reload rejected, still serving generation %d:\n%s",
                self.generation,
                "\n".join(e.problems),
            )
            return False
        except Exception:  # noqa: BLE001
            self.last_reload_ok = False
            log.exception("reload failed, still serving generation %d", self.generation)
            return False
        t1 = time.perf_counter()
        await self.swap_in(config, tables, reason="reload")
        self.last_reload_ok = True
        self.reload_seconds = time.perf_counter() - t0
        log.info(
            "config generation %d loaded: %d zones, %d pools in %.0f ms "
            "(read and compile %.0f ms, build and warm %.0f ms)",
            self.generation,
            len(config.zones),
            len(config.pools),
            self.reload_seconds * 1000,
            (t1 - t0) * 1000,
            (time.perf_counter() - t1) * 1000,
        )
        return True

    def _load_and_compile(self) -> tuple[Config, Tables, FileCache]:
        # runs in a forked child (geodns.runtime.forked): pure, no sockets, no loop;
        # the child's updated file cache goes back with the result
        config = self._load_config()
        return config, Tables(config, previous=self.tables), self._file_cache

    async def _resign_loop(self) -> None:
        """DNSSEC: sign again before the signatures' `refresh` margin is reached
        or when a key's timing metadata says its state changes — new tables
        built in a forked child, swapped in like a reload (no restart, no lost
        query). Unchanged zones and keys keep their signatures."""
        while True:
            due = resign_due(self.tables) if self.tables is not None else None
            wait = 300.0 if due is None else min(max(due - time.time(), 0.05), 300.0)
            await asyncio.sleep(wait)
            due = resign_due(self.tables) if self.tables is not None else None
            if due is None or time.time() < due:
                continue
            if not await self.resign():
                await asyncio.sleep(RESIGN_RETRY)

    async def resign(self) -> bool:
        assert self._reload_lock is not None
        async with self._reload_lock:
            config, old = self.config, self.tables
            if config is None or old is None:
                return False
            t0 = time.perf_counter()
            try:
                tables = await run_forked(lambda: Tables(config, previous=old))
            except Exception:  # noqa: BLE001 — keep serving; the old signatures are still valid
                log.exception("DNSSEC: re-signing failed; retrying in %.0f s", RESIGN_RETRY)
                return False
            await self.swap_in(config, tables, reason="re-sign")
            log.info(
                "DNSSEC: zones signed again in %.0f ms (generation %d); next due in %.0f s",
                (time.perf_counter() - t0) * 1000,
                self.generation,
                (resign_due(tables) or time.time()) - time.time(),
            )
            return True

    async def rebuild(self, reason: str) -> None:
        """New health or GeoIP data: same config, new steering, warmed caches."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            if self.config is not None and self.tables is not None:
                await self.swap_in(self.config, self.tables, reason=reason)

    async def poll_health(self) -> None:
        # one small query; a thread is fine here (it waits on I/O, not the CPU)
        changed = await asyncio.to_thread(self.poller.poll)
        if changed:
            log.info(
                "health snapshot version %s: %d addresses down, %d drains, %d slow",
                self.health.version,
                len(self.health.down),
                len(self.health.drains),
                len(self.health.slow),
            )
            await self.rebuild("health change")

    async def refresh_geoip(self) -> None:
        if self.geodb is not None and await asyncio.to_thread(self.geodb.refresh):
            log.info("GeoIP databases changed on disk; answers rebuilt")
            await self.rebuild("GeoIP change")


def _bind_pair(
    host: str, port: int, fam: int, reuse_port: bool, freebind: bool = False
) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets bound to one port. Port 0 asks for any port: the
    kernel picks it for UDP, and the same number may already be an outgoing
    TCP connection's, so that case retries with another (bounded). `freebind`:
    the address need not be on a device yet (IP_FREEBIND; Linux, both families)."""
    for _ in range(1 if port else 20):
        udp = _socket(fam, socket.SOCK_DGRAM, reuse_port)
        tcp = _socket(fam, socket.SOCK_STREAM, reuse_port)
        if freebind:
            for sock in (udp, tcp):
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        # big buffers absorb bursts (a reload's swap, a GC pass, a busy CPU)
        udpbatch.size_receive_buffer(udp)
        try:
            udp.bind((host, port))
            tcp.bind((host, udp.getsockname()[1]))
        except OSError as e:
            udp.close()
            tcp.close()
            if port or e.errno != errno.EADDRINUSE:
                raise
            continue
        return udp, tcp
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {host}")


def _socket(fam: int, kind: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(fam, kind)
    sock.setblocking(False)
    if kind == socket.SOCK_STREAM:
        # as asyncio's create_server does: restart while old connections linger
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if fam == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock
