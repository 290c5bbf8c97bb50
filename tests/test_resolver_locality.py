"""Issue 12: answers stay near after a real caching resolver reorders them.

geodns serves the generated scenario of tests/locality.py (ten mirrors on six
continents, client networks on seven); a real Unbound with the ECS cache and
`rrset-roundrobin` sits in front of it (tests/resolver.py), and the tests ask
through Unbound as clients in those networks (each query carries the
client's /24 as an ECS option, which Unbound passes on). What counts is the
*first* address a client gets, since that is the one it connects to.

The expected groups are computed from the scenario, not by geodns' ranking.
Before the issue 12 ranking, 48% of first addresses were in the best group;
`python -m tests.locality` prints the share per client network.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import dns.message
import pytest

from .geodata import make_databases
from .locality import (
    ANSWERS,
    BY_ADDRESS,
    BY_NAME,
    CLIENT_BY_NAME,
    CLIENTS,
    MIRRORS,
    WEIGHTED,
    ZONE,
    Client,
    Stack,
    best_group,
    check_scenario,
    client_subnets,
    distance_km,
    geoip_entries,
    measure_share,
    next_group,
    next_group_is_clear,
    running,
    weight_clients,
)
from .pg import in_ci
from .resolver import (
    addresses,
    ask_many,
    ecs_query,
    ecs_scope,
    parse_answer,
    query_wire,
    udp_query,
    unbound_binary,
)


@pytest.fixture(autouse=True, scope="module")
def _unbound_installed() -> None:
    """Skipped without unbound, except in CI (CI=true), where that fails:
    CI must not go green without a real resolver (tests/run installs it)."""
    if unbound_binary() is None:
        if in_ci():
            pytest.fail("unbound is not installed, and CI is set (tests/run installs it)")
        pytest.skip("unbound is not installed (tests/run installs it)")


@pytest.fixture(scope="module")
def geoip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_databases(tmp_path_factory.mktemp("locality-geoip"), geoip_entries())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, geoip: tuple[Path, Path]) -> Iterator[Stack]:
    with running(tmp_path_factory.mktemp("locality"), geoip=geoip) as st:
        yield st


def client(name: str) -> Client:
    return CLIENT_BY_NAME[name]


def names(addrs: list[str]) -> set[str]:
    return {BY_ADDRESS[a].name if a in BY_ADDRESS else a for a in addrs}


def test_scenario_is_unambiguous() -> None:
    """The expected groups do not hinge on how the band is read, and the
    scenario has what the issue asks for."""
    assert check_scenario() == []
    assert len({c.continent for c in CLIENTS}) >= 5
    assert len({m.continent for m in MIRRORS}) >= 5
    # South-Africa-like: the best group is one mirror (the standby in the
    # same city is nearer but never answered while others are healthy)
    cpt = client("za-cape-town")
    assert best_group(cpt) == {"za-jnb"}
    standby = BY_NAME["za-cpt-standby"]
    assert standby.weight == 0 and cpt.location is not None
    assert distance_km(cpt.location, standby.location) < 1
    lone = [c.name for c in CLIENTS if len(best_group(c)) == 1]
    assert len(lone) >= 5, lone
    assert len(weight_clients()) == len(set(weight_clients())) == 10_000


def test_unbound_passes_the_client_subnet_to_geodns(stack: Stack) -> None:
    """What geodns receives (through the tap): the client's own /24 from its
    ECS option; the client gets the scope back; further clients in the same
    GeoIP network are answered from Unbound's ECS cache, reordered."""
    probe = f"probe.{ZONE}"
    rotating = client("de-berlin")  # three mirrors in its set, before and after issue 12
    before = len(stack.tap.queries())
    for c in (client("za-cape-town"), client("jp-osaka"), rotating):
        sub = c.network.replace(".0.0/16", ".7.0/24")
        r = udp_query(ecs_query(probe, "A", sub), stack.unbound.addr)
        assert addresses(r), (c.name, r)
        assert ecs_scope(r) == 16, (c.name, r)  # the GeoIP /16 decided the answer
        seen = [s for s in stack.tap.queries()[before:] if s.name == probe]
        assert [s.ecs for s in seen] == [(sub.split("/")[0], 24)], (c.name, seen)
        before += len(stack.tap.queries()[before:])

    # same /16, other /24s: served from the cache (no upstream query), reordered
    subs = [rotating.network.replace(".0.0/16", f".{k}.0/24") for k in range(100, 130)]
    raw = ask_many(stack.unbound.addr, [query_wire(probe, "A", s) for s in subs])
    assert all(raw), raw
    answers = [parse_answer(r) for r in raw if r is not None]
    # the batch path's hand-made wire reading agrees with dnspython
    for data in raw:
        assert data is not None
        msg = dns.message.from_wire(data)
        a = parse_answer(data)
        assert (a.id, a.rcode, list(a.addresses), a.scope) == (
            msg.id,
            msg.rcode(),
            addresses(msg),
            ecs_scope(msg),
        )
    assert [s for s in stack.tap.queries()[before:] if s.name == probe] == []
    assert len({a.addresses[0] for a in answers}) >= 2  # rrset-roundrobin
    assert {frozenset(a.addresses) for a in answers} == {frozenset(answers[0].addresses)}
    assert {a.scope for a in answers} == {16}

    # a longer source prefix is cut to max-client-subnet-ipv4 (24) before it leaves
    nbo = client("ke-nairobi").network.replace(".0.0/16", ".9.16/28")
    r = udp_query(ecs_query(probe, "A", nbo), stack.unbound.addr)
    assert addresses(r)
    seen = [s for s in stack.tap.queries()[before:] if s.name == probe]
    cut = IPv4Network(nbo).supernet(new_prefix=24)
    assert [s.ecs for s in seen] == [(str(cut.network_address), 24)]


def test_first_addresses_stay_in_the_best_tier(stack: Stack) -> None:
    """At least 95% of first addresses are in the client's best group (by
    construction: 100%); issue 12 measured 45% on real GeoLite data."""
    report = measure_share(stack.unbound.addr)
    print(report.text())
    assert report.unanswered == 0, report.text()
    assert report.share >= 0.95, report.text()


@pytest.mark.parametrize(
    "name",
    [
        # answers: 2 of a group of three: weighted subsets
        "dl2",
        # answers: 3, group of three: the sets handed out must still vary by
        # weight, or a shuffling resolver spreads the load evenly
        "dl",
    ],
)
def test_weights_over_10000_one_query_clients(stack: Stack, name: str) -> None:
    """10,000 client /24s in Germany (three mirrors near Frankfurt, weights
    1:2:3) ask once each through Unbound, which caches one set per GeoIP /20
    (the scope) and reorders it: the shares of first addresses follow the
    weights within 5 percentage points."""
    qname = f"{name}.{ZONE}"
    subs = weight_clients()
    random.Random(5).shuffle(subs)
    raw = ask_many(stack.unbound.addr, [query_wire(qname, "A", s) for s in subs], seed=5)
    firsts = Counter(
        BY_ADDRESS[a.addresses[0]].name
        for a in (parse_answer(r) for r in raw if r is not None)
        if a.addresses
    )
    answered = sum(firsts.values())
    assert answered >= 0.995 * len(subs), f"{len(subs) - answered} unanswered"
    assert set(firsts) <= set(WEIGHTED), firsts
    total_weight = sum(BY_NAME[n].weight for n in WEIGHTED)
    shares = {n: firsts[n] / answered for n in WEIGHTED}
    want = {n: BY_NAME[n].weight / total_weight for n in WEIGHTED}
    upstream = sum(1 for s in stack.tap.queries() if s.name == qname)
    print(
        f"{qname}: {answered} clients, {upstream} sets from geodns; first-address shares "
        + ", ".join(f"{n} {shares[n]:.1%} (weight {want[n]:.1%})" for n in WEIGHTED)
    )
    for n in WEIGHTED:
        assert abs(shares[n] - want[n]) <= 0.05, (shares, want)


def test_min_answers_pads_a_lone_best_mirror(tmp_path: Path, geoip: tuple[Path, Path]) -> None:
    """Pool knob min_answers: 2 (on `pad`): a lone best mirror is followed by
    one from the next group; groups of two or more need no padding. The
    default (`dl`, min_answers 1) answers the lone mirror alone. Which
    mirror pads is checked where the next group is clear of band edges."""
    lone = [c for c in CLIENTS if len(best_group(c)) == 1]
    clear = [c for c in lone if next_group_is_clear(c)]
    assert len(clear) >= 5, [c.name for c in clear]
    rng = random.Random(3)
    with running(tmp_path, padded=True, geoip=geoip) as st:
        for c in CLIENTS:
            best = best_group(c)
            for sub in client_subnets(c, 2, rng):
                padded = names(
                    addresses(udp_query(ecs_query(f"pad.{ZONE}", "A", sub), st.unbound.addr))
                )
                plain = names(
                    addresses(udp_query(ecs_query(f"dl.{ZONE}", "A", sub), st.unbound.addr))
                )
                if len(best) == 1:
                    assert plain == best, (c.name, plain)
                    assert len(padded) == 2 and best < padded, (c.name, padded)
                    if c in clear:
                        assert padded - best <= next_group(c), (c.name, padded, next_group(c))
                else:  # a group of two or more already holds min_answers
                    assert plain <= best and 1 <= len(plain) <= ANSWERS, (c.name, plain)
                    assert padded <= best and 2 <= len(padded) <= ANSWERS, (c.name, padded)
