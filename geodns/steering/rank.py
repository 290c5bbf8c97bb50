"""Ranking: which healthy mirror addresses answer a client, in which order.

Plain data and functions, no I/O. The server builds `Candidate`s per pool and
family when config or health changes, calls `rank()` per client GeoInfo (cache
it: GeoInfo is hashable) and `answer_variants()` per ranking, then hands out
one variant per query, cycling.

Order (docs/architecture.md "Ranking", the Pakfire order): tier same ASN (0) > same
country (1) > same continent (2) > world (3); a client field that is unknown
matches nothing. Inside a tier: great-circle distance (unknown after known),
then weight (higher first), then name and address for determinism.

Groups: the nearest remaining candidate heads a group, and every candidate of
its tier within the *band* joins it: distance <= max(head + tie_km,
band_factor x head) (MirrorBits' 1.5x closest-distance range, widened to
`tie_km` for near clients). With no distance (either side's location unknown)
the tier's unknown-distance candidates form one group.

Slow addresses (the checker's throughput probe: serving, but under the
pool's `min_mbps`) rank one group behind (`demote_slow`): a slow address
counts as part of the next group, and there it is answered only when that
group has no address that is not slow. So a fast mirror one group farther
away wins over a slow near one, a slow one still beats anything two groups
away, and it pads (`min_answers`) before anything farther.

The answer set is the best group only (`answer_variants`): caching resolvers
reorder every RRset (Unbound's rrset-roundrobin, Knot Resolver's
reorder-rrset), so any farther address in the set is the first one some
clients try. Padding from the next groups is the operator's opt-in
(`min_answers`). Inside the group, load follows weight through which *sets*
are handed out: a set holds at most W/w_max members (W the group's total
weight, w_max its largest), so that a member is in a share k*w/W of the sets
and, after any uniform shuffle, first in a share w/W of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from geodns.model import Mirror, Pool
from geodns.steering.geo import UNKNOWN, GeoDB, GeoInfo, continent_of, distance_km

TIER_NAMES = ("asn", "country", "continent", "world")
TIER_ASN, TIER_COUNTRY, TIER_CONTINENT, TIER_WORLD = range(4)


@dataclass(frozen=True, slots=True)
class Candidate:
    pool: str
    mirror: str
    address: IPv4Address | IPv6Address
    weight: int  # the mirror's, as configured (shown by explain)
    geo: GeoInfo  # the address's effective location (GeoIP + YAML overrides)
    # the weight this address ranks and shares load with: the mirror's weight
    # split over its addresses of the family (address_shares); None = weight
    share: int | None = None
    slow: bool = False  # the checker measured it slow: ranks one group behind

    @property
    def rank_weight(self) -> int:
        return self.weight if self.share is None else self.share


@dataclass(frozen=True, slots=True)
class Ranked:
    candidate: Candidate
    tier: int  # index into TIER_NAMES
    distance_km: float | None  # None when either location is unknown


# --------------------------------------------------------------------------- candidates


def mirror_geo(mirror: Mirror, address: IPv4Address | IPv6Address, db: GeoDB | None) -> GeoInfo:
    """GeoIP of a mirror address with the operator's YAML overrides on top.

    A country override without a continent takes the continent of that
    country, so an override never leaves a contradictory GeoIP continent.
    """
    geo = db.lookup(address) if db is not None else UNKNOWN
    continent = mirror.continent
    if continent is None and mirror.country is not None:
        continent = continent_of(mirror.country)
    if all(v is None for v in (mirror.asn, mirror.country, continent, mirror.location)):
        return geo
    return GeoInfo(
        asn=mirror.asn if mirror.asn is not None else geo.asn,
        country=mirror.country if mirror.country is not None else geo.country,
        continent=continent if continent is not None else geo.continent,
        location=mirror.location if mirror.location is not None else geo.location,
        prefix=geo.prefix,
    )


def build_candidates(
    pool: Pool,
    family: int,
    db: GeoDB | None,
    is_up: Callable[[str, IPv4Address | IPv6Address], bool] | None = None,
) -> list[Candidate]:
    """Candidates of one address family (4 → A, 6 → AAAA) of a pool.

    Only enabled mirrors; `is_up(mirror_name, address)` filters by health per
    address, so a mirror whose IPv6 is down still serves A queries. A mirror
    with several addresses of a family gets one candidate per address, and
    its weight is split between them (`address_shares`).
    """
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    result = []
    shares = address_shares(pool, family)
    for mirror in pool.mirrors:
        if not mirror.enabled:
            continue
        addresses: Iterable[IPv4Address | IPv6Address] = mirror.ipv4 if family == 4 else mirror.ipv6
        for address in addresses:
            if is_up is not None and not is_up(mirror.name, address):
                continue
            geo = mirror_geo(mirror, address, db)
            result.append(
                Candidate(pool.name, mirror.name, address, mirror.weight, geo, shares[mirror.name])
            )
    return result


def address_shares(pool: Pool, family: int) -> dict[str, int]:
    """Each mirror's weight split evenly over its configured addresses of the
    family, in whole numbers on one scale for the pool: `weight:` is the
    mirror's share (docs/architecture.md), so a mirror with two IPv4 addresses draws as
    many A answers as an equally weighted one with a single address. Split
    over configured, not healthy, addresses: one server of a pair being down
    halves that mirror's capacity, not its neighbours'."""
    counts = {m.name: len(m.ipv4 if family == 4 else m.ipv6) for m in pool.mirrors}
    scale = math.lcm(*(c for c in counts.values() if c)) if any(counts.values()) else 1
    return {
        m.name: m.weight * (scale // counts[m.name]) if counts[m.name] else 0 for m in pool.mirrors
    }


# --------------------------------------------------------------------------- ranking


def _tier(mirror: GeoInfo, client: GeoInfo) -> int:
    if client.asn is not None and mirror.asn == client.asn:
        return TIER_ASN
    if client.country is not None and mirror.country == client.country:
        return TIER_COUNTRY
    if client.continent is not None and mirror.continent == client.continent:
        return TIER_CONTINENT
    return TIER_WORLD


def _sort_key(r: Ranked) -> tuple[int, bool, float, int, str, int, int]:
    c = r.candidate
    known = r.distance_km is not None
    return (
        r.tier,
        not known,
        r.distance_km if r.distance_km is not None else 0.0,
        -c.rank_weight,
        c.mirror,
        c.address.version,
        int(c.address),
    )


def band_limit(head_km: float, tie_km: float, band_factor: float) -> float:
    """The farthest distance that is still as near as `head_km` (the nearest)."""
    return max(head_km + tie_km, band_factor * head_km)


def _group(ranked: list[Ranked], tie_km: float, band_factor: float) -> list[tuple[Ranked, ...]]:
    groups: list[tuple[Ranked, ...]] = []
    current: list[Ranked] = []
    limit = 0.0
    for r in ranked:
        if current:
            head = current[0]
            same = head.tier == r.tier and (
                (head.distance_km is None and r.distance_km is None)
                or (
                    head.distance_km is not None
                    and r.distance_km is not None
                    and r.distance_km <= limit
                )
            )
            if not same:
                groups.append(tuple(current))
                current = []
        if not current and r.distance_km is not None:
            limit = band_limit(r.distance_km, tie_km, band_factor)
        current.append(r)
    if current:
        groups.append(tuple(current))
    return groups


def rank(
    candidates: Iterable[Candidate],
    client: GeoInfo,
    *,
    tie_km: float = 100.0,
    band_factor: float = 1.5,
) -> list[tuple[Ranked, ...]]:
    """Groups of equally near candidates, best group first (see the module doc).

    Standby (weight 0) is the caller's business: `steer` ranks positive-weight
    candidates, and standbys only when none of those is healthy.
    """
    loc = client.location
    ranked = []
    for c in candidates:
        d = distance_km(loc, c.geo.location) if loc is not None and c.geo.location else None
        ranked.append(Ranked(c, _tier(c.geo, client), d))
    ranked.sort(key=_sort_key)
    groups = _group(ranked, tie_km, band_factor)
    if any(r.candidate.slow for r in ranked):
        groups = demote_slow(groups)
    return groups


def demote_slow(groups: Sequence[tuple[Ranked, ...]]) -> list[tuple[Ranked, ...]]:
    """Each group's slow members move one group back: right after the next
    group's members that are not slow, as a group of their own (merged into
    it they would share the answers by weight with the fast ones):

        [A slow], [C]        → [C], [A]
        [A slow, B], [C]     → [B], [C], [A]
        [A slow], [D slow]   → [A], [D]
        [A slow, B]          → [B], [A]
    """
    out: list[tuple[Ranked, ...]] = []
    behind: tuple[Ranked, ...] = ()  # the previous group's slow members
    for group in groups:
        fast = tuple(r for r in group if not r.candidate.slow)
        slow = tuple(r for r in group if r.candidate.slow)
        if fast:
            out.append(fast)
        if behind:
            out.append(behind)
        behind = slow
    if behind:
        out.append(behind)
    return out


# --------------------------------------------------------------------------- load sharing


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _stride(n: int) -> int:
    """A step coprime to n near n/phi: visiting k*step mod n spreads any
    prefix of the cycle evenly (so a truncated cycle stays close to fair)."""
    if n <= 2:
        return 1
    step = max(1, round(n * 0.6180339887))
    while math.gcd(step, n) != 1:
        step += 1
    return step


def _swrr(weights: Sequence[int], count: int) -> list[int]:
    """Smooth weighted round-robin (nginx): indexes, exact over sum/gcd picks."""
    total = sum(weights)
    current = [0] * len(weights)
    picks = []
    for _ in range(count):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        picks.append(best)
    return picks


class _GroupSchedule:
    """Which members of one group are answered, and in which order, per variant.

    `slots` of the group's members go into each answer. Target per member i
    with weight w_i (W = group total): included in a share min(1, slots*w_i/W)
    of the answers (members whose share would exceed 1 are "always in" and the
    remaining slots are shared by the rest, iterated), and leading the group in
    a share w_i/W.

    Construction, exact over one period:
    - leads: smooth WRR over the always-in members plus one virtual member
      standing for all the sampled ones (weight = their total);
    - inclusion of the sampled members: systematic sampling. Member u gets a
      segment of c_u = r*w_u*L/W_u unit cells on a line of r*L cells (r free
      slots, L the smallest length making every c_u whole); configuration k
      (0 <= k < L) takes the members at cells k, k+L, ..., k+(r-1)L. No
      segment is longer than L, so no member is taken twice, and over the L
      configurations member u is taken exactly c_u times;
    - when the virtual member leads, the lead is the member at one of those
      r*L cells, each cell used equally often, so sampled members lead in
      proportion to c_u, i.e. to their weight.
    Order inside the group: the lead, then the other included members in the
    group's rank order, wrapping (round-robin).
    """

    def __init__(self, members: Sequence[Ranked], slots: int) -> None:
        self.members = tuple(members)
        m = len(self.members)
        weights = [max(0, r.candidate.rank_weight) for r in self.members]
        if not any(weights):
            weights = [1] * m  # a group of standbys shares equally
        slots = min(slots, m)

        # Members whose proportional share reaches a whole slot are always in.
        always: list[int] = []
        sampled = list(range(m))
        free = slots
        while free > 0 and sampled:
            eff = [weights[i] for i in sampled]
            if not any(eff):
                eff = [1] * len(eff)  # only zero weights left: share what remains equally
            total = sum(eff)
            full = [i for i, w in zip(sampled, eff, strict=True) if free * w >= total]
            if not full:
                break
            always += full
            sampled = [i for i in sampled if i not in full]
            free = slots - len(always)
        if free <= 0:
            sampled = []
        self.always = sorted(always)

        # Systematic sampling layout for the rest.
        self.free = free
        self.cells: list[int] = []  # cell → member index, length free*L
        self.configs = 1  # L
        if sampled:
            eff = [weights[i] for i in sampled]
            if not any(eff):
                eff = [1] * len(eff)
            total = sum(eff)
            g = total
            for w in eff:
                g = math.gcd(g, free * w)
            self.configs = total // g
            for i, w in zip(sampled, eff, strict=True):
                self.cells += [i] * (free * w * self.configs // total)
        self.sampled = sampled

        # Lead items: always-in members, then the virtual "sampled" member.
        self.lead_items = list(self.always)
        lead_weights = [weights[i] for i in self.always]
        virtual = sum(weights[i] for i in sampled)
        if sampled and (virtual or not any(lead_weights)):
            self.lead_items.append(-1)
            lead_weights.append(virtual or 1)
        if not any(lead_weights):
            lead_weights = [1] * len(lead_weights)
        self.lead_weights = lead_weights

        # Period: whole SWRR cycles until both sampling streams wrap evenly.
        total = sum(lead_weights)
        g = 0
        for w in lead_weights:
            g = math.gcd(g, w)
        swrr = total // g
        period = swrr
        if sampled:
            n_cells = len(self.cells)
            per_virtual = lead_weights[-1] // g if self.lead_items[-1] == -1 else 0
            per_other = swrr - per_virtual
            rounds = 1
            if per_virtual:
                rounds = _lcm(rounds, n_cells // math.gcd(per_virtual, n_cells))
            if per_other:
                rounds = _lcm(rounds, self.configs // math.gcd(per_other, self.configs))
            period = swrr * rounds
        self.period = period

    def take(self, count: int) -> list[tuple[Ranked, ...]]:
        """The first `count` variants of the (periodic) schedule."""
        leads = _swrr(self.lead_weights, count)
        n_cells = len(self.cells)
        cell_step, config_step = _stride(n_cells or 1), _stride(self.configs)
        virtual_n = other_n = 0
        m = len(self.members)
        out = []
        for pick in leads:
            item = self.lead_items[pick]
            if item == -1:
                cell = (virtual_n * cell_step) % n_cells
                virtual_n += 1
                k = cell % self.configs
                lead = self.cells[cell]
            else:
                k = (other_n * config_step) % self.configs
                other_n += 1
                lead = item
            included = set(self.always)
            if self.sampled:
                included.update(self.cells[k + j * self.configs] for j in range(self.free))
            # rank order rotated to start at the lead (round-robin)
            start = lead
            ordered = sorted(included, key=lambda i: (i - start) % m)
            out.append(tuple(self.members[i] for i in ordered))
        return out


def set_size(group: Sequence[Ranked], answers: int) -> int:
    """How many of a group's members one answer holds: at most `answers`, and
    at most W/w_max, so that no member needs more than every set to get its
    weight's share of first places after a resolver shuffles the set."""
    weights = [max(0, r.candidate.rank_weight) for r in group]
    if not any(weights):
        return max(1, min(answers, len(group)))  # standbys share equally
    return max(1, min(answers, len(group), sum(weights) // max(weights)))


def answer_variants(
    groups: Sequence[tuple[Ranked, ...]],
    answers: int,
    *,
    min_answers: int = 1,
    max_variants: int = 256,
) -> list[tuple[Ranked, ...]]:
    """Answers to hand out in turn, one per query, cycling through the list.

    Each variant is a set from the best group (`set_size` of its members,
    chosen by weight), in rank order rotated round-robin with the lead
    rotating by weight. Fewer than `answers` addresses is normal; a farther
    group is never added to fill slots. Only when a variant would hold fewer
    than `min_answers` (capped at `answers`) is it padded: first with more of
    the best group, then from the next groups in rank order.

    Proportions are exact over the returned cycle: among the group's members
    a weight-100 mirror is in twice as many sets as a weight-50 one and leads
    twice as often. The cycle is the lcm of the groups' periods; when that
    exceeds `max_variants`, the first `max_variants` variants are returned
    and the proportions are close rather than exact.
    """
    if answers < 1:
        raise ValueError("answers must be >= 1")
    if min_answers < 1:
        raise ValueError("min_answers must be >= 1")
    if max_variants < 1:
        raise ValueError("max_variants must be >= 1")
    groups = [g for g in groups if g]
    if not groups:
        return [()]
    first = set_size(groups[0], answers)
    want = max(first, min(min_answers, answers))
    schedules: list[_GroupSchedule] = []
    left = want
    for group in groups:
        if left <= 0:
            break
        schedules.append(_GroupSchedule(group, min(left, len(group))))
        left -= len(group)
    cycle = 1
    for s in schedules:
        cycle = min(_lcm(cycle, s.period), max_variants)
    parts = [s.take(cycle) for s in schedules]
    return [tuple(r for part in parts for r in part[t]) for t in range(cycle)]


# --------------------------------------------------------------------------- explain


@dataclass(frozen=True, slots=True)
class ExplainRow:
    group: int  # 0 = best
    tier: str
    mirror: str
    address: IPv4Address | IPv6Address
    weight: int
    distance_km: float | None
    answered: float  # share of variants that contain this address
    leading: float  # share of variants in which it comes first
    slow: bool = False  # ranked one group behind (demote_slow)


def explain_rows(
    groups: Sequence[tuple[Ranked, ...]], variants: Sequence[tuple[Ranked, ...]]
) -> list[ExplainRow]:
    """One row per ranked candidate, best first, for `geodns explain`."""
    n = len(variants) or 1
    shown: dict[Candidate, int] = {}
    led: dict[Candidate, int] = {}
    for v in variants:
        for r in v:
            shown[r.candidate] = shown.get(r.candidate, 0) + 1
        if v:
            led[v[0].candidate] = led.get(v[0].candidate, 0) + 1
    return [
        ExplainRow(
            group=g,
            tier=TIER_NAMES[r.tier],
            mirror=r.candidate.mirror,
            address=r.candidate.address,
            weight=r.candidate.weight,
            distance_km=r.distance_km,
            answered=shown.get(r.candidate, 0) / n,
            leading=led.get(r.candidate, 0) / n,
            slow=r.candidate.slow,
        )
        for g, group in enumerate(groups)
        for r in group
    ]
