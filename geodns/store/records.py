"""Plain records handed across the store's API (no ORM objects leave the store)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class StoreError(Exception):
    """The store cannot be used: unreachable, missing schema, or a failed write.

    The text names the URL (without password) and the cause, so an operator
    can act on it without reading a traceback.
    """


# --------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One probe outcome as the checker hands it to `Store.record()`."""

    kind: str
    ok: bool
    detail: str
    latency: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    unrecoverable: bool = False
    at: datetime | None = None  # default: the time of recording


@dataclass(frozen=True, slots=True)
class AddressState:
    pool: str
    mirror: str
    address: str
    family: int
    region: str
    up: bool
    disabled: bool
    reason: str
    since: datetime
    checked_at: datetime
    detail: str
    warning: str | None
    kinds: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StateChange:
    pool: str
    mirror: str
    address: str
    region: str
    at: datetime
    up: bool
    disabled: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    pool: str
    mirror: str
    address: str
    region: str
    at: datetime
    kind: str
    ok: bool
    unrecoverable: bool
    detail: str
    latency: float | None
    data: dict[str, Any]


def address_text(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical address text: `str(ipaddress.ip_address(x))`."""
    return str(ipaddress.ip_address(address))
