"""Frozen, typed configuration objects built from the operator YAML.

`geodns.config.load_config()` builds these; everything else only reads them.
The checker imports this module and `geodns.store`; nothing here does I/O.

Names are stored as lower-case absolute text without the trailing dot
(`dl.example.org`); wire forms are compiled later by `geodns.dns.zone`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from geodns.dnssec.model import DnssecPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Where:
    """Where a value came from, for error messages: `zones/pools.yaml:14`."""

    file: str
    line: int  # 1-based; 0 when unknown

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True)
class TLSCheck:
    sni: str | None = None  # default: host part of the mirror's url
    warn_days: int = 14
    ca_bundle: Path | None = None  # default: the system store
    interval: float = 300.0


@dataclass(frozen=True, slots=True)
class FreshnessCheck:
    path: str  # e.g. /timestamp.txt, /lastsync, /project/trace/master
    max_lag: float  # seconds
    # auto: Debian trace (a "Date:" line) or a lone epoch / RFC 3339 timestamp
    format: Literal["auto", "epoch", "rfc3339", "debian-trace"] = "auto"
    # URL of the same file on the origin; None compares with the checker's clock
    origin: str | None = None
    interval: float = 300.0


@dataclass(frozen=True, slots=True)
class ObjectsCheck:
    # JSON written by `checker manifest build`, resolved absolute; None with `expected`
    manifest: Path | None = None
    # `manifest: store` (the pool's own name) or `store:NAME`: the expected state
    # an origin publishes into the store (`checker manifest publish`)
    expected: str | None = None
    sample: int = 200  # objects HEADed per round (new ones first, the rest rotate)
    critical: tuple[str, ...] = ()  # paths whose absence takes a mirror down
    concurrency: int = 8  # simultaneous requests per mirror address
    max_missing: int = 0  # more missing/wrong objects than this → down
    verify_sha256: int = 0  # objects per round fetched whole and hashed
    interval: float = 900.0
    # expected state only: removed objects HEADed per round (404 expected; a
    # warning otherwise), once removed `gone_after` ago and until `gone_within`
    gone_sample: int = 0
    gone_after: float = 86400.0
    gone_within: float = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class AptCheck:
    """Debian-style consistency: index files listed in InRelease must match."""

    suites: tuple[str, ...]  # e.g. ("bookworm", "bookworm-updates")
    interval: float = 300.0


@dataclass(frozen=True, slots=True)
class ThroughputCheck:
    """Download speed: a sample of a manifest object per round; a moving median
    below `min_mbps` (or a first byte later than `max_ttfb`) makes the address
    `slow`, which ranks it one group behind (checker/probes/throughput.py)."""

    # objects to choose the sample from: a manifest file, or (`manifest: store`)
    # the expected state an origin publishes; default: the objects check's
    manifest: Path | None = None
    expected: str | None = None
    min_mbps: float = 1.0  # MB/s (10^6 bytes per second) of the median sample
    max_ttfb: float | None = None  # seconds to the first body byte; None: not judged
    rounds: int = 3  # samples in the moving median
    sample_bytes: int = 1 << 20  # the Range asked for: bytes=0-(sample_bytes-1)
    budget: int = 4 << 20  # never more body bytes than this per round and address
    interval: float = 600.0


@dataclass(frozen=True, slots=True)
class Checks:
    tls: TLSCheck | None = None
    freshness: FreshnessCheck | None = None
    objects: ObjectsCheck | None = None
    apt: AptCheck | None = None
    throughput: ThroughputCheck | None = None
    fall: int = 3  # consecutive failures before down
    rise: int = 2  # consecutive successes before up again
    timeout: float = 10.0  # per network operation


# --------------------------------------------------------------------------- pools


@dataclass(frozen=True, slots=True)
class Mirror:
    name: str
    url: str  # https://host[:port]/path/ — host is the SNI/Host, port is used
    ipv4: tuple[ipaddress.IPv4Address, ...] = ()
    ipv6: tuple[ipaddress.IPv6Address, ...] = ()
    weight: int = 100
    enabled: bool = True
    # Location overrides; None means "from GeoIP of the address".
    asn: int | None = None
    country: str | None = None  # ISO 3166-1 alpha-2, upper case
    continent: str | None = None  # AF AN AS EU NA OC SA
    location: tuple[float, float] | None = None  # (lat, lon)
    # Scope (the mirror operator's conditions; geodns.steering.eligibility):
    # answered only to clients of the mirror's own ASN, country or continent
    only: Literal["asn", "country", "continent"] | None = None
    # clients in these countries rank the mirror in the country tier, as if it stood there
    also_countries: tuple[str, ...] = ()
    # never answered to clients in these countries
    exclude_countries: tuple[str, ...] = ()
    where: Where = field(default=Where("", 0), compare=False)

    @property
    def scoped(self) -> bool:
        """True when any scope key narrows or widens who gets this mirror."""
        return bool(self.only or self.also_countries or self.exclude_countries)

    def addresses(self) -> tuple[IPAddress, ...]:
        return (*self.ipv4, *self.ipv6)


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    mirrors: tuple[Mirror, ...]
    # Mirror names answered only when no ranked mirror of the family is healthy.
    fallback: tuple[str, ...] = ()
    # After fallback: "failopen" answers every enabled mirror, "servfail" refuses.
    on_empty: Literal["failopen", "servfail"] = "failopen"
    # Mirrors of one tier within max(nearest + tie_km, band_factor x nearest)
    # are equally near to a client: they form its answer set and share the
    # load by weight (geodns/steering/rank.py).
    tie_km: float = 100.0
    band_factor: float = 1.5
    # Pad answers that hold fewer addresses than this from the next groups
    # (client-side failover); 1 = answer the best group only.
    min_answers: int = 1
    checks: Checks = field(default_factory=Checks)
    where: Where = field(default=Where("", 0), compare=False)

    def mirror(self, name: str) -> Mirror:
        for m in self.mirrors:
            if m.name == name:
                return m
        raise KeyError(name)


# --------------------------------------------------------------------------- zones


@dataclass(frozen=True, slots=True)
class SOA:
    mname: str
    rname: str
    serial: int  # "auto" is resolved at load time (YYYYMMDDnn from content hash)
    refresh: int = 3600
    retry: int = 600
    expire: int = 1209600
    minimum: int = 300
    ttl: int = 3600


@dataclass(frozen=True, slots=True)
class RRSet:
    """One owner name and type with its records in presentation form."""

    name: str  # absolute, lower case, no trailing dot; may start with "*."
    rtype: str  # "A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA", "NS", ...
    ttl: int
    rdata: tuple[str, ...]  # presentation format, names made absolute
    where: Where = field(default=Where("", 0), compare=False)


@dataclass(frozen=True, slots=True)
class Steered:
    name: str  # absolute, lower case
    pool: str
    answers: int = 3  # at most this many addresses per family in one answer
    ttl: int = 60
    min_answers: int | None = None  # None: the pool's
    where: Where = field(default=Where("", 0), compare=False)


@dataclass(frozen=True, slots=True)
class Zone:
    name: str  # apex, absolute, lower case ("example.org")
    soa: SOA
    ns: tuple[str, ...]
    ttl: int  # default TTL of records
    rrsets: tuple[RRSet, ...]
    steered: tuple[Steered, ...]
    where: Where = field(default=Where("", 0), compare=False)
    dnssec: DnssecPolicy | None = None  # signed when set (geodns.dnssec)


@dataclass(frozen=True, slots=True)
class Config:
    zones: tuple[Zone, ...]
    pools: dict[str, Pool]  # treat as read-only
    root: Path  # the --config directory
    digest: str  # sha256 of every loaded file's bytes; changes when content does
