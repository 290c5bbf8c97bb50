"""The scheduler: which probe runs when, concurrently and always bounded in time.

`run_once()` checks every address once (every configured probe kind) and
returns a `RoundResult`; `Checker.run()` loops with one timer per (address,
probe kind) at that probe's `interval`, ±`jitter`, so probes of one kind do
not all fire at the same instant. Addresses are checked concurrently (at most
`max_parallel` at a time); every network operation has the pool's `timeout`
and every probe an overall deadline, so one slow mirror cannot stall the
others. Store writes go through one worker thread so the event loop keeps
probing while SQLite or PostgreSQL commits.

Metrics: the counters below live in prometheus-client's default registry, so
`checker run --metrics 127.0.0.1:9478` serves them, and a process that also
runs the DNS server (the demo) exports them beside the server's own:
  geodns_checker_probes_total{kind,result}     result = ok | fail
  geodns_checker_round_duration_seconds        histogram: per `run_once` round
                                               and per address batch in `run`
  geodns_checker_mirrors{pool,state}           addresses by state: up, slow, down,
                                               disabled, drained (an operator's drain;
                                               it is still probed, but counted here)
  geodns_checker_throughput_bytes_per_second{pool,mirror,address}
                                               the moving median the slow state is
                                               judged on (throughput probe)
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge, Histogram

from checker import manifest as mf
from checker import text
from checker.errors import CheckerError, ManifestError
from checker.expected import CURSOR_KEYS, ExpectedCache, Snapshot, sampling
from checker.http import HTTPClient, HTTPError
from checker.probes.apt import probe_apt
from checker.probes.freshness import fetch_timestamp, probe_freshness
from checker.probes.objects import probe_objects
from checker.probes.throughput import MB, probe_throughput
from checker.probes.tls import probe_tls
from checker.state import SLOW_KINDS, Evaluation, advance
from checker.target import Target, ca_file, targets_of
from geodns.model import Config, FreshnessCheck, ObjectsCheck, Pool
from geodns.store import Drain, ProbeRecord, Store, StoreError

log = logging.getLogger("checker")
T = TypeVar("T")

PROBES_TOTAL = Counter(
    "geodns_checker_probes_total", "Probes run by the checker", ["kind", "result"]
)
ROUND_SECONDS = Histogram(
    "geodns_checker_round_duration_seconds",
    "Duration of a checker round",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
MIRRORS = Gauge("geodns_checker_mirrors", "Mirror addresses by state", ["pool", "state"])
THROUGHPUT = Gauge(
    "geodns_checker_throughput_bytes_per_second",
    "Median download rate of the last throughput samples of a mirror address",
    ["pool", "mirror", "address"],
)

ADMIN = "admin"  # pseudo-kind: re-evaluate disabled mirrors
DRAINS_EVERY = 10.0  # seconds between re-reads of the drains (for the gauge only)


def kinds_of(t: Target) -> list[str]:
    c = t.checks
    kinds = []
    if c.tls is not None and t.tls:
        kinds.append("tls")
    if c.freshness is not None:
        kinds.append("freshness")
    if c.objects is not None:
        kinds.append("objects")
    if c.apt is not None:
        kinds.append("apt")
    if c.throughput is not None:
        kinds.append("throughput")
    return kinds


def interval_of(t: Target, kind: str) -> float:
    c = t.checks
    check = {
        "tls": c.tls,
        "freshness": c.freshness,
        "objects": c.objects,
        "apt": c.apt,
        "throughput": c.throughput,
    }.get(kind)
    return float(getattr(check, "interval", 300.0))


def deadline_of(t: Target, kind: str) -> float:
    """The whole probe's time budget, beyond the per-operation timeout."""
    c = t.checks
    if kind == "objects" and c.objects is not None:
        return max(c.timeout * 3, c.objects.interval / 2)
    if kind == "apt" and c.apt is not None:
        return c.timeout * (2 + 2 * len(c.apt.suites))
    return c.timeout * 2 + 1


@dataclass(frozen=True, slots=True)
class Change:
    pool: str
    mirror: str
    address: str
    up: bool
    reason: str
    slow: bool = False

    @property
    def state(self) -> str:
        return "DOWN" if not self.up else ("SLOW" if self.slow else "up")


@dataclass
class RoundResult:
    targets: int = 0
    probes: int = 0
    failed: int = 0
    duration: float = 0.0
    changes: list[Change] = field(default_factory=list)
    states: dict[tuple[str, str, str], Evaluation] = field(default_factory=dict)

    @property
    def down(self) -> list[tuple[str, str, str]]:
        return sorted(k for k, e in self.states.items() if not e.up)

    @property
    def slow(self) -> list[tuple[str, str, str]]:
        return sorted(k for k, e in self.states.items() if e.slow)

    def summary(self) -> str:
        slow = f", {len(self.slow)} slow" if self.slow else ""
        return (
            f"{self.targets} addresses, {self.probes} probes ({self.failed} failed), "
            f"{len(self.down)} down{slow}, {len(self.changes)} changes "
            f"in {text.duration(self.duration)}"
        )


class Checker:
    """Probes the mirror addresses of a Config and records the verdicts in a Store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        region: str = "",
        ca_bundle: Path | str | None = None,
        pools: Iterable[str] | None = None,
        max_parallel: int = 32,
        pipeline: int = 1,
        expected_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.region = region
        self.ca_bundle = ca_bundle
        self.max_parallel = max(1, max_parallel)
        self.pipeline = pipeline
        self._pool_filter = list(pools) if pools else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checker-store")
        self._origin: dict[str, tuple[float, datetime | str | None]] = {}
        self._origin_locks: dict[str, asyncio.Lock] = {}
        self._gauge: dict[tuple[str, str, str], str] = {}  # the checker's verdicts
        self._rates: dict[tuple[str, str, str], float] = {}  # throughput medians exported
        self._drains: list[Drain] = []
        self._drains_next = 0.0  # monotonic time of the next re-read
        self._expected: dict[str, ExpectedCache] = {}
        self._expected_locks: dict[str, asyncio.Lock] = {}
        self.expected_interval = expected_interval
        self.update(config)

    # ---------------------------------------------------------------- config

    def update(self, config: Config) -> None:
        """Use a new Config (reload); unknown --pool names are an error."""
        pools = config.pools
        if self._pool_filter is not None:
            unknown = [p for p in self._pool_filter if p not in pools]
            if unknown:
                raise CheckerError(
                    f"no pool named {', '.join(map(repr, unknown))}; "
                    f"the config has {', '.join(sorted(pools)) or 'no pools'}"
                )
            pools = {n: pools[n] for n in self._pool_filter}
        self.config = config
        self.pools: dict[str, Pool] = dict(pools)
        self.targets: list[Target] = [t for p in self.pools.values() for t in targets_of(p)]
        keys = {t.key for t in self.targets}
        self._gauge = {k: v for k, v in self._gauge.items() if k in keys}
        measured = {t.key for t in self.targets if t.checks.throughput is not None}
        for key in [k for k in self._rates if k not in measured]:
            THROUGHPUT.remove(*key)  # an address gone, or its pool no longer measured
            del self._rates[key]
        self._origin.clear()
        used = {
            p.checks.objects.expected for p in self.pools.values() if p.checks.objects is not None
        }
        self._expected = {k: v for k, v in self._expected.items() if k in used}

    async def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # ---------------------------------------------------------------- origin

    async def _origin_time(self, pool: Pool, check: FreshnessCheck) -> datetime | str | None:
        """The origin's timestamp (cached for half the interval) or an error text."""
        if not check.origin:
            return None
        lock = self._origin_locks.setdefault(pool.name, asyncio.Lock())
        async with lock:
            hit = self._origin.get(pool.name)
            if hit and hit[0] > time.monotonic():
                return hit[1]
            try:
                value: datetime | str | None = await self._fetch_origin(pool, check)
            except (HTTPError, ValueError, OSError) as exc:
                value = getattr(exc, "reason", None) or str(exc)
            self._origin[pool.name] = (time.monotonic() + max(1.0, check.interval / 2), value)
            return value

    async def _fetch_origin(self, pool: Pool, check: FreshnessCheck) -> datetime:
        assert check.origin
        u = urlsplit(check.origin)
        scheme = (u.scheme or "https").lower()
        host = (u.hostname or "").lower()
        port = u.port or (443 if scheme == "https" else 80)
        address = None
        # An origin that is also a mirror of the pool is reached at its configured
        # address, so the check needs no DNS (and works for the demo's .test names).
        for m in pool.mirrors:
            mu = urlsplit(m.url)
            mport = mu.port or (443 if (mu.scheme or "https").lower() == "https" else 80)
            if (mu.hostname or "").lower() == host and mport == port and m.addresses():
                address = str(m.addresses()[0])
                break
        if address is None:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
            if not infos:
                raise ValueError(f"origin host {host} has no address")
            address = str(infos[0][4][0])
        ctx = None
        if scheme == "https":
            ctx = ssl.create_default_context(cafile=ca_file(self.ca_bundle, pool.checks))
        default = 443 if scheme == "https" else 80
        client = HTTPClient(
            address,
            port,
            host=host if port == default else f"{host}:{port}",
            ssl_context=ctx,
            server_hostname=host,
            timeout=pool.checks.timeout,
            max_connections=1,
        )
        try:
            when, _ = await fetch_timestamp(client, u.path or "/", check.format)
        finally:
            await client.close()
        return when

    # ---------------------------------------------------------------- one address

    async def _probe(self, t: Target, kind: str, state: dict[str, Any]) -> ProbeRecord:
        c = t.checks
        if kind == "tls":
            return await probe_tls(t, cafile=ca_file(self.ca_bundle, c))
        if kind == "objects":
            assert c.objects is not None
            if c.objects.expected is not None:
                return await self._probe_expected(t, c.objects, state)
            assert c.objects.manifest is not None
            try:
                # Parsing a large manifest takes a moment: keep the loop free.
                manifest = await asyncio.to_thread(mf.load, c.objects.manifest)
            except ManifestError as exc:
                return ProbeRecord(kind, False, f"objects: {exc}", None, {})
            cursor = int(state.get("objects", {}).get("data", {}).get("cursor", 0) or 0)
            return await probe_objects(
                t, c.objects, manifest, cursor=cursor, pipeline=self.pipeline
            )
        if kind == "throughput":
            assert c.throughput is not None
            prev = state.get("throughput", {}).get("data", {})
            if c.throughput.expected is not None:
                snap, note = await self._expected_snapshot(c.throughput.expected)
                if snap is None:  # nothing to choose a sample from: no sample this round
                    return ProbeRecord(kind, False, f"throughput: {note}", None, _carry(prev))
                manifest = snap.manifest
            else:
                assert c.throughput.manifest is not None
                try:
                    manifest = await asyncio.to_thread(mf.load, c.throughput.manifest)
                except ManifestError as exc:
                    return ProbeRecord(kind, False, f"throughput: {exc}", None, _carry(prev))
            return await probe_throughput(t, c.throughput, manifest, prev)
        client = t.client(max_connections=4)
        try:
            if kind == "freshness":
                assert c.freshness is not None
                origin = await self._origin_time(self.pools[t.pool], c.freshness)
                return await probe_freshness(t, c.freshness, client, origin)
            if kind == "apt":
                assert c.apt is not None
                return await probe_apt(t, c.apt, client)
        finally:
            await client.close()
        raise AssertionError(kind)

    async def _expected_snapshot(self, name: str) -> tuple[Snapshot | None, str | None]:
        """The pool's expected state, refreshed from the store at most every
        `expected_interval` seconds; (snapshot or None, a warning or None)."""
        cache = self._expected.get(name)
        if cache is None:
            cache = self._expected[name] = ExpectedCache(self.store, name)
        lock = self._expected_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if (
                not cache.checked_at
                or time.monotonic() - cache.checked_at >= self.expected_interval
            ):
                await self._store(cache.refresh)
        snap = cache.snapshot
        if cache.error:
            if snap is None:
                return None, f"expected state unavailable: {cache.error}"
            return snap, f"expected state: {cache.error}; using version {snap.version}"
        if snap is None:
            return None, (
                f"no expected state published for '{name}' "
                f"(run `checker manifest publish ROOT --pool {name}` on the origin)"
            )
        return snap, None

    async def _probe_expected(
        self, t: Target, check: ObjectsCheck, state: dict[str, Any]
    ) -> ProbeRecord:
        assert check.expected is not None
        prev = state.get("objects", {}).get("data", {}) or {}
        snap, note = await self._expected_snapshot(check.expected)
        if snap is None:
            # The leader's problem, not the mirror's: nothing to judge by, so
            # a warning (shown by `checker report`) instead of a failure.
            carry = {k: prev[k] for k in CURSOR_KEYS if k in prev}
            return ProbeRecord(
                "objects", True, "objects not checked", None, {**carry, "warning": note}
            )
        pick = sampling(snap, check, prev)
        return await probe_objects(
            t,
            check,
            snap.manifest,
            cursor=int(prev.get("cursor", 0) or 0),
            pipeline=self.pipeline,
            new=pick.new,
            gone=pick.gone,
            carry={
                "version": snap.version,
                "new_after": pick.new_after,
                "gone_cursor": pick.gone_cursor,
            },
            note=note,
        )

    async def _bounded(self, t: Target, kind: str, state: dict[str, Any]) -> ProbeRecord:
        limit = deadline_of(t, kind)
        try:
            async with asyncio.timeout(limit):
                r = await self._probe(t, kind, state)
        except TimeoutError:
            r = ProbeRecord(
                kind, False, f"{kind} check did not finish within {text.duration(limit)}", None, {}
            )
        except Exception as exc:  # a bug must cost one probe, not the round
            log.exception("%s probe of %s failed unexpectedly", kind, t.label)
            r = ProbeRecord(kind, False, f"{kind}: internal error: {exc!r}", None, {})
        if kind == "objects":
            # a probe cut short keeps its place in the manifest rotation
            prev = state.get("objects", {}).get("data", {}) or {}
            keep = {k: prev[k] for k in CURSOR_KEYS if k in prev and k not in r.data}
            if keep:
                r = replace(r, data={**r.data, **keep})
        if kind in SLOW_KINDS and "samples" not in r.data:
            # a probe cut short is no sample: the moving median carries on
            r = replace(r, data={**r.data, **_carry(state.get(kind, {}).get("data", {}))})
        PROBES_TOTAL.labels(kind, "ok" if r.ok else "fail").inc()
        return r

    async def check(
        self, t: Target, kinds: Collection[str] | None = None
    ) -> tuple[Evaluation, bool, list[ProbeRecord]]:
        """Run `kinds` (default: all configured) on one address; record; return
        (evaluation, changed, results)."""
        prev = await self._store(
            self.store.get_state, t.pool, t.mirror.name, t.address, self.region
        )
        prev_kinds = prev.kinds if prev else {}
        configured = kinds_of(t)
        results: list[ProbeRecord] = []
        if t.mirror.enabled:
            run = [k for k in (kinds if kinds is not None else configured) if k in configured]
            # speed is measured after the other probes, not while they share the link
            others = [k for k in run if k not in SLOW_KINDS]
            results = list(await asyncio.gather(*(self._bounded(t, k, prev_kinds) for k in others)))
            for k in run:
                if k in SLOW_KINDS:
                    results.append(await self._bounded(t, k, prev_kinds))
        ev = advance(
            prev_kinds,
            prev.up if prev else None,
            results,
            prev_disabled=prev.disabled if prev else False,
            prev_slow=prev.slow if prev else False,
            fall=t.checks.fall,
            rise=t.checks.rise,
            configured=configured,
            enabled=t.mirror.enabled,
        )
        changed = await self._store(
            self.store.record,
            t.pool,
            t.mirror.name,
            t.address,
            region=self.region,
            results=results,
            up=ev.up,
            reason=ev.reason,
            detail=ev.detail,
            warning=ev.warning,
            disabled=ev.disabled,
            kinds=ev.kinds,
            slow=ev.slow,
            slow_reason=_slow_figures(ev),
        )
        if changed:
            first = prev is None and ev.up and not ev.slow
            fine = ev.up and not ev.slow
            level = logging.DEBUG if first else (logging.INFO if fine else logging.WARNING)
            log.log(
                level,
                "%s/%s %s is %s: %s",
                t.pool,
                t.mirror.name,
                t.address,
                {"down": "DOWN", "slow": "SLOW"}.get(_gauge_state(ev), _gauge_state(ev)),
                ev.reason,
            )
        self._gauge[t.key] = _gauge_state(ev)
        self._export_gauge()
        median = ev.kinds.get("throughput", {}).get("data", {}).get("median_mbps")
        if t.checks.throughput is not None and median is not None:
            self._rates[t.key] = float(median) * MB
            THROUGHPUT.labels(*t.key).set(self._rates[t.key])
        return ev, changed, results

    async def _refresh_drains(self, *, force: bool = False) -> None:
        """Re-read the drains now and then: they change the gauge, not the probing."""
        now = time.monotonic()
        if not force and now < self._drains_next:
            return
        self._drains_next = now + DRAINS_EVERY
        try:
            self._drains = await self._store(self.store.drains)
        except StoreError as exc:
            log.debug("reading drains: %s", exc)  # the next write says it louder
            return
        self._export_gauge()

    def _export_gauge(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        drains = self._drains
        for (pool, mirror, address), st in self._gauge.items():
            if st != "disabled" and any(d.covers(pool, mirror, address) for d in drains):
                st = "drained"
            counts[(pool, st)] = counts.get((pool, st), 0) + 1
        for pool in self.pools:
            for st in ("up", "slow", "down", "disabled", "drained"):
                MIRRORS.labels(pool, st).set(counts.get((pool, st), 0))

    # ---------------------------------------------------------------- rounds

    async def round(
        self, *, on_done: Callable[[Target, Evaluation], None] | None = None
    ) -> RoundResult:
        """Every probe on every address once."""
        t0 = time.perf_counter()
        result = RoundResult(targets=len(self.targets))
        sem = asyncio.Semaphore(self.max_parallel)
        await self._refresh_drains(force=True)

        async def one(t: Target) -> None:
            async with sem:
                ev, changed, results = await self.check(t)
            result.probes += len(results)
            result.failed += sum(1 for r in results if not r.ok)
            result.states[t.key] = ev
            if changed:
                result.changes.append(Change(*t.key, ev.up, ev.reason, ev.slow))
            if on_done is not None:
                on_done(t, ev)

        await asyncio.gather(*(one(t) for t in self.targets))
        result.duration = time.perf_counter() - t0
        ROUND_SECONDS.observe(result.duration)
        return result

    async def run(
        self,
        stop: asyncio.Event,
        *,
        jitter: float = 0.1,
        keep_results: timedelta = timedelta(days=7),
        keep_history: timedelta | None = timedelta(days=90),
        prune_every: float = 3600.0,
        on_done: Callable[[Target, Evaluation], None] | None = None,
    ) -> None:
        """Check each (address, kind) every `interval` ± `jitter` until `stop` is set."""
        due: dict[tuple[tuple[str, str, str], str], float] = {}
        inflight: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        next_prune = time.monotonic()

        def kinds(t: Target) -> list[str]:
            return kinds_of(t) if t.mirror.enabled else [ADMIN]

        def interval(t: Target, kind: str) -> float:
            return 300.0 if kind == ADMIN else interval_of(t, kind)

        async def batch(t: Target, ks: list[str]) -> None:
            t0 = time.perf_counter()
            try:
                ev, _, _ = await self.check(t, ks)
                if on_done is not None:
                    on_done(t, ev)
            except StoreError as exc:  # the store is down: say so, retry next interval
                log.error("checking %s: %s", t.label, exc)
            except Exception:
                log.exception("checking %s failed", t.label)
            finally:
                ROUND_SECONDS.observe(time.perf_counter() - t0)
                now = time.monotonic()
                for k in ks:
                    due[(t.key, k)] = now + interval(t, k) * (1 + random.uniform(-jitter, jitter))

        while not stop.is_set():
            now = time.monotonic()
            for t in self.targets:
                if t.key in inflight or len(inflight) >= self.max_parallel:
                    continue
                ks = kinds(t)
                if any((t.key, k) not in due for k in ks):
                    # A new address (or kind) starts with all its probes together,
                    # addresses spread over up to two seconds.
                    start = now + random.uniform(0, min(2.0, jitter * 10))
                    for k in ks:
                        due.setdefault((t.key, k), start)
                if not any(due[(t.key, k)] <= now for k in ks):
                    continue
                # Take along kinds due soon anyway: one batch, one store write.
                ready = [k for k in ks if due[(t.key, k)] <= now + min(2.0, 0.1 * interval(t, k))]
                if ready:
                    task = asyncio.create_task(batch(t, ready), name=f"check {t.label}")
                    inflight[t.key] = task
                    task.add_done_callback(partial(_forget, inflight, t.key))
            await self._refresh_drains()
            if now >= next_prune:
                next_prune = now + prune_every
                try:
                    pruned = await self._store(self.store.prune, keep_results, keep_history)
                    if any(pruned):
                        log.info("pruned %d probe results and %d state changes", *pruned)
                except Exception:
                    log.exception("pruning the store failed")
            live = {(t.key, k) for t in self.targets for k in kinds(t)}
            for key_kind in [kk for kk in due if kk not in live]:
                del due[key_kind]  # addresses or probes removed, mirrors (dis)abled by a reload
            upcoming = [w for (key, _), w in due.items() if key not in inflight]
            sleep = min([1.0] + [max(0.05, w - time.monotonic()) for w in upcoming])
            try:
                await asyncio.wait_for(stop.wait(), timeout=sleep)
            except TimeoutError:
                pass
        if inflight:
            for task in list(inflight.values()):
                task.cancel()
            await asyncio.wait(list(inflight.values()), timeout=10)


def _forget(inflight: dict[Any, Any], key: Any, _task: object) -> None:
    inflight.pop(key, None)


def _carry(prev: dict[str, Any]) -> dict[str, Any]:
    """What a throughput record without a sample keeps of the last one's data."""
    keep = ("samples", "ranges", "median_mbps", "median_ttfb", "min_mbps", "summary")
    return {"slow": None, **{k: prev[k] for k in keep if k in prev}}


def _gauge_state(ev: Evaluation) -> str:
    if ev.disabled:
        return "disabled"
    if not ev.up:
        return "down"
    return "slow" if ev.slow else "up"


def _slow_figures(ev: Evaluation) -> str:
    """The words `geodns explain` shows for a slow address."""
    if not ev.slow:
        return ""
    return "; ".join(
        str((e.get("data") or {}).get("summary") or "")
        for k, e in ev.kinds.items()
        if k in SLOW_KINDS and e.get("slow")
    )


async def run_once(
    config: Config,
    store: Store,
    *,
    region: str = "",
    ca_bundle: Path | str | None = None,
    pools: Iterable[str] | None = None,
    on_done: Callable[[Target, Evaluation], None] | None = None,
) -> RoundResult:
    """One round over every address of `config` (or the named pools); for cron and the demo."""
    checker = Checker(config, store, region=region, ca_bundle=ca_bundle, pools=pools)
    try:
        return await checker.round(on_done=on_done)
    finally:
        checker.close()
