"""Prometheus metrics and /healthz for the server (off unless --metrics).

The query path only bumps plain dict/int counters on `dns.stats.Stats`; a
custom collector turns them into metric families at scrape time, so
prometheus-client's locking never runs per query. Names follow CoreDNS with
our prefix (docs/architecture.md, "Metrics").
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from geodns.dns import wire
from geodns.dns.stats import BUCKETS, PeerStats, Stats

if TYPE_CHECKING:
    from aiohttp import web


class Health(Protocol):
    """What the exporter reads of the health poller (`healthpoll.HealthState`)."""

    @property
    def ok(self) -> bool: ...
    @property
    def updated(self) -> float: ...
    @property
    def errors(self) -> int: ...
    @property
    def down(self) -> Collection[object]: ...
    @property
    def as_of(self) -> float | None: ...
    @property
    def source(self) -> str: ...
    def degraded_reason(self) -> str | None: ...
    @property
    def drains(self) -> Collection[object]: ...
    @property
    def slow(self) -> Collection[object]: ...


class Source(Protocol):
    """What the exporter reads of the running server. Typed here rather than by
    importing `runtime.server`, so the server imports this module and not the
    other way round."""

    @property
    def stats(self) -> Stats: ...
    @property
    def peer_stats(self) -> PeerStats: ...
    @property
    def health(self) -> Health: ...
    @property
    def generation(self) -> int: ...
    @property
    def last_reload_ok(self) -> bool: ...
    @property
    def reload_seconds(self) -> float: ...
    @property
    def config(self) -> Any: ...
    @property
    def current(self) -> Any: ...
    @property
    def tables(self) -> Any: ...
    @property
    def metrics_bound(self) -> tuple[str, int] | None: ...
    @metrics_bound.setter
    def metrics_bound(self, value: tuple[str, int] | None) -> None: ...
    @property
    def udp_path(self) -> str: ...
    @property
    def udp_rcvbuf(self) -> int: ...
    def sync_udp_counters(self) -> None: ...
    def store_configured(self) -> bool: ...
    def tcp_open(self) -> int: ...
    def tcp_evicted(self) -> dict[str, int]: ...
    def peer_stats_paths(self) -> list[Path]: ...


class ServerCollector(Collector):
    def __init__(self, server: Source) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        srv = self.server
        srv.sync_udp_counters()
        st, tcp_open, workers, evicted = srv.peer_stats.merged(
            srv.stats, srv.tcp_open(), srv.peer_stats_paths(), srv.tcp_evicted()
        )
        yield GaugeMetricFamily(
            "geodns_workers", "worker processes whose counters are included", value=workers
        )
        c = CounterMetricFamily(
            "geodns_dns_requests", "DNS queries received", labels=["proto", "family", "qtype"]
        )
        for tcp, proto in ((0, "udp"), (1, "tcp")):
            for v6, fam in ((0, "4"), (1, "6")):
                by_name: dict[str, int] = {}
                for qtype, n in list(st.qtypes[tcp][v6].items()):
                    name = wire.TYPE_NAMES.get(qtype, "other")
                    by_name[name] = by_name.get(name, 0) + n
                for name, n in sorted(by_name.items()):
                    c.add_metric([proto, fam, name], n)
        yield c
        c = CounterMetricFamily("geodns_dns_responses", "DNS responses by rcode", labels=["rcode"])
        for rcode, n in sorted(st.rcodes.items()):
            c.add_metric([wire.RCODE_NAMES.get(rcode, str(rcode))], n)
        yield c
        yield CounterMetricFamily(
            "geodns_dns_responses_truncated", "UDP responses sent with TC=1", value=st.truncated
        )
        yield CounterMetricFamily(
            "geodns_dns_ecs_requests", "queries carrying EDNS Client Subnet", value=st.ecs
        )
        yield CounterMetricFamily(
            "geodns_dns_dropped",
            "packets dropped unanswered (not a query, too short, internal error)",
            value=st.dropped,
        )
        yield CounterMetricFamily(
            "geodns_udp_receive_calls",
            "receive system calls that returned datagrams (batched UDP paths; "
            "UDP requests / this = datagrams per call)",
            value=st.udp_recv_calls,
        )
        yield CounterMetricFamily(
            "geodns_udp_hot_answers",
            "UDP replies replayed by the hot-answer table for repeated queries, without "
            "the Python answer code (included in geodns_dns_requests)",
            value=st.udp_hot,
        )
        yield CounterMetricFamily(
            "geodns_udp_send_errors",
            "UDP replies the kernel would not take (send queue full, too large): dropped",
            value=st.udp_send_errors,
        )
        info = GaugeMetricFamily(
            "geodns_udp_path_info",
            "the UDP path serving queries (native: recvmmsg/sendmmsg in C; python; "
            "off: asyncio endpoint)",
            labels=["path"],
        )
        info.add_metric([srv.udp_path or "none"], 1)
        yield info
        yield GaugeMetricFamily(
            "geodns_udp_receive_buffer_bytes",
            "effective SO_RCVBUF of the UDP sockets (the kernel's doubled value)",
            value=srv.udp_rcvbuf,
        )
        c = CounterMetricFamily(
            "geodns_steered_answers",
            "steered answers by pool and the tier "
            "of the first address (or fallback/failopen/servfail/nodata)",
            labels=["pool", "tier"],
        )
        for (pool, tier), n in sorted(st.tiers.items()):
            c.add_metric([pool, tier], n)
        yield c
        lat = st.latency
        cum = 0
        buckets = []
        for b, n in zip((*BUCKETS, float("inf")), lat.counts, strict=True):
            cum += n
            buckets.append(("+Inf" if b == float("inf") else repr(b), cum))
        yield HistogramMetricFamily(
            "geodns_dns_request_duration_seconds",
            "time to answer a query (sampled 1 in 16)",
            buckets=buckets,
            sum_value=lat.total,
        )
        h = srv.health
        yield GaugeMetricFamily(
            "geodns_health_snapshot_age_seconds",
            "seconds since the health snapshot in use was read from the store "
            "(restored from disk at start: since it was saved)",
            value=snapshot_age(h),
        )
        yield GaugeMetricFamily(
            "geodns_health_store_up", "1 if the last store poll succeeded", value=1 if h.ok else 0
        )
        yield CounterMetricFamily(
            "geodns_health_store_errors", "failed health store polls", value=h.errors
        )
        yield GaugeMetricFamily(
            "geodns_health_addresses_down",
            "mirror addresses down in the current snapshot",
            value=len(h.down),
        )
        yield GaugeMetricFamily(
            "geodns_health_drains",
            "operator drains (checker drain) in force in the current snapshot",
            value=len(h.drains),
        )
        yield GaugeMetricFamily(
            "geodns_health_addresses_slow",
            "mirror addresses slow in the current snapshot (ranked one group behind)",
            value=len(h.slow),
        )
        yield GaugeMetricFamily(
            "geodns_config_generation", "config generation being served", value=srv.generation
        )
        yield GaugeMetricFamily(
            "geodns_config_reload_success",
            "1 if the last reload succeeded",
            value=1 if srv.last_reload_ok else 0,
        )
        yield GaugeMetricFamily(
            "geodns_config_last_reload_seconds",
            "duration of the last reload",
            value=srv.reload_seconds,
        )
        yield GaugeMetricFamily("geodns_tcp_connections", "open TCP connections", value=tcp_open)
        c = CounterMetricFamily(
            "geodns_tcp_connections_closed",
            "TCP connections closed to make room: over the per-source cap (source_cap) "
            "or at the global cap (global_cap)",
            labels=["reason"],
        )
        for reason in ("global_cap", "source_cap"):
            c.add_metric([reason], evicted.get(reason, 0))
        yield c
        c = CounterMetricFamily(
            "geodns_rrl_limited",
            "UDP responses over the rate limit: dropped, or sent truncated (slip)",
            labels=["action"],
        )
        c.add_metric(["drop"], st.rrl_dropped)
        c.add_metric(["slip"], st.rrl_slipped)
        yield c
        c = CounterMetricFamily(
            "geodns_dns_cookies",
            "queries with a DNS COOKIE option (RFC 7873) by what it held",
            labels=["result"],
        )
        for i, result in enumerate(("valid", "client_only", "invalid", "malformed")):
            c.add_metric([result], st.cookies[i])
        yield c
        tables = srv.tables
        if tables is not None and tables.signing:
            # alert when this comes near: re-signing happens well before (`refresh`)
            sigs = GaugeMetricFamily(
                "geodns_dnssec_signature_expiration_timestamp_seconds",
                "when the signatures being served for the zone expire",
                labels=["zone"],
            )
            for cz in tables.zones.values():
                if cz.signer is not None:
                    sigs.add_metric([cz.name or "."], cz.signer.expiration)
            yield sigs


def snapshot_age(h: Health) -> float:
    """Seconds since the down-set in use was known to match the store (NaN: never)."""
    return max(0.0, time.time() - h.as_of) if h.as_of is not None else float("nan")


def healthz(server: Source) -> tuple[int, dict[str, Any]]:
    """200 while we serve a config; 'degraded' when the store is unreachable
    (answers then come from the last snapshot, which is still a valid answer),
    with the reason: which snapshot is served, or that none is and every
    enabled mirror counts as up."""
    h = server.health
    reason = h.degraded_reason()
    age = snapshot_age(h)
    body = {
        "status": "ok" if reason is None else "degraded",
        "reason": reason,
        "generation": server.generation,
        "zones": len(server.config.zones) if server.config else 0,
        "store_ok": h.ok,
        "health_source": h.source,
        "addresses_down": len(h.down),
        "drains": len(h.drains),
        "addresses_slow": len(h.slow),
        "snapshot_age_seconds": None if age != age else round(age, 3),
        "last_reload_ok": server.last_reload_ok,
        "udp_path": server.udp_path,
        "udp_receive_buffer_bytes": server.udp_rcvbuf,
    }
    return (200 if server.current is not None else 503), body


async def start_metrics(server: Source, host: str, port: int) -> web.AppRunner:
    from aiohttp import web

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))

    async def metrics(_req: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def health(_req: web.Request) -> web.Response:
        status, body = healthz(server)
        return web.Response(
            status=status, text=json.dumps(body) + "\n", content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server.metrics_bound = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    return runner
