"""Drains and fail-static: the health snapshot file carries them across a
restart during a store outage, and a timed drain ends on time while the store
is away."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from geodns.runtime import health_snapshot
from geodns.store import Drain, Store

from .conftest import TEST_ZONES
from .test_health import wait_for
from .test_health_snapshot import ALL_DE, answers, take_store_away
from .util import ServerThread, settings_for


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'health.sqlite'}"
    Store(url).close()
    yield url


def test_snapshot_file_keeps_drains(tmp_path: Path) -> None:
    at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    drains = (
        Drain("", "m", "", "disk swap", "alice", at, None),
        Drain("p", "m2", "::1", "v6", "bob", at, at + timedelta(hours=2)),
    )
    snap = health_snapshot.make([("p", "m", "192.0.2.1")], "sqlite:///x", 3, 1, drains=drains)
    back = health_snapshot.loads(health_snapshot.dumps(snap))
    assert back.drains == drains and back.down == snap.down
    # a file written before drains existed reads as "nothing drained"
    old = health_snapshot.dumps(health_snapshot.make([], "sqlite:///x", 1, 1))
    old = old.replace(',\n "drains": []', "")
    assert '"drains"' not in old and health_snapshot.loads(old).drains == ()
    with pytest.raises(health_snapshot.SnapshotError, match=r"drains\[0\]: at/until"):
        health_snapshot.loads(
            health_snapshot.dumps(snap).replace('"2026-12-01T10:00:00+00:00"', '"noon"', 1)
        )


def test_drains_survive_a_restart_during_an_outage_and_still_end(
    tmp_path: Path, demo_geoip: tuple[Path, Path], store_url: str
) -> None:
    settings = dict(store_url=store_url, health_interval=0.1)
    with ServerThread(settings_for(TEST_ZONES, tmp_path, demo_geoip, **settings)) as st:
        assert answers(st) == ALL_DE
        with Store(store_url) as store:
            store.drain(
                "mirror-de2",
                reason="rack move",
                who="alice",
                until=datetime.now(UTC) + timedelta(seconds=4),
            )
        wait_for(lambda: "127.5.0.1" not in answers(st))
        snap = health_snapshot.path_in(tmp_path / "state")
        wait_for(lambda: len(health_snapshot.load(snap).drains) == 1)  # type: ignore[union-attr]
    take_store_away(tmp_path)
    with ServerThread(settings_for(TEST_ZONES, tmp_path, demo_geoip, **settings)) as st:
        assert st.server.health.source == "file"
        for _ in range(10):
            assert "127.5.0.1" not in answers(st)
        # the store is still away when the drain ends: it ends all the same
        wait_for(lambda: "127.5.0.1" in answers(st), timeout=8)
        assert not st.server.health.ok
