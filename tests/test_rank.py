"""Ranking and load sharing, over a generated GeoIP database."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geodns.model import Mirror, Pool
from geodns.steering.geo import GeoDB, GeoInfo
from geodns.steering.rank import (
    TIER_NAMES,
    Candidate,
    Ranked,
    address_shares,
    answer_variants,
    band_limit,
    build_candidates,
    explain_rows,
    mirror_geo,
    rank,
    set_size,
)
from tests.geodata import WORLD, make_databases

ip = ipaddress.ip_address


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> GeoDB:
    asn, city = make_databases(tmp_path_factory.mktemp("world"), WORLD)
    return GeoDB(asn, city)


def _mirror(name: str, v4: str, v6: str | None = None, weight: int = 100, **kw: object) -> Mirror:
    return Mirror(
        name=name,
        url=f"https://{name}.example.net/",
        ipv4=(ipaddress.IPv4Address(v4),),
        ipv6=(ipaddress.IPv6Address(v6),) if v6 else (),
        weight=weight,
        **kw,  # type: ignore[arg-type]
    )


POOL = Pool(
    name="dist",
    mirrors=(
        _mirror("fra", "10.1.0.10", "2001:db8:a1::10"),
        _mirror("muc", "10.2.0.10"),
        _mirror("par", "10.3.0.10"),
        _mirror("ash", "10.4.0.10", "2001:db8:a4::10"),
        _mirror("tyo", "10.5.0.10", "2001:db8:a5::10"),
        _mirror("sao", "10.6.0.10"),
        _mirror("nue", "10.7.0.10"),
    ),
)


def _names(groups: Sequence[tuple[Ranked, ...]]) -> list[tuple[str, ...]]:
    return [tuple(r.candidate.mirror for r in g) for g in groups]


def _tiers(groups: Sequence[tuple[Ranked, ...]]) -> list[str]:
    return [TIER_NAMES[g[0].tier] for g in groups]


# --------------------------------------------------------------------------- ranking


@pytest.mark.parametrize(
    "client, groups, tiers",
    [
        pytest.param(
            "192.0.2.5",  # AS65001, DE, Berlin: same AS as fra and nue
            [("nue", "fra"), ("muc",), ("par",), ("ash", "tyo"), ("sao",)],
            ["asn", "country", "continent", "world", "world"],
            id="same-asn",
        ),
        pytest.param(
            # AS65100, DE, Berlin: nue 378 km, fra 423, muc 504 (within 1.5 x 378);
            # world: ash 6727, tyo 8915 (<= 10090), sao 10252 (beyond)
            "198.51.100.5",
            [("nue", "fra", "muc"), ("par",), ("ash", "tyo"), ("sao",)],
            ["country", "continent", "world", "world"],
            id="same-country-by-distance",
        ),
        pytest.param(
            "203.0.113.5",  # GB London: EU mirrors by distance, then the world
            [("par",), ("fra", "nue", "muc"), ("ash",), ("sao", "tyo")],
            ["continent", "continent", "world", "world"],
            id="same-continent",
        ),
        pytest.param(
            "100.64.0.5",  # US New York
            [("ash",), ("par", "fra", "nue", "muc", "sao"), ("tyo",)],
            ["country", "world", "world"],
            id="us",
        ),
        pytest.param(
            "100.64.1.5",  # JP Osaka
            [("tyo",), ("nue", "fra", "muc", "par", "ash"), ("sao",)],
            ["country", "world", "world"],
            id="jp",
        ),
        pytest.param(
            "100.64.2.5",  # AU Sydney: no mirror shares anything, distance decides
            [("tyo",), ("sao", "ash", "muc", "nue", "fra", "par")],
            ["world"] * 2,
            id="world-by-distance",
        ),
        pytest.param(
            "100.64.3.5",  # DE without a location: unknown distances group per tier
            [("fra", "muc", "nue"), ("par",), ("ash", "sao", "tyo")],
            ["country", "continent", "world"],
            id="no-client-location",
        ),
        pytest.param(
            "8.8.8.8",  # in no database: one group, every mirror, in name order
            [("ash", "fra", "muc", "nue", "par", "sao", "tyo")],
            ["world"],
            id="unknown-client",
        ),
    ],
)
def test_rank_tiers_and_distance(
    db: GeoDB, client: str, groups: list[tuple[str, ...]], tiers: list[str]
) -> None:
    ranked = rank(build_candidates(POOL, 4, db), db.lookup(ip(client)))
    assert _names(ranked) == groups
    assert _tiers(ranked) == tiers
    for group in ranked:  # every member of a group shares the tier
        assert len({r.tier for r in group}) == 1


def test_rank_ipv6_client_and_family(db: GeoDB) -> None:
    client = db.lookup(ip("2001:db8:c1::5"))  # AS65100, DE, Berlin
    assert client.prefix == 48
    cands = build_candidates(POOL, 6, db)
    # only mirrors with an IPv6 address take part in AAAA answers
    assert {c.mirror for c in cands} == {"fra", "ash", "tyo"}
    assert all(c.address.version == 6 for c in cands)
    ranked = rank(cands, client)
    assert _names(ranked) == [("fra",), ("ash", "tyo")]
    assert _tiers(ranked) == ["country", "world"]
    assert ranked[0][0].distance_km == pytest.approx(423, abs=2)


def test_ipv4_only_mirrors_never_in_ipv6_candidates() -> None:
    only4 = Pool("p", (_mirror("a", "10.1.0.1"), _mirror("b", "10.1.0.2")))
    assert build_candidates(only4, 6, None) == []
    assert len(build_candidates(only4, 4, None)) == 2
    with pytest.raises(ValueError):
        build_candidates(only4, 5, None)


def test_build_candidates_health_and_enabled(db: GeoDB) -> None:
    pool = Pool(
        "p",
        (
            _mirror("a", "10.1.0.1", "2001:db8:a1::1"),
            _mirror("b", "10.2.0.1", enabled=False),
        ),
    )
    down = {("a", ip("2001:db8:a1::1"))}

    def is_up(mirror: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return (mirror, address) not in down

    # a mirror whose IPv6 is down still serves A queries
    assert [(c.mirror, str(c.address)) for c in build_candidates(pool, 4, db, is_up)] == [
        ("a", "10.1.0.1")
    ]
    assert build_candidates(pool, 6, db, is_up) == []


def test_mirror_geo_overrides(db: GeoDB) -> None:
    plain = _mirror("x", "10.1.0.10")
    assert mirror_geo(plain, plain.ipv4[0], db) == GeoInfo(65001, "DE", "EU", (50.11, 8.68), 16)
    moved = _mirror("x", "10.1.0.10", country="JP", location=(35.0, 139.0), asn=1)
    # the continent follows the overridden country, not the GeoIP one
    assert mirror_geo(moved, moved.ipv4[0], db) == GeoInfo(1, "JP", "AS", (35.0, 139.0), 16)
    explicit = _mirror("x", "8.8.8.8", continent="OC")
    assert mirror_geo(explicit, explicit.ipv4[0], db) == GeoInfo(None, None, "OC", None, 7)
    assert mirror_geo(explicit, explicit.ipv4[0], None) == GeoInfo(None, None, "OC", None, 0)


def test_unknown_field_never_matches() -> None:
    unknown_mirror = _cand("m", 100, geo=GeoInfo(None, None, None, None, 0))
    client = GeoInfo(None, None, None, None, 0)
    [[r]] = rank([unknown_mirror], client)
    assert (r.tier, r.distance_km) == (3, None)


def test_order_inside_a_group_is_distance_then_weight_then_name() -> None:
    here = (50.0, 8.0)
    near = (50.1, 8.0)  # ~11 km
    cands = [
        _cand("d", 50, loc=here),
        _cand("c", 100, loc=here),
        _cand("a", 50, loc=here),
        _cand("b", 100, loc=near),
    ]
    [group] = rank(cands, GeoInfo(None, None, None, here, 0))
    assert [r.candidate.mirror for r in group] == ["c", "a", "d", "b"]


# --------------------------------------------------------------------------- load sharing


def _cand(
    name: str,
    weight: int,
    *,
    loc: tuple[float, float] = (50.0, 8.0),
    geo: GeoInfo | None = None,
    n: int = 0,
) -> Candidate:
    key = int.from_bytes(name.encode()[:3].ljust(3, b"\0"), "big")
    address = ipaddress.IPv4Address((key << 4) + n)
    return Candidate("p", name, address, weight, geo or GeoInfo(1, "DE", "EU", loc, 24))


CLIENT = GeoInfo(1, "DE", "EU", (50.0, 8.0), 24)


def _serve(
    cands: list[Candidate], answers: int, queries: int = 6000
) -> tuple[Counter[str], Counter[str], list[tuple[Ranked, ...]]]:
    """Cycle through the variants as the server does: one variant per query."""
    groups = rank(cands, CLIENT)
    variants = answer_variants(groups, answers)
    shown: Counter[str] = Counter()
    lead: Counter[str] = Counter()
    for q in range(queries):
        v = variants[q % len(variants)]
        assert len(v) == set_size(groups[0], answers)
        assert len({r.candidate for r in v}) == len(v)  # no duplicates
        shown.update(r.candidate.mirror for r in v)
        lead[v[0].candidate.mirror] += 1
    return shown, lead, variants


def _ratio(c: Counter[str], a: str, b: str) -> float:
    return c[a] / c[b]


def test_weights_two_to_one_answers_1() -> None:
    shown, lead, variants = _serve([_cand("a", 100), _cand("b", 50)], answers=1)
    assert _ratio(lead, "a", "b") == pytest.approx(2.0, rel=0.05)
    assert len(variants) == 3  # exact over a 3-query cycle: a b a
    assert Counter(v[0].candidate.mirror for v in variants) == {"a": 2, "b": 1}


def test_unequal_weights_shrink_the_set_so_a_shuffle_keeps_them() -> None:
    """A resolver shuffles each set (rrset-roundrobin): {a, b} in every answer
    would give b half of the clients. Sets of one keep 2:1."""
    shown, lead, variants = _serve([_cand("a", 100), _cand("b", 50)], answers=2)
    assert all(len(v) == 1 for v in variants)
    assert _ratio(lead, "a", "b") == pytest.approx(2.0, rel=0.05)
    # equal weights keep every slot, order rotating
    _shown, _lead, variants = _serve([_cand("a", 100), _cand("b", 100)], answers=2)
    assert {tuple(r.candidate.mirror for r in v) for v in variants} == {("a", "b"), ("b", "a")}


def test_three_mirrors_answers_1() -> None:
    shown, lead, _ = _serve([_cand("a", 100), _cand("b", 100), _cand("c", 50)], answers=1)
    assert lead["a"] / 6000 == pytest.approx(0.4, rel=0.05)
    assert lead["b"] / 6000 == pytest.approx(0.4, rel=0.05)
    assert lead["c"] / 6000 == pytest.approx(0.2, rel=0.05)


def test_three_mirrors_answers_2() -> None:
    shown, lead, variants = _serve([_cand("a", 100), _cand("b", 100), _cand("c", 50)], answers=2)
    # appearances in proportion to weight (2 slots: 0.8, 0.8, 0.4 of answers)
    assert shown["a"] / 6000 == pytest.approx(0.8, rel=0.05)
    assert shown["b"] / 6000 == pytest.approx(0.8, rel=0.05)
    assert shown["c"] / 6000 == pytest.approx(0.4, rel=0.05)
    # and leading in proportion to weight
    assert _ratio(lead, "a", "c") == pytest.approx(2.0, rel=0.05)
    assert _ratio(lead, "b", "c") == pytest.approx(2.0, rel=0.05)
    assert len(variants) == 10  # exact cycle


def test_a_heavy_mirror_makes_single_address_sets() -> None:
    # a's share of 2 slots would be 1.67 answers; in every set it would get only
    # half of the shuffled first places. Sets of one give it 10 in 12.
    shown, lead, variants = _serve([_cand("a", 100), _cand("b", 10), _cand("c", 10)], answers=2)
    assert set_size(rank([_cand("a", 100), _cand("b", 10), _cand("c", 10)], CLIENT)[0], 2) == 1
    assert Counter(v[0].candidate.mirror for v in variants) == {"a": 10, "b": 1, "c": 1}


NEAR = [_cand("n1", 100, loc=(50.0, 8.0)), _cand("n2", 100, loc=(50.0, 8.1))]
MID = [_cand(f"m{i}", w, loc=(52.5, 13.4)) for i, w in enumerate((100, 50, 50))]
FAR = [_cand("far", 100, loc=(35.0, 139.0))]


def test_only_the_best_group_is_answered() -> None:
    groups = rank(NEAR + MID + FAR, CLIENT)
    assert _names(groups) == [("n1", "n2"), ("m0", "m1", "m2"), ("far",)]
    for v in answer_variants(groups, 3):
        assert sorted(r.candidate.mirror for r in v) == ["n1", "n2"]  # no farther slot filler
    # a lone best mirror is answered alone
    lone = answer_variants(rank([NEAR[0], *MID, *FAR], CLIENT), 3)
    assert {tuple(r.candidate.mirror for r in v) for v in lone} == {("n1",)}


def test_min_answers_pads_from_the_next_groups_in_rank_order() -> None:
    groups = rank([NEAR[0], *MID, *FAR], CLIENT)
    assert _names(groups)[0] == ("n1",)
    variants = answer_variants(groups, 3, min_answers=2)
    for v in variants:
        names = [r.candidate.mirror for r in v]
        assert names[0] == "n1" and len(names) == 2 and names[1].startswith("m")
    second = Counter(v[1].candidate.mirror for v in variants)
    assert second["m0"] == 2 * second["m1"] == 2 * second["m2"]  # by weight
    # padding goes on to the group after when the next one is too small
    v = answer_variants(rank([NEAR[0], *FAR], CLIENT), 3, min_answers=3)[0]
    assert [r.candidate.mirror for r in v] == ["n1", "far"]
    # never more than answers
    assert all(len(v) <= 2 for v in answer_variants(groups, 2, min_answers=3))


def test_the_band_is_tie_km_or_the_factor_whichever_is_wider() -> None:
    assert band_limit(10.0, 100.0, 1.5) == 110.0  # near client: tie_km wins
    assert band_limit(1000.0, 100.0, 1.5) == 1500.0  # far client: 1.5x wins
    client = GeoInfo(None, None, None, (0.0, 0.0), 0)
    # ~1000 km and ~1400 km away: equally near by the factor, not by tie_km
    a, b = _cand("a", 100, loc=(0.0, 9.0)), _cand("b", 100, loc=(0.0, 12.6))
    assert _names(rank([a, b], client)) == [("a", "b")]
    assert _names(rank([a, b], client, band_factor=1.0)) == [("a",), ("b",)]


def test_answers_more_than_candidates_and_empty() -> None:
    variants = answer_variants(rank([_cand("a", 1), _cand("b", 1)], CLIENT), 5)
    assert all(len(v) == 2 for v in variants)
    assert answer_variants([], 3) == [()]
    with pytest.raises(ValueError):
        answer_variants([], 0)


def test_long_cycle_truncated_stays_close() -> None:
    # 997:991 gives a 1988-query cycle; 256 variants are kept and stay fair
    variants = answer_variants(rank([_cand("a", 997), _cand("b", 991)], CLIENT), 1)
    assert len(variants) == 256
    lead = Counter(v[0].candidate.mirror for v in variants)
    assert abs(lead["a"] - 256 * 997 / 1988) <= 2  # within two queries of the exact share


@settings(max_examples=150, deadline=None)
@given(
    weights=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    answers=st.integers(1, 6),
)
def test_shares_are_exact_over_one_cycle_and_survive_a_shuffle(
    weights: list[int], answers: int
) -> None:
    cands = [_cand(f"m{i}", w, n=i) for i, w in enumerate(weights)]
    group = tuple(Ranked(c, 0, 0.0) for c in cands)
    variants = answer_variants([group], answers, max_variants=100_000)
    n = len(variants)
    total = sum(weights)
    k = set_size(group, answers)
    assert 1 <= k <= min(answers, len(weights)) and k * max(weights) <= total
    shown = Counter(r.candidate.mirror for v in variants for r in v)
    lead = Counter(v[0].candidate.mirror for v in variants)
    for i, w in enumerate(weights):
        assert Fraction(shown[f"m{i}"], n) == Fraction(k * w, total)
        assert Fraction(lead[f"m{i}"], n) == Fraction(w, total)
        # what a client behind a shuffling resolver connects to first
        assert sum(
            Fraction(1, len(v)) for v in variants if cands[i] in {r.candidate for r in v}
        ) / n == Fraction(w, total)
    for v in variants:
        assert len(v) == k and len({r.candidate for r in v}) == k


# --------------------------------------------------------------------------- explain


def test_explain_rows(db: GeoDB) -> None:
    groups = rank(build_candidates(POOL, 4, db), db.lookup(ip("192.0.2.5")))
    variants = answer_variants(groups, 2)
    rows = explain_rows(groups, variants)
    assert [(r.mirror, r.group, r.tier) for r in rows[:3]] == [
        ("nue", 0, "asn"),
        ("fra", 0, "asn"),
        ("muc", 1, "country"),
    ]
    assert rows[0].answered == rows[1].answered == 1.0
    assert rows[0].leading == rows[1].leading == 0.5
    assert all(r.answered == 0.0 for r in rows[2:])
    assert rows[-1].mirror == "sao" and rows[-1].distance_km == pytest.approx(10252, abs=5)
    assert str(rows[0].address) == "10.7.0.10"


def test_rank_without_geoip_database() -> None:
    """Candidates without a GeoIP database rank by overrides only."""
    pool = Pool("p", (_mirror("a", "10.1.0.1", country="DE"), _mirror("b", "10.1.0.2")))
    groups = rank(build_candidates(pool, 4, None), GeoInfo(None, "DE", "EU", None, 0))
    assert _names(groups) == [("a",), ("b",)]


def test_weight_is_the_mirrors_share_however_many_addresses_it_has() -> None:
    """A mirror behind two IPv4 addresses draws as many answers as an equally
    weighted mirror behind one; its addresses split its share."""
    pair = Mirror(
        name="pair",
        url="https://pair.example.net/",
        ipv4=(ipaddress.IPv4Address("10.1.0.1"), ipaddress.IPv4Address("10.1.0.2")),
        weight=100,
        location=(50.0, 8.0),
    )
    single = _mirror("single", "10.1.0.3", weight=100, location=(50.0, 8.0))
    pool = Pool("p", (pair, single))
    assert address_shares(pool, 4) == {"pair": 100, "single": 200}
    assert address_shares(pool, 6) == {"pair": 0, "single": 0}
    client = GeoInfo(None, None, None, (50.0, 8.0), 0)
    groups = rank(build_candidates(pool, 4, None), client)
    variants = answer_variants(groups, 1)
    lead = Counter(v[0].candidate.mirror for v in variants)
    assert lead["pair"] == lead["single"]  # 1:1 by mirror, not 2:1 by address
    by_addr = Counter(str(v[0].candidate.address) for v in variants)
    assert by_addr["10.1.0.1"] == by_addr["10.1.0.2"] == lead["single"] // 2
    # explain still shows the configured weight
    assert {r.candidate.weight for g in groups for r in g} == {100}
