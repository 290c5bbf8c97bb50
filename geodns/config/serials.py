"""`serial: auto`: a date-based SOA serial (YYYYMMDDnn) that moves forward only
when a zone file's bytes change, remembered in the state directory.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from geodns.model import (
    Zone,
)

AUTO_SERIAL = -1  # placeholder until assign_serials runs


def assign_serials(zones: list[Zone], digests: dict[str, str], state: Path | None) -> list[Zone]:
    """`serial: auto` → YYYYMMDDnn that moves forward exactly when the zone's
    file content changes (remembered in a small JSON file in the state dir;
    without one, e.g. for `geodns validate`, today's YYYYMMDD00)."""
    known: dict[str, Any] = {}
    if state is not None:
        try:
            known = json.loads(state.read_text())
        except (OSError, ValueError):
            known = {}
    today = int(dt.datetime.now(dt.UTC).strftime("%Y%m%d")) * 100
    out = []
    changed = False
    for z in zones:
        if z.soa.serial != AUTO_SERIAL:
            out.append(z)
            continue
        prev = known.get(z.name) or {}
        if prev.get("digest") == digests[z.name] and isinstance(prev.get("serial"), int):
            serial = prev["serial"]
        else:
            serial = max(today, int(prev.get("serial", 0)) + 1) % 2**32
            known[z.name] = {"digest": digests[z.name], "serial": serial}
            changed = True
        out.append(_with_serial(z, serial))
    if changed and state is not None:
        try:
            state.parent.mkdir(parents=True, exist_ok=True)
            tmp = state.with_suffix(".tmp")
            tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
            tmp.replace(state)
        except OSError:
            pass  # serials still move forward from the date; only persistence is lost
    return out


def _with_serial(z: Zone, serial: int) -> Zone:
    return replace(z, soa=replace(z.soa, serial=serial))
