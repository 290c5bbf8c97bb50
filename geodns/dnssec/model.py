"""Frozen DNSSEC settings of a zone, as `geodns.config` builds them.

`DnssecPolicy` comes from the zone's `dnssec:` YAML key; its `loaded` keys are
filled by `geodns.dnssec.zoneconf.load_zone_keys` on every config load (key
files are read again each time, so a replaced key file is never hidden behind
an unchanged YAML file). Everything here is plain bytes and ints: tables are
built in a forked child and pickled back (geodns.forked).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from geodns.model import Where

ALGORITHM = 13  # ECDSA P-256 with SHA-256 (RFC 6605), the one algorithm we sign with
SEP = 0x0001  # DNSKEY flags: Secure Entry Point (a KSK or a CSK)
ZONE_KEY = 0x0100
REVOKE = 0x0080
INCEPTION_SKEW = 3600  # signatures valid from an hour back: resolvers with slow clocks


@dataclass(frozen=True, slots=True)
class KeyRef:
    """One entry of `dnssec: keys:` as written."""

    path: str  # K<zone>.+013+<tag> (with or without .key/.private), as written
    sign: bool = True  # False: published in DNSKEY only (pre-publish, or retiring)
    where: Where = field(default=Where("", 0), compare=False)


@dataclass(frozen=True, slots=True)
class ZoneKey:
    """One key pair read from its files and checked."""

    path: str  # the base path (without .key/.private), for messages
    flags: int  # 256 (ZSK) or 257 (KSK/CSK)
    tag: int  # RFC 4034 Appendix B key tag
    public: bytes  # 64 octets: x | y (RFC 6605 §4)
    private: bytes = field(repr=False)  # the 32-octet P-256 scalar
    sign: bool = True
    # BIND timing metadata (POSIX seconds), None when absent: absent Publish or
    # Activate mean "from the start", absent Inactive or Delete mean "never"
    publish: int | None = None
    activate: int | None = None
    inactive: int | None = None
    delete: int | None = None

    @property
    def sep(self) -> bool:
        return bool(self.flags & SEP)

    @property
    def role(self) -> str:
        return "KSK" if self.sep else "ZSK"

    def dnskey_rdata(self) -> bytes:
        return struct.pack("!HBB", self.flags, 3, ALGORITHM) + self.public

    def published(self, now: float) -> bool:
        return (self.publish is None or now >= self.publish) and (
            self.delete is None or now < self.delete
        )

    def active(self, now: float) -> bool:
        """Signs at `now`: configured to sign, published, between Activate and Inactive."""
        return (
            self.sign
            and self.published(now)
            and (self.activate is None or now >= self.activate)
            and (self.inactive is None or now < self.inactive)
        )

    def events(self) -> tuple[int, ...]:
        return tuple(t for t in (self.publish, self.activate, self.inactive, self.delete) if t)


@dataclass(frozen=True, slots=True)
class DnssecPolicy:
    keys: tuple[KeyRef, ...]
    validity: float  # seconds from inception to expiration of each signature
    refresh: float  # re-sign when less than this is left before expiration
    where: Where = field(default=Where("", 0), compare=False)
    loaded: tuple[ZoneKey, ...] = ()
