"""Freshness probe: how far the mirror's timestamp file lags the origin's.

Formats (`FreshnessCheck.format`, "auto" tries them in this order):
  epoch         a Unix timestamp alone (Arch `lastsync`, Void's timestamp)
  rfc3339       `2026-11-20T10:00:00Z` (also the looser ISO 8601 Python reads)
  debian-trace  Debian's `project/trace/<host>`: the `Date:` line (RFC 2822)
  and, in auto mode, `date -u` output such as `Mon Nov 20 10:00:00 UTC 2026`.

The origin's file is fetched once per pool and interval (not per address);
without `origin` the checker's clock is the reference. When the origin cannot
be read the probe passes with a warning: one origin outage must not mark every
mirror stale.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from checker import text
from checker.http import HTTPClient, HTTPError
from checker.target import Target
from geodns.model import FreshnessCheck
from geodns.store import ProbeRecord

KIND = "freshness"
_MAX_BYTES = 64 * 1024
_DATE_LINE = re.compile(r"^Date:\s*(.+?)\s*$", re.MULTILINE)
_DATE_CMD = re.compile(r"^\w{3} \w{3} +\d{1,2} \d\d:\d\d:\d\d (\w+) \d{4}$")


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _epoch(s: str) -> datetime:
    if not re.fullmatch(r"\d{9,11}(\.\d+)?", s):
        raise ValueError("not a Unix timestamp")
    return datetime.fromtimestamp(float(s), UTC)


def _rfc3339(s: str) -> datetime:
    return _aware(datetime.fromisoformat(s.replace("z", "Z")))


def _trace(body: str) -> datetime:
    m = _DATE_LINE.search(body)
    if not m:
        raise ValueError("no 'Date:' line (not a Debian trace file)")
    text = m.group(1)
    dt = parsedate_to_datetime(text)
    if dt.tzinfo is None:
        # the email parser knows UT/GMT/EST…; any other zone name it leaves naive,
        # and reading "CET" as UTC would put the lag an hour off
        zones = [t for t in text.split() if re.fullmatch(r"[A-Za-z]{1,5}", t)]
        unknown = [z for z in zones if z.upper() not in _UTC_NAMES and not _is_date_word(z)]
        if unknown:
            raise ValueError(f"unknown time zone {unknown[0]!r} in the 'Date:' line")
    return _aware(dt)


_UTC_NAMES = {"UTC", "GMT", "UT", "Z"}
_DATE_WORDS = {
    *("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
    *("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
}


def _is_date_word(word: str) -> bool:
    return word.lower().rstrip(",") in _DATE_WORDS


def _date_cmd(s: str) -> datetime:
    m = _DATE_CMD.match(s)
    if not m or m.group(1) not in ("UTC", "GMT"):
        raise ValueError("not `date -u` output")
    return datetime.strptime(s.replace(m.group(1), "UTC"), "%a %b %d %H:%M:%S UTC %Y").replace(
        tzinfo=UTC
    )


def parse_timestamp(body: str, fmt: str = "auto") -> datetime:
    """The time a timestamp file says, as aware UTC; ValueError with the reason."""
    stripped = body.strip()
    first = stripped.splitlines()[0].strip() if stripped else ""
    if fmt == "epoch":
        return _epoch(first)
    if fmt == "rfc3339":
        try:
            return _rfc3339(first)
        except ValueError:
            raise ValueError(f"not an RFC 3339 timestamp: {first[:40]!r}") from None
    if fmt == "debian-trace":
        return _trace(body)
    if not stripped:
        raise ValueError("the file is empty")
    if _DATE_LINE.search(body):
        return _trace(body)
    for parse in (_epoch, _rfc3339, _date_cmd):
        try:
            return parse(first)
        except ValueError:
            continue
    raise ValueError(f"unrecognised timestamp {first[:40]!r}")


async def fetch_timestamp(client: HTTPClient, target: str, fmt: str) -> tuple[datetime, float]:
    """(time in the file, request latency); raises HTTPError or ValueError."""
    t0 = time.perf_counter()
    resp = await client.get(target, max_body=_MAX_BYTES)
    latency = time.perf_counter() - t0
    if resp.status != 200:
        raise ValueError(f"GET {target} answered {resp.status} {resp.reason}".rstrip())
    try:
        return parse_timestamp(resp.body.decode("utf-8", "replace"), fmt), latency
    except ValueError as exc:
        raise ValueError(f"{target}: {exc}") from None


async def probe_freshness(
    target: Target,
    check: FreshnessCheck,
    client: HTTPClient,
    origin: datetime | str | None,
) -> ProbeRecord:
    """`origin`: the origin's time, an error text when it could not be read, or
    None to compare with the checker's clock."""
    path = target.path(check.path)
    try:
        stamp, latency = await fetch_timestamp(client, path, check.format)
    except HTTPError as exc:
        return ProbeRecord(
            KIND, False, f"freshness: {exc.reason}", None, {}, unrecoverable=exc.refused
        )
    except ValueError as exc:
        return ProbeRecord(KIND, False, f"freshness: {exc}", None, {})
    now = datetime.now(UTC)
    data: dict[str, Any] = {"mirror_time": stamp.isoformat(), "max_lag": check.max_lag}
    if isinstance(origin, str):
        warning = f"origin timestamp unavailable ({origin}); lag unknown"
        data["warning"] = warning
        return ProbeRecord(KIND, True, f"freshness not judged: {warning}", latency, data)
    ref = origin if origin is not None else now
    versus = "origin" if origin is not None else "the checker's clock"
    lag = max(0.0, (ref - stamp).total_seconds())
    data.update(lag=round(lag, 1), reference=ref.isoformat())
    if lag > check.max_lag:
        return ProbeRecord(
            KIND,
            False,
            f"stale: {text.duration(lag)} behind {versus} (max {text.duration(check.max_lag)})",
            latency,
            data,
        )
    return ProbeRecord(KIND, True, f"fresh: {text.duration(lag)} behind {versus}", latency, data)
