"""Shared fixtures: generated GeoIP databases and a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.mirror import DemoPKI
from geodns.steering.mmdb_writer import write_databases

from .statusworld import status_world  # noqa: F401  (the status page tests' store)
from .stores import store, store_url  # noqa: F401  (a store on SQLite and PostgreSQL)
from .util import ServerThread, settings_for

DATA = Path(__file__).resolve().parent / "data"
TEST_ZONES = DATA / "zones"


@pytest.fixture(scope="session")
def demo_geoip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The packaged demo networks written as real MaxMind DB files."""
    out = tmp_path_factory.mktemp("geoip")
    asn, city = write_databases(out)
    return asn, city


@pytest.fixture(scope="module")
def pki() -> Iterator[DemoPKI]:
    """A throw-away CA issuing the demo mirrors' certificates of every kind."""
    p = DemoPKI()
    yield p
    p.cleanup()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_geoip: tuple[Path, Path]
) -> Iterator[ServerThread]:
    """The test zones on 127.0.0.1 and ::1, ephemeral ports, no health store."""
    tmp = tmp_path_factory.mktemp("server")
    settings = settings_for(
        TEST_ZONES,
        tmp,
        demo_geoip,
        listen=[("127.0.0.1", 0), ("::1", 0)],
        tcp_idle_timeout=1.0,
        tcp_max_connections=50,
    )
    with ServerThread(settings) as st:
        yield st
