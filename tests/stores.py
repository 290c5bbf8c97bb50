"""A store on SQLite and on a real PostgreSQL: fixtures the store tests share
(through tests/conftest.py). A module that uses the PostgreSQL one imports
`pg_server` from tests/pg.py beside its tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from geodns.store import Store


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
