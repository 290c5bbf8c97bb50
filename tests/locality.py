"""Issue 12 scenario: ten mirrors on six continents, client networks on seven,
and what a client's *first* address is once a caching resolver reorders the
answer.

The expected answers are computed here from the scenario alone (tiers and
great-circle distances), never by calling geodns' ranking:

- tier: same ASN > same country > same continent > world, over the mirrors
  with a positive weight (weight 0 is standby, never answered while any
  positive-weight mirror is healthy; with `--store none` all are);
- best group: the mirrors of the best tier whose distance is within the band
  of the nearest one, the band being `tie_km` or 1.5 x the nearest distance,
  whichever is wider. Unknown client location: the whole tier.

`check_scenario()` makes sure no mirror sits near a band edge, so both
readings of "band" (d <= max(tie_km, 1.5 d0) and d - d0 <= max(tie_km,
0.5 d0)) and any rounding give the same groups.

Run `python -m tests.locality` (from the repository root, in the venv) to
print the best-tier share of first addresses through a real Unbound.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from .geodata import make_databases
from .resolver import QueryTap, Unbound, ask_many, parse_answer, query_wire
from .util import ServerProcess, free_port, serve_args

ZONE = "example.org"
TIE_KM = 100.0  # geodns' default tie_km; the pools below do not set it
BAND_FACTOR = 1.5
TTL = 300  # longer than a test run: repeated queries are served from Unbound's cache
ANSWERS = 3


@dataclass(frozen=True, slots=True)
class Mirror:
    name: str
    address: str
    asn: int
    country: str
    continent: str
    city: str
    location: tuple[float, float]
    weight: int = 100

    @property
    def network(self) -> str:
        return str(IPv4Network(f"{self.address}/24", strict=False))


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    network: str  # the client's GeoIP network (a /16); clients ask with /24s inside it
    asn: int
    country: str
    continent: str
    city: str | None
    location: tuple[float, float] | None


# Mirror addresses are in 198.18.0.0/15 (RFC 2544 benchmarking): never contacted.
MIRRORS: tuple[Mirror, ...] = (
    # three German mirrors around Frankfurt (within tie_km): weights 1:2:3
    Mirror("de-fra", "198.18.1.1", 64601, "DE", "EU", "Frankfurt", (50.11, 8.68), 100),
    Mirror("de-off", "198.18.2.1", 64602, "DE", "EU", "Offenbach", (50.10, 8.76), 200),
    Mirror("de-da", "198.18.3.1", 64603, "DE", "EU", "Darmstadt", (49.87, 8.65), 300),
    Mirror("us-ash", "198.18.4.1", 64604, "US", "NA", "Ashburn", (39.04, -77.49)),
    Mirror("us-sjc", "198.18.5.1", 64605, "US", "NA", "San Jose", (37.34, -121.89)),
    Mirror("jp-tyo", "198.18.6.1", 64606, "JP", "AS", "Tokyo", (35.68, 139.65)),
    Mirror("br-sao", "198.18.7.1", 64607, "BR", "SA", "São Paulo", (-23.55, -46.63)),
    Mirror("za-jnb", "198.18.8.1", 64608, "ZA", "AF", "Johannesburg", (-26.20, 28.05)),
    Mirror("au-syd", "198.18.9.1", 64609, "AU", "OC", "Sydney", (-33.87, 151.21)),
    # standby in Cape Town: nearest to the Cape Town clients, yet never answered
    Mirror("za-cpt-standby", "198.18.10.1", 64610, "ZA", "AF", "Cape Town", (-33.92, 18.42), 0),
)

# Client networks (100.64.0.0/10, shared address space: only ever inside ECS options).
_C = [
    ("de-berlin", 64801, "DE", "EU", "Berlin", (52.52, 13.40)),
    ("de-hamburg-same-asn", 64601, "DE", "EU", "Hamburg", (53.55, 9.99)),  # de-fra's ASN
    ("de-no-location", 64802, "DE", "EU", None, None),
    ("fr-paris", 64803, "FR", "EU", "Paris", (48.86, 2.35)),
    ("gb-london", 64804, "GB", "EU", "London", (51.51, -0.13)),
    ("ru-moscow", 64805, "RU", "EU", "Moscow", (55.76, 37.62)),
    ("us-new-york", 64806, "US", "NA", "New York", (40.71, -74.01)),
    ("us-new-york-same-asn", 64605, "US", "NA", "New York", (40.71, -74.01)),  # us-sjc's ASN
    ("us-san-francisco", 64807, "US", "NA", "San Francisco", (37.77, -122.42)),
    ("us-honolulu", 64808, "US", "NA", "Honolulu", (21.31, -157.86)),
    ("ca-toronto", 64809, "CA", "NA", "Toronto", (43.65, -79.38)),
    ("mx-mexico-city", 64810, "MX", "NA", "Mexico City", (19.43, -99.13)),
    ("jp-osaka", 64811, "JP", "AS", "Osaka", (34.69, 135.50)),
    ("kr-seoul", 64812, "KR", "AS", "Seoul", (37.57, 126.98)),
    ("in-mumbai", 64813, "IN", "AS", "Mumbai", (19.08, 72.88)),
    ("br-rio", 64814, "BR", "SA", "Rio de Janeiro", (-22.91, -43.17)),
    ("ar-buenos-aires", 64815, "AR", "SA", "Buenos Aires", (-34.60, -58.38)),
    ("pe-lima", 64816, "PE", "SA", "Lima", (-12.05, -77.04)),
    ("za-cape-town", 64817, "ZA", "AF", "Cape Town", (-33.92, 18.42)),
    ("ke-nairobi", 64818, "KE", "AF", "Nairobi", (-1.29, 36.82)),
    ("au-melbourne", 64819, "AU", "OC", "Melbourne", (-37.81, 144.96)),
    ("nz-auckland", 64820, "NZ", "OC", "Auckland", (-36.85, 174.76)),
    ("aq-mcmurdo", 64821, "AQ", "AN", "McMurdo Station", (-77.85, 166.67)),
]
CLIENTS: tuple[Client, ...] = tuple(
    Client(name, f"100.{64 + i}.0.0/16", asn, cc, cont, city, loc)
    for i, (name, asn, cc, cont, city, loc) in enumerate(_C)
)

# Weight clients: one GeoIP /20 per 16 clients, spread over Germany, so that
# Unbound caches one set per /20 (the scope geodns returns) and geodns ranks
# each /20 as its own profile. 625 x 16 = 10,000 distinct client /24s.
WEIGHT_NETWORKS = 625
WEIGHT_ASN = 64890
WEIGHTED = ("de-fra", "de-off", "de-da")


def weight_networks() -> list[tuple[str, tuple[float, float]]]:
    rng = random.Random(12)
    out = []
    for i in range(WEIGHT_NETWORKS):
        net = f"10.{i // 16}.{(i % 16) * 16}.0/20"
        # somewhere in Germany, at least 150 km from Frankfurt: the German
        # mirrors (27 km apart) are then always one group, under any band
        while True:
            loc = (round(rng.uniform(47.6, 54.8), 3), round(rng.uniform(6.2, 14.8), 3))
            if distance_km(loc, MIRRORS[0].location) > 150:
                break
        out.append((net, loc))
    return out


def weight_clients() -> list[str]:
    """The 10,000 client /24s, each asking once."""
    return [
        str(sub) for net, _ in weight_networks() for sub in IPv4Network(net).subnets(new_prefix=24)
    ]


# --------------------------------------------------------------------------- geometry


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine great-circle distance, mean Earth radius."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(h)))


def tier(m: Mirror, c: Client) -> int:
    """0 same ASN, 1 same country, 2 same continent, 3 world."""
    if m.asn == c.asn:
        return 0
    if m.country == c.country:
        return 1
    if m.continent == c.continent:
        return 2
    return 3


def band_limit(nearest: float) -> float:
    """Farthest distance still in the nearest mirror's group."""
    return nearest + max(TIE_KM, (BAND_FACTOR - 1) * nearest)


def best_group(c: Client, among: Sequence[Mirror] | None = None) -> frozenset[str]:
    """Names of the mirrors in the client's best group (see the module doc)."""
    pool = [m for m in (MIRRORS if among is None else among) if m.weight > 0]
    if not pool:
        return frozenset()
    t = min(tier(m, c) for m in pool)
    same = [m for m in pool if tier(m, c) == t]
    if c.location is None:
        return frozenset(m.name for m in same)
    loc = c.location
    nearest = min(distance_km(loc, m.location) for m in same)
    return frozenset(m.name for m in same if distance_km(loc, m.location) <= band_limit(nearest))


def next_group(c: Client) -> frozenset[str]:
    """The best group of what is left once the best group is taken out."""
    best = best_group(c)
    return best_group(c, [m for m in MIRRORS if m.name not in best])


def edge_problems(c: Client, among: Sequence[Mirror] | None = None) -> list[str]:
    """Mirrors of the client's best tier (among `among`) within 5% of an
    edge of the band, under either reading of the band: where the expected
    group would hinge on the reading or on rounding."""
    if c.location is None:
        return []
    pool = [m for m in (MIRRORS if among is None else among) if m.weight > 0]
    t = min(tier(m, c) for m in pool)
    dists = sorted(distance_km(c.location, m.location) for m in pool if tier(m, c) == t)
    d0 = dists[0]
    edges = (d0 + max(TIE_KM, (BAND_FACTOR - 1) * d0), max(TIE_KM, BAND_FACTOR * d0))
    return [
        f"{c.name}: a mirror at {d:.0f} km, band edge {edge:.0f} km"
        for d in dists[1:]
        for edge in edges
        if abs(d - edge) < 0.05 * edge
    ]


def next_group_is_clear(c: Client) -> bool:
    """No mirror near the band edge of the next group either."""
    best = best_group(c)
    return not edge_problems(c, [m for m in MIRRORS if m.name not in best])


def check_scenario() -> list[str]:
    """Every client's best group is clear of band edges."""
    return [p for c in CLIENTS for p in edge_problems(c)]


BY_ADDRESS = {m.address: m for m in MIRRORS}
BY_NAME = {m.name: m for m in MIRRORS}
CLIENT_BY_NAME = {c.name: c for c in CLIENTS}


# --------------------------------------------------------------------------- files


def geoip_entries() -> list[dict[str, Any]]:
    """Networks for tests/geodata.make_databases (the project's mmdb writer)."""
    out: list[dict[str, Any]] = []
    for m in MIRRORS:
        out.append(
            {
                "network": m.network,
                "asn": m.asn,
                "country": m.country,
                "continent": m.continent,
                "city": m.city,
                "location": list(m.location),
            }
        )
    for c in CLIENTS:
        e: dict[str, Any] = {
            "network": c.network,
            "asn": c.asn,
            "country": c.country,
            "continent": c.continent,
        }
        if c.city is not None:
            e["city"] = c.city
        if c.location is not None:
            e["location"] = list(c.location)
        out.append(e)
    for net, loc in weight_networks():
        out.append(
            {
                "network": net,
                "asn": WEIGHT_ASN,
                "country": "DE",
                "continent": "EU",
                "location": list(loc),
            }
        )
    return out


def _pool_yaml(name: str, extra: str = "") -> str:
    lines = [f"pool: {name}", *([extra] if extra else []), "mirrors:"]
    for m in MIRRORS:
        lines.append(
            f'  - {{name: {m.name}, url: "https://{m.name}.mirrors.example/",'
            f" ipv4: [{m.address}], weight: {m.weight}}}"
        )
    return "\n".join(lines) + "\n"


def write_config(directory: Path, *, padded: bool = False) -> Path:
    """A config dir: zone example.org with the steered names, pool `world`
    (and, with `padded`, pool `world-padded` with min_answers: 2 for `pad`)."""
    (directory / "pools").mkdir(parents=True, exist_ok=True)
    steered = [
        f"  dl: {{pool: world, answers: {ANSWERS}, ttl: {TTL}}}",
        f"  dl2: {{pool: world, answers: 2, ttl: {TTL}}}",
        f"  probe: {{pool: world, answers: {ANSWERS}, ttl: {TTL}}}",
    ]
    if padded:
        steered.append(f"  pad: {{pool: world-padded, answers: {ANSWERS}, ttl: {TTL}}}")
    (directory / f"{ZONE}.yaml").write_text(
        f"zone: {ZONE}\n"
        "ttl: 3600\n"
        "soa: {mname: ns1.example.org, rname: hostmaster.example.org, serial: 2026010100,"
        " refresh: 3600, retry: 600, expire: 1209600, minimum: 300}\n"
        "ns: [ns1.example.org]\n"
        "records:\n"
        "  ns1: {A: 192.0.2.53}\n"
        "steered:\n" + "\n".join(steered) + "\n"
    )
    (directory / "pools" / "world.yaml").write_text(_pool_yaml("world"))
    if padded:
        (directory / "pools" / "world-padded.yaml").write_text(
            _pool_yaml("world-padded", "min_answers: 2")
        )
    return directory


# --------------------------------------------------------------------------- running


@dataclass
class Stack:
    """geodns → QueryTap → Unbound, all on 127.0.0.1."""

    geodns: ServerProcess
    tap: QueryTap
    unbound: Unbound
    workdir: Path


@contextlib.contextmanager
def running(
    workdir: Path, *, padded: bool = False, geoip: tuple[Path, Path] | None = None
) -> Iterator[Stack]:
    """Write the scenario (GeoIP databases unless given, config), start geodns
    with no health store (every mirror healthy), the tap and Unbound."""
    workdir.mkdir(parents=True, exist_ok=True)
    if geoip is None:
        geoip = make_databases(workdir / "geoip", geoip_entries())
    config = write_config(workdir / ("config-padded" if padded else "config"), padded=padded)
    port = free_port()
    args = serve_args(config, port, geoip, workdir / "state")
    with (
        ServerProcess(args, port, workdir / "geodns.log") as geodns,
        QueryTap(("127.0.0.1", port)) as tap,
        Unbound(workdir / "unbound", zone=ZONE, upstream=tap.addr) as unbound,
    ):
        yield Stack(geodns, tap, unbound, workdir)


def client_subnets(c: Client, count: int, rng: random.Random) -> list[str]:
    """`count` distinct /24s inside the client's /16."""
    net = IPv4Network(c.network)
    picks = rng.sample(range(256), count)
    base = int(net.network_address)
    return [str(IPv4Network((base + (k << 8), 24))) for k in picks]


@dataclass
class ShareReport:
    """First addresses of answers through the resolver, per client network."""

    name: str
    per_client: dict[str, Counter[str]] = field(default_factory=dict)
    unanswered: int = 0

    def in_best(self, client: str) -> tuple[int, int]:
        best = best_group(CLIENT_BY_NAME[client])
        firsts = self.per_client[client]
        good = sum(
            n for addr, n in firsts.items() if addr in BY_ADDRESS and BY_ADDRESS[addr].name in best
        )
        return good, sum(firsts.values())

    @property
    def share(self) -> float:
        good = total = 0
        for client in self.per_client:
            g, t = self.in_best(client)
            good, total = good + g, total + t
        return good / total if total else 0.0

    def text(self) -> str:
        lines = [f"best-tier share of first addresses through Unbound ({self.name}):"]
        for client, firsts in self.per_client.items():
            g, t = self.in_best(client)
            c = CLIENT_BY_NAME[client]
            got = ", ".join(
                f"{BY_ADDRESS[a].name if a in BY_ADDRESS else a} {n}"
                for a, n in firsts.most_common()
            )
            lines.append(
                f"  {client:22} best {{{', '.join(sorted(best_group(c)))}}}: "
                f"{g}/{t} = {g / t if t else 0:.0%}   first: {got}"
            )
        total = sum(self.in_best(c)[1] for c in self.per_client)
        lines.append(
            f"  overall {self.share:.1%} of {total} answers"
            + (f" ({self.unanswered} unanswered)" if self.unanswered else "")
        )
        return "\n".join(lines)


def measure_share(
    resolver: tuple[str, int],
    *,
    name: str = f"dl.{ZONE}",
    subnets: int = 4,
    repeats: int = 20,
    seed: int = 1,
) -> ShareReport:
    """Ask through the resolver for every client network: `subnets` /24s,
    each `repeats` times, in random order; tally the first address."""
    rng = random.Random(seed)
    jobs = [
        (c.name, sub)
        for c in CLIENTS
        for sub in client_subnets(c, subnets, rng)
        for _ in range(repeats)
    ]
    rng.shuffle(jobs)
    raw = ask_many(resolver, [query_wire(name, "A", sub) for _, sub in jobs], seed=seed)
    report = ShareReport(name, {c.name: Counter() for c in CLIENTS})
    for (client, _), data in zip(jobs, raw, strict=True):
        got = parse_answer(data).addresses if data is not None else ()
        if not got:
            report.unanswered += 1
            continue
        report.per_client[client][got[0]] += 1
    return report


def main(argv: Sequence[str] | None = None) -> int:
    problems = check_scenario()
    for p in problems:
        print(f"scenario: {p}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="geodns-locality-") as tmp, running(Path(tmp)) as st:
        print(measure_share(st.unbound.addr).text())
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
