"""Drains in the health store and migration 0002, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, inspect

from geodns.store import Drain, ProbeRecord, Store

from .pg import pg_server  # noqa: F401  (fixture: store_url and store come from conftest)
from .stores import alembic


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_drain_undrain_and_versions(store: Store, store_url: str) -> None:  # noqa: F811
    store.set_state("dist", "ftp-a", "192.0.2.1", True, "fine")
    v0 = store.state_version()
    until = datetime.now(UTC) + timedelta(hours=2)
    d = store.drain("ftp-a", reason="kernel upgrade", who="alice", until=until)
    assert (d.pool, d.mirror, d.address, d.who, d.target) == ("", "ftp-a", "", "alice", "ftp-a")
    assert abs((d.until - until).total_seconds()) < 1e-3  # type: ignore[operator]
    v1 = store.state_version()
    assert v1 > v0  # servers re-read at their next poll
    store.drain("ftp-a", reason="v6 route", who="bob", address="2001:0db8::0001", pool="dist")
    # re-draining the same target replaces it (one row), and is history too
    store.drain("ftp-a", reason="kernel upgrade, longer", who="alice", until=until)
    drains = store.drains()
    assert [(x.target, x.reason) for x in drains] == [
        ("ftp-a", "kernel upgrade, longer"),
        ("dist/ftp-a 2001:db8::1", "v6 route"),
    ]
    assert drains[1].covers("dist", "ftp-a", "2001:db8:0::1")
    assert not drains[1].covers("other", "ftp-a", "2001:db8::1")
    assert drains[0].covers("other", "ftp-a", "198.51.100.1")
    # the read path (a DNS node) sees the same
    with Store(store_url, create=False) as reader:
        assert reader.drains() == drains
    v2 = store.state_version()
    ended = store.undrain("ftp-a", who="carol", address="2001:db8::1")
    assert [x.target for x in ended] == ["dist/ftp-a 2001:db8::1"]
    assert store.state_version() > v2
    assert store.undrain("nobody", who="carol") == []
    v3 = store.state_version()
    assert store.undrain("ftp-a", who="carol", address="192.0.2.1") == []
    assert store.state_version() == v3  # nothing ended, nothing written
    assert [x.target for x in store.undrain("ftp-a", who="carol")] == ["ftp-a"]
    assert store.drains() == []
    events = store.drain_events("ftp-a")
    assert [(e.action, e.who, e.address) for e in events] == [
        ("undrain", "carol", ""),
        ("undrain", "carol", "2001:db8::1"),
        ("drain", "alice", ""),
        ("drain", "bob", "2001:db8::1"),
        ("drain", "alice", ""),
    ]
    # by address: the events of that address and of its whole mirror
    assert [e.action for e in store.drain_events(address="192.0.2.1")] == [
        "undrain",
        "drain",
        "drain",
    ]


def test_a_timed_drain_ends_by_itself(store: Store) -> None:  # noqa: F811
    now = datetime.now(UTC)
    store.drain("m", reason="short", who="alice", until=now + timedelta(seconds=30))
    store.drain("m", reason="v4 only", who="alice", address="192.0.2.9")
    assert len(store.drains(now=now)) == 2
    later = now + timedelta(seconds=31)
    # readers compare with their clock: nobody has to write at the end
    assert [d.target for d in store.drains(now=later)] == ["m 192.0.2.9"]
    assert [d.active(later) for d in store.drains(now=now)] == [False, True]


def test_expired_drains_become_history(store: Store) -> None:  # noqa: F811
    past = datetime.now(UTC) + timedelta(seconds=0.3)
    store.drain("m", reason="was short", who="alice", until=past)
    time.sleep(0.5)
    assert store.drains() == []
    # shown as ended before any writer turned the row into an event ...
    (ended, drained) = store.drain_events("m")
    assert (ended.action, ended.at, ended.reason) == ("expired", past, "was short")
    assert drained.action == "drain"
    # ... and the same after
    assert store.expire_drains() == 1
    assert store.drain_events("m") == [ended, drained]
    assert store.expire_drains() == 0
    # prune drops old drain history with the state history
    assert store.prune(timedelta(days=7), timedelta(seconds=-1)) == (0, 0)
    assert store.drain_events("m") == []


def test_migration_0002_keeps_data_and_old_readers_work(store_url: str) -> None:  # noqa: F811
    alembic(store_url, "upgrade", "0001")
    assert "drains" not in _tables(store_url)
    # a store written by the previous release: states, results, history, version
    with Store(store_url, create=False) as old:
        old.record(
            "dist",
            "ftp-a",
            "192.0.2.1",
            results=[ProbeRecord("tls", False, "TLS certificate expired")],
            up=False,
            reason="TLS certificate expired",
        )
        old.set_state("dist", "ftp-b", "2001:db8::2", True, "fine", region="eu")
        version = old.state_version()
        before = (old.states(), old.history(), old.results(), old.down_addresses())
        # a DNS node upgraded before the checker: nothing is drained, no error
        assert old.drains() == []
        # the checker upgrades the schema (create=True migrates to head) ...
        with Store(store_url) as new:
            assert (new.states(), new.history(), new.results(), new.down_addresses()) == before
            assert new.state_version() == version
            assert {"drains", "drain_events"} <= _tables(store_url)
            new.drain("ftp-b", reason="maintenance", who="alice")
        # ... and the node's reader, still open, sees drains from then on
        assert [d.mirror for d in old.drains()] == ["ftp-b"]
        assert old.state_version() == version + 1
    # downgrade removes only the drain tables
    alembic(store_url, "downgrade", "0001")
    assert "drains" not in _tables(store_url) and "address_states" in _tables(store_url)
    with Store(store_url, create=False) as old:
        assert (old.states(), old.history(), old.results(), old.down_addresses()) == before
    with Store(store_url) as new:  # and up again
        assert new.drains() == []


def test_drain_records_are_plain_values() -> None:
    d = Drain("", "m", "", "r", "w", datetime.now(UTC), None)
    assert d.active(datetime.now(UTC) + timedelta(days=9999))
    assert d.covers("any", "m", "::1") and not d.covers("any", "n", "::1")
    assert Drain("p", "m", "::1", "r", "w", d.at, None).target == "p/m ::1"
