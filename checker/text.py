"""Numbers in words an operator reads at a glance."""

from __future__ import annotations

from datetime import UTC, datetime


def duration(seconds: float) -> str:
    """9h12m, 45m, 2d3h, 30s, 1.5s — two units at most, no zero tails."""
    s = abs(seconds)
    if s < 10:
        return f"{s:.1f}s".replace(".0s", "s")
    s = int(round(s))
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs and minutes < 10 else f"{minutes}m"
    return f"{secs}s"


def days(n: float) -> str:
    whole = round(abs(n))
    return "1 day" if whole == 1 else f"{whole} days"


def date(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d")


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(when: datetime, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    delta = (now - when).total_seconds()
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def size(n: float) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 1.2 TiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
