"""Generate the large configuration bench/scale loads: N zones, P pools, M mirrors,
plus a GeoIP database with a realistic number of networks.

Zones are `d000.example` … (RFC 2606 names); each has static records, a steered
`dl` (3 answers) and a steered `mirrors` (2 answers) over two different pools.
Pools hold M/P mirrors each, spread over 40 cities on six continents, with
addresses in the benchmarking ranges (198.18.0.0/15, 2001:2::/48). Everything is
seeded, so two runs with the same parameters load the same bytes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import shutil
from pathlib import Path
from typing import Any

import refconf
import yaml

CITIES: tuple[tuple[str, str, str, float, float], ...] = (
    ("DE", "EU", "Frankfurt", 50.11, 8.68),
    ("DE", "EU", "Erlangen", 49.59, 11.00),
    ("DE", "EU", "Berlin", 52.52, 13.40),
    ("FR", "EU", "Paris", 48.86, 2.35),
    ("FR", "EU", "Marseille", 43.30, 5.37),
    ("GB", "EU", "London", 51.51, -0.13),
    ("NL", "EU", "Amsterdam", 52.37, 4.90),
    ("SE", "EU", "Stockholm", 59.33, 18.07),
    ("PL", "EU", "Warsaw", 52.23, 21.01),
    ("IT", "EU", "Milan", 45.46, 9.19),
    ("ES", "EU", "Madrid", 40.42, -3.70),
    ("CH", "EU", "Zurich", 47.38, 8.54),
    ("AT", "EU", "Vienna", 48.21, 16.37),
    ("NO", "EU", "Oslo", 59.91, 10.75),
    ("US", "NA", "New York", 40.71, -74.01),
    ("US", "NA", "Chicago", 41.88, -87.63),
    ("US", "NA", "San Jose", 37.34, -121.89),
    ("US", "NA", "Dallas", 32.78, -96.80),
    ("US", "NA", "Seattle", 47.61, -122.33),
    ("US", "NA", "Atlanta", 33.75, -84.39),
    ("CA", "NA", "Toronto", 43.65, -79.38),
    ("CA", "NA", "Vancouver", 49.28, -123.12),
    ("MX", "NA", "Mexico City", 19.43, -99.13),
    ("BR", "SA", "Sao Paulo", -23.55, -46.63),
    ("AR", "SA", "Buenos Aires", -34.60, -58.38),
    ("CL", "SA", "Santiago", -33.45, -70.67),
    ("JP", "AS", "Tokyo", 35.68, 139.69),
    ("JP", "AS", "Osaka", 34.69, 135.50),
    ("KR", "AS", "Seoul", 37.57, 126.98),
    ("SG", "AS", "Singapore", 1.35, 103.82),
    ("IN", "AS", "Mumbai", 19.08, 72.88),
    ("CN", "AS", "Beijing", 39.90, 116.40),
    ("TW", "AS", "Taipei", 25.03, 121.57),
    ("HK", "AS", "Hong Kong", 22.32, 114.17),
    ("AU", "OC", "Sydney", -33.87, 151.21),
    ("AU", "OC", "Melbourne", -37.81, 144.96),
    ("NZ", "OC", "Auckland", -36.85, 174.76),
    ("ZA", "AF", "Johannesburg", -26.20, 28.05),
    ("KE", "AF", "Nairobi", -1.29, 36.82),
    ("EG", "AF", "Cairo", 30.04, 31.24),
)

PROBE_ZONE = "d000.example"  # its serial is bumped on every reload to detect the new generation


def zone_name(i: int) -> str:
    return f"d{i:03d}.example"


def mirror_addrs(k: int) -> tuple[str, str]:
    v4 = ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.0")) + 256 + k)  # skip .0.x
    v6 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("2001:2::")) + ((k + 1) << 64) + 1)
    return str(v4), str(v6)


def pool_doc(p: int, per_pool: int, start: int, rnd: random.Random) -> dict[str, Any]:
    mirrors = []
    for j in range(per_pool):
        k = start + j
        cc, cont, city, lat, lon = CITIES[rnd.randrange(len(CITIES))]
        v4, v6 = mirror_addrs(k)
        mirrors.append(
            {
                "name": f"m{k:04d}-{city.lower().replace(' ', '-')}",
                "url": f"https://m{k:04d}.mirrors.example.net/pool{p:02d}/",
                "ipv4": [v4],
                "ipv6": [v6],
                "weight": rnd.choice((50, 100, 100, 200)),
                "asn": 64512 + rnd.randrange(400),
                "country": cc,
                "continent": cont,
                "location": [
                    round(lat + rnd.uniform(-0.5, 0.5), 3),
                    round(lon + rnd.uniform(-0.5, 0.5), 3),
                ],
            }
        )
    return {"pool": f"p{p:02d}", "mirrors": mirrors}


# zone → its key (relative to the config directory) when the config is signed
# (write_config(dnssec=True)); zone_doc adds the `dnssec:` key for these
SIGNING_KEYS: dict[str, str] = {}


def zone_doc(i: int, pools: int, serial: int | str) -> dict[str, Any]:
    z = zone_name(i)
    doc = _zone_doc(i, pools, serial)
    if z in SIGNING_KEYS:
        doc["dnssec"] = {"keys": [SIGNING_KEYS[z]]}
    return doc


def _zone_doc(i: int, pools: int, serial: int | str) -> dict[str, Any]:
    z = zone_name(i)
    return {
        "zone": z,
        "soa": {
            "mname": f"ns1.{z}",
            "rname": f"hostmaster.{z}",
            "serial": serial,
            "refresh": 3600,
            "retry": 600,
            "expire": 1209600,
            "minimum": 300,
        },
        "ns": [f"ns1.{z}", f"ns2.{z}"],
        "records": {
            "@": {"MX": f"10 mail.{z}.", "TXT": f"v=spf1 -all; gen={serial}"},
            "ns1": {"A": "192.0.2.53", "AAAA": "2001:db8::53"},
            "ns2": {"A": "198.51.100.53", "AAAA": "2001:db8:1::53"},
            "www": {"A": ["192.0.2.80", "192.0.2.81"], "AAAA": "2001:db8::80"},
            "mail": {"A": "192.0.2.25"},
        },
        "steered": {
            "dl": {"pool": f"p{i % pools:02d}", "answers": 3, "ttl": 60},
            "mirrors": {"pool": f"p{(i + pools // 2) % pools:02d}", "answers": 2, "ttl": 60},
        },
    }


def write_config(
    confdir: Path, zones: int, pools: int, mirrors: int, seed: int = 7, *, dnssec: bool = False
) -> dict[str, int]:
    """The configuration; with dnssec, every zone signed by a CSK of its own."""
    if confdir.exists():
        shutil.rmtree(confdir)
    (confdir / "pools").mkdir(parents=True)
    SIGNING_KEYS.clear()
    if dnssec:
        from geodns.dnssec.keyfiles import generate

        for i in range(zones):
            key = generate(zone_name(i), confdir / "keys", sep=True)
            SIGNING_KEYS[zone_name(i)] = f"keys/{key.name}"
    rnd = random.Random(seed)
    per_pool, extra = divmod(mirrors, pools)
    k = 0
    for p in range(pools):
        n = per_pool + (1 if p < extra else 0)
        (confdir / "pools" / f"p{p:02d}.yaml").write_text(
            yaml.safe_dump(pool_doc(p, n, k, rnd), sort_keys=False)
        )
        k += n
    for i in range(zones):
        serial: int | str = 1000 if zone_name(i) == PROBE_ZONE else "auto"
        (confdir / f"{zone_name(i)}.yaml").write_text(
            yaml.safe_dump(zone_doc(i, pools, serial), sort_keys=False)
        )
    return {"zones": zones, "pools": pools, "mirrors": k}


def bump_probe(confdir: Path, pools: int, serial: int) -> None:
    """Rewrite the probe zone with a new serial (and TXT), atomically."""
    path = confdir / f"{PROBE_ZONE}.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(zone_doc(0, pools, serial), sort_keys=False))
    tmp.replace(path)


def touch_all(confdir: Path, mark: int) -> int:
    """Change the bytes of every YAML file (a trailing comment), so that a reload
    cannot reuse any parsed file: the cost of a reload after a bulk edit."""
    n = 0
    for path in sorted(confdir.rglob("*.yaml")):
        text = path.read_text()
        body = text[: text.find("\n# edit ")] if "\n# edit " in text else text.rstrip("\n")
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(f"{body}\n# edit {mark}\n")
        tmp.replace(path)
        n += 1
    return n


def write_queries(outdir: Path, zones: int) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(zones):
        z = zone_name(i)
        lines += [
            f"dl.{z} A",
            f"dl.{z} AAAA",
            f"mirrors.{z} A",
            f"mirrors.{z} AAAA",
            f"www.{z} A",
            f"{z} MX",
        ]
    rnd = random.Random(3)
    rnd.shuffle(lines)
    path = outdir / "scale-queries.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- GeoIP


_RESERVED_FIRST = {0, 10, 100, 127, 169, 172, 192, 198, 203} | set(range(224, 256))


def geoip_networks(n_extra: int, seed: int = 11) -> list[dict[str, Any]]:
    """The bench clients plus n_extra synthetic /24 (IPv4) and /48 (IPv6) networks."""
    nets = refconf.networks()
    taken = {ipaddress.ip_network(x["network"]) for x in nets}
    rnd = random.Random(seed)
    out = list(nets)
    bound = n_extra * 20 + 1000
    tries = 0
    while len(out) - len(nets) < n_extra and tries < bound:
        tries += 1
        cc, cont, city, lat, lon = CITIES[rnd.randrange(len(CITIES))]
        if rnd.random() < 0.8:
            a = rnd.randrange(1, 224)
            if a in _RESERVED_FIRST:
                continue
            net = ipaddress.ip_network(f"{a}.{rnd.randrange(256)}.{rnd.randrange(256)}.0/24")
        else:
            net = ipaddress.ip_network(
                f"2a{rnd.randrange(16):x}{rnd.randrange(16):x}:{rnd.randrange(65536):x}:{rnd.randrange(65536):x}::/48"
            )
        if net in taken:  # every IPv4 network here is a /24 and IPv6 a /48 or longer elsewhere
            continue
        taken.add(net)
        out.append(
            {
                "network": str(net),
                "asn": rnd.randrange(1, 64000),
                "org": f"AS{cc}{city[:3]}",
                "country": cc,
                "continent": cont,
                "city": city,
                "location": [
                    round(lat + rnd.uniform(-1, 1), 3),
                    round(lon + rnd.uniform(-1, 1), 3),
                ],
            }
        )
    return out


def geoip(cache_root: Path, n_extra: int) -> tuple[Path, Path, str, int]:
    """Write (or reuse from the cache) the ASN and City databases; returns paths, writer, count."""
    nets = geoip_networks(n_extra)
    digest = hashlib.sha256(json.dumps(nets, sort_keys=True).encode()).hexdigest()[:16]
    d = cache_root / f"geoip-{len(nets)}-{digest}"
    asn, city = d / "GeoLite2-ASN.mmdb", d / "GeoLite2-City.mmdb"
    how_file = d / "writer.txt"
    if asn.exists() and city.exists() and how_file.exists():
        return asn, city, how_file.read_text().strip() + " (cached)", len(nets)
    d.mkdir(parents=True, exist_ok=True)
    npath = d / "networks.yaml"
    npath.write_text(yaml.safe_dump(nets, sort_keys=False))
    a, c, how = refconf.write_geoip(d, npath)
    how_file.write_text(how)
    return a, c, how, len(nets)
