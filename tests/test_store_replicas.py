"""DNS nodes reading from PostgreSQL streaming replicas, through libpq multi-host URLs.

The store URL goes to SQLAlchemy untouched. Its psycopg dialect turns repeated
`host=` query parameters into libpq's comma-separated host list and passes
the other parameters — `target_session_attrs` among them — to libpq (14 or
newer; psycopg[binary] bundles one). So DNS nodes (read only) can use

    postgresql+psycopg://geodns:…@/geodns?host=replica1:5432&host=replica2:5432
        &host=primary:5432&target_session_attrs=prefer-standby

and checkers (they write) the same host list with `read-write`. Tested here
against a real hot standby made with pg_basebackup from the test PostgreSQL.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from geodns.store import Store, StoreError

from . import pg
from .conftest import TEST_ZONES
from .test_health import addrs
from .util import ServerThread, query, settings_for, udp

try:
    from pg import pg_server  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover — run from the repository root
    from tests.pg import pg_server  # noqa: F401

pytestmark = pytest.mark.postgres

DE = "192.0.2.0/24"
DE2 = ("distfiles", "mirror-de2", "127.5.0.1")
DE1 = ("distfiles", "mirror-de", "127.1.0.1")


def in_recovery(store: Store) -> bool:
    """Whether the store's connection went to a standby."""
    with store._engine.connect() as conn:
        return bool(conn.execute(text("SELECT pg_is_in_recovery()")).scalar())


def down_soon(store: Store, key: tuple[str, str, str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if key in store.down_addresses():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"{key} not down on the standby within {timeout} s")


@pytest.fixture
def primary_and_standby(pg_server: pg.PgServer) -> Iterator[tuple[pg.PgServer, pg.PgServer, str]]:
    url = pg_server.create_database()
    Store(url).close()  # the schema, as the first checker makes it
    standby = pg.start_standby(pg_server)
    try:
        yield pg_server, standby, str(make_url(url).database)
    finally:
        standby.stop()
        shutil.rmtree(standby.root, ignore_errors=True)


def multi_host(db: str, hosts: list[Path], attrs: str) -> str:
    qs = "&".join(f"host={h}" for h in hosts)
    return f"postgresql+psycopg://{pg.USER}@/{db}?{qs}&target_session_attrs={attrs}"


def test_a_dns_node_reads_the_standby_and_falls_back_to_the_primary(
    primary_and_standby: tuple[pg.PgServer, pg.PgServer, str],
    tmp_path: Path,
    demo_geoip: tuple[Path, Path],
) -> None:
    primary, standby, db = primary_and_standby
    hosts = [primary.socket_dir, standby.socket_dir]  # the primary first: order is no hint
    read_url = multi_host(db, hosts, "prefer-standby")
    write_url = multi_host(db, hosts, "read-write")

    with Store(write_url) as checker, Store(read_url, create=False) as node:
        assert not in_recovery(checker)  # a checker's writes go to the primary
        assert in_recovery(node)  # the DNS node reads the standby
        checker.set_state(*DE2, False, "test: TLS expired", region="eu")
        down_soon(node, DE2)  # replicated

        # the whole server on that URL: its answers follow the standby
        s = settings_for(TEST_ZONES, tmp_path, demo_geoip, store_url=read_url, health_interval=0.1)
        with ServerThread(s) as st:
            assert st.server.health.ok and DE2 in st.server.health.down
            got = addrs(udp(query("pad.example.org", ecs=DE), st.addr()))
            assert got and "127.5.0.1" not in got, got
            checker.set_state(*DE1, False, "test: refused", region="eu")
            deadline = time.monotonic() + 10
            while DE1 not in st.server.health.down and time.monotonic() < deadline:
                time.sleep(0.05)
            assert DE1 in st.server.health.down

    # the standby goes away: prefer-standby settles for the primary ...
    standby.stop()
    with Store(read_url, create=False) as node:
        assert not in_recovery(node)
        assert {DE1, DE2} <= node.down_addresses()
    # ... while `standby` insists, and says why (libpq got the attribute)
    with pytest.raises(StoreError, match="standby|recovery"):
        Store(multi_host(db, hosts, "standby"), create=False).close()
