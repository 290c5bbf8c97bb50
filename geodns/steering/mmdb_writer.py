"""Write demo/test GeoIP databases in real MaxMind DB format from readable YAML.

`write_databases(outdir)` produces `GeoLite2-ASN.mmdb` and `GeoLite2-City.mmdb`
with MaxMind's record shapes and tree layout (IPv6 tree, IPv4 at ::/96 and
aliased at ::ffff:0:0/96), so maxminddb, geoip2 and mmdblookup read them like
the real files. The packaged `geodns/data/demo-networks.yaml` describes the
networks the demo and the examples use; the tests pass their own lists through
`parse_networks()` + `write_networks()`, the same code path.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mmdb_writer import MmdbU16, MmdbU32, MMDBWriter
from netaddr import IPNetwork, IPSet

from geodns.config.yamlsrc import YAMLProblem, parse_yaml
from geodns.steering.geo import CONTINENTS, continent_of

ASN_FILE = "GeoLite2-ASN.mmdb"
CITY_FILE = "GeoLite2-City.mmdb"
DEFAULT_ACCURACY_KM = 20

CONTINENT_NAMES = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}
# English names for the codes demos and tests use; others fall back to the code.
COUNTRY_NAMES = {
    "AT": "Austria",
    "AU": "Australia",
    "BR": "Brazil",
    "CA": "Canada",
    "CH": "Switzerland",
    "CN": "China",
    "DE": "Germany",
    "ES": "Spain",
    "FR": "France",
    "GB": "United Kingdom",
    "IN": "India",
    "IT": "Italy",
    "JP": "Japan",
    "NL": "Netherlands",
    "NO": "Norway",
    "NZ": "New Zealand",
    "PL": "Poland",
    "SE": "Sweden",
    "US": "United States",
    "ZA": "South Africa",
}

_FIELDS = frozenset(
    {"network", "asn", "org", "country", "continent", "city", "location", "accuracy_radius"}
)


class DemoNetworksError(ValueError):
    """Every problem found in a networks list, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class DemoNetwork:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    asn: int | None = None
    org: str | None = None
    country: str | None = None
    continent: str | None = None
    city: str | None = None
    location: tuple[float, float] | None = None
    accuracy_radius: int = DEFAULT_ACCURACY_KM

    @property
    def has_city(self) -> bool:
        return any(v is not None for v in (self.country, self.continent, self.city, self.location))


# --------------------------------------------------------------------------- YAML input


def load_networks(path: Path | None = None) -> list[DemoNetwork]:
    """Read and validate a networks YAML file (default: the packaged demo file)."""
    if path is None:
        ref = resources.files("geodns") / "data" / "demo-networks.yaml"
        text, source = ref.read_text(encoding="utf-8"), "geodns/data/demo-networks.yaml"
    else:
        try:
            text, source = Path(path).read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise DemoNetworksError([f"{path}: cannot read: {exc}"]) from exc
    try:
        data, _ = parse_yaml(text)  # the zones' line-aware loader; duplicates: below
    except YAMLProblem as exc:
        where = f"{source}:{exc.line}" if exc.line else source
        raise DemoNetworksError([f"{where}: invalid YAML: {exc.message}"]) from exc
    if isinstance(data, Mapping) and set(data) == {"networks"}:
        data = data["networks"]
    if not isinstance(data, list):
        raise DemoNetworksError([f"{source}: expected a list of networks"])
    return parse_networks(data, source=source)


def parse_networks(
    entries: Sequence[Mapping[str, Any]], *, source: str = "<networks>"
) -> list[DemoNetwork]:
    """Validate entries (YAML-shaped dicts); collect every problem, raise once."""
    problems: list[str] = []
    result: list[DemoNetwork] = []
    seen: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
    for index, entry in enumerate(entries, 1):
        line = getattr(entry, "line", 0)
        where = f"{source}:{line}" if line else source
        label = f"network #{index}"
        if not isinstance(entry, Mapping):
            problems.append(
                f"{where}: {label}: expected a mapping like {{network: 192.0.2.0/24, ...}}"
            )
            continue
        errors: list[str] = []

        def bad(field: str, why: str, errors: list[str] = errors) -> None:
            errors.append(f"{field}: {why}")

        for key in getattr(entry, "duplicates", ()):
            bad(str(key), "given twice")
        for key in entry:
            if key not in _FIELDS:
                bad(str(key), f"unknown field (expected one of {', '.join(sorted(_FIELDS))})")

        net = None
        raw = entry.get("network")
        if raw is not None:
            label = f"network #{index} ({raw})"
        if raw is None:
            bad("network", "required (a CIDR like 192.0.2.0/24)")
        elif not isinstance(raw, str):
            bad("network", f"{raw!r} is not a CIDR like 192.0.2.0/24")
        else:
            try:
                net = ipaddress.ip_network(raw, strict=True)
            except ValueError as exc:
                hint = ""
                try:
                    hint = f"; did you mean {ipaddress.ip_network(raw, strict=False)}?"
                except ValueError:
                    pass
                bad("network", f"{exc}{hint}")
            if net is not None:
                if net in seen:
                    bad("network", f"listed twice (first at {seen[net]})")
                seen.setdefault(net, where)

        asn = entry.get("asn")
        if asn is not None and (type(asn) is not int or not 0 < asn < 2**32):
            bad("asn", f"{asn!r} is not an AS number (1..4294967295)")
        org = entry.get("org")
        if org is not None and not isinstance(org, str):
            bad("org", "must be text")
        if org is not None and asn is None:
            bad("org", "needs asn")

        country = entry.get("country")
        if isinstance(country, bool):
            bad("country", 'YAML read this as true/false; quote the code, e.g. "NO"')
            country = None
        elif country is not None:
            if not (isinstance(country, str) and len(country) == 2 and country.isalpha()):
                bad("country", f"{country!r} is not an ISO 3166-1 alpha-2 code like DE")
                country = None
            else:
                country = country.upper()
        continent = entry.get("continent")
        if continent is not None:
            if not isinstance(continent, str) or continent.upper() not in CONTINENTS:
                bad("continent", f"{continent!r} is not one of {' '.join(sorted(CONTINENTS))}")
                continent = None
            else:
                continent = continent.upper()
        elif country is not None:
            continent = continent_of(country)
        city = entry.get("city")
        if city is not None and not isinstance(city, str):
            bad("city", "must be text")

        location = entry.get("location")
        loc: tuple[float, float] | None = None
        if location is not None:
            if (
                isinstance(location, list | tuple)
                and len(location) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in location)
                and -90 <= location[0] <= 90
                and -180 <= location[1] <= 180
            ):
                loc = (float(location[0]), float(location[1]))
            else:
                bad("location", f"{location!r} is not [latitude, longitude] in degrees")
        radius = entry.get("accuracy_radius", DEFAULT_ACCURACY_KM)
        if type(radius) is not int or not 0 < radius < 2**16:
            bad("accuracy_radius", f"{radius!r} is not a whole number of km (1..65535)")
            radius = DEFAULT_ACCURACY_KM

        item = DemoNetwork(
            network=net or ipaddress.ip_network("0.0.0.0/0"),
            asn=asn if type(asn) is int else None,
            org=org if isinstance(org, str) else None,
            country=country,
            continent=continent,
            city=city if isinstance(city, str) else None,
            location=loc,
            accuracy_radius=radius,
        )
        if not errors and item.asn is None and not item.has_city:
            bad("network", "gives neither asn nor country/continent/city/location")
        if errors:
            problems.extend(f"{where}: {label}: {e}" for e in errors)
        else:
            result.append(item)
    if problems:
        raise DemoNetworksError(problems)
    return result


# --------------------------------------------------------------------------- records


def asn_record(n: DemoNetwork) -> dict[str, Any]:
    assert n.asn is not None
    # MaxMind stores the number as uint32 whatever its size
    return {
        "autonomous_system_number": MmdbU32(n.asn),
        "autonomous_system_organization": n.org or f"AS{n.asn}",
    }


def city_record(n: DemoNetwork) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if n.city is not None:
        record["city"] = {"names": {"en": n.city}}
    if n.continent is not None:
        record["continent"] = {
            "code": n.continent,
            "names": {"en": CONTINENT_NAMES[n.continent]},
        }
    if n.country is not None:
        country = {"iso_code": n.country, "names": {"en": COUNTRY_NAMES.get(n.country, n.country)}}
        record["country"] = country
        record["registered_country"] = dict(country)
    if n.location is not None:
        record["location"] = {
            "accuracy_radius": MmdbU16(n.accuracy_radius),
            "latitude": n.location[0],
            "longitude": n.location[1],
        }
    return record


def _tree_networks(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    """Where a network goes in an IPv6 tree: IPv4 at ::/96 (done by the writer)
    and its ::ffff:0:0/96 alias, as MaxMind's files resolve mapped addresses."""
    if net.version == 4:
        mapped = f"::ffff:{net.network_address}/{96 + net.prefixlen}"
        return [str(net), mapped]
    return [str(net)]


def _build(
    database_type: str, description: str, items: list[tuple[DemoNetwork, dict[str, Any]]]
) -> MMDBWriter:
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": description},
    )
    # Broader networks first: the writer splits an existing leaf for a more
    # specific network, but a broader one inserted later would overwrite it.
    items = sorted(
        items, key=lambda it: it[0].network.prefixlen + (96 if it[0].network.version == 4 else 0)
    )
    for n, record in items:
        for cidr in _tree_networks(n.network):
            writer.insert_network(IPSet([IPNetwork(cidr)]), record)
    return writer


def _write_atomic(writer: MMDBWriter, path: Path) -> None:
    # Same pattern as geoipupdate: a temp file in the target directory, then
    # rename, so a reader never sees a half-written database.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer.to_db_file(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; GeoIP files are world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_networks(outdir: Path, networks: Sequence[DemoNetwork]) -> tuple[Path, Path]:
    """Write GeoLite2-ASN.mmdb and GeoLite2-City.mmdb for validated networks."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    asn = _build(
        "GeoLite2-ASN",
        "geodns demo ASN database (not real data)",
        [(n, asn_record(n)) for n in networks if n.asn is not None],
    )
    city = _build(
        "GeoLite2-City",
        "geodns demo City database (not real data)",
        [(n, city_record(n)) for n in networks if n.has_city],
    )
    asn_path, city_path = outdir / ASN_FILE, outdir / CITY_FILE
    _write_atomic(asn, asn_path)
    _write_atomic(city, city_path)
    return asn_path, city_path


def write_databases(outdir: Path, networks: Path | None = None) -> tuple[Path, Path]:
    """Write the demo databases from a networks YAML file (default: packaged)."""
    return write_networks(Path(outdir), load_networks(networks))


# --------------------------------------------------------------------------- command


def geoip_demo_command(outdir: str, networks: str | None) -> int:
    """`geodns geoip-demo OUTDIR [--networks FILE]`; returns the exit status."""
    try:
        paths = write_databases(Path(outdir), Path(networks) if networks else None)
    except DemoNetworksError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"geoip-demo: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="geodns geoip-demo",
        description="Write demo GeoLite2-ASN/-City databases (MaxMind format) to OUTDIR.",
    )
    parser.add_argument("outdir")
    parser.add_argument("--networks", help="networks YAML (default: the packaged demo file)")
    args = parser.parse_args(argv)
    return geoip_demo_command(args.outdir, args.networks)


if __name__ == "__main__":
    sys.exit(main())
