"""`checker history`: state changes and drain events, merged, newest first,
as a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from checker import text
from checker.report import STYLE, console, escape
from geodns.store import DrainEvent, StateChange

_EVENT_STATE = {"drain": "drained", "undrain": "undrained", "expired": "drain ended"}


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """A state change or a drain event, as `checker history` lists them."""

    at: datetime
    pool: str  # "" on a drain of every pool
    mirror: str
    address: str  # "" on a drain of the whole mirror
    region: str
    state: str  # up, slow, down, disabled, drained, undrained, drain ended
    reason: str
    who: str | None = None
    until: datetime | None = None


def history_lines(
    changes: Iterable[StateChange], events: Iterable[DrainEvent] = (), limit: int | None = None
) -> list[HistoryLine]:
    """Both kinds merged, newest first."""
    lines = [
        HistoryLine(
            c.at,
            c.pool,
            c.mirror,
            c.address,
            c.region,
            c.state,
            c.reason,
        )
        for c in changes
    ]
    for e in events:
        if e.action == "drain":
            until = f"until {text.stamp(e.until)}" if e.until else "until undrained"
            why = f"by {e.who} {until}: {e.reason}"
        elif e.action == "undrain":
            why = f"by {e.who} (drained for: {e.reason})"
        else:
            why = f"drain by {e.who} ran out (drained for: {e.reason})"
        lines.append(
            HistoryLine(
                e.at,
                e.pool,
                e.mirror,
                e.address,
                "",
                _EVENT_STATE.get(e.action, e.action),
                why,
                e.who,
                e.until,
            )
        )
    lines.sort(key=lambda h: h.at, reverse=True)
    return lines if limit is None else lines[:limit]


def history_json(lines: list[HistoryLine]) -> str:
    """[{"at", "pool", "mirror", "address", "region", "state", "reason"}], newest
    first; drain events also carry "who" and "until", and "" in pool/address
    when the drain covered every pool/address."""
    out = []
    for h in lines:
        item: dict[str, Any] = {
            "at": h.at.isoformat(),
            "pool": h.pool,
            "mirror": h.mirror,
            "address": h.address,
            "region": h.region,
            "state": h.state,
            "reason": h.reason,
        }
        if h.who is not None:
            item["who"] = h.who
            item["until"] = h.until.isoformat() if h.until else None
        out.append(item)
    return json.dumps(out, indent=2)


def print_history(
    lines: list[HistoryLine], out: IO[str], *, color: bool | None = None, width: int | None = None
) -> None:
    from rich.table import Table

    con = console(out, color, width)
    regions = any(h.region for h in lines)
    table = Table()
    table.add_column("Time (UTC)")
    table.add_column("Pool")
    table.add_column("Mirror")
    table.add_column("Address")
    if regions:
        table.add_column("Region")
    table.add_column("State")
    table.add_column("Reason", overflow="fold")
    for h in lines:
        cells = [text.stamp(h.at), h.pool or "(all)", h.mirror, h.address or "(all)"]
        if regions:
            cells.append(h.region or "-")
        style = STYLE.get(h.state, "cyan")
        cells += [f"[{style}]{h.state}[/]", escape(h.reason)]
        table.add_row(*cells)
    con.print(table)
