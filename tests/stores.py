"""A store on SQLite and on a real PostgreSQL: fixtures the store tests share
(through tests/conftest.py). A module that uses the PostgreSQL one imports
`pg_server` from tests/pg.py beside its tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from geodns.store import Store

MIGRATIONS = Path(__file__).resolve().parent.parent / "geodns" / "store" / "migrations"


def alembic(url: str, action: str, revision: str) -> None:
    """`alembic upgrade|downgrade <revision>` on the store at `url` (an older
    release's schema, for the upgrade-order tests)."""
    from alembic import command
    from alembic.config import Config

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state/health.sqlite"
        return
    server = request.getfixturevalue("pg_server")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    try:
        yield s
    finally:
        s.close()
