"""Reports for the people on call: rows, a table, JSON (Nagios/Icinga output
is checker.nagios, `checker history` is checker.history).

One row per mirror address and region. States:
  up        serving, nothing to say
  warning   serving, but look (TLS certificate expiring, objects missing within
            `max_missing`, origin timestamp unreadable)
  slow      serving, but its median download rate is under `min_mbps` (or its
            first byte later than `max_ttfb`): ranked one group behind
  down      taken out of DNS answers by the checker
  disabled  `enabled: false` in the configuration
  drained   taken out of DNS answers by an operator (`checker drain`); still
            probed, and `health` says what the checker finds
  unknown   in the configuration but never checked (only with --config)
A row is also flagged `stale` when its last check is older than `max_age`
(the checker may have stopped); Nagios reports that, and slow, as a WARNING.

JSON (`--json`), schema version 1 ("regions", "drained", "health", "drain",
"slow", "throughput_mbps" and "ttfb_ms" were added compatibly):
  {"schema": 1, "generated": ISO-8601,
   "summary": {"total", "up", "warning", "slow", "down", "disabled", "drained",
               "unknown", "stale"},
   "addresses": [{"pool", "mirror", "address", "family", "region", "state",
                  "since", "checked_at", "reason", "detail", "warning", "stale",
                  "tls_expires_days", "lag_seconds", "objects_missing",
                  "objects_checked", "latency_ms",
                  "throughput_mbps", "ttfb_ms",  # moving medians (throughput probe)
                  "health",     # the state without the drain: up, warning, slow, down, unknown
                  "drain"}],    # null, or {"reason", "who", "at", "until", "scope"}
   "regions": {region: newest checked_at},   (region "" = untagged checker)
   "expected": {name: {"name", "pools", "version", "published_at", "changed_at",
                       "age_seconds", "objects", "bytes", "gone", "source",
                       "max_age", "stale", "problem"}}}
Times are ISO 8601 UTC or null ("until" null: until undrained); numbers are null
when the probe is not configured. `throughput_mbps` (MB/s, 10^6 bytes) and
`ttfb_ms` are the moving medians the slow state is judged on.

Expected state (`objects: {manifest: store}`): one entry per published name
(and, with --config, per name a pool reads but nobody published). A head older
than `--expected-max-age` (default 3h) means the leader's `checker manifest
publish` stopped: `stale`, with the age in `problem`, a WARNING for Nagios.
`pools` lists the configured pools that read it (with --config).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import IO, Any

from checker import text
from checker.probes.throughput import mbps_text
from geodns.model import Config
from geodns.store import (
    AddressState,
    Drain,
    ExpectedHead,
    address_text,
)

STATES = ("up", "warning", "slow", "down", "disabled", "drained", "unknown")
EXPECTED_MAX_AGE = 3 * 3600.0  # a leader publishing hourly may miss two runs


@dataclass(frozen=True, slots=True)
class Row:
    pool: str
    mirror: str
    address: str
    family: int
    region: str
    state: str
    since: datetime | None
    checked_at: datetime | None
    reason: str
    detail: str
    warning: str | None
    stale: bool
    tls_expires_days: float | None
    lag_seconds: float | None
    objects_missing: int | None
    objects_checked: int | None
    latency_ms: float | None
    health: str = ""  # the state the checker's verdict alone gives (differs when drained)
    drain: Drain | None = None
    throughput_mbps: float | None = None  # the moving median (MB/s, 10^6 bytes)
    ttfb_ms: float | None = None  # the moving median time to first byte

    def json(self) -> dict[str, Any]:
        # fields are scalars: a shallow dict (asdict deep-copied every value,
        # the bulk of `--json` time for a thousand mirrors)
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("since", "checked_at"):
            d[k] = d[k].isoformat() if d[k] else None
        d["health"] = self.health or self.state
        d["drain"] = None
        if self.drain is not None:
            dr = self.drain
            d["drain"] = {
                "reason": dr.reason,
                "who": dr.who,
                "at": dr.at.isoformat(),
                "until": dr.until.isoformat() if dr.until else None,
                "scope": dr.target,
            }
        return d


def _data(kinds: dict[str, Any], kind: str) -> dict[str, Any]:
    entry = kinds.get(kind) or {}
    data = entry.get("data") or {}
    return data if isinstance(data, dict) else {}


def row_of(s: AddressState, *, now: datetime, max_age: float | None) -> Row:
    tls = _data(s.kinds, "tls")
    fresh = _data(s.kinds, "freshness")
    objs = _data(s.kinds, "objects")
    speed = _data(s.kinds, "throughput")
    if s.disabled:
        state = "disabled"
    elif not s.up:
        state = "down"
    elif s.slow:
        state = "slow"
    elif s.warning:
        state = "warning"
    else:
        state = "up"
    missing = None
    if "checked" in objs:
        missing = int(objs.get("missing", 0)) + int(objs.get("wrong_size", 0))
        missing += int(objs.get("corrupt", 0))
    latency = None
    for kind in ("tls", "freshness", "apt", "objects"):
        value = (s.kinds.get(kind) or {}).get("latency")
        if value is not None:
            latency = round(float(value) * 1000, 1)
            break
    stale = max_age is not None and (now - s.checked_at).total_seconds() > max_age
    mbps = speed.get("median_mbps")
    ttfb = speed.get("median_ttfb")
    return Row(
        pool=s.pool,
        mirror=s.mirror,
        address=s.address,
        family=s.family,
        region=s.region,
        state=state,
        since=s.since,
        checked_at=s.checked_at,
        reason=s.reason,
        detail=s.detail,
        warning=s.warning,
        stale=stale,
        tls_expires_days=tls.get("expires_days"),
        lag_seconds=fresh.get("lag"),
        objects_missing=missing,
        objects_checked=objs.get("checked"),
        latency_ms=latency,
        throughput_mbps=None if mbps is None else round(float(mbps), 3),
        ttfb_ms=None if ttfb is None else round(float(ttfb) * 1000, 1),
    )


def covering(drains: Iterable[Drain], pool: str, mirror: str, address: str) -> Drain | None:
    """The drain that holds this address: the most specific one (an address
    before the whole mirror, one pool before every pool)."""
    hits = [d for d in drains if d.covers(pool, mirror, address)]
    return max(hits, key=lambda d: (bool(d.address), bool(d.pool)), default=None)


def _drained(row: Row, drains: Sequence[Drain]) -> Row:
    d = covering(drains, row.pool, row.mirror, row.address) if drains else None
    if d is None:
        return replace(row, health=row.state)
    if row.state == "disabled":  # the configuration says more than the drain
        return replace(row, health=row.state, drain=d)
    return replace(row, state="drained", health=row.state, drain=d)


def build_rows(
    states: Iterable[AddressState],
    *,
    config: Config | None = None,
    pools: Iterable[str] | None = None,
    state: str | None = None,
    max_age: float | None = 3600.0,
    now: datetime | None = None,
    drains: Sequence[Drain] = (),
) -> list[Row]:
    """Rows from the store, plus never-checked addresses when a Config is given;
    addresses held by one of `drains` (those in force) are in state "drained".

    `state` filters: "up" (serving: up, warning and slow), "warning", "slow",
    "down" (not answered: down, disabled and drained), "disabled", "drained",
    "unknown".
    """
    now = now or datetime.now(UTC)
    wanted = set(pools) if pools else None
    rows = [row_of(s, now=now, max_age=max_age) for s in states]
    if config is not None:
        seen = {(r.pool, r.mirror, r.address) for r in rows}
        for pool in config.pools.values():
            for m in pool.mirrors:
                for a in m.addresses():
                    key = (pool.name, m.name, address_text(a))
                    if key not in seen:
                        rows.append(
                            Row(
                                *key,
                                a.version,
                                "",
                                "unknown",
                                None,
                                None,
                                "never checked",
                                "never checked",
                                None,
                                False,
                                None,
                                None,
                                None,
                                None,
                                None,
                            )
                        )
    rows = [_drained(r, drains) for r in rows]
    if wanted is not None:
        rows = [r for r in rows if r.pool in wanted]
    if state is not None:
        match = {
            "up": ("up", "warning", "slow"),
            "down": ("down", "disabled", "drained"),
        }.get(state, (state,))
        rows = [r for r in rows if r.state in match]
    rows.sort(key=lambda r: (r.pool, r.mirror, r.family, r.address, r.region))
    return rows


def summary(rows: list[Row]) -> dict[str, int]:
    counts = {s: 0 for s in STATES}
    for r in rows:
        counts[r.state] += 1
    counts["total"] = len(rows)
    counts["stale"] = sum(1 for r in rows if r.stale)
    return counts


# --------------------------------------------------------------------------- expected state


@dataclass(frozen=True, slots=True)
class Expected:
    """One published expected state as the report shows it."""

    name: str
    pools: tuple[str, ...]  # configured pools reading it (known with --config)
    version: int | None  # None: never published
    published_at: datetime | None
    changed_at: datetime | None
    age_seconds: float | None
    objects: int | None
    bytes: int | None
    gone: int | None
    source: str
    max_age: float  # older than this is stale
    stale: bool
    problem: str | None  # a warning in words, or None

    def json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pools"] = list(self.pools)
        for k in ("published_at", "changed_at"):
            d[k] = d[k].isoformat() if d[k] else None
        if d["age_seconds"] is not None:
            d["age_seconds"] = round(d["age_seconds"], 1)
        return d


def build_expected(
    heads: Iterable[ExpectedHead] | None,
    *,
    config: Config | None = None,
    pools: Iterable[str] | None = None,
    max_age: float = EXPECTED_MAX_AGE,
    now: datetime | None = None,
    error: str | None = None,
) -> list[Expected]:
    """The expected states to show: every published one, and with a Config every
    name a pool reads. `heads` None with `error`: the store could not say."""
    now = now or datetime.now(UTC)
    readers: dict[str, list[str]] = {}
    if config is not None:
        for p in config.pools.values():
            if p.checks.objects is not None and p.checks.objects.expected is not None:
                readers.setdefault(p.checks.objects.expected, []).append(p.name)
    by_name = {h.pool: h for h in heads or ()}
    out = []
    for name in sorted(set(by_name) | set(readers)):
        h = by_name.get(name)
        used = tuple(sorted(readers.get(name, ())))
        judged = config is None or bool(used)  # an unused one is only shown
        if h is None:
            missing: str
            if heads is None:
                missing = f"expected state '{name}' unreadable: {error or 'store error'}"
            else:
                missing = (
                    f"no expected state published for '{name}' (read by pool "
                    f"{', '.join(used)}): run `checker manifest publish ROOT --pool {name}` "
                    "on the origin"
                )
            out.append(
                Expected(
                    name, used, None, None, None, None, None, None, None, "", max_age, True, missing
                )
            )
            continue
        age = (now - h.published_at).total_seconds()
        stale = judged and age > max_age
        problem: str | None = None
        if stale:
            problem = (
                f"expected state '{name}' last published {text.duration(age)} ago "
                f"(version {h.version}, max {text.duration(max_age)}): has the leader's "
                "`checker manifest publish` stopped?"
            )
        out.append(
            Expected(
                name,
                used,
                h.version,
                h.published_at,
                h.changed_at,
                age,
                h.objects,
                h.bytes,
                h.gone,
                h.source,
                max_age,
                stale,
                problem,
            )
        )
    if pools is not None:
        wanted = set(pools)
        out = [e for e in out if e.name in wanted or wanted & set(e.pools)]
    return out


def expected_line(e: Expected, now: datetime | None = None) -> str:
    """One line for the table's footer (rich markup escaped by the caller)."""
    if e.version is None or e.published_at is None:
        return e.problem or f"expected state {e.name}: none"
    changed = ""
    if e.changed_at is not None and e.changed_at != e.published_at:
        changed = f", last change {text.ago(e.changed_at, now)}"
    return (
        f"expected state {e.name}: version {e.version}, {e.objects or 0:,} objects "
        f"({text.size(e.bytes or 0)}), {e.gone or 0:,} removed kept; published "
        f"{text.ago(e.published_at, now)}{changed} from {e.source or '?'}"
    )


# --------------------------------------------------------------------------- JSON


def to_json(
    rows: list[Row], *, now: datetime | None = None, expected: Iterable[Expected] = ()
) -> str:
    return json.dumps(document(rows, now=now, expected=expected), indent=2)


def document(
    rows: list[Row], *, now: datetime | None = None, expected: Iterable[Expected] = ()
) -> dict[str, Any]:
    """What `--json` prints, as data (the status page renders this very dict)."""
    now = now or datetime.now(UTC)
    return {
        "schema": 1,
        "generated": now.isoformat(timespec="seconds"),
        "summary": summary(rows),
        "addresses": [r.json() for r in rows],
        "regions": {k: v.isoformat(timespec="seconds") for k, v in region_checks(rows).items()},
        "expected": {e.name: e.json() for e in expected},
    }


def region_checks(rows: Iterable[Row]) -> dict[str, datetime]:
    """Each region's newest check: a silent region is a checker that stopped
    (`geodns serve --region-timeout` then stops counting its votes)."""
    last: dict[str, datetime] = {}
    for r in rows:
        if r.checked_at is not None and (r.region not in last or r.checked_at > last[r.region]):
            last[r.region] = r.checked_at
    return dict(sorted(last.items()))


# --------------------------------------------------------------------------- table

# Rich styles of the states (the table here and checker.history)
STYLE = {
    "up": "green",
    "warning": "yellow",
    "slow": "dark_orange",
    "down": "bold red",
    "disabled": "magenta",
    "drained": "cyan",
    "unknown": "dim",
}


def drain_text(d: Drain, now: datetime | None = None) -> str:
    """`by alice until 2026-12-01 14:00:00Z (in 1h59m): kernel upgrade`"""
    now = now or datetime.now(UTC)
    if d.until is None:
        until = "until undrained"
    else:
        until = f"until {text.stamp(d.until)} ({text.ago(d.until, now)})"
    return f"by {d.who} {until}: {d.reason}"


def _reason(r: Row) -> str:
    if r.state == "drained" and r.drain is not None:
        health = r.health
        if r.health == "down":
            health += f" ({r.detail or r.reason})"
        elif r.health == "warning":
            health += f" ({r.warning or r.detail})"
        return f"{drain_text(r.drain)}; health: {health}"
    if r.state in ("down", "disabled"):
        if r.detail and r.detail != r.reason:
            return f"{r.reason} (now: {r.detail})"
        return r.reason
    if r.state == "warning":
        return r.warning or r.detail
    if r.state == "slow":
        return r.detail + (f"; {r.warning}" if r.warning and r.warning not in r.detail else "")
    if r.detail and r.detail != "ok":
        return r.detail  # up but a probe is failing towards `fall`
    return r.reason


def reason_text(r: Row) -> str:
    """The Reason column's words (the table, Nagios detail lines, the status page)."""
    return _reason(r)


def print_table(
    rows: list[Row],
    out: IO[str],
    *,
    now: datetime | None = None,
    color: bool | None = None,
    width: int | None = None,
    expected: Iterable[Expected] = (),
) -> None:
    from rich.table import Table

    now = now or datetime.now(UTC)
    con = console(out, color, width)
    regions = any(r.region for r in rows)
    table = Table(title=None, show_lines=False, expand=False)
    table.add_column("Pool")
    table.add_column("Mirror")
    table.add_column("Address")
    if regions:
        table.add_column("Region")
    table.add_column("State")
    table.add_column("Since")
    table.add_column("Reason", overflow="fold", ratio=1)
    table.add_column("TLS", justify="right")
    table.add_column("Lag", justify="right")
    table.add_column("Objects", justify="right")
    table.add_column("Latency", justify="right")
    speed = any(r.throughput_mbps is not None for r in rows)
    if speed:
        table.add_column("MB/s", justify="right")
    for r in rows:
        state = f"[{STYLE[r.state]}]{r.state}[/]" + (" [yellow](stale)[/]" if r.stale else "")
        tls = "" if r.tls_expires_days is None else f"{round(r.tls_expires_days)}d"
        lag = "" if r.lag_seconds is None else text.duration(r.lag_seconds)
        objs = "" if r.objects_checked is None else f"{r.objects_missing or 0}/{r.objects_checked}"
        lat = "" if r.latency_ms is None else f"{r.latency_ms:.0f}ms"
        since = text.ago(r.since, now) if r.since else ""
        cells = [r.pool, r.mirror, r.address]
        if regions:
            cells.append(r.region or "-")
        cells += [state, since, escape(_reason(r)), tls, lag, objs, lat]
        if speed:
            cells.append("" if r.throughput_mbps is None else mbps_text(r.throughput_mbps))
        table.add_row(*cells)
    con.print(table)
    s = summary(rows)
    parts = [f"{s[k]} {k}" for k in STATES if s[k]]
    if s["stale"]:
        parts.append(f"{s['stale']} not checked for a while")
    con.print(f"{s['total']} addresses: " + (", ".join(parts) or "none"))
    if regions:
        checks = region_checks(rows)
        con.print(
            "regions: "
            + ", ".join(f"{k or '-'} last checked {text.ago(v, now)}" for k, v in checks.items())
        )
    for e in expected:
        line = escape(expected_line(e, now))
        if e.problem and e.version is not None:
            line += " [yellow]" + escape(f"STALE: {e.problem}") + "[/]"
        elif e.problem:
            line = f"[yellow]{line}[/]"
        con.print(line)


def console(out: IO[str], color: bool | None, width: int | None) -> Any:
    """A Rich console writing to `out` (the table here, checker.history):
    colour forced on/off or detected, at `width` or `term_width`'s."""
    from rich.console import Console

    return Console(
        file=out,
        force_terminal=color,
        no_color=color is False,
        width=term_width(out, width),
        highlight=False,
    )


def term_width(out: IO[str], width: int | None) -> int | None:
    """Not a terminal (`report | less`, `> file`): every row at its natural
    width. Rich's 80-column default wrapped each cell over many lines there."""
    if width is not None:
        return width
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        tty = False
    return None if tty else 100_000


def escape(value: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(value)
