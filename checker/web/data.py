"""What the status pages show, read from the store exactly as `checker report` reads it.

`StatusSource` is the only part of the web code that touches the store. It is
blocking (SQLAlchemy); the app calls it from a worker thread.

An outage of the store must not blank the page on call people are looking at:
the last good read is kept and shown under a banner, with the time it was
read. The store's error text is logged (with the password hidden) but never
put on a page, since it names the store's URL and host.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from geodns.model import Config
from geodns.store import AddressState, Drain, ExpectedHead, ProbeResult, Store, StoreError

from .. import history, report

log = logging.getLogger("checker.web")

CHART_DAYS = 7  # the lag chart's window: what `checker run --keep-results` keeps by default
HISTORY_LIMIT = 200  # state changes on a mirror page
# Freshness results read for one mirror's chart: 7 days at the default 5-minute
# interval is ~2,000 per address and region; a bound keeps a misconfigured
# 1-second interval from reading millions of rows into one page.
RESULTS_LIMIT = 50_000
# Mirror pages remembered for a store outage: each holds up to a week of results.
MIRRORS_KEPT = 32


@dataclass(slots=True)
class Snapshot:
    """One read of every state: the report's rows and its JSON document."""

    rows: list[report.Row]
    doc: dict[str, Any]  # report.document(): the page renders what the API serves
    read_at: datetime
    expected: list[report.Expected] = field(default_factory=list)  # published object lists
    _json: str | None = None

    @property
    def json_text(self) -> str:
        """Exactly what `checker report --json` prints (made on first use)."""
        if self._json is None:
            self._json = json.dumps(self.doc, indent=2)
        return self._json


@dataclass(frozen=True, slots=True)
class MirrorDetail:
    """Everything the mirror page shows about one mirror of one pool."""

    pool: str
    mirror: str
    url: str | None  # from the configuration, when the page was given one
    states: list[AddressState]  # probe details per address and region
    history: list[history.HistoryLine]  # state changes and drain events, newest first
    lag: list[ProbeResult]  # freshness results of the last CHART_DAYS, newest first
    read_at: datetime
    drains: list[Drain] = field(default_factory=list)  # drains in force anywhere


@dataclass(frozen=True, slots=True)
class Outage:
    """The store could not be read; `since` is the first failed read in a row."""

    since: datetime


class StoreUnavailable(Exception):
    """The store cannot be read and there is nothing older to show."""


class StatusSource:
    """Reads the store for the pages and the API; remembers the last good read.

    Reads are cached for `cache_seconds` so that many open pages (each
    refreshing every 30 s) cost the store one query, not one per viewer.
    """

    def __init__(
        self,
        url: str,
        *,
        config: Config | None = None,
        max_age: float | None = 3600.0,
        region: str | None = None,
        pools: list[str] | None = None,
        expected_max_age: float = report.EXPECTED_MAX_AGE,
        cache_seconds: float = 5.0,
        store_factory: Callable[[str], Store] | None = None,
    ) -> None:
        self._url = url
        self._secrets = _secrets_of(url)
        self.config = config
        self.max_age = max_age
        self.region = region
        self.pools = pools or None
        self.expected_max_age = expected_max_age
        self.cache_seconds = cache_seconds
        self._factory = store_factory or (lambda u: Store(u, create=False))
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._last: Snapshot | None = None
        self._last_mono = 0.0
        self._outage: Outage | None = None
        self._last_try = 0.0  # when a failed read was last tried (monotonic)
        self._expected_warned = False
        self._mirrors: dict[tuple[str, str], MirrorDetail] = {}  # last good detail pages

    # ---------------------------------------------------------------- store access

    def _open(self) -> Store:
        if self._store is None:
            self._store = self._factory(self._url)
        return self._store

    def _waiting(self) -> bool:
        """During an outage, try the store again only every `cache_seconds`: a
        store that hangs on connect must not hold every page view that long."""
        return self._outage is not None and time.monotonic() - self._last_try < self.cache_seconds

    def _failed(self, exc: Exception) -> None:
        """Log the cause once per outage (password hidden) and drop the
        connection, so the next read starts afresh."""
        self._last_try = time.monotonic()
        if self._outage is None:
            self._outage = Outage(datetime.now(UTC))
            log.error("status page: cannot read the store: %s", self.redact(str(exc)))
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001 - closing a broken engine may fail too
                pass
            self._store = None

    def _recovered(self) -> None:
        if self._outage is not None:
            log.warning("status page: the store can be read again")
        self._outage = None

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @property
    def outage(self) -> Outage | None:
        return self._outage

    # ---------------------------------------------------------------- reads

    def snapshot(self) -> tuple[Snapshot | None, Outage | None]:
        """(the newest good read or None, the outage or None)."""
        if not self._lock.acquire(blocking=False):
            if self._last is not None:  # another read is under way: no need to wait for it
                return self._last, self._outage
            self._lock.acquire()
        try:
            return self._read()
        finally:
            self._lock.release()

    def _read(self) -> tuple[Snapshot | None, Outage | None]:
        """A store read, unless the last one is fresh enough (under self._lock)."""
        fresh = time.monotonic() - self._last_mono < self.cache_seconds
        if self._last is not None and fresh and self._outage is None:
            return self._last, None
        if self._waiting():
            return self._last, self._outage
        try:
            store = self._open()
            states = store.states(region=self.region)
            drains = store.drains()
            heads: list[ExpectedHead] | None
            error = None
            try:
                heads = store.expected_heads()
            except StoreError as exc:  # a store not yet upgraded by a newer checker
                # the report's words for it, without the store's URL (that is for the log)
                if not self._expected_warned:
                    log.warning("status page: %s", self.redact(str(exc)))
                    self._expected_warned = True
                heads, error = None, "the store could not say (the status page's log has why)"
        except Exception as exc:  # noqa: BLE001 - StoreError, or a driver's own error
            self._failed(exc)
            return self._last, self._outage
        self._recovered()
        self._last = snapshot_of(
            states,
            config=self.config,
            max_age=self.max_age,
            pools=self.pools,
            drains=drains,
            expected=report.build_expected(
                heads,
                config=self.config,
                pools=self.pools,
                max_age=self.expected_max_age,
                error=error,
            ),
        )
        self._last_mono = time.monotonic()
        return self._last, None

    def mirror(self, pool: str, mirror: str) -> tuple[MirrorDetail | None, Outage | None]:
        """The mirror page's data, or (None, None) for a mirror nobody knows."""
        known = self._known(pool, mirror)
        with self._lock:
            if self._waiting():
                return self._mirrors.get((pool, mirror)), self._outage
            try:
                store = self._open()
                states = store.states(pool=pool, mirror=mirror, region=self.region)
                if not states and not known:
                    self._recovered()
                    return None, None
                now = datetime.now(UTC)
                changes = store.history(mirror, pool=pool, region=self.region, limit=HISTORY_LIMIT)
                events = [  # drains of this pool, or of every pool ("")
                    e
                    for e in store.drain_events(mirror, limit=HISTORY_LIMIT)
                    if e.pool in ("", pool)
                ]
                detail = MirrorDetail(
                    pool=pool,
                    mirror=mirror,
                    url=self._url_of(pool, mirror),
                    states=states,
                    history=history.history_lines(changes, events, limit=HISTORY_LIMIT),
                    lag=[
                        r
                        for r in store.results(
                            pool=pool,
                            mirror=mirror,
                            kind="freshness",
                            since=now - timedelta(days=CHART_DAYS),
                            limit=RESULTS_LIMIT,
                        )
                        if self.region is None or r.region == self.region
                    ],
                    read_at=now,
                    drains=store.drains(),
                )
            except Exception as exc:  # noqa: BLE001 - any failure is an outage
                self._failed(exc)
                old = self._mirrors.get((pool, mirror))
                if old is None and not known:
                    return None, self._outage
                return old, self._outage
            self._recovered()
            self._mirrors.pop((pool, mirror), None)
            self._mirrors[(pool, mirror)] = detail
            while len(self._mirrors) > MIRRORS_KEPT:  # the least recently read goes
                del self._mirrors[next(iter(self._mirrors))]
            return detail, None

    def _known(self, pool: str, mirror: str) -> bool:
        """In the configuration or in the last overview read."""
        if self._url_of(pool, mirror) is not None:
            return True
        last = self._last
        return last is not None and any(r.pool == pool and r.mirror == mirror for r in last.rows)

    def _url_of(self, pool: str, mirror: str) -> str | None:
        if self.config is None:
            return None
        p = self.config.pools.get(pool)
        for m in p.mirrors if p is not None else ():
            if m.name == mirror:
                return m.url
        return None

    def set_config(self, config: Config | None) -> None:
        """A reloaded configuration (SIGHUP); the next read uses it."""
        with self._lock:
            self.config = config
            self._last_mono = 0.0

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def snapshot_of(
    states: list[AddressState],
    *,
    config: Config | None,
    max_age: float | None,
    pools: list[str] | None = None,
    drains: Sequence[Drain] = (),
    expected: list[report.Expected] | None = None,
    now: datetime | None = None,
) -> Snapshot:
    """The report's rows and JSON for these states (what `checker report` does)."""
    now = now or datetime.now(UTC)
    rows = report.build_rows(
        states, config=config, pools=pools, max_age=max_age, now=now, drains=drains
    )
    expected = expected or []
    doc = report.document(rows, now=now, expected=expected)
    return Snapshot(rows=rows, doc=doc, read_at=now, expected=expected)


def _secrets_of(url: str) -> list[str]:
    """Texts never to log: the whole URL and its password (longest first)."""
    out = [url]
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:  # noqa: BLE001 - an unparsable URL: hide all of it
        password = None
    if password:
        out.append(str(password))
        from urllib.parse import quote

        out.append(quote(str(password), safe=""))
    return sorted({s for s in out if s}, key=len, reverse=True)
