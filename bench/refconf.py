"""The benchmark's world: one zone, one pool of mirrors, client subnets, and the
configurations that make geodns, gdnsd and Knot answer it (as equivalently as
their geo features allow).

Everything is generated from the data below into a temporary directory:

* geodns operator YAML (``zones/example.org.yaml``, ``zones/pools/distfiles.yaml``)
* a networks YAML and, from it, MaxMind-format ``GeoLite2-ASN.mmdb`` and
  ``GeoLite2-City.mmdb`` (through ``geodns.steering.mmdb_writer`` when it exists, else a
  writer of our own with the same record layout as MaxMind's editions)
* a gdnsd config directory (``geoip`` plugin, city-auto-mode by coordinates)
* a Knot config (``mod-geoip`` in geodb mode keyed by continent and country)

The reference ranking in :func:`rank` is the geodns semantics (same ASN > same
country > same continent > everyone else, then great-circle distance, then
weight), and :func:`best_group` the answer set geodns hands out (the best tier
within max(nearest + TIE_KM, BAND_FACTOR x nearest)); they precompute the sets
the C servers hand out, and tell how far their answers differ from geodns'
for each client subnet.

Addresses: mirrors live in the benchmarking ranges (198.18.0.0/15, RFC 2544;
2001:2::/48, RFC 5180). Client subnets only ever appear inside the ECS option of
queries sent to 127.0.0.1; no packet is sent to any of them.
"""

from __future__ import annotations

import ipaddress
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ZONE = "example.org"
STEERED = "dl"
POOL = "distfiles"
ANSWERS = 3
STEERED_TTL = 60
TIE_KM, BAND_FACTOR = 100.0, 1.5  # geodns' defaults (pool tie_km, band_factor)


@dataclass(frozen=True)
class MirrorSpec:
    name: str
    country: str
    continent: str
    city: str
    location: tuple[float, float]
    asn: int
    org: str
    ipv4: str
    ipv6: str
    weight: int = 100

    @property
    def net4(self) -> str:
        return str(ipaddress.ip_network(f"{self.ipv4}/24", strict=False))

    @property
    def net6(self) -> str:
        return str(ipaddress.ip_network(f"{self.ipv6}/64", strict=False))


@dataclass(frozen=True)
class ClientSpec:
    network: str
    country: str
    continent: str
    city: str
    location: tuple[float, float]
    asn: int
    org: str

    @property
    def family(self) -> int:
        return ipaddress.ip_network(self.network).version


# Twelve mirrors on six continents; two share an ASN with a client network so the
# ASN tier of geodns is exercised (the C servers cannot express it).
MIRRORS: tuple[MirrorSpec, ...] = (
    MirrorSpec(
        "ftp-fau",
        "DE",
        "EU",
        "Erlangen",
        (49.59, 11.00),
        680,
        "DFN",
        "198.18.1.10",
        "2001:2:0:1::10",
    ),
    MirrorSpec(
        "mirror-berlin",
        "DE",
        "EU",
        "Berlin",
        (52.52, 13.40),
        64601,
        "Berlin Hosting",
        "198.18.2.10",
        "2001:2:0:2::10",
    ),
    MirrorSpec(
        "mirror-paris",
        "FR",
        "EU",
        "Paris",
        (48.86, 2.35),
        64602,
        "Paris Net",
        "198.18.3.10",
        "2001:2:0:3::10",
    ),
    MirrorSpec(
        "mirror-london",
        "GB",
        "EU",
        "London",
        (51.51, -0.13),
        64603,
        "London IX Hosting",
        "198.18.4.10",
        "2001:2:0:4::10",
    ),
    MirrorSpec(
        "mirror-sto",
        "SE",
        "EU",
        "Stockholm",
        (59.33, 18.07),
        64604,
        "Nordic Uni",
        "198.18.5.10",
        "2001:2:0:5::10",
    ),
    MirrorSpec(
        "mirror-nyc",
        "US",
        "NA",
        "New York",
        (40.71, -74.01),
        64605,
        "East Coast DC",
        "198.18.6.10",
        "2001:2:0:6::10",
    ),
    MirrorSpec(
        "mirror-chi",
        "US",
        "NA",
        "Chicago",
        (41.88, -87.63),
        64606,
        "Midwest Edu",
        "198.18.7.10",
        "2001:2:0:7::10",
    ),
    MirrorSpec(
        "mirror-sjc",
        "US",
        "NA",
        "San Jose",
        (37.34, -121.89),
        64607,
        "West Coast DC",
        "198.18.8.10",
        "2001:2:0:8::10",
    ),
    MirrorSpec(
        "mirror-sao",
        "BR",
        "SA",
        "Sao Paulo",
        (-23.55, -46.63),
        64608,
        "Brasil Uni",
        "198.18.9.10",
        "2001:2:0:9::10",
    ),
    MirrorSpec(
        "mirror-tyo",
        "JP",
        "AS",
        "Tokyo",
        (35.68, 139.69),
        2500,
        "WIDE",
        "198.18.10.10",
        "2001:2:0:a::10",
    ),
    MirrorSpec(
        "mirror-syd",
        "AU",
        "OC",
        "Sydney",
        (-33.87, 151.21),
        64610,
        "AARNet-ish",
        "198.18.11.10",
        "2001:2:0:b::10",
    ),
    MirrorSpec(
        "mirror-jnb",
        "ZA",
        "AF",
        "Johannesburg",
        (-26.20, 28.05),
        64611,
        "Joburg Net",
        "198.18.12.10",
        "2001:2:0:c::10",
    ),
)

# Client subnets (ECS sources): 16 IPv4 /24 and 4 IPv6 /48 in 17 countries.
CLIENTS: tuple[ClientSpec, ...] = (
    ClientSpec("131.188.64.0/24", "DE", "EU", "Munich", (48.14, 11.58), 680, "DFN"),
    ClientSpec("85.214.10.0/24", "DE", "EU", "Hamburg", (53.55, 9.99), 6724, "Strato"),
    ClientSpec("90.84.20.0/24", "FR", "EU", "Lyon", (45.76, 4.84), 3215, "Orange"),
    ClientSpec("81.2.69.0/24", "GB", "EU", "Manchester", (53.48, -2.24), 20712, "Andrews & Arnold"),
    ClientSpec("145.97.30.0/24", "NL", "EU", "Amsterdam", (52.37, 4.90), 1103, "SURFnet"),
    ClientSpec("83.0.40.0/24", "PL", "EU", "Warsaw", (52.23, 21.01), 5617, "Orange Polska"),
    ClientSpec("151.38.50.0/24", "IT", "EU", "Rome", (41.90, 12.50), 1267, "WIND"),
    ClientSpec("73.60.60.0/24", "US", "NA", "Boston", (42.36, -71.06), 7922, "Comcast"),
    ClientSpec("97.113.70.0/24", "US", "NA", "Seattle", (47.61, -122.33), 209, "CenturyLink"),
    ClientSpec("99.224.80.0/24", "CA", "NA", "Toronto", (43.65, -79.38), 812, "Rogers"),
    ClientSpec("189.203.90.0/24", "MX", "NA", "Mexico City", (19.43, -99.13), 8151, "Telmex"),
    ClientSpec("177.92.100.0/24", "BR", "SA", "Rio de Janeiro", (-22.91, -43.17), 28573, "Claro"),
    ClientSpec(
        "181.46.110.0/24", "AR", "SA", "Buenos Aires", (-34.60, -58.38), 7303, "Telecom Argentina"
    ),
    ClientSpec("133.11.120.0/24", "JP", "AS", "Osaka", (34.69, 135.50), 2500, "WIDE"),
    ClientSpec("49.36.130.0/24", "IN", "AS", "Mumbai", (19.08, 72.88), 55836, "Reliance Jio"),
    ClientSpec("110.144.140.0/24", "AU", "OC", "Melbourne", (-37.81, 144.96), 1221, "Telstra"),
    ClientSpec("2003:e0:1000::/48", "DE", "EU", "Cologne", (50.94, 6.96), 3320, "Deutsche Telekom"),
    ClientSpec("2601:180:2000::/48", "US", "NA", "Denver", (39.74, -104.99), 7922, "Comcast"),
    ClientSpec("2400:4050:3000::/48", "JP", "AS", "Nagoya", (35.18, 136.91), 4713, "NTT OCN"),
    ClientSpec("2804:14c:4000::/48", "BR", "SA", "Curitiba", (-25.43, -49.27), 28573, "Claro"),
)

# Static (non-steered) records of the zone: (owner, type, ttl, rdata...).
STATIC: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("@", "MX", 3600, ("10 mail.example.org.",)),
    ("@", "TXT", 3600, ("v=spf1 -all",)),
    ("ns1", "A", 3600, ("192.0.2.53",)),
    ("ns1", "AAAA", 3600, ("2001:db8::53",)),
    ("ns2", "A", 3600, ("198.51.100.53",)),
    ("ns2", "AAAA", 3600, ("2001:db8:1::53",)),
    ("www", "A", 300, ("192.0.2.80", "192.0.2.81")),
    ("www", "AAAA", 300, ("2001:db8::80", "2001:db8::81")),
    ("mail", "A", 3600, ("192.0.2.25",)),
    ("mail", "AAAA", 3600, ("2001:db8::25",)),
    ("_dmarc", "TXT", 3600, ("v=DMARC1; p=reject",)),
)

# Queries of the "static" scenario (dnsperf datafile lines, qname relative to the zone).
STATIC_QUERIES: tuple[tuple[str, str], ...] = (
    ("www", "A"),
    ("www", "AAAA"),
    ("@", "MX"),
    ("@", "TXT"),
    ("ns1", "A"),
    ("mail", "A"),
    ("mail", "AAAA"),
    ("_dmarc", "TXT"),
    ("@", "SOA"),
    ("ns2", "AAAA"),
)


# --------------------------------------------------------------------------- geo semantics


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class Where:
    asn: int | None = None
    country: str | None = None
    continent: str | None = None
    location: tuple[float, float] | None = None


def rank(client: Where, mirrors: tuple[MirrorSpec, ...] = MIRRORS) -> list[MirrorSpec]:
    """Mirrors in geodns order for `client`: ASN > country > continent > rest, then distance."""

    def key(m: MirrorSpec) -> tuple[int, float, int, str]:
        if client.asn is not None and m.asn == client.asn:
            tier = 0
        elif client.country and m.country == client.country:
            tier = 1
        elif client.continent and m.continent == client.continent:
            tier = 2
        else:
            tier = 3
        dist = distance_km(client.location, m.location) if client.location else 0.0
        return (tier, dist, -m.weight, m.name)

    return sorted(mirrors, key=key)


def best_group(client: Where, mirrors: tuple[MirrorSpec, ...] = MIRRORS) -> list[MirrorSpec]:
    """The mirrors geodns answers `client` from: the best tier, within the band."""
    ranked = rank(client, mirrors)
    head = ranked[0]

    def tier(m: MirrorSpec) -> int:
        if client.asn is not None and m.asn == client.asn:
            return 0
        if client.country and m.country == client.country:
            return 1
        if client.continent and m.continent == client.continent:
            return 2
        return 3

    if client.location is None:
        return [m for m in ranked if tier(m) == tier(head)]
    near = distance_km(client.location, head.location)
    limit = max(near + TIE_KM, BAND_FACTOR * near)
    return [
        m
        for m in ranked
        if tier(m) == tier(head) and distance_km(client.location, m.location) <= limit
    ]


def answer_set(client: Where, family: int) -> frozenset[str]:
    """Every address geodns may answer `client` (each answer holds some of them)."""
    return frozenset(m.ipv4 if family == 4 else m.ipv6 for m in best_group(client))


def client_where(c: ClientSpec, *, with_asn: bool = True) -> Where:
    return Where(c.asn if with_asn else None, c.country, c.continent, c.location)


# --------------------------------------------------------------------------- ECS


def ecs_hex(network: str) -> str:
    """dnsperf `-E 8:<hex>` value for an ECS option (RFC 7871 §6) carrying `network`.

    FAMILY (2 bytes: 1 IPv4, 2 IPv6), SOURCE PREFIX-LENGTH (1), SCOPE PREFIX-LENGTH (1, 0 in
    queries), then ADDRESS truncated to ceil(prefix/8) bytes with host bits zero.
    """
    net = ipaddress.ip_network(network, strict=True)
    family = 1 if net.version == 4 else 2
    nbytes = (net.prefixlen + 7) // 8
    addr = net.network_address.packed[:nbytes]
    return (family.to_bytes(2, "big") + bytes([net.prefixlen, 0]) + addr).hex()


# --------------------------------------------------------------------------- networks / GeoIP


def networks() -> list[dict[str, Any]]:
    """The networks YAML (geodns geoip-demo format): client subnets and mirror networks."""
    out: list[dict[str, Any]] = []
    for c in CLIENTS:
        out.append(
            {
                "network": c.network,
                "asn": c.asn,
                "org": c.org,
                "country": c.country,
                "continent": c.continent,
                "city": c.city,
                "location": list(c.location),
            }
        )
    for m in MIRRORS:
        for net in (m.net4, m.net6):
            out.append(
                {
                    "network": net,
                    "asn": m.asn,
                    "org": m.org,
                    "country": m.country,
                    "continent": m.continent,
                    "city": m.city,
                    "location": list(m.location),
                }
            )
    return out


def write_networks(path: Path) -> Path:
    path.write_text(yaml.safe_dump(networks(), sort_keys=False))
    return path


def write_geoip(outdir: Path, networks_path: Path) -> tuple[Path, Path, str]:
    """Write GeoLite2-ASN.mmdb and GeoLite2-City.mmdb; returns (asn, city, writer used)."""
    from geodns.steering.mmdb_writer import write_databases

    outdir.mkdir(parents=True, exist_ok=True)
    write_databases(outdir, networks_path)
    writer = "geodns.steering.mmdb_writer"
    return outdir / "GeoLite2-ASN.mmdb", outdir / "GeoLite2-City.mmdb", writer


# --------------------------------------------------------------------------- geodns YAML


def geodns_zone_doc(zone: str = ZONE, pool: str = POOL, steered: str = STEERED) -> dict[str, Any]:
    records: dict[str, dict[str, Any]] = {}
    for owner, rtype, ttl, rdata in STATIC:
        rec = records.setdefault(owner, {})
        rec[rtype] = rdata[0] if len(rdata) == 1 else list(rdata)
        if ttl != 3600:
            rec["ttl"] = ttl  # geodns: one TTL per owner name (all STATIC types of an owner agree)
    return {
        "zone": zone,
        "ttl": 3600,
        "soa": {
            "mname": f"ns1.{zone}",
            "rname": f"hostmaster.{zone}",
            "serial": 2024010101,
            "refresh": 3600,
            "retry": 600,
            "expire": 1209600,
            "minimum": 300,
        },
        "ns": [f"ns1.{zone}", f"ns2.{zone}"],
        "records": records,
        "steered": {steered: {"pool": pool, "answers": ANSWERS, "ttl": STEERED_TTL}},
    }


def geodns_pool_doc(mirrors: tuple[MirrorSpec, ...] = MIRRORS, pool: str = POOL) -> dict[str, Any]:
    return {
        "pool": pool,
        "mirrors": [
            {
                "name": m.name,
                "url": f"https://{m.name}.mirrors.example.net/pub/",
                "ipv4": [m.ipv4],
                "ipv6": [m.ipv6],
                "weight": m.weight,
                "asn": m.asn,
                "country": m.country,
                "continent": m.continent,
                "location": list(m.location),
            }
            for m in mirrors
        ],
    }


def write_geodns(confdir: Path) -> Path:
    """The geodns YAML, signed (DNSSEC) with the CSK in `confdir/keys`: DO=0
    answers are the same bytes as unsigned, DO=1 answers carry RRSIGs."""
    (confdir / "pools").mkdir(parents=True, exist_ok=True)
    doc = geodns_zone_doc()
    doc["dnssec"] = {"keys": [f"keys/{make_key(confdir / 'keys').name}"]}
    (confdir / f"{ZONE}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (confdir / "pools" / f"{POOL}.yaml").write_text(
        yaml.safe_dump(geodns_pool_doc(), sort_keys=False)
    )
    return confdir


def make_key(keydir: Path) -> Path:
    """One ECDSA P-256 CSK in BIND files (geodns signs with it; Knot imports it)."""
    from geodns.dnssec.keyfiles import generate

    return generate(ZONE, keydir, sep=True)


def signing_key(geodns_conf: Path) -> Path:
    """The base path of the key `write_geodns` made."""
    (key,) = sorted((geodns_conf / "keys").glob("*.key"))
    return key.with_suffix("")


# --------------------------------------------------------------------------- zone file (C servers)


def _zonefile_static(zone: str = ZONE) -> str:
    lines = [
        "$TTL 3600",
        f"@ 3600 IN SOA ns1.{zone}. hostmaster.{zone}. 2024010101 3600 600 1209600 300",
        f"@ 3600 IN NS ns1.{zone}.",
        f"@ 3600 IN NS ns2.{zone}.",
    ]
    for owner, rtype, ttl, rdata in STATIC:
        for rd in rdata:
            if rtype == "TXT":
                rd = '"' + rd + '"'
            lines.append(f"{owner} {ttl} IN {rtype} {rd}")
    return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    return '"' + s + '"'


# --------------------------------------------------------------------------- gdnsd


def gdnsd_dc_sets() -> dict[str, list[MirrorSpec]]:
    """One gdnsd datacenter per mirror; it answers the set geodns would answer a
    client standing at that mirror (its best group, at most ANSWERS)."""
    return {
        m.name: best_group(Where(None, m.country, m.continent, m.location))[:ANSWERS]
        for m in MIRRORS
    }


def write_gdnsd(confdir: Path, port: int, city_db: Path, threads: int = 1) -> Path:
    """gdnsd config dir: city-auto-mode (nearest datacenter by coordinates), `threads` UDP
    threads (one socket each, SO_REUSEPORT)."""
    (confdir / "zones").mkdir(parents=True, exist_ok=True)
    dcs = gdnsd_dc_sets()
    coords = "\n".join(
        f"          {_quote(m.name)} => [ {m.location[0]}, {m.location[1]} ]," for m in MIRRORS
    )
    dcmap_lines = []
    for name, members in dcs.items():
        v4 = ", ".join(mm.ipv4 for mm in members)
        v6 = ", ".join(_quote(mm.ipv6) for mm in members)
        dcmap_lines.append(
            f"          {_quote(name)} => {{ addrs_v4 => [ {v4} ], addrs_v6 => [ {v6} ] }},"
        )
    conf = f"""\
options => {{
  listen => {{ "127.0.0.1:{port}" => {{ udp_threads => {threads}, tcp_threads => 1 }} }}
  run_dir => {_quote(str(confdir / "run"))}
  state_dir => {_quote(str(confdir / "state"))}
  edns_client_subnet => true
}}
plugins => {{
  geoip => {{
    maps => {{
      dlmap => {{
        geoip2_db => {_quote(str(city_db))}
        datacenters => [ {", ".join(_quote(m.name) for m in MIRRORS)} ]
        auto_dc_coords => {{
{coords}
        }}
        auto_dc_limit => 3
      }}
    }}
    resources => {{
      {STEERED} => {{
        map => dlmap
        service_types => up
        dcmap => {{
{chr(10).join(dcmap_lines)}
        }}
      }}
    }}
  }}
}}
"""
    (confdir / "config").write_text(conf)
    zone = _zonefile_static() + f"{STEERED} {STEERED_TTL} DYNA geoip!{STEERED}\n"
    (confdir / "zones" / ZONE).write_text(zone)
    return confdir


# --------------------------------------------------------------------------- Knot


def _centroid(points: list[tuple[float, float]]) -> tuple[float, float]:
    # good enough for points inside one country/continent (no antimeridian here)
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


def knot_views() -> list[tuple[str, Where]]:
    """(geo key "CONTINENT;COUNTRY", representative client) for every country and continent
    in the GeoIP database, plus the "*;*" default. Knot picks the most specific view."""
    places: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for n in networks():
        places.setdefault((n["continent"], n["country"]), []).append(tuple(n["location"]))
    views: list[tuple[str, Where]] = [("*;*", Where())]
    for cont in sorted({k[0] for k in places}):
        pts = [p for k, v in places.items() if k[0] == cont for p in v]
        views.append((f"{cont};*", Where(None, None, cont, _centroid(pts))))
    for (cont, cc), pts in sorted(places.items()):
        views.append((f"{cont};{cc}", Where(None, cc, cont, _centroid(pts))))
    return views


def write_knot(
    confdir: Path, port: int, city_db: Path, key: Path | None = None, workers: int = 1
) -> Path:
    """Knot's config; with `key` (BIND files), the zone and the geo views are
    signed with it (automatic signing with a manual-key policy: the CSK is
    imported with `keymgr import-bind` by `import_knot_key`); `workers` UDP
    workers."""
    confdir.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "storage"):
        (confdir / sub).mkdir(exist_ok=True)
    geo_lines = [f"{STEERED}.{ZONE}:"]
    for key, where in knot_views():
        geo_lines.append(f'  - geo: "{key}"')
        for m in best_group(where)[:ANSWERS]:
            geo_lines.append(f"    A: {m.ipv4}")
        for m in best_group(where)[:ANSWERS]:
            geo_lines.append(f"    AAAA: {m.ipv6}")
    (confdir / "geo.conf").write_text("\n".join(geo_lines) + "\n")
    default = best_group(Where())[:ANSWERS]
    zone = _zonefile_static()
    zone += "".join(f"{STEERED} {STEERED_TTL} IN A {m.ipv4}\n" for m in default)
    zone += "".join(f"{STEERED} {STEERED_TTL} IN AAAA {m.ipv6}\n" for m in default)
    (confdir / "storage" / f"{ZONE}.zone").write_text(zone)
    conf = textwrap.dedent(f"""\
        server:
            rundir: "{confdir / "run"}"
            pidfile: "{confdir / "run" / "knot.pid"}"
            listen: 127.0.0.1@{port}
            udp-workers: {workers}
            tcp-workers: 1
            background-workers: 1
            edns-client-subnet: on
            answer-rotation: on

        log:
          - target: stderr
            any: warning

        database:
            storage: "{confdir / "storage"}"

        mod-geoip:
          - id: dl
            config-file: "{confdir / "geo.conf"}"
            ttl: {STEERED_TTL}
            mode: geodb
            geodb-file: "{city_db}"
            geodb-key: [ continent/code, country/iso_code ]

        template:
          - id: default
            storage: "{confdir / "storage"}"
            file: "%s.zone"
            zonefile-sync: -1
            zonefile-load: whole
            journal-content: none
            semantic-checks: off

        zone:
          - domain: {ZONE}
            module: mod-geoip/dl
        """)
    if key is not None:
        for old, add in (
            (
                "    geodb-key: [ continent/code, country/iso_code ]\n",
                "    dnssec: on\n    policy: csk\n",
            ),
            ("    module: mod-geoip/dl\n", "    dnssec-signing: on\n    dnssec-policy: csk\n"),
        ):
            conf = conf.replace(old, old + add)
        conf = conf.replace("journal-content: none", "journal-content: changes")
        conf = conf.replace(
            "database:\n",
            "policy:\n"
            "  - id: csk\n"
            "    algorithm: ecdsap256sha256\n"
            "    single-type-signing: on\n"
            "    manual: on\n"
            "    rrsig-lifetime: 14d\n"
            "    rrsig-refresh: 7d\n"
            "\n"
            "database:\n",
        )
    (confdir / "knot.conf").write_text(conf)
    return confdir


def import_knot_key(confdir: Path, key: Path) -> None:
    """Put geodns' CSK into Knot's KASP database (before knotd starts)."""
    import subprocess

    base = ["keymgr", "-c", str(confdir / "knot.conf"), f"{ZONE}."]
    tag = key.name.rsplit("+", 1)[1].lstrip("0") or "0"
    for argv in (["import-bind", f"{key}.private"], ["set", tag, "zsk=yes"]):  # a CSK
        subprocess.run(base + argv, check=True, capture_output=True, timeout=60)


# --------------------------------------------------------------------------- dnsperf input


def write_queries(outdir: Path) -> dict[str, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    files = {
        "A": outdir / "steered-A.txt",
        "AAAA": outdir / "steered-AAAA.txt",
        "static": outdir / "static.txt",
    }
    files["A"].write_text(f"{STEERED}.{ZONE} A\n")
    files["AAAA"].write_text(f"{STEERED}.{ZONE} AAAA\n")
    files["static"].write_text(
        "".join(f"{ZONE if o == '@' else o + '.' + ZONE} {t}\n" for o, t in STATIC_QUERIES)
    )
    return files


@dataclass
class World:
    root: Path
    geodns_conf: Path
    networks: Path
    asn_db: Path
    city_db: Path
    geoip_writer: str
    queries: dict[str, Path] = field(default_factory=dict)


def build(root: Path) -> World:
    """Generate every input of the QPS benchmark under `root` (servers' configs come later,
    once their ports are known)."""
    root.mkdir(parents=True, exist_ok=True)
    geodns_conf = write_geodns(root / "geodns-zones")
    nets = write_networks(root / "networks.yaml")
    asn, city, how = write_geoip(root / "geoip", nets)
    os.chmod(root, 0o755)
    return World(root, geodns_conf, nets, asn, city, how, write_queries(root / "queries"))
