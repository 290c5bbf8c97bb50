"""Template contexts: the report's rows turned into what the pages display.

The pages render the document `checker report --json` prints (and the
report's Row for the Reason column's words), so what another part of the
checker adds shows up without template surgery:
  * every state gets a CSS class `state-<name>`; states the stylesheet does
    not know get a neutral default, and their chips and counts appear as soon
    as a row has them;
  * per-address fields the page has no column for are listed under the
    reason ("drain reason: kernel upgrade");
  * top-level fields keyed by pool name go into that pool's header, others
    into a short list at the end of the overview.

Every value here is plain text; the templates escape it (autoescape is on).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlencode

from geodns.model import Config, TLSCheck

from .. import report, text
from ..probes.throughput import mbps_text
from . import svg
from .data import CHART_DAYS, MirrorDetail, Snapshot, snapshot_of

Facts = list[tuple[str, str, str]]  # (label, value, css class: "" or "warn")

# Fields of an address the table shows in its own columns (report.Row's).
KNOWN_FIELDS = frozenset(
    (
        "pool",
        "mirror",
        "address",
        "family",
        "region",
        "state",
        "since",
        "checked_at",
        "reason",
        "detail",
        "warning",
        "stale",
        "tls_expires_days",
        "lag_seconds",
        "objects_missing",
        "objects_checked",
        "latency_ms",
        "health",  # differs from state only when drained: the reason says it
        "drain",  # worded in the reason ("by alice until …: kernel upgrade")
        "throughput_mbps",
        "ttfb_ms",
    )
)
KNOWN_DOC = frozenset(("schema", "generated", "summary", "addresses", "regions", "expected"))

# Most urgent first: the order of the state chips and of a sort by state.
# A state not listed sorts between warning and up.
SEVERITY = {"down": 0, "slow": 1, "warning": 2, "unknown": 3, "drained": 4, "disabled": 5, "up": 6}
_UNLISTED = 3.5
_DEFAULT_WARN_DAYS = TLSCheck().warn_days


@lru_cache(maxsize=256)
def state_class(state: str) -> str:
    """`state-<name>` with anything but [a-z0-9-] folded to '-' (a class name)."""
    return "state-" + (re.sub(r"[^a-z0-9-]+", "-", state.lower()).strip("-") or "none")


def _severity(state: str) -> tuple[float, str]:
    return (SEVERITY.get(state, _UNLISTED), state)


# --------------------------------------------------------------------------- cells and rows


@dataclass(frozen=True, slots=True)
class Cell:
    """A table cell: its text, a tooltip, and a CSS class (warn, bad, dim)."""

    text: str = ""
    title: str = ""
    cls: str = ""


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    numeric: bool = False
    title: str = ""


COLUMNS = (
    Column("mirror", "Mirror"),
    Column("address", "Address"),
    Column("region", "Region", title="the checker's region"),
    Column("state", "State"),
    Column("since", "Since", title="time of the last state change"),
    Column("reason", "Reason"),
    Column("lag", "Lag", True, "time behind the origin"),
    Column("tls", "TLS", True, "days until the TLS certificate expires"),
    Column("objects", "Objects", True, "objects missing or wrong / objects checked"),
    Column("latency", "Latency", True, "response time of the last probe"),
    Column(
        "throughput",
        "MB/s",
        True,
        "median download rate of the throughput samples (slow below the pool's min_mbps)",
    ),
    Column("checked", "Last check", title="time of the last check"),
)
COLUMN_KEYS = frozenset(c.key for c in COLUMNS)


@dataclass(slots=True)
class RowView:
    """One address row, display-ready. Cells are flat strings, not Cell objects:
    each attribute a template reads costs a lookup, times thousands of rows."""

    pool: str
    mirror: str
    address: str
    region: str
    state: str
    state_class: str
    row_cls: str  # "row-state-down", plus " stale" when not checked lately
    stale: bool
    reason: str
    extras: list[tuple[str, str]]
    since_text: str
    since_title: str
    lag_text: str
    tls_text: str
    tls_cls: str  # "", "warn" (expiring within warn_days), "bad" (expired)
    objects_text: str
    objects_cls: str
    latency_text: str
    throughput_text: str
    throughput_title: str  # the median time to first byte
    checked_text: str
    checked_title: str
    checked_cls: str  # "warn" when older than max-age (stale)
    href: str  # the mirror page, relative to the site root
    # raw values for sorting (None = blank, sorted last)
    since_at: float | None
    checked_at: float | None
    lag_s: float | None
    tls_days: float | None
    missing: int | None
    latency_ms: float | None
    throughput_mbps: float | None


def _address_key(address: str) -> tuple[int, int | str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (9, address)
    return (ip.version, int(ip))


SORT_KEYS: dict[str, Callable[[RowView], Any]] = {
    "mirror": lambda r: r.mirror.lower(),
    "address": lambda r: _address_key(r.address),
    "region": lambda r: r.region.lower(),
    "state": lambda r: _severity(r.state),
    "since": lambda r: r.since_at,
    "reason": lambda r: r.reason.lower(),
    "lag": lambda r: r.lag_s,
    "tls": lambda r: r.tls_days,
    "objects": lambda r: r.missing,
    "latency": lambda r: r.latency_ms,
    "throughput": lambda r: r.throughput_mbps,
    "checked": lambda r: r.checked_at,
}


@lru_cache(maxsize=4096)
def mirror_href(pool: str, mirror: str) -> str:
    return f"mirror/{quote(pool, safe='')}/{quote(mirror, safe='')}"


def stamp(t: datetime) -> str:
    """text.stamp(), without strftime: thousands of cells per page."""
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    return t.isoformat(" ", "seconds")[:19] + "Z"


def _when(t: datetime | None, now: datetime) -> Cell:
    if t is None:
        return Cell("—", cls="dim")
    return Cell(text.ago(t, now), stamp(t))


def _value_text(value: Any) -> str:
    """An extra field's value in words: times as UTC stamps, lists and maps as JSON."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    if isinstance(value, str):
        if len(value) >= 19 and value[4:5] == "-" and value[10:11] == "T":
            try:
                return stamp(datetime.fromisoformat(value))
            except ValueError:
                pass
        return value
    if isinstance(value, (dict, list)):
        out = json.dumps(value, sort_keys=True, default=str)
        return out if len(out) <= 200 else out[:199] + "…"
    return str(value)


def _label(key: str) -> str:
    return key.replace("_", " ")


def _extras(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    unknown = fields.keys() - KNOWN_FIELDS  # usually empty: one set operation per row
    return [
        (_label(k), _value_text(fields[k]))
        for k in sorted(unknown)
        if fields[k] not in (None, False, "", [], {})
    ]


class Clock:
    """Times in words as of one moment, each second worded once: a checker
    round stamps many addresses within the same few seconds."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._cells: dict[int, Cell] = {}

    def when(self, t: datetime | None) -> Cell:
        if t is None:
            return _when(None, self.now)
        second = int(t.timestamp())
        cell = self._cells.get(second)
        if cell is None:
            cell = self._cells[second] = _when(t, self.now)
        return cell


def row_view(
    fields: Mapping[str, Any],
    row: report.Row | None,
    *,
    now: datetime,
    warn_days: float,
    clock: Clock | None = None,
) -> RowView:
    """One table row from the JSON fields of an address (and its Row, when known)."""
    clock = clock or Clock(now)
    state = str(fields.get("state", "unknown"))
    since = row.since if row else None
    checked = row.checked_at if row else None
    lag = fields.get("lag_seconds")
    tls = fields.get("tls_expires_days")
    missing = fields.get("objects_missing")
    checked_n = fields.get("objects_checked")
    latency = fields.get("latency_ms")
    mbps = fields.get("throughput_mbps")
    ttfb = fields.get("ttfb_ms")
    stale = bool(fields.get("stale"))
    since_cell = clock.when(since)
    checked_cell = clock.when(checked)
    pool, mirror = str(fields.get("pool", "")), str(fields.get("mirror", ""))
    return RowView(
        pool=pool,
        mirror=mirror,
        address=str(fields.get("address", "")),
        region=str(fields.get("region") or ""),
        state=state,
        state_class=state_class(state),
        row_cls=f"row-{state_class(state)} stale" if stale else f"row-{state_class(state)}",
        stale=stale,
        reason=report.reason_text(row) if row is not None else str(fields.get("reason", "")),
        extras=_extras(fields),
        since_text=since_cell.text,
        since_title=since_cell.title,
        lag_text="" if lag is None else text.duration(lag),
        tls_text="" if tls is None else f"{tls:.0f} d",
        tls_cls="" if tls is None else "bad" if tls < 0 else "warn" if tls < warn_days else "",
        objects_text="" if checked_n is None else f"{missing or 0}/{checked_n}",
        objects_cls="warn" if missing else "",
        latency_text="" if latency is None else f"{latency:.0f} ms",
        throughput_text="" if mbps is None else mbps_text(float(mbps)),
        throughput_title="" if ttfb is None else f"first byte after {ttfb:.0f} ms (median)",
        checked_text=checked_cell.text,
        checked_title=checked_cell.title + (": not checked lately" if stale else ""),
        checked_cls="warn" if stale and checked is not None else "",
        href=mirror_href(pool, mirror),
        since_at=since.timestamp() if since else None,
        checked_at=checked.timestamp() if checked else None,
        lag_s=lag,
        tls_days=tls,
        missing=(missing or 0) if checked_n is not None else None,
        latency_ms=latency,
        throughput_mbps=mbps,
    )


def row_views(snap: Snapshot, *, config: Config | None, now: datetime) -> list[RowView]:
    by_key = {(r.pool, r.mirror, r.address, r.region): r for r in snap.rows}
    warn_days: dict[str, float] = {}
    clock = Clock(now)
    out = []
    for fields in snap.doc.get("addresses", []):
        pool = str(fields.get("pool", ""))
        if pool not in warn_days:
            warn_days[pool] = _warn_days(config, pool)
        key = (pool, fields.get("mirror"), fields.get("address"), fields.get("region"))
        row = by_key.get(key)
        out.append(row_view(fields, row, now=now, warn_days=warn_days[pool], clock=clock))
    return out


def _warn_days(config: Config | None, pool: str) -> float:
    p = config.pools.get(pool) if config is not None else None
    if p is not None and p.checks.tls is not None:
        return float(p.checks.tls.warn_days)
    return float(_DEFAULT_WARN_DAYS)


def sort_rows(rows: list[RowView], key: str, desc: bool) -> list[RowView]:
    """Stable sort on one column; blanks always last, whatever the direction."""
    get = SORT_KEYS.get(key, SORT_KEYS["mirror"])
    have = [(get(r), r) for r in rows]
    blank = [r for k, r in have if k is None]
    have = [(k, r) for k, r in have if k is not None]
    have.sort(key=lambda kr: kr[0], reverse=desc)
    return [r for _, r in have] + blank


# --------------------------------------------------------------------------- query


@dataclass(frozen=True, slots=True)
class Query:
    """The overview's query parameters: ?state=down&pool=distfiles&sort=lag&dir=desc."""

    state: str | None = None
    pool: str | None = None
    sort: str = "mirror"
    desc: bool = False

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Query:
        sort = params.get("sort", "mirror")
        return cls(
            state=params.get("state") or None,
            pool=params.get("pool") or None,
            sort=sort if sort in COLUMN_KEYS else "mirror",
            desc=params.get("dir") == "desc",
        )

    def href(self, **changes: Any) -> str:
        """This query with some parameters changed, as a relative link."""
        values = {"state": self.state, "pool": self.pool, "sort": self.sort, "desc": self.desc}
        values.update(changes)
        params = [(k, str(values[k])) for k in ("state", "pool") if values[k]]
        if values["sort"] != "mirror" or values["desc"]:
            params.append(("sort", str(values["sort"])))
        if values["desc"]:
            params.append(("dir", "desc"))
        return "?" + urlencode(params) if params else "./"


# --------------------------------------------------------------------------- overview


@dataclass(frozen=True, slots=True)
class Chip:
    """A filter link with a count (a state or a pool)."""

    label: str
    count: int
    href: str
    active: bool
    cls: str = ""


@dataclass(frozen=True, slots=True)
class Header:
    column: Column
    href: str
    arrow: str  # "▲", "▼" or ""
    aria_sort: str  # ascending / descending / none


@dataclass(slots=True)
class PoolView:
    name: str
    total: int
    counts: list[tuple[str, int, str]]  # (state, count, css class), most urgent first
    extras: Facts
    rows: list[RowView]


@dataclass(frozen=True, slots=True)
class RegionView:
    name: str
    last: Cell
    silent: bool
    addresses: int
    down: int


@dataclass(slots=True)
class Overview:
    generated: Cell
    total: int
    stale: int
    shown: int
    state_chips: list[Chip]
    pool_chips: list[Chip]
    headers: list[Header]
    show_region: bool
    pools: list[PoolView]
    regions: list[RegionView]
    others: Facts
    query: Query
    headline: str  # "2 down, 1 warning" ("" when all is well)


def _counts(states: Iterable[str]) -> list[tuple[str, int, str]]:
    c = Counter(states)
    return [(s, n, state_class(s)) for s, n in sorted(c.items(), key=lambda kv: _severity(kv[0]))]


def _pool_extras(snap: Snapshot, pools: set[str], now: datetime) -> tuple[dict[str, Facts], Facts]:
    """Pool-level facts: the expected state each pool reads (as `checker
    report` words it), and top-level fields the page does not know, per pool
    when keyed by pool name."""
    per_pool: dict[str, Facts] = {p: [] for p in pools}
    others: Facts = []
    for e in snap.expected:
        words = report.expected_line(e, now)
        if e.problem and e.version is not None:
            words += f" — {e.problem}"
        fact = ("expected state", words, "warn" if e.problem else "")
        readers = [p for p in (e.pools or (e.name,)) if p in per_pool]
        for pool in readers:
            per_pool[pool].append(fact)
        if not readers:
            others.append(fact)
    for key, value in snap.doc.items():
        if key in KNOWN_DOC:
            continue
        if isinstance(value, dict) and value and set(value) & pools:
            for pool, v in value.items():
                if pool not in per_pool:
                    continue
                if isinstance(v, dict):
                    per_pool[pool] += [(_label(k), _value_text(x), "") for k, x in v.items()]
                else:
                    per_pool[pool].append((_label(key), _value_text(v), ""))
        else:
            others.append((_label(key), _value_text(value), ""))
    return per_pool, others


def regions_of(
    rows: list[RowView], doc: Mapping[str, Any], *, now: datetime, max_age: float | None
) -> list[RegionView]:
    """Each regional checker's newest check; silent after `max_age`."""
    per: dict[str, list[RowView]] = {}
    for r in rows:
        per.setdefault(r.region, []).append(r)
    out = []
    for name, stamp in (doc.get("regions") or {}).items():
        try:
            last = datetime.fromisoformat(stamp)
        except (TypeError, ValueError):
            continue
        mine = per.get(name, [])
        silent = max_age is not None and (now - last) > timedelta(seconds=max_age)
        cell = _when(last, now)
        out.append(
            RegionView(
                name=name or "(no region)",
                last=Cell(cell.text, cell.title, "bad" if silent else ""),
                silent=silent,
                addresses=len(mine),
                down=sum(1 for r in mine if r.state == "down"),
            )
        )
    return out


def overview(
    snap: Snapshot,
    query: Query,
    *,
    config: Config | None = None,
    max_age: float | None = 3600.0,
    now: datetime | None = None,
) -> Overview:
    now = now or datetime.now(UTC)
    rows = row_views(snap, config=config, now=now)
    in_pool = [r for r in rows if query.pool is None or r.pool == query.pool]
    shown = [r for r in in_pool if query.state is None or r.state == query.state]
    shown = sort_rows(shown, query.sort, query.desc)
    shown_by_pool: dict[str, list[RowView]] = {}
    for r in shown:
        shown_by_pool.setdefault(r.pool, []).append(r)
    states_by_pool: dict[str, list[str]] = {}
    for r in rows:
        states_by_pool.setdefault(r.pool, []).append(r.state)
    all_pools = sorted(states_by_pool)
    per_pool, others = _pool_extras(snap, set(all_pools), now)
    pool_views = [
        PoolView(
            name=name,
            total=len(states_by_pool[name]),
            counts=_counts(states_by_pool[name]),
            extras=per_pool.get(name, []),
            rows=shown_by_pool[name],
        )
        for name in all_pools
        if name in shown_by_pool
    ]
    state_chips = [Chip("all", len(in_pool), query.href(state=None), query.state is None)]
    state_chips += [
        Chip(s, n, query.href(state=s), query.state == s, cls)
        for s, n, cls in _counts(r.state for r in in_pool)
    ]
    if query.state is not None and all(c.label != query.state for c in state_chips[1:]):
        # a filter nothing matches still shows, so it can be cleared
        state_chips.append(Chip(query.state, 0, query.href(state=query.state), True))
    pool_chips = [Chip("all pools", len(rows), query.href(pool=None), query.pool is None)]
    pool_chips += [
        Chip(p, len(states_by_pool[p]), query.href(pool=p), query.pool == p) for p in all_pools
    ]
    # the browser tab's title: what needs a look, before the page is even open
    headline = ", ".join(
        f"{n} {s}" for s, n, _ in _counts(r.state for r in rows) if s not in ("up", "disabled")
    )
    show_region = any(r.region for r in rows)
    headers = []
    for c in COLUMNS:
        if c.key == "region" and not show_region:
            continue
        current = query.sort == c.key
        desc = not query.desc if current else c.numeric  # numbers: biggest first
        headers.append(
            Header(
                c,
                query.href(sort=c.key, desc=desc),
                ("▼" if query.desc else "▲") if current else "",
                ("descending" if query.desc else "ascending") if current else "none",
            )
        )
    return Overview(
        generated=Cell(text.stamp(snap.read_at), snap.read_at.isoformat(timespec="seconds")),
        total=len(rows),
        stale=sum(1 for r in rows if r.stale),
        shown=len(shown),
        state_chips=state_chips,
        pool_chips=pool_chips,
        headers=headers,
        show_region=show_region,
        pools=pool_views,
        regions=regions_of(rows, snap.doc, now=now, max_age=max_age),
        others=others,
        query=query,
        headline=headline,
    )


# --------------------------------------------------------------------------- mirror page


@dataclass(frozen=True, slots=True)
class ProbeView:
    kind: str
    status: str  # ok, failing, down
    cls: str
    detail: str
    latency: str
    at: Cell


@dataclass(frozen=True, slots=True)
class AddressDetail:
    address: str
    region: str
    probes: list[ProbeView]
    tls: list[tuple[str, str]]  # (label, value): expires, days left, issuer, protocol
    tls_cls: str


@dataclass(frozen=True, slots=True)
class ChangeView:
    at: Cell
    address: str
    region: str
    state: str
    state_class: str
    reason: str


@dataclass(slots=True)
class MirrorPage:
    pool: str
    mirror: str
    url: str | None
    generated: Cell
    headers: list[Header]
    show_region: bool
    rows: list[RowView]
    addresses: list[AddressDetail]
    chart: svg.Chart
    chart_days: int
    history: list[ChangeView]


def _probe_view(kind: str, e: Mapping[str, Any], now: datetime) -> ProbeView:
    if e.get("down"):
        status, cls = "down", "bad"
    elif not e.get("ok", True):
        status, cls = "failing", "warn"
    else:
        status, cls = "ok", ""
    latency = e.get("latency")
    at: datetime | None = None
    try:
        at = datetime.fromisoformat(str(e["at"])) if e.get("at") else None
    except ValueError:
        at = None
    return ProbeView(
        kind=kind,
        status=status,
        cls=cls,
        detail=str(e.get("detail", "")),
        latency="" if latency is None else f"{float(latency) * 1000:.0f} ms",
        at=_when(at, now),
    )


def _tls_facts(data: Mapping[str, Any], warn_days: float) -> tuple[list[tuple[str, str]], str]:
    facts: list[tuple[str, str]] = []
    cls = ""
    if data.get("expires"):
        facts.append(("expires", _value_text(data["expires"])))
    days = data.get("expires_days")
    if days is not None:
        facts.append(("days left", f"{float(days):.1f}"))
        cls = "bad" if days < 0 else "warn" if days < warn_days else ""
    for k in ("issuer", "protocol"):
        if data.get(k):
            facts.append((k, _value_text(data[k])))
    return facts, cls


def mirror_page(
    detail: MirrorDetail,
    *,
    config: Config | None = None,
    max_age: float | None = 3600.0,
    now: datetime | None = None,
) -> MirrorPage:
    now = now or datetime.now(UTC)
    snap = snapshot_of(detail.states, config=config, max_age=max_age, drains=detail.drains, now=now)
    rows = [
        r
        for r in row_views(snap, config=config, now=now)
        if r.pool == detail.pool and r.mirror == detail.mirror
    ]
    warn_days = _warn_days(config, detail.pool)
    addresses = []
    for s in detail.states:
        probes = [_probe_view(k, e, now) for k, e in sorted(s.kinds.items()) if isinstance(e, dict)]
        tls_entry = s.kinds.get("tls") or {}
        facts, cls = _tls_facts(tls_entry.get("data") or {}, warn_days)
        addresses.append(AddressDetail(s.address, s.region, probes, facts, cls))
    show_region = any(r.region for r in rows)
    headers = [
        Header(c, "", "", "none")
        for c in COLUMNS
        if c.key != "mirror" and (c.key != "region" or show_region)
    ]
    return MirrorPage(
        pool=detail.pool,
        mirror=detail.mirror,
        url=detail.url,
        generated=Cell(text.stamp(detail.read_at), detail.read_at.isoformat(timespec="seconds")),
        headers=headers,
        show_region=show_region,
        rows=rows,
        addresses=addresses,
        chart=lag_chart(detail, config=config, now=now),
        chart_days=CHART_DAYS,
        history=[
            ChangeView(
                at=_when(h.at, now),
                address=h.address or "(all)",  # a drain of the whole mirror
                region=h.region,
                state=h.state,
                state_class=state_class(h.state),
                reason=h.reason,
            )
            for h in detail.history
        ],
    )


def lag_chart(detail: MirrorDetail, *, config: Config | None, now: datetime) -> svg.Chart:
    """One line per address (and region) over the last CHART_DAYS, max_lag dashed."""
    series: dict[str, list[svg.Point]] = {}
    max_lag: float | None = None
    regions = len({r.region for r in detail.lag}) > 1
    for r in sorted(detail.lag, key=lambda r: r.at):
        label = r.address + (f" [{r.region or '-'}]" if regions else "")
        lag = r.data.get("lag")
        series.setdefault(label, []).append(
            svg.Point(r.at, None if lag is None else float(lag), r.ok, r.detail)
        )
        if r.data.get("max_lag") is not None:
            max_lag = float(r.data["max_lag"])
    pool = config.pools.get(detail.pool) if config is not None else None
    if pool is not None and pool.checks.freshness is not None:
        max_lag = pool.checks.freshness.max_lag
    return svg.lag_chart(series, start=now - timedelta(days=CHART_DAYS), end=now, threshold=max_lag)
