"""Prometheus metrics and /healthz for the server (off unless --metrics).

The query path only bumps plain dict/int counters on `answer.Stats`; a
custom collector turns them into metric families at scrape time, so
prometheus-client's locking never runs per query. Names follow CoreDNS with
our prefix (CONVENTIONS.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from . import wire
from .answer import Stats

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web

    from .server import Server

# Latency buckets in seconds (CoreDNS uses 0.00025 … 8.192; our answers are µs-scale)
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class Latency:
    """A tiny histogram the protocol fills for a sample of queries (1 in 16)."""

    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        i = 0
        for b in BUCKETS:
            if seconds <= b:
                break
            i += 1
        self.counts[i] += 1
        self.total += seconds
        self.n += 1


# --------------------------------------------------------------------------- --workers N
# Each worker counts in plain ints (no locks on the query path); workers other
# than 0 publish a JSON snapshot every second and worker 0, which serves the
# metrics port, adds them to its own. prometheus-client's multiprocess mode
# would need its mmap-backed counters bumped per query, which costs more than
# the whole fast path. A snapshot is at most PUBLISH_EVERY old; PeerStats
# keeps the sum monotonic across a worker's restart.
PUBLISH_EVERY = 1.0


def stats_snapshot(st: Stats, tcp_open: int) -> dict[str, Any]:
    lat = st.latency
    return {
        "qtypes": [[sorted(d.items()) for d in row] for row in st.qtypes],
        "rcodes": sorted(st.rcodes.items()),
        "tiers": [[pool, tier, n] for (pool, tier), n in sorted(st.tiers.items())],
        "truncated": st.truncated,
        "ecs": st.ecs,
        "dropped": st.dropped,
        "latency": {"counts": lat.counts, "total": lat.total, "n": lat.n},
        "tcp_open": tcp_open,
        "pid": os.getpid(),  # a new pid on the same file: the worker was restarted
    }


def publish_stats(path: Path, st: Stats, tcp_open: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(stats_snapshot(st, tcp_open)))
    os.replace(tmp, path)  # the reader never sees half a file


class PeerStats:
    """Worker 0's view of the other workers' counters, kept monotonic: when a
    worker is restarted (a new pid in its file), the last snapshot of its
    previous life is carried forward, so the sum never goes backwards (at most
    its final second of counts is lost) and rate() shows no false reset."""

    def __init__(self) -> None:
        self.last: dict[Path, dict[str, Any]] = {}
        self.carried: list[dict[str, Any]] = []

    def merged(self, own: Stats, own_tcp: int, paths: list[Path]) -> tuple[Stats, int, int]:
        """(sum of all workers' counters, open TCP connections, workers counted)."""
        snaps = [stats_snapshot(own, own_tcp)]
        for p in paths:
            prev = self.last.get(p)
            try:
                snap = json.loads(p.read_text())
            except (OSError, ValueError):
                if prev is None:
                    continue  # not published yet
                snap = prev  # unreadable this time: the sum must not dip
            if prev is not None and prev.get("pid") != snap.get("pid"):
                self.carried.append(prev | {"tcp_open": 0})
            self.last[p] = snap
            snaps.append(snap)
        total = _add([*self.carried, *snaps])
        return total, sum(int(snap["tcp_open"]) for snap in snaps), len(snaps)


def _add(snaps: list[dict[str, Any]]) -> Stats:
    total = Stats()
    for snap in snaps:
        for tcp_i, row in enumerate(snap["qtypes"]):
            for v6, pairs in enumerate(row):
                d = total.qtypes[tcp_i][v6]
                for qtype, n in pairs:
                    d[qtype] = d.get(qtype, 0) + n
        for rcode, n in snap["rcodes"]:
            total.rcodes[rcode] = total.rcodes.get(rcode, 0) + n
        for pool, tier, n in snap["tiers"]:
            total.tiers[pool, tier] = total.tiers.get((pool, tier), 0) + n
        total.truncated += snap["truncated"]
        total.ecs += snap["ecs"]
        total.dropped += snap["dropped"]
        lat = snap["latency"]
        total.latency.counts = [
            a + b for a, b in zip(total.latency.counts, lat["counts"], strict=True)
        ]
        total.latency.total += lat["total"]
        total.latency.n += lat["n"]
    return total


class ServerCollector(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        srv = self.server
        st, tcp_open, workers = srv.peer_stats.merged(
            srv.stats, srv.tcp_limits.open, srv.peer_stats_paths()
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
        age = time.monotonic() - h.updated if h.updated else float("nan")
        yield GaugeMetricFamily(
            "geodns_health_snapshot_age_seconds",
            "seconds since the health store was last read successfully",
            value=age,
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


def healthz(server: Server) -> tuple[int, dict[str, Any]]:
    """200 while we serve a config; 'degraded' when the store is unreachable
    (answers then come from the last snapshot, which is still a valid answer)."""
    h = server.health
    body = {
        "status": "ok" if (h.ok or not server.s.resolved_store_url()) else "degraded",
        "generation": server.generation,
        "zones": len(server.config.zones) if server.config else 0,
        "store_ok": h.ok,
        "addresses_down": len(h.down),
        "snapshot_age_seconds": round(time.monotonic() - h.updated, 3) if h.updated else None,
        "last_reload_ok": server.last_reload_ok,
    }
    return (200 if server.current is not None else 503), body


async def start_metrics(server: Server, host: str, port: int) -> web.AppRunner:
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
