"""Nagios/Icinga plugin output of the mirror report (`checker report --nagios`).

Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. One status line with
perfdata (up, down, warning, disabled, unknown, drained; lag, TLS days, slow
and throughput where measured; the age of each expected state), then a line
per address that is not plainly up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from checker import text
from checker.report import Expected, Row, reason_text, summary

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_NAGIOS_WORD = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


_BRIEF = (
    (re.compile(r"^TLS certificate expired"), "TLS expired"),
    (re.compile(r"^TLS certificate not valid before"), "TLS not yet valid"),
    (re.compile(r"^TLS certificate does not match"), "TLS wrong host"),
    (re.compile(r"^TLS certificate (is self-signed|chain ends|not trusted)"), "TLS untrusted"),
    (re.compile(r"^TLS handshake .* timed out"), "TLS timeout"),
    (re.compile(r"^TLS "), "TLS failed"),
    (re.compile(r"^stale: (\S+) behind"), r"stale \1"),
    (re.compile(r"refused \(nothing listening\)"), "connection refused"),
    (re.compile(r"(timed out|no answer within)"), "timeout"),
    (re.compile(r"^mid-sync"), "mid-sync"),
    (re.compile(r"^.*critical (\S+) missing"), r"critical \1 missing"),
    (re.compile(r"^(\d+) of \d+ objects missing"), r"\1 objects missing"),
    (re.compile(r"^disabled"), "disabled"),
    (re.compile(r"^slow: (\S+ MB/s)"), r"slow \1"),
    (re.compile(r"^slow: (?:no )?first byte"), "slow first byte"),
)


def brief(reason: str, limit: int = 40) -> str:
    """A few words for a Nagios status line: "TLS expired", "stale 9h12m"."""
    first = reason.split("; ")[0]
    for pattern, words in _BRIEF:
        m = pattern.search(first)
        if m:
            return m.expand(words)
    return first if len(first) <= limit else first[: limit - 1] + "…"


def nagios(
    rows: list[Row],
    *,
    warn_down: int | None = None,
    crit_down: int = 1,
    expected: Iterable[Expected] = (),
) -> tuple[int, str]:
    """(exit code, plugin output): status line with perfdata, then detail lines.

    A stale or missing expected state is a WARNING (the mirrors are judged
    against an old list, or none), never CRITICAL."""
    s = summary(rows)
    total = s["total"]
    views = list(expected)
    problems = [e for e in views if e.problem]
    if total == 0:
        return (
            UNKNOWN,
            "GEODNS MIRRORS UNKNOWN - no mirror addresses in the store (checker not run yet?)",
        )
    down = [r for r in rows if r.state == "down"]
    # slow serves (one group behind): a warning, never critical
    warn_rows = [r for r in rows if r.state in ("warning", "slow", "unknown") or r.stale]
    slow = [r for r in rows if r.state == "slow"]
    n_down = len(down)
    if n_down >= crit_down:
        code = CRITICAL
    elif (warn_down is not None and n_down >= warn_down) or warn_rows or n_down:
        code = WARNING
    else:
        code = OK
    if n_down:
        by_mirror: dict[str, list[Row]] = {}
        for r in down:
            by_mirror.setdefault(
                f"{r.pool}/{r.mirror}" if _pools(rows) > 1 else r.mirror, []
            ).append(r)
        names = "; ".join(
            f"{m}{f' x{len(rs)}' if len(rs) > 1 else ''}: {brief(rs[0].detail or rs[0].reason)}"
            for m, rs in list(by_mirror.items())[:4]
        )
        more = f"; +{len(by_mirror) - 4} more" if len(by_mirror) > 4 else ""
        msg = f"{n_down} of {total} down ({names}{more})"
    elif slow:
        names = "; ".join(f"{_who(r, rows)}: {brief(r.detail)}" for r in slow[:4])
        more = f"; +{len(slow) - 4} more" if len(slow) > 4 else ""
        msg = f"{len(slow)} of {total} slow ({names}{more})"
        if len(warn_rows) > len(slow):
            msg += f", {len(warn_rows) - len(slow)} more need a look"
    elif warn_rows:
        msg = f"{total - len(warn_rows)} of {total} fine, {len(warn_rows)} need a look"
    else:
        msg = f"{s['up']} of {total} up"
    if n_down and slow:
        msg += f", {len(slow)} slow"
    if s["disabled"]:
        msg += f", {s['disabled']} disabled"
    if s["drained"]:  # an operator's decision: counted, never an alert by itself
        msg += f", {s['drained']} drained"
    if problems:
        code = max(code, WARNING)
        msg += "; " + "; ".join(
            f"expected state {e.name} "
            + (f"{text.duration(e.age_seconds)} old" if e.age_seconds is not None else "missing")
            for e in problems[:3]
        )
    w = "" if warn_down is None else str(warn_down)
    lags = [r.lag_seconds for r in rows if r.lag_seconds is not None]
    perf = [
        f"up={s['up'] + s['warning'] + s['slow']};;;0;{total}",
        f"down={n_down};{w};{crit_down};0;{total}",
        f"warning={s['warning']};;;0;{total}",
        f"disabled={s['disabled']};;;0;{total}",
        f"unknown={s['unknown']};;;0;{total}",
        f"drained={s['drained']};;;0;{total}",
    ]
    if lags:
        perf.append(f"lag_max={max(lags):.0f}s;;;0")
    tls = [r.tls_expires_days for r in rows if r.tls_expires_days is not None]
    if tls:
        perf.append(f"tls_days_min={min(tls):.1f};;;;")
    rates = [r.throughput_mbps for r in rows if r.throughput_mbps is not None]
    if rates or s["slow"]:  # only where speed is measured, like lag and TLS days
        perf.append(f"slow={s['slow']};;;0;{total}")
    if rates:
        perf.append(f"throughput_min_mbps={min(rates):g};;;0")
    for e in views:
        if e.age_seconds is not None:
            perf.append(f"'expected_age_{e.name}'={e.age_seconds:.0f}s;{e.max_age:.0f};;0")
    lines = [f"GEODNS MIRRORS {_NAGIOS_WORD[code]} - {msg} | {' '.join(perf)}"]
    for e in problems:
        lines.append(f"WARNING: {e.problem}")
    for r in rows:
        if r.state == "up" and not r.stale:
            continue
        where = f"{r.pool}/{r.mirror} {r.address}" + (f" [{r.region}]" if r.region else "")
        note = " (last check " + text.ago(r.checked_at) + ")" if r.stale and r.checked_at else ""
        lines.append(f"{r.state.upper()}: {where}: {reason_text(r)}{note}")
    return code, "\n".join(lines)


def _pools(rows: list[Row]) -> int:
    return len({r.pool for r in rows})


def _who(r: Row, rows: list[Row]) -> str:
    return f"{r.pool}/{r.mirror}" if _pools(rows) > 1 else r.mirror


def nagios_unknown(reason: str) -> tuple[int, str]:
    return UNKNOWN, f"GEODNS MIRRORS UNKNOWN - {reason}"
