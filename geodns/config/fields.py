"""Typed field readers over line-annotated YAML that collect problems.

Every reader returns a value (or None) and records a problem instead of
raising, so one pass reports everything an operator has to fix.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from geodns.config.yamlsrc import YList, YMap

_NUMBER = re.compile(r"\d+(\.\d+)?")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
# kB/MB/GB are decimal, KiB/MiB/GiB binary (IEC); a bare "M" is neither, so refused
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, file: str, line: int, ctx: str, message: str) -> None:
        loc = f"{file}:{line}" if line else file
        item = f"{loc}: {ctx}: {message}" if ctx else f"{loc}: {message}"
        if item not in self.items:  # two checks may notice the same thing
            self.items.append(item)

    def __bool__(self) -> bool:
        return bool(self.items)


class Section:
    """One YAML mapping being validated: knows its file, context text and lines."""

    def __init__(self, problems: Problems, file: str, data: Any, ctx: str, line: int = 0) -> None:
        self.p = problems
        self.file = file
        self.ctx = ctx
        self.ok = isinstance(data, dict)
        self.data: YMap = data if self.ok else YMap()
        self.line = getattr(data, "line", line)
        if not self.ok:
            self.p.add(file, line, ctx, f"expected a mapping, got {kind_of(data)}")

    def line_of(self, key: str) -> int:
        lines = getattr(self.data, "lines", {})
        return int(lines.get(key, self.line))

    def key_line_of(self, key: str) -> int:
        """The line of the key itself (line_of gives its value's)."""
        lines = getattr(self.data, "key_lines", {})
        return int(lines.get(key, self.line_of(key)))

    def error(self, key: str | None, message: str, line: int | None = None) -> None:
        if line is None:
            line = self.line_of(key) if key else self.line
        self.p.add(self.file, line, self.ctx, f"{key}: {message}" if key else message)

    def keys(self, allowed: Iterable[str], required: Iterable[str] = ()) -> None:
        allowed = set(allowed)
        for key in self.data:
            if key not in allowed:
                kl = getattr(self.data, "key_lines", {}).get(key, self.line)
                self.p.add(
                    self.file,
                    kl,
                    self.ctx,
                    f"unknown key '{key}' (expected one of: {', '.join(sorted(allowed))})",
                )
        for key in required:
            if key not in self.data:
                self.error(None, f"missing required key '{key}'")

    def sub(self, key: str, ctx: str | None = None) -> Section | None:
        if key not in self.data or self.data[key] is None:
            return None
        return Section(self.p, self.file, self.data[key], ctx or self.ctx, self.line_of(key))

    # -- scalar readers -------------------------------------------------------

    def str_(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if key not in self.data or self.data[key] is None:
            if required:
                self.error(None, f"missing required key '{key}'")
            return default
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            self.error(key, f"expected text, got {kind_of(v)}")
            return default
        return str(v)

    def int_(
        self,
        key: str,
        default: int | None = None,
        *,
        lo: int = 0,
        hi: int = 2**31 - 1,
        required: bool = False,
    ) -> int | None:
        if key not in self.data or self.data[key] is None:
            if required:
                self.error(None, f"missing required key '{key}'")
            return default
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, int):
            self.error(key, f"expected a whole number, got {_show(v)}")
            return default
        if not lo <= v <= hi:
            self.error(key, f"{v} is out of range {lo}..{hi}")
            return default
        return v

    def float_(
        self, key: str, default: float | None = None, *, lo: float, hi: float
    ) -> float | None:
        if key not in self.data or self.data[key] is None:
            return default
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.error(key, f"expected a number, got {_show(v)}")
            return default
        if not lo <= v <= hi:
            self.error(key, f"{v} is out of range {lo}..{hi}")
            return default
        return float(v)

    def bool_(self, key: str, default: bool) -> bool:
        if key not in self.data or self.data[key] is None:
            return default
        v = self.data[key]
        if not isinstance(v, bool):
            self.error(key, f"expected true or false, got {_show(v)}")
            return default
        return v

    def duration(
        self, key: str, default: float | None = None, *, required: bool = False
    ) -> float | None:
        """Seconds from `90`, `90s`, `30m`, `6h`, `1d`, `1h30m`."""
        if key not in self.data or self.data[key] is None:
            if required:
                self.error(None, f"missing required key '{key}'")
            return default
        v = self.data[key]
        secs = parse_duration(v)
        if secs is None or not 0 < secs < 10 * 365 * 86400:  # also NaN, inf
            self.error(key, f"expected a positive duration like 90s, 30m, 6h or 1d, got {_show(v)}")
            return default
        return secs

    def size(self, key: str, default: int, *, lo: int, hi: int) -> int:
        """Bytes from `1048576`, `1MiB`, `512KiB`, `4MB`, `1.5GiB`."""
        if key not in self.data or self.data[key] is None:
            return default
        v = self.data[key]
        n = parse_size(v)
        if n is None:
            self.error(key, f"expected a size like 1MiB, 512KiB or 4MB, got {_show(v)}")
            return default
        if not lo <= n <= hi:
            self.error(key, f"{_show(v)} is out of range {show_size(lo)}..{show_size(hi)}")
            return default
        return n

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        v = self.str_(key, default)
        if v not in options:
            self.error(key, f"expected one of {', '.join(options)}, got {_show(v)}")
            return default
        return v

    def list_(self, key: str, *, required: bool = False) -> list[tuple[Any, int]]:
        """Items with their lines; a scalar is accepted as a one-item list."""
        if key not in self.data or self.data[key] is None:
            if required:
                self.error(None, f"missing required key '{key}'")
            return []
        v = self.data[key]
        if isinstance(v, YList):
            return list(zip(v, v.lines, strict=True))
        if isinstance(v, dict):
            self.error(key, "expected a value or a list of values, got a mapping")
            return []
        return [(v, self.line_of(key))]


def parse_duration(v: Any) -> float | None:
    """Seconds from `90`, `90s`, `15m`, `6h`, `7d`, `2w`, `1h30m`; None if not a duration.
    The one grammar for YAML and for the command lines."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        try:
            return float(v)
        except OverflowError:  # a 400-digit integer
            return None
    if not isinstance(v, str):
        return None
    text = v.strip().lower()
    if _NUMBER.fullmatch(text):
        return float(text)
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_size(v: Any) -> int | None:
    """Bytes from `1048576`, `1MiB`, `512 KiB`, `4MB`; None if not a size."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 0 else None
    if not isinstance(v, str):
        return None
    m = _SIZE.fullmatch(v.strip().lower())
    if m is None or m.group(2) not in _SIZE_UNITS:
        return None
    try:
        return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    except OverflowError:  # 400 digits of "MiB"
        return None


def show_size(n: int) -> str:
    """1048576 → 1MiB, 1500 → 1500B: the largest binary unit that divides evenly."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def duration_arg(value: str) -> float:
    """argparse `type=` for command-line durations, in the YAML's grammar."""
    import argparse

    seconds = parse_duration(value)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration (like 90s, 15m, 6h, 7d)")
    return seconds


def parse_ip(v: Any, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    text = str(v).strip()
    if "%" in text:  # a zone id (fe80::1%eth0) means nothing outside one host
        return None
    try:
        return cls(text)
    except (ipaddress.AddressValueError, ValueError):
        return None


def kind_of(v: Any) -> str:
    """A value described for an error message."""
    if v is None:
        return "nothing"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return _show(v)


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return str(v)
