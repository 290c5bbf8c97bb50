"""The health store, run against SQLite and a real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from geodns.store import SCHEMA_HEAD, ProbeRecord, Store, StoreError

from .util import silence_region

try:
    from pg import pg_server  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover - tests/ became a package
    from tests.pg import pg_server  # noqa: F401


def test_first_use_creates_schema_then_readers_open_without_creating(store_url: str) -> None:
    with Store(store_url) as s:
        assert s.state_version() == 0
        assert s.down_addresses() == frozenset()
    with Store(store_url, create=False) as reader:
        assert reader.state_version() == 0


def test_set_state_is_visible_to_the_server_read_path(store: Store, store_url: str) -> None:
    store.set_state("dist", "ftp-a", "2001:0db8:0000::0001", False, "TLS certificate expired")
    store.set_state("dist", "ftp-a", "192.0.2.1", True, "fine")
    with Store(store_url, create=False) as reader:
        # Address text is canonical (compressed IPv6); up addresses are not listed.
        assert reader.down_addresses() == frozenset({("dist", "ftp-a", "2001:db8::1")})
        assert reader.state_version() == 2


def test_state_version_increases_only_on_changes(store: Store) -> None:
    v0 = store.state_version()
    store.set_state("p", "m", "192.0.2.1", False, "down for a reason")
    v1 = store.state_version()
    store.set_state("p", "m", "192.0.2.1", False, "still down, other words")
    assert store.state_version() == v1 > v0
    store.record("p", "m", "192.0.2.1", up=True, reason="recovered")
    v2 = store.state_version()
    assert v2 > v1
    store.record("p", "m", "192.0.2.1", up=True, reason="ok again", detail="ok")
    assert store.state_version() == v2
    changes = store.history("m")
    assert [(c.up, c.reason) for c in changes] == [
        (True, "recovered"),
        (False, "down for a reason"),
    ]
    state = store.get_state("p", "m", "192.0.2.1")
    assert state is not None
    assert state.up and state.reason == "recovered" and state.detail == "ok"
    assert state.since == changes[0].at
    assert state.since.tzinfo is not None


def test_record_keeps_results_and_kinds(store: Store) -> None:
    results = [
        ProbeRecord("tls", True, "TLS ok", 0.012, {"expires_days": 40.5}),
        ProbeRecord(
            "freshness", False, "stale: 9h12m behind origin (max 6h)", 0.02, {"lag": 33120}
        ),
    ]
    changed = store.record(
        "p",
        "m",
        "2001:db8::53",
        region="eu",
        results=results,
        up=False,
        reason="stale: 9h12m behind origin (max 6h)",
        warning="TLS certificate expires in 5 days",
        kinds={"freshness": {"down": True, "fails": 3}},
    )
    assert changed
    got = store.results(mirror="m")
    assert {(r.kind, r.ok, r.region, r.address) for r in got} == {
        ("tls", True, "eu", "2001:db8::53"),
        ("freshness", False, "eu", "2001:db8::53"),
    }
    assert next(r for r in got if r.kind == "freshness").data == {"lag": 33120}
    (state,) = store.states(region="eu")
    assert state.family == 6 and not state.up
    assert state.kinds == {"freshness": {"down": True, "fails": 3}}
    assert state.warning == "TLS certificate expires in 5 days"
    assert store.states(region="us") == []


def test_quorum_of_regions(store_url: str) -> None:
    with Store(store_url, quorum=2) as s:
        s.set_state("p", "m", "192.0.2.7", False, "unreachable from eu", region="eu")
        s.set_state("p", "m", "192.0.2.7", True, "fine from us", region="us")
        assert s.down_addresses() == frozenset()  # one region is not a quorum
        s.set_state("p", "m", "192.0.2.7", False, "unreachable from ap", region="ap")
        assert s.down_addresses() == frozenset({("p", "m", "192.0.2.7")})
        # An operator's `enabled: false` needs no quorum.
        s.record("p", "off", "192.0.2.8", region="eu", up=False, disabled=True, reason="disabled")
        assert ("p", "off", "192.0.2.8") in s.down_addresses()


def test_a_silent_region_loses_its_vote_while_another_is_current(store_url: str) -> None:
    with Store(store_url, region_timeout=timedelta(minutes=15)) as s:
        s.set_state("p", "m", "192.0.2.7", False, "unreachable from eu", region="eu")
        s.set_state("p", "m", "192.0.2.7", True, "fine from us", region="us")
        s.record("p", "off", "192.0.2.8", region="eu", up=False, disabled=True, reason="disabled")
        both = frozenset({("p", "m", "192.0.2.7"), ("p", "off", "192.0.2.8")})
        assert s.down_addresses() == both
        silence_region(s, "eu", timedelta(minutes=20))
        assert set(s.region_last_checks()) == {"eu", "us"}
        # eu's checker died: its "down" no longer counts; configuration still does
        assert s.down_addresses() == frozenset({("p", "off", "192.0.2.8")})
        silence_region(s, "us", timedelta(minutes=20))
        assert s.down_addresses() == both  # every region silent: fail static
    with Store(store_url) as s:  # no timeout: a silent region's votes stand
        assert s.down_addresses() == both


def test_quorum_shrinks_to_the_regions_still_current(store_url: str) -> None:
    with Store(store_url, quorum=2, region_timeout=timedelta(minutes=15)) as s:
        s.set_state("p", "m", "192.0.2.7", False, "unreachable from eu", region="eu")
        s.set_state("p", "m", "192.0.2.7", True, "fine from us", region="us")
        s.set_state("p", "m", "192.0.2.7", True, "fine from ap", region="ap")
        assert s.down_addresses() == frozenset()
        silence_region(s, "ap", timedelta(hours=1))
        assert s.down_addresses() == frozenset()  # 1 of 2 current regions: no quorum
        silence_region(s, "us", timedelta(hours=1))
        # only eu is current: a quorum of 2 cannot be met, the one region decides
        assert s.down_addresses() == frozenset({("p", "m", "192.0.2.7")})


def test_prune_removes_old_results_and_history(store: Store) -> None:
    old = datetime.now(UTC) - timedelta(days=10)
    store.record(
        "p",
        "m",
        "192.0.2.1",
        results=[
            ProbeRecord("tls", True, "old", at=old),
            ProbeRecord("tls", True, "new"),
        ],
        up=True,
        reason="ok",
    )
    assert store.prune(timedelta(days=7)) == (1, 0)
    assert [r.detail for r in store.results()] == ["new"]
    assert store.prune(timedelta(days=7), timedelta(seconds=-1)) == (0, 1)
    assert store.history() == []
    assert store.get_state("p", "m", "192.0.2.1") is not None  # state itself stays


def test_concurrent_writers_never_lose_a_version(store_url: str) -> None:
    Store(store_url).close()
    flips = 15
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with Store(store_url) as s:
                for i in range(flips):
                    s.set_state("p", name, "192.0.2.1", i % 2 == 1, f"flip {i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"m{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with Store(store_url, create=False) as s:
        assert s.state_version() == 3 * flips


def test_schema_matches_models_and_head(store: Store, store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    import geodns.store.schema as gs

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(gs.__file__).with_name("migrations")))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": False})
            assert compare_metadata(ctx, gs.Base.metadata) == []
    finally:
        engine.dispose()


def test_sqlite_file_is_wal_and_dirs_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "health.sqlite"
    with Store(f"sqlite:///{path}"):
        pass
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_read_path_never_creates_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "health.sqlite"
    with pytest.raises(StoreError, match="does not exist"):
        Store(f"sqlite:///{path}", create=False)
    assert not path.parent.exists()


def test_read_path_reports_missing_schema_and_creates_nothing(store_url: str) -> None:
    if store_url.startswith("sqlite"):
        Path(store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
        sqlite3.connect(store_url.removeprefix("sqlite:///")).close()  # an empty database
    with pytest.raises(StoreError, match="no geodns schema"):
        Store(store_url, create=False)
    engine = create_engine(store_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_unreachable_database_names_url_without_password() -> None:
    url = "postgresql+psycopg://geodns:s3cret@/geodns?host=/nonexistent-geodns-socket"
    with pytest.raises(StoreError) as err:
        Store(url, create=False)
    text = str(err.value)
    assert "s3cret" not in text
    assert "postgresql+psycopg://geodns:***@/geodns" in text
    assert "nonexistent-geodns-socket" in text


def test_in_memory_sqlite_works_for_quick_tools() -> None:
    with Store("sqlite://") as s:
        s.set_state("p", "m", "::1", False, "x")
        assert s.down_addresses() == frozenset({("p", "m", "::1")})


def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="not a SQLAlchemy URL"):
        Store("not a url")


def test_sqlite_readers_follow_a_replaced_or_deleted_file(tmp_path: Path) -> None:
    path = tmp_path / "health.sqlite"
    url = f"sqlite:///{path}"
    with Store(url) as writer:
        writer.set_state("p", "m", "192.0.2.1", False, "old file")
    reader = Store(url, create=False)
    try:
        assert reader.down_addresses() == frozenset({("p", "m", "192.0.2.1")})
        # The state directory is wiped and a checker starts afresh: a new file.
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        with pytest.raises(StoreError, match="has disappeared"):
            reader.state_version()
        with Store(url) as writer:
            writer.set_state("p", "m", "192.0.2.9", False, "new file")
        assert reader.down_addresses() == frozenset({("p", "m", "192.0.2.9")})
        # Replaced by something that is not a database: an error, not stale data.
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_bytes(b"not a database" * 100)
        with pytest.raises(StoreError, match="cannot read state version"):
            reader.state_version()
    finally:
        reader.close()
