"""Test helpers: real MaxMind-format GeoIP databases with known answers.

Uses the same validation and writer code path as `geodns geoip-demo`, so the
tests exercise the files operators get.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geodns.steering.mmdb_writer import parse_networks, write_networks


def make_databases(tmp_path: Path, networks: Sequence[Mapping[str, Any]]) -> tuple[Path, Path]:
    """Write GeoLite2-ASN.mmdb and GeoLite2-City.mmdb into tmp_path.

    `networks` are entries as in demo-networks.yaml, e.g.
    {"network": "192.0.2.0/24", "asn": 64510, "country": "DE", "location": [52.52, 13.40]}.
    Entries with only `asn` go to the ASN file only; entries with only
    country/continent/city/location go to the City file only.
    """
    return write_networks(Path(tmp_path), parse_networks(networks, source="test networks"))


# Networks for ranking tests: mirrors and clients in several ASNs, countries and
# continents, with known coordinates.
FRANKFURT, BERLIN, MUNICH, NUREMBERG = (50.11, 8.68), (52.52, 13.40), (48.14, 11.58), (49.45, 11.08)
PARIS, LONDON, ASHBURN, NEW_YORK = (48.86, 2.35), (51.51, -0.13), (39.04, -77.49), (40.71, -74.01)
TOKYO, OSAKA, SAO_PAULO, SYDNEY = (
    (35.68, 139.65),
    (34.69, 135.50),
    (-23.55, -46.63),
    (-33.87, 151.21),
)

WORLD: list[dict[str, Any]] = [
    # mirrors
    {
        "network": "10.1.0.0/16",
        "asn": 65001,
        "country": "DE",
        "city": "Frankfurt",
        "location": list(FRANKFURT),
    },
    {
        "network": "10.2.0.0/16",
        "asn": 65002,
        "country": "DE",
        "city": "Munich",
        "location": list(MUNICH),
    },
    {
        "network": "10.3.0.0/16",
        "asn": 65003,
        "country": "FR",
        "city": "Paris",
        "location": list(PARIS),
    },
    {
        "network": "10.4.0.0/16",
        "asn": 65004,
        "country": "US",
        "city": "Ashburn",
        "location": list(ASHBURN),
    },
    {
        "network": "10.5.0.0/16",
        "asn": 65005,
        "country": "JP",
        "city": "Tokyo",
        "location": list(TOKYO),
    },
    {
        "network": "10.6.0.0/16",
        "asn": 65006,
        "country": "BR",
        "city": "São Paulo",
        "location": list(SAO_PAULO),
    },
    {
        "network": "10.7.0.0/16",
        "asn": 65001,
        "country": "DE",
        "city": "Nuremberg",
        "location": list(NUREMBERG),
    },
    {"network": "2001:db8:a1::/48", "asn": 65001, "country": "DE", "location": list(FRANKFURT)},
    {"network": "2001:db8:a4::/48", "asn": 65004, "country": "US", "location": list(ASHBURN)},
    {"network": "2001:db8:a5::/48", "asn": 65005, "country": "JP", "location": list(TOKYO)},
    # clients
    {
        "network": "192.0.2.0/24",
        "asn": 65001,
        "country": "DE",
        "city": "Berlin",
        "location": list(BERLIN),
    },
    {
        "network": "198.51.100.0/24",
        "asn": 65100,
        "country": "DE",
        "city": "Berlin",
        "location": list(BERLIN),
    },
    {
        "network": "203.0.113.0/24",
        "asn": 65200,
        "country": "GB",
        "city": "London",
        "location": list(LONDON),
    },
    {
        "network": "100.64.0.0/24",
        "asn": 65300,
        "country": "US",
        "city": "New York",
        "location": list(NEW_YORK),
    },
    {
        "network": "100.64.1.0/24",
        "asn": 65400,
        "country": "JP",
        "city": "Osaka",
        "location": list(OSAKA),
    },
    {
        "network": "100.64.2.0/24",
        "asn": 65500,
        "country": "AU",
        "city": "Sydney",
        "location": list(SYDNEY),
    },
    {"network": "100.64.3.0/24", "asn": 65600, "country": "DE"},  # country only, no location
    {"network": "2001:db8:c1::/48", "asn": 65100, "country": "DE", "location": list(BERLIN)},
]
