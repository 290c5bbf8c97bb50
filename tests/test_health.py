"""Health-aware answers: store → snapshot → answers, fallback, fail-static, metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dns.rcode
import pytest

from geodns.store import Store

from .conftest import TEST_ZONES
from .util import ServerThread, query, settings_for, silence_region, udp

DE = "192.0.2.0/24"


def addrs(msg: object) -> list[str]:
    return sorted(rr.address for rrset in msg.answer for rr in rrset if hasattr(rr, "address"))  # type: ignore[attr-defined]


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'health.sqlite'}"
    Store(url).close()  # schema created, as the checker would
    yield url


@pytest.fixture
def healthy_server(
    tmp_path: Path, demo_geoip: tuple[Path, Path], store_url: str
) -> Iterator[ServerThread]:
    s = settings_for(
        TEST_ZONES,
        tmp_path,
        demo_geoip,
        store_url=store_url,
        health_interval=0.2,
        metrics=("127.0.0.1", 0),
    )
    with ServerThread(s) as st:
        yield st


def wait_for(pred, timeout: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_marked_down_disappears_within_a_poll_and_returns(
    healthy_server: ServerThread, store_url: str
) -> None:
    # `pad` (min_answers 2) answers both German mirrors to a German client
    st = healthy_server
    assert addrs(udp(query("pad.example.org", ecs=DE), st.addr())) == ["127.1.0.1", "127.5.0.1"]
    with Store(store_url) as store:
        store.set_state("distfiles", "mirror-de2", "127.5.0.1", False, "test: TLS expired")
        delay = wait_for(
            lambda: "127.5.0.1" not in addrs(udp(query("pad.example.org", ecs=DE), st.addr()))
        )
        assert delay < 0.2 * 5  # within a few poll intervals (0.2 s here)
        for _ in range(10):  # and it stays out, whatever the rotation
            assert "127.5.0.1" not in addrs(udp(query("pad.example.org", ecs=DE), st.addr()))
        # the IPv6 address of another mirror going down only affects AAAA
        store.set_state("distfiles", "mirror-de", "2001:db8:de::1", False, "test: v6 route broken")
        wait_for(
            lambda: (
                addrs(udp(query("pad.example.org", "AAAA", ecs=DE), st.addr())) == ["2001:db8:5::1"]
            )
        )
        assert "127.1.0.1" in addrs(udp(query("pad.example.org", ecs=DE), st.addr()))
        store.set_state("distfiles", "mirror-de2", "127.5.0.1", True, "test: recovered")
        wait_for(
            lambda: (
                addrs(udp(query("pad.example.org", ecs=DE), st.addr()))
                == ["127.1.0.1", "127.5.0.1"]
            )
        )


def test_all_down_fallback_then_failopen(healthy_server: ServerThread, store_url: str) -> None:
    st = healthy_server
    ranked = [
        ("mirror-de", "127.1.0.1"),
        ("mirror-de2", "127.5.0.1"),
        ("mirror-us", "127.2.0.1"),
        ("mirror-jp", "127.3.0.1"),
        ("mirror-fr", "127.4.0.1"),
    ]
    with Store(store_url) as store:
        for m, a in ranked:
            store.set_state("distfiles", m, a, False, "test: down")
        wait_for(lambda: addrs(udp(query("pad.example.org", ecs=DE), st.addr())) == ["127.1.0.10"])
        store.set_state("distfiles", "origin", "127.1.0.10", False, "test: origin down too")
        # fail open: every enabled mirror is a candidate again, nearest first
        wait_for(
            lambda: (
                addrs(udp(query("pad.example.org", ecs=DE), st.addr()))
                in (
                    ["127.1.0.1", "127.5.0.1"],
                    ["127.1.0.1", "127.1.0.10"],
                    ["127.1.0.10", "127.5.0.1"],
                )
            )
        )


def test_servfail_pool_when_all_down(healthy_server: ServerThread, store_url: str) -> None:
    st = healthy_server
    assert addrs(udp(query("v4only.example.org"), st.addr())) == ["127.1.0.21"]
    with Store(store_url) as store:
        store.set_state("v4only", "a", "127.1.0.21", False, "test")
    wait_for(lambda: udp(query("v4only.example.org"), st.addr()).rcode() == dns.rcode.SERVFAIL)


def test_store_unreachable_keeps_last_snapshot(
    healthy_server: ServerThread, store_url: str, tmp_path: Path
) -> None:
    st = healthy_server
    with Store(store_url) as store:
        store.set_state("distfiles", "mirror-de2", "127.5.0.1", False, "test")
    wait_for(
        lambda: (
            addrs(udp(query("pad.example.org", ecs=DE), st.addr())) == ["127.1.0.1", "127.2.0.1"]
            or "127.5.0.1" not in addrs(udp(query("pad.example.org", ecs=DE), st.addr()))
        )
    )
    db = tmp_path / "health.sqlite"
    db.unlink()
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)  # corrupt / unreadable
    wait_for(lambda: st.server.health.errors > 0)
    assert not st.server.health.ok
    for _ in range(5):
        got = addrs(udp(query("pad.example.org", ecs=DE), st.addr()))
        assert "127.5.0.1" not in got and len(got) == 2
    metrics = fetch(st, "/metrics")
    assert "geodns_health_store_up 0.0" in metrics
    assert "geodns_health_store_errors_total" in metrics
    status, body = fetch_json(st, "/healthz")
    assert status == 200 and body["status"] == "degraded" and body["addresses_down"] == 1


def test_startup_without_store_serves_everything(
    tmp_path: Path, demo_geoip: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    s = settings_for(
        TEST_ZONES, tmp_path, demo_geoip, store_url=f"sqlite:///{tmp_path}/missing.sqlite"
    )
    with ServerThread(s) as st:
        assert addrs(udp(query("pad.example.org", ecs=DE), st.addr())) == ["127.1.0.1", "127.5.0.1"]
    assert any("health store not available" in r.getMessage() for r in caplog.records)


def fetch(st: ServerThread, path: str) -> str:
    host, port = st.server.metrics_bound  # type: ignore[misc]
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:  # noqa: S310 — loopback
        return r.read().decode()


def fetch_json(st: ServerThread, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    host, port = st.server.metrics_bound  # type: ignore[misc]
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:  # noqa: S310
        return r.status, json.loads(r.read())


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if (
            line.startswith(name + " ")
            or line.startswith(name + "{")
            and line.split(" ")[0] == name
        ):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_metrics_move_with_queries(healthy_server: ServerThread) -> None:
    st = healthy_server
    before = fetch(st, "/metrics")
    for _ in range(40):
        udp(query("pad.example.org", ecs=DE), st.addr())
    udp(query("nope.example.org"), st.addr())
    after = fetch(st, "/metrics")
    key = 'geodns_dns_requests_total{family="4",proto="udp",qtype="A"}'
    assert metric(after, key) - (metric(before, key) if key in before else 0) == 41
    assert metric(after, 'geodns_dns_responses_total{rcode="NXDOMAIN"}') >= 1
    assert metric(after, 'geodns_steered_answers_total{pool="distfiles",tier="country"}') >= 40
    assert metric(after, "geodns_dns_ecs_requests_total") >= 40
    for name in (
        "geodns_dns_request_duration_seconds_bucket",
        "geodns_health_snapshot_age_seconds",
        "geodns_config_generation 1.0",
        "geodns_config_reload_success 1.0",
        "geodns_health_addresses_down",
        "geodns_dns_responses_truncated_total",
    ):
        assert name in after, name
    status, body = fetch_json(st, "/healthz")
    assert status == 200 and body["status"] == "ok" and body["generation"] == 1


def test_quorum_of_regions(tmp_path: Path, demo_geoip: tuple[Path, Path], store_url: str) -> None:
    """With --quorum 2 one region's verdict (its network may be the broken one)
    does not take a mirror out; a second region agreeing does."""
    s = settings_for(
        TEST_ZONES, tmp_path, demo_geoip, store_url=store_url, health_interval=0.2, quorum=2
    )
    with ServerThread(s) as st, Store(store_url) as store:
        store.set_state("distfiles", "mirror-de2", "127.5.0.1", False, "eu: timeout", region="eu")
        st.poll_health()
        time.sleep(0.5)
        assert "127.5.0.1" in addrs(udp(query("pad.example.org", ecs=DE), st.addr()))
        store.set_state("distfiles", "mirror-de2", "127.5.0.1", False, "us: timeout", region="us")
        wait_for(lambda: "127.5.0.1" not in addrs(udp(query("pad.example.org", ecs=DE), st.addr())))


def test_a_region_falling_silent_is_noticed_without_a_state_change(
    tmp_path: Path, demo_geoip: tuple[Path, Path], store_url: str
) -> None:
    """Silence bumps no state version: the server re-reads the vote on its own."""
    s = settings_for(
        TEST_ZONES, tmp_path, demo_geoip, store_url=store_url, health_interval=0.1, region_timeout=2
    )
    with ServerThread(s) as st, Store(store_url) as store:
        store.set_state("distfiles", "mirror-de2", "127.5.0.1", False, "eu: timeout", region="eu")
        store.set_state("distfiles", "mirror-de2", "127.5.0.1", True, "us: fine", region="us")
        wait_for(lambda: "127.5.0.1" not in addrs(udp(query("pad.example.org", ecs=DE), st.addr())))
        silence_region(store, "eu", timedelta(hours=1))  # eu's checker stops checking
        wait_for(lambda: "127.5.0.1" in addrs(udp(query("pad.example.org", ecs=DE), st.addr())))
