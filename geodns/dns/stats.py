"""Counters the query path bumps, and their sums across `--workers`.

Plain ints and dicts, no locks: the hot path does `+= 1` and nothing else.
`geodns.runtime.metrics` turns them into Prometheus families at scrape time.
This module imports nothing of the project, so the answer code and the
metrics exporter both depend on it and never on each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


class Stats:
    """Plain counters bumped on the hot path; exported by geodns.runtime.metrics."""

    __slots__ = (
        "qtypes",
        "rcodes",
        "tiers",
        "truncated",
        "ecs",
        "dropped",
        "latency",
        "rrl_dropped",
        "rrl_slipped",
        "cookies",
        "udp_recv_calls",
        "udp_send_errors",
        "udp_hot",
    )

    def __init__(self) -> None:
        self.latency = Latency()
        # qtypes[tcp][ipv6][qtype] → count (indexed by bools: no tuple per query)
        self.qtypes: list[list[dict[int, int]]] = [[{}, {}], [{}, {}]]
        self.rcodes: dict[int, int] = {}
        self.tiers: dict[tuple[str, str], int] = {}  # (pool, tier)
        self.truncated = 0
        self.ecs = 0
        self.dropped = 0
        # responses over the RRL rate: dropped, or sent small (TC=1 / BADCOOKIE)
        self.rrl_dropped = 0
        self.rrl_slipped = 0
        # COOKIE options seen: [valid, client cookie only, invalid server cookie, malformed]
        self.cookies = [0, 0, 0, 0]
        # the batched UDP paths (geodns.dns.udpbatch): receive system calls that
        # returned datagrams, and replies the kernel would not take (dropped)
        self.udp_recv_calls = 0
        self.udp_send_errors = 0
        # replies the hot table replayed without the Python handler (geodns.dns.hot)
        self.udp_hot = 0


# --------------------------------------------------------------------------- --workers N
# Each worker counts in plain ints (no locks on the query path); workers other
# than 0 publish a JSON snapshot every second and worker 0, which serves the
# metrics port, adds them to its own. prometheus-client's multiprocess mode
# would need its mmap-backed counters bumped per query, which costs more than
# the whole fast path. A snapshot is at most PUBLISH_EVERY old; PeerStats
# keeps the sum monotonic across a worker's restart.
PUBLISH_EVERY = 1.0


def stats_snapshot(
    st: Stats, tcp_open: int, tcp_evicted: dict[str, int] | None = None
) -> dict[str, Any]:
    lat = st.latency
    return {
        "qtypes": [[sorted(d.items()) for d in row] for row in st.qtypes],
        "rcodes": sorted(st.rcodes.items()),
        "tiers": [[pool, tier, n] for (pool, tier), n in sorted(st.tiers.items())],
        "truncated": st.truncated,
        "ecs": st.ecs,
        "dropped": st.dropped,
        "rrl": [st.rrl_dropped, st.rrl_slipped],
        "cookies": list(st.cookies),
        "udp": [st.udp_recv_calls, st.udp_send_errors, st.udp_hot],
        "tcp_evicted": dict(tcp_evicted or {}),
        "latency": {"counts": lat.counts, "total": lat.total, "n": lat.n},
        "tcp_open": tcp_open,
        "pid": os.getpid(),  # a new pid on the same file: the worker was restarted
    }


def publish_stats(
    path: Path, st: Stats, tcp_open: int, tcp_evicted: dict[str, int] | None = None
) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(stats_snapshot(st, tcp_open, tcp_evicted)))
    os.replace(tmp, path)  # the reader never sees half a file


class PeerStats:
    """Worker 0's view of the other workers' counters, kept monotonic: when a
    worker is restarted (a new pid in its file), the last snapshot of its
    previous life is carried forward, so the sum never goes backwards (at most
    its final second of counts is lost) and rate() shows no false reset."""

    def __init__(self) -> None:
        self.last: dict[Path, dict[str, Any]] = {}
        self.carried: list[dict[str, Any]] = []

    def merged(
        self,
        own: Stats,
        own_tcp: int,
        paths: list[Path],
        own_evicted: dict[str, int] | None = None,
    ) -> tuple[Stats, int, int, dict[str, int]]:
        """(sum of all workers' counters, open TCP connections, workers counted,
        TCP connections closed to make room, by reason)."""
        snaps = [stats_snapshot(own, own_tcp, own_evicted)]
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
        every = [*self.carried, *snaps]
        total = _add(every)
        evicted: dict[str, int] = {}
        for snap in every:
            for reason, n in snap.get("tcp_evicted", {}).items():
                evicted[reason] = evicted.get(reason, 0) + n
        return total, sum(int(snap["tcp_open"]) for snap in snaps), len(snaps), evicted


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
        rrl_counts = snap.get("rrl", [0, 0])
        total.rrl_dropped += rrl_counts[0]
        total.rrl_slipped += rrl_counts[1]
        for i, n in enumerate(snap.get("cookies", [])[:4]):
            total.cookies[i] += n
        udp_counts = [*snap.get("udp", []), 0, 0, 0]
        total.udp_recv_calls += udp_counts[0]
        total.udp_send_errors += udp_counts[1]
        total.udp_hot += udp_counts[2]
        lat = snap["latency"]
        total.latency.counts = [
            a + b for a, b in zip(total.latency.counts, lat["counts"], strict=True)
        ]
        total.latency.total += lat["total"]
        total.latency.n += lat["n"]
    return total
