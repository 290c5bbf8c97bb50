"""Fail-static across restarts: the health snapshot kept in the state directory.

The server keeps serving its last snapshot while the store is unreachable;
these tests cover the restart case, where that snapshot must come from disk
(geodns.health_snapshot): a node restarted during a store outage keeps the
mirrors the checkers took out out of its answers, says so in its log and in
/healthz, and exports the snapshot's age. Only with no snapshot at all does it
count every enabled mirror as up (with a warning).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from geodns.runtime import health_snapshot
from geodns.store import ProbeRecord, Store

from .conftest import TEST_ZONES
from .test_health import DE, addrs, fetch, fetch_json, metric, wait_for
from .util import ServerThread, query, settings_for, udp

DL = "pad.example.org"  # min_answers 2: both German mirrors to a German client
DE2 = ("distfiles", "mirror-de2", "127.5.0.1")
ALL_DE = ["127.1.0.1", "127.5.0.1"]


def answers(st: ServerThread) -> list[str]:
    return addrs(udp(query(DL, ecs=DE), st.addr()))


def checker_says(store: Store, key: tuple[str, str, str], up: bool) -> None:
    """What `checker run` stores for an address: the probe result and the state."""
    pool, mirror, address = key
    detail = "TLS ok" if up else "TLS: certificate has expired"
    store.record(
        pool,
        mirror,
        address,
        results=[ProbeRecord("tls", up, detail, unrecoverable=not up)],
        up=up,
        reason=detail,
    )


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'health.sqlite'}"
    Store(url).close()
    yield url


def db_files(tmp_path: Path) -> list[Path]:
    return [tmp_path / f"health.sqlite{x}" for x in ("", "-wal", "-shm")]


def take_store_away(tmp_path: Path) -> None:
    """The store becomes unreachable (its file is gone), its data kept aside."""
    aside = tmp_path / "aside"
    aside.mkdir(exist_ok=True)
    for f in db_files(tmp_path):
        if f.exists():
            shutil.move(f, aside / f.name)


def bring_store_back(tmp_path: Path) -> None:
    for f in db_files(tmp_path):
        if (tmp_path / "aside" / f.name).exists():
            shutil.move(tmp_path / "aside" / f.name, f)


def test_restart_during_store_outage_serves_the_saved_snapshot(
    tmp_path: Path,
    demo_geoip: tuple[Path, Path],
    store_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = dict(store_url=store_url, health_interval=0.1, metrics=("127.0.0.1", 0))
    snap_path = tmp_path / "state" / health_snapshot.FILENAME

    # 1. a server with a store: the checker takes mirror-de2 out
    with ServerThread(settings_for(TEST_ZONES, tmp_path, demo_geoip, **settings)) as st:
        assert answers(st) == ALL_DE
        with Store(store_url) as store:
            checker_says(store, DE2, up=False)
        wait_for(lambda: "127.5.0.1" not in answers(st))
        wait_for(lambda: snap_path.exists() and DE2 in health_snapshot.load(snap_path).down)  # type: ignore[union-attr]

    # 2. stopped; the store becomes unreachable; 3. restarted
    take_store_away(tmp_path)
    caplog.clear()
    with ServerThread(settings_for(TEST_ZONES, tmp_path, demo_geoip, **settings)) as st:
        for _ in range(10):  # every rotation: the mirror stays out
            got = answers(st)
            assert "127.5.0.1" not in got and len(got) == 2, got
        status, body = fetch_json(st, "/healthz")
        assert status == 200 and body["status"] == "degraded", body
        assert body["health_source"] == "file" and body["addresses_down"] == 1, body
        assert "serving the health snapshot saved" in body["reason"], body
        assert "health store unreachable" in body["reason"], body
        age = metric(fetch(st, "/metrics"), "geodns_health_snapshot_age_seconds")
        assert not math.isnan(age) and 0 <= age < 60, age
        assert any("serving the health snapshot saved" in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]

        # 4. the store is back with its data: the same mirror stays out, now from the store
        bring_store_back(tmp_path)
        wait_for(lambda: fetch_json(st, "/healthz")[1]["status"] == "ok")
        status, body = fetch_json(st, "/healthz")
        assert body["health_source"] == "store" and body["reason"] is None, body
        assert "127.5.0.1" not in answers(st)
        # and follows it again
        with Store(store_url) as store:
            checker_says(store, DE2, up=True)
        wait_for(lambda: answers(st) == ALL_DE)
        wait_for(lambda: health_snapshot.load(snap_path).down == frozenset())  # type: ignore[union-attr]


def test_no_snapshot_at_all_counts_every_mirror_up_and_says_so(
    tmp_path: Path, demo_geoip: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    s = settings_for(
        TEST_ZONES,
        tmp_path,
        demo_geoip,
        store_url=f"sqlite:///{tmp_path}/missing.sqlite",
        metrics=("127.0.0.1", 0),
    )
    with ServerThread(s) as st:
        assert answers(st) == ALL_DE
        _, body = fetch_json(st, "/healthz")
        assert body["status"] == "degraded" and body["health_source"] == "none", body
        assert "no health snapshot: every enabled mirror counts as up" in body["reason"], body
        assert math.isnan(metric(fetch(st, "/metrics"), "geodns_health_snapshot_age_seconds"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("no health snapshot" in m and "counts as up" in m for m in warnings), warnings
    assert not (tmp_path / "state" / health_snapshot.FILENAME).exists()


def test_an_unusable_snapshot_file_is_reported_and_not_used(
    tmp_path: Path, demo_geoip: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / health_snapshot.FILENAME).write_text('{"format": "geodns-health-snapshot", "ver')
    s = settings_for(TEST_ZONES, tmp_path, demo_geoip, store_url=f"sqlite:///{tmp_path}/no.sqlite")
    with ServerThread(s) as st:
        assert answers(st) == ALL_DE
    msgs = [r.getMessage() for r in caplog.records]
    assert any("health snapshot not usable" in m and "not JSON" in m for m in msgs), msgs


def test_snapshot_is_rewritten_only_when_the_down_set_changes(
    tmp_path: Path, demo_geoip: tuple[Path, Path], store_url: str
) -> None:
    s = settings_for(TEST_ZONES, tmp_path, demo_geoip, store_url=store_url, health_interval=0.05)
    path = tmp_path / "state" / health_snapshot.FILENAME
    with ServerThread(s) as st, Store(store_url) as store:
        wait_for(path.exists)  # the first read of each run is saved
        first = path.stat()
        assert health_snapshot.load(path).down == frozenset()  # type: ignore[union-attr]
        # a state change that leaves the down-set as it is (an up mirror checked up
        # again, a new version) and many polls: the file is not touched
        checker_says(store, ("distfiles", "mirror-us", "127.2.0.1"), up=True)
        wait_for(lambda: st.server.health.version == store.state_version())
        for _ in range(10):
            st.poll_health()
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
        checker_says(store, DE2, up=False)
        wait_for(lambda: health_snapshot.load(path).down == {DE2})  # type: ignore[union-attr]
        assert path.stat().st_ino != first.st_ino  # replaced by rename, not written in place
        body = json.loads(path.read_text())
        assert body["format"] == "geodns-health-snapshot" and body["version"] == 1
        assert body["down"] == [list(DE2)] and body["store"].startswith("sqlite:///")
        assert not list(path.parent.glob(".*.tmp")), "no temp file left behind"


def test_explain_reads_the_snapshot_but_never_writes_it(
    tmp_path: Path, demo_geoip: tuple[Path, Path], store_url: str
) -> None:
    from geodns.cli.commands import build_parser
    from geodns.cli.options import settings_from_args
    from geodns.runtime.explain import explain
    from geodns.runtime.server import Server

    state = tmp_path / "state"
    state.mkdir()
    path = state / health_snapshot.FILENAME
    health_snapshot.save(path, health_snapshot.make([DE2], "sqlite:///elsewhere", 7, 1))
    before = path.read_bytes()
    argv = ["explain", DL, "--client", DE, "--state-dir", str(state), "--config", str(TEST_ZONES)]
    argv += ["--geoip-asn", str(demo_geoip[0]), "--geoip-city", str(demo_geoip[1])]
    for store in (f"sqlite:///{tmp_path}/none.sqlite", store_url):  # unreachable, then reachable
        settings = settings_from_args(build_parser().parse_args([*argv, "--store", store]))
        settings.persist_health = False  # as cmd_explain sets it
        srv = Server(settings)
        srv.load_initial()
        out = explain(srv, DL, DE)
        srv.poller.close()
        skipped = {m["address"] for m in out["mirrors"] if m["state"] == "skipped"}
        if store == store_url:
            assert out["health"]["source"] == "store" and "127.5.0.1" not in skipped, out
        else:
            assert out["health"]["source"] == "file" and "127.5.0.1" in skipped, out
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("[]", "not a geodns health snapshot"),
        ('{"format": "geodns-health-snapshot", "version": 9}', "version 9"),
        (
            '{"format": "geodns-health-snapshot", "version": 1, "saved_unix": "x"}',
            "saved_unix: expected a number",
        ),
        (
            '{"format": "geodns-health-snapshot", "version": 1, "saved_unix": 1, "store": "s",'
            ' "down": [["p", "m"]]}',
            "down[0]: expected [pool, mirror, address]",
        ),
        (
            '{"format": "geodns-health-snapshot", "version": 1, "saved_unix": 1, "store": "s",'
            ' "quorum": 0, "down": []}',
            "quorum: expected an integer",
        ),
    ],
)
def test_snapshot_format_errors_say_what_is_wrong(body: str, why: str) -> None:
    with pytest.raises(health_snapshot.SnapshotError, match=r"^f\.json: .*" + _re(why)):
        health_snapshot.loads(body, "f.json")


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_snapshot_round_trip(tmp_path: Path) -> None:
    snap = health_snapshot.make([DE2, ("p", "m", "::1")], "postgresql://x@db/g", 3, 2, now=1e9)
    path = tmp_path / "s.json"
    health_snapshot.save(path, snap)
    assert health_snapshot.load(path) == snap
    assert health_snapshot.load(tmp_path / "absent.json") is None
    assert snap.saved_text() == "2001-09-09T01:46:40Z"
