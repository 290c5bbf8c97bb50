"""GeoIP layer: MaxMind-format ASN and City/Country databases → `GeoInfo`.

Two optional tiers are read side by side: an ASN database (GeoLite2-ASN,
GeoIP2-ISP, DB-IP ASN lite: `autonomous_system_number`) and a City or Country
database (GeoLite2-City/-Country, GeoIP2-City, DB-IP city lite: `continent.code`,
`country.iso_code`, `location.latitude/longitude`). A missing tier is logged
once and its fields stay None; it is never an error.

`GeoInfo.prefix` is the ECS SCOPE PREFIX-LENGTH we may truthfully claim
(RFC 7871 §7.2.1): the length of the intersection of the networks every open
database returned for the address. Database networks are prefixes, so two
networks that contain one address are nested and their intersection is simply
the longer one.

Lookups are cached per network. Every database partitions the address space
into disjoint networks, and the intersections of two partitions form a finer
partition; so the cached networks never overlap, at most one can contain an
address, and the probe order only affects speed, not the answer.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb

from geodns import settings

log = logging.getLogger("geodns.geo")

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address
Address = IPv4Address | IPv6Address | bytes

# Preference order when discovering: commercial editions (more precise) first,
# City before Country (Country databases carry no location).
ASN_FILES = ("GeoIP2-ISP.mmdb", "GeoLite2-ASN.mmdb", "dbip-asn-lite.mmdb")
CITY_FILES = (
    "GeoIP2-Enterprise.mmdb",
    "GeoIP2-City.mmdb",
    "GeoLite2-City.mmdb",
    "dbip-city-lite.mmdb",
    "GeoIP2-Country.mmdb",
    "GeoLite2-Country.mmdb",
    "dbip-country-lite.mmdb",
)

_MAPPED_V4 = 0xFFFF  # ::ffff:0:0/96 >> 32 (RFC 4291 §2.5.5.2)
_V4_ALL = 0xFFFFFFFF
# Addresses looked up once after opening a file: a corrupt tree or data
# section raises here instead of on a client's query.
_PROBES_V4 = (IPv4Address("1.1.1.1"), IPv4Address("81.2.69.160"), IPv4Address("203.0.113.1"))
_PROBES_V6 = (IPv6Address("2001:4860:4860::8888"), IPv6Address("2001:db8::1"))


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """What the databases say about one network; None = unknown."""

    asn: int | None
    country: str | None  # ISO 3166-1 alpha-2, upper case
    continent: str | None  # AF AN AS EU NA OC SA
    location: tuple[float, float] | None  # (lat, lon)
    # Prefix length, in the looked-up address's own family, of the most
    # specific database network that decided this info (the ECS scope).
    prefix: int


UNKNOWN = GeoInfo(None, None, None, None, 0)


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine) in km between two (lat, lon) points."""
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    # min() guards asin against rounding just above 1 for antipodal points
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(h)))


# ISO 3166-1 alpha-2 → continent code, as MaxMind/GeoNames assign them (Cyprus
# and Russia are EU; Turkey, Armenia, Azerbaijan, Georgia are AS). Used when an
# operator overrides a mirror's country without its continent, and by the demo
# database writer.
_CONTINENT_COUNTRIES = {
    "AF": "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR "
    "LS LY MA MG ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ "
    "UG YT ZA ZM ZW",
    "AN": "AQ BV GS HM TF",
    "AS": "AE AF AM AZ BD BH BN BT CC CN CX GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW "
    "KZ LA LB LK MM MN MO MV MY NP OM PH PK PS QA SA SG SY TH TJ TL TM TR TW UZ VN YE",
    "EU": "AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM "
    "IS IT JE LI LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK",
    "NA": "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF "
    "MQ MS MX NI PA PM PR SV SX TC TT US VC VG VI",
    "OC": "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS",
    "SA": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE",
}
CONTINENT_OF: dict[str, str] = {
    cc: cont for cont, codes in _CONTINENT_COUNTRIES.items() for cc in codes.split()
}
CONTINENTS = frozenset(_CONTINENT_COUNTRIES)


def continent_of(country: str | None) -> str | None:
    return CONTINENT_OF.get(country.upper()) if country else None


# --------------------------------------------------------------------------- database tiers

_Signature = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def _signature(path: Path) -> _Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Tier:
    """One database slot (ASN or City): the open reader and the file watched."""

    __slots__ = ("kind", "candidates", "path", "reader", "sig", "bad_sig", "warned", "broken")

    def __init__(self, kind: str, candidates: tuple[Path, ...]) -> None:
        self.kind = kind
        self.candidates = candidates  # files to look for while none is open
        self.path: Path | None = None
        self.reader: Any = None  # maxminddb Reader (C extension or pure Python)
        self.sig: _Signature | None = None
        self.bad_sig: _Signature | None = None  # a file that failed; retried when it changes
        self.warned = False  # "missing"/"gone" logged once
        self.broken = False  # a lookup raised; logged once per reader


def _open_reader(path: Path, kind: str) -> Any:
    """Open and sanity-check a database; raises on anything unusable.

    The reader maps a private copy, not the file itself: `cp new.mmdb` over
    the watched file truncates it in place, and a lookup in a mapping of a
    file that shrank underneath is SIGBUS — the whole server gone. The copy
    is unlinked at once (the mapping keeps it), so nothing else can touch it.
    """
    fd, tmp = tempfile.mkstemp(prefix=f"geodns-{kind.lower()}-", suffix=".mmdb")
    try:
        os.close(fd)
        shutil.copyfile(path, tmp)
        reader = maxminddb.open_database(tmp, maxminddb.MODE_AUTO)
    finally:
        os.unlink(tmp)
    try:
        md = reader.metadata()
        probes: Iterable[IPv4Address | IPv6Address] = _PROBES_V4
        if md.ip_version == 6:
            probes = (*_PROBES_V4, *_PROBES_V6)
        for probe in probes:
            reader.get_with_prefix_len(probe)
    except BaseException:
        reader.close()
        raise
    dbtype = str(md.database_type)
    expect = ("ASN", "ISP") if kind == "ASN" else ("City", "Country", "Enterprise")
    if not any(word.lower() in dbtype.lower() for word in expect):
        log.warning("%s: database type %r does not look like a %s database", path, dbtype, kind)
    return reader


class GeoDB:
    """ASN + City/Country lookups with a bounded per-network cache.

    Meant for the server's event-loop thread (refresh() from a timer there).
    Other threads may look up concurrently under the GIL: refresh() and cache
    upkeep replace whole objects or make single dict operations, so a racing
    lookup sees the old or the new state and never fails.
    """

    def __init__(
        self, asn_path: Path | None, city_path: Path | None, *, cache_size: int = 100_000
    ) -> None:
        self._setup(
            (Path(asn_path),) if asn_path else (),
            (Path(city_path),) if city_path else (),
            cache_size,
        )

    def _setup(
        self, asn_candidates: tuple[Path, ...], city_candidates: tuple[Path, ...], cache_size: int
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self.cache_size = cache_size
        self._generation = 0
        self._asn = _Tier("ASN", asn_candidates)
        self._city = _Tier("City", city_candidates)
        self._clear_cache()
        for tier in (self._asn, self._city):
            self._open_first(tier)
            if tier.reader is None and tier.bad_sig is None and not tier.warned:
                tier.warned = True
                looked = ", ".join(map(str, tier.candidates)) or "no file configured"
                log.warning(
                    "no %s database (looked for %s): that tier is skipped", tier.kind, looked
                )

    @classmethod
    def discover(
        cls,
        asn: Path | None = None,
        city: Path | None = None,
        dirs: Iterable[Path] = settings.GEOIP_DIRS,
        *,
        cache_size: int = 100_000,
    ) -> GeoDB:
        """Open the given files, or the best edition found in `dirs`.

        A tier with nothing found keeps watching every candidate path, so a
        database installed later (first geoipupdate run) is picked up by
        `refresh()`.
        """
        dirs = tuple(Path(d) for d in dirs)

        def candidates(given: Path | None, names: tuple[str, ...]) -> tuple[Path, ...]:
            if given is not None:
                return (Path(given),)
            return tuple(d / name for name in names for d in dirs)

        db = cls.__new__(cls)
        db._setup(candidates(asn, ASN_FILES), candidates(city, CITY_FILES), cache_size)
        return db

    # ------------------------------------------------------------------ state

    @property
    def generation(self) -> int:
        """Increases whenever a database is (re)opened; cached answers derived
        from older lookups are stale once it changes."""
        return self._generation

    @property
    def has_asn(self) -> bool:
        return self._asn.reader is not None

    @property
    def has_city(self) -> bool:
        return self._city.reader is not None

    @property
    def asn_path(self) -> Path | None:
        return self._asn.path if self._asn.reader is not None else None

    @property
    def city_path(self) -> Path | None:
        return self._city.path if self._city.reader is not None else None

    def _clear_cache(self) -> None:
        # Network cache, per family: shift (= bits - prefix) → {address >> shift:
        # GeoInfo}, probed in `order`, most populated prefix length first.
        self._cells4: dict[int, dict[int, GeoInfo]] = {}
        self._cells6: dict[int, dict[int, GeoInfo]] = {}
        self._order4: list[tuple[int, dict[int, GeoInfo]]] = []
        self._order6: list[tuple[int, dict[int, GeoInfo]]] = []
        self._cached = 0
        # In front of it, exact addresses: resolvers and ECS networks repeat the
        # very same address, which then costs one probe instead of one per
        # prefix length seen (a real City database has ~20 of them).
        self._exact4: dict[int, GeoInfo] = {}
        self._exact6: dict[int, GeoInfo] = {}

    def _open_first(self, tier: _Tier) -> bool:
        """Open the first existing candidate of a tier that has no reader."""
        for path in tier.candidates:
            try:
                sig = _signature(path)
            except OSError:
                continue
            return self._swap(tier, path, sig)
        return False

    def _swap(self, tier: _Tier, path: Path, sig: _Signature) -> bool:
        if sig == tier.bad_sig:
            return False  # already failed on this very file; wait for a new one
        try:
            reader = _open_reader(path, tier.kind)
        except Exception as exc:  # any failure: keep serving with what we have
            tier.bad_sig = sig
            keeping = "keeping the previous one" if tier.reader is not None else "tier skipped"
            log.error("%s: cannot open %s database (%s); %s", path, tier.kind, exc, keeping)
            return False
        verb = "reopened" if tier.reader is not None else "opened"
        # The old reader is dropped, not closed: a lookup running in another
        # thread may still hold it; CPython frees it with the last reference.
        tier.reader, tier.path, tier.sig = reader, path, sig
        tier.bad_sig, tier.warned, tier.broken = None, False, False
        self._generation += 1
        log.info("%s %s database %s (%s)", verb, tier.kind, path, reader.metadata().database_type)
        return True

    def refresh(self) -> bool:
        """Reopen databases whose file changed (geoipupdate renames atomically).

        Cheap when nothing changed: one stat() per open database. Returns True
        if a reader was swapped; the cache is then cleared and `generation`
        increased.
        """
        swapped = False
        for tier in (self._asn, self._city):
            if tier.reader is None:
                swapped |= self._open_first(tier)
                continue
            assert tier.path is not None
            try:
                sig = _signature(tier.path)
            except OSError as exc:
                if not tier.warned:
                    tier.warned = True
                    log.warning("%s: %s; keeping the loaded copy", tier.path, exc)
                continue
            if sig != tier.sig:
                swapped |= self._swap(tier, tier.path, sig)
        if swapped:
            self._clear_cache()
        return swapped

    def close(self) -> None:
        for tier in (self._asn, self._city):
            if tier.reader is not None:
                tier.reader.close()
                tier.reader = None
        self._clear_cache()

    # ------------------------------------------------------------------ lookups

    def lookup(self, address: Address | str) -> GeoInfo:
        """GeoInfo for one address (IPv4Address, IPv6Address, packed 4/16 bytes).

        An IPv4-mapped IPv6 address (::ffff:a.b.c.d, as dual-stack sockets
        report IPv4 peers) is looked up as IPv4; its prefix is reported in IPv6
        terms (96 + IPv4 length) so the scope stays in the address's family.
        """
        if isinstance(address, bytes):
            ip, size = int.from_bytes(address, "big"), len(address)
            if size == 4:
                v6 = False
            elif size == 16:
                v6 = True
            else:
                raise ValueError(f"packed address must be 4 or 16 bytes, not {size}")
        elif isinstance(address, IPv4Address):
            ip, v6 = int(address), False
        elif isinstance(address, IPv6Address):
            ip, v6 = int(address), True
        else:
            parsed = ipaddress.ip_address(address)
            ip, v6 = int(parsed), parsed.version == 6

        if v6:
            if ip >> 32 == _MAPPED_V4:
                info = self.lookup(IPv4Address(ip & _V4_ALL))
                return GeoInfo(
                    info.asn, info.country, info.continent, info.location, 96 + info.prefix
                )
            exact, order = self._exact6, self._order6
        else:
            exact, order = self._exact4, self._order4
        hit = exact.get(ip)
        if hit is not None:
            return hit
        for shift, cells in order:
            hit = cells.get(ip >> shift)
            if hit is not None:
                break
        else:
            hit = self._miss(ip, v6)
        if len(exact) >= self.cache_size:
            exact.clear()
        exact[ip] = hit
        return hit

    def lookup_network(self, address: Address, prefix_len: int) -> GeoInfo:
        """GeoInfo for an ECS client network (RFC 7871 ADDRESS / SOURCE PREFIX-LENGTH).

        The caller has already validated that host bits are zero; the network
        is looked up by its first address, exactly like `lookup()`. The
        returned prefix may be longer than `prefix_len` when the databases are
        more specific than the client revealed; RFC 7871 §7.2.1 allows a SCOPE
        longer than SOURCE and resolvers handle it. It is never shorter than
        what the databases justify.
        """
        del prefix_len  # the scope comes from the databases, not the query
        return self.lookup(address)

    def _read(self, tier: _Tier, addr: IPv4Address | IPv6Address, bits: int) -> tuple[Any, int]:
        reader = tier.reader
        if reader is None:
            return None, 0
        try:
            return reader.get_with_prefix_len(addr)  # type: ignore[no-any-return]
        except ValueError:
            # IPv6 address in an IPv4-only database: it says nothing about the
            # whole IPv6 space, so /0 is the truthful scope for this tier.
            return None, 0
        except Exception as exc:  # corrupt region: unknown, and claim only this address
            if not tier.broken:
                tier.broken = True
                log.error("%s: lookup of %s failed (%s)", tier.path, addr, exc)
            return None, bits

    def _miss(self, ip: int, v6: bool) -> GeoInfo:
        bits = 128 if v6 else 32
        addr = IPv6Address(ip) if v6 else IPv4Address(ip)
        generation = self._generation
        asn = country = continent = None
        location: tuple[float, float] | None = None

        rec, prefix = self._read(self._asn, addr, bits)
        if isinstance(rec, dict):
            value = rec.get("autonomous_system_number")
            asn = value if type(value) is int else None
        rec, city_prefix = self._read(self._city, addr, bits)
        prefix = max(prefix, city_prefix)
        if isinstance(rec, dict):
            country = _code(rec.get("country"), "iso_code")
            continent = _code(rec.get("continent"), "code")
            loc = rec.get("location")
            if isinstance(loc, dict):
                lat, lon = loc.get("latitude"), loc.get("longitude")
                if isinstance(lat, int | float) and isinstance(lon, int | float):
                    location = (float(lat), float(lon))

        info = GeoInfo(asn, country, continent, location, prefix)
        if generation == self._generation:  # not read from a reader refresh() replaced
            self._store(ip, v6, bits - prefix, info)
        return info

    def _store(self, ip: int, v6: bool, shift: int, info: GeoInfo) -> None:
        if self._cached >= self.cache_size:
            # Clear-on-full: O(1) bookkeeping on the hot path; a busy server
            # refills the networks it actually sees within seconds.
            self._clear_cache()
        table = self._cells6 if v6 else self._cells4
        cells = table.get(shift)
        fresh = cells is None
        if cells is None:
            cells = table[shift] = {}
        cells[ip >> shift] = info
        self._cached += 1
        if fresh or self._cached % 64 == 0:
            # Probe the most populated prefix lengths first (most hits end
            # there). A new list replaces the old one, so a lookup iterating
            # the old list in another thread is never disturbed.
            order = sorted(list(table.items()), key=lambda item: len(item[1]), reverse=True)
            if v6:
                self._order6 = order
            else:
                self._order4 = order

    @property
    def cached_networks(self) -> int:
        return self._cached


def _code(section: Any, key: str) -> str | None:
    if isinstance(section, dict):
        value = section.get(key)
        if isinstance(value, str) and value:
            return value.upper()
    return None
