"""Several nodes for real: PostgreSQL, regional checkers, BGP anycast, a resolver.

The bed and the scenarios are in tests/clusterbed.py (bench/cluster runs the
same ones and prints the figures). Root, network namespaces, BIRD 2, Unbound
and PostgreSQL are needed; without them the module is skipped (under CI it
fails instead, like the other namespace tests). Each scenario asserts its
expectations and bounds and records its times; a table is printed at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import nullcontext

import pytest

from . import clusterbed as cb

pytestmark = [pytest.mark.netns, pytest.mark.postgres, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[cb.Cluster]:
    reason = cb.unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the cluster tests, but: {reason}", pytrace=False)
        pytest.skip(f"cluster bed unavailable: {reason}")
    with cb.Cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c
    results = c.results
    if results:
        lines = ["", f"cluster bed up in {c.ready_seconds:.1f} s; scenarios:"]
        lines += [f"  {r.line()}" for r in results.values()]
        lines.append(cb.summary_line(results))
        capman = request.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else nullcontext():
            print("\n".join(lines), flush=True)


@pytest.fixture
def healthy(cluster: cb.Cluster) -> Iterator[cb.Cluster]:
    """Every fault of an earlier scenario undone; the whole cluster answering."""
    cluster.wait_healthy(timeout=120)
    yield cluster


def run(c: cb.Cluster, key: str) -> cb.Result:
    return cb.run_scenario(c, key)


def few_lost(r: cb.Result) -> bool:
    """Resolver clients asking all along lost next to nothing: 0 on a quiet
    machine; a stalled host can time out a query or two (2 s budget), while
    a broken switch would cost a third of them or more."""
    return r.lost is not None and r.lost <= 0.05 * r.figures["resolver_queries"]


def test_bed_is_anycast_over_three_nodes(healthy: cb.Cluster) -> None:
    c = healthy
    assert c.nexthops() == sorted(cb.NODES.values())  # ECMP: one next hop per node
    for node in cb.NODES:
        assert "Established" in c.birdc("router", "show", "protocols", node)
    # queries from many source ports land on every node (L4 hash)
    before = {n: node.metric("geodns_dns_requests_total") for n, node in c.nodes.items()}
    for _ in range(60):
        assert c.on_client(cb.ask, cb.ANYCAST, cb.DL, 1.0) == (0, cb.ALL)
    after = {n: node.metric("geodns_dns_requests_total") for n, node in c.nodes.items()}
    assert all(after[n] > before[n] for n in c.nodes), (before, after)
    states = c.store_states()
    assert len(states) == 9 and all(states.values())


def test_a_mirror_stops(healthy: cb.Cluster) -> None:
    r = run(healthy, "a")
    assert r.seconds <= r.figures["bound_s"]
    assert few_lost(r), r.figures
    assert r.figures["regions_down"] >= cb.QUORUM


def test_b_one_region_cut_off_from_a_mirror(healthy: cb.Cluster) -> None:
    r = run(healthy, "b")
    assert r.seconds <= cb.CHECK_ROUND + cb.SLACK
    assert few_lost(r), r.figures
    assert r.figures["node_polls_with_m2"] > 0


def test_c_dns_node_killed(healthy: cb.Cluster) -> None:
    r = run(healthy, "c")
    # the route goes as soon as the supervisor's `geodns withdraw` has run
    assert r.seconds <= r.figures["withdraw_s"] + 1.0
    assert r.figures["bfd_s"] <= cb.HOLD  # BFD, not the hold timer
    # resolver clients asked all along (no query failed once the route had
    # moved: the scenario checks that); a few may fail in the switch itself
    assert r.figures["switch_resolver_queries"] >= 20


def test_d_store_outage(healthy: cb.Cluster) -> None:
    r = run(healthy, "d")
    assert r.figures["restart_failstatic"] == "ok"
    assert few_lost(r), r.figures  # a graceful restart withdraws first
    assert r.seconds <= cb.HEALTH_INTERVAL + cb.SLACK


def test_e_regional_checker_dies(healthy: cb.Cluster) -> None:
    r = run(healthy, "e")
    assert few_lost(r), r.figures
    late = cb.REGION_TIMEOUT + cb.REGION_REFRESH + cb.HEALTH_INTERVAL + cb.SLACK
    assert r.seconds <= late and r.figures["quorum_shrunk_s"] <= late
