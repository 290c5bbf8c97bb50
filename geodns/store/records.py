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
    slow: bool = False  # serving, but ranked one group behind
    slow_reason: str = ""  # its figures: "0.4 MB/s median over 3 rounds (min 2)"


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
    slow: bool = False

    @property
    def state(self) -> str:
        """disabled, down, slow or up."""
        if self.disabled:
            return "disabled"
        if not self.up:
            return "down"
        return "slow" if self.slow else "up"


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


@dataclass(frozen=True, slots=True)
class Drain:
    """An operator's drain: the mirror (or one address of it) is not answered.

    `pool` "" covers every pool the mirror is in; `address` "" every address
    of the mirror. `until` None lasts until `checker undrain`.
    """

    pool: str
    mirror: str
    address: str
    reason: str
    who: str
    at: datetime
    until: datetime | None

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until

    def covers(self, pool: str, mirror: str, address: str) -> bool:
        return (
            mirror == self.mirror
            and self.pool in ("", pool)
            and self.address in ("", address_text(address))
        )

    @property
    def target(self) -> str:
        """`ftp-x`, `ftp-x 192.0.2.1`, `distfiles/ftp-x`: what the drain names."""
        name = f"{self.pool}/{self.mirror}" if self.pool else self.mirror
        return f"{name} {self.address}" if self.address else name


@dataclass(frozen=True, slots=True)
class DrainEvent:
    """A drain, undrain or expiry, for `checker history`."""

    at: datetime
    action: str  # drain | undrain | expired
    pool: str
    mirror: str
    address: str
    reason: str
    who: str
    until: datetime | None
