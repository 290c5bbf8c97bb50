"""A drain reaching two running DNS servers that share one store: `checker
drain` (the real command) takes a mirror out within one health poll on both,
a timed drain ends by itself (no write to the store at its end, and no region
timeout to re-read for: --region-timeout 0), and undraining a mirror the
checker calls down does not bring it back until the checker says up."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from geodns.store import Store

from .conftest import TEST_ZONES
from .util import REPO, ServerProcess, free_port, query, serve_args, udp

pytestmark = pytest.mark.timeout(120)

INTERVAL = 1.0  # --health-interval of both servers
DE = "192.0.2.0/24"  # a German client: `pad` answers mirror-de and mirror-de2
DE2 = "127.5.0.1"


def answer(port: int) -> set[str]:
    msg = udp(query("pad.example.org", ecs=DE), ("127.0.0.1", port))
    return {rr.address for rrset in msg.answer for rr in rrset}


def checker(*argv: str) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-m", "checker.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.returncode, r.stdout + r.stderr


def until(pred: Callable[[], bool], timeout: float) -> float:
    """Seconds until `pred` holds (polled every 20 ms), or fail."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


@pytest.fixture
def two_servers(tmp_path: Path, demo_geoip: tuple[Path, Path]) -> Iterator[tuple[str, list[int]]]:
    url = f"sqlite:///{tmp_path}/health.sqlite"
    Store(url).close()  # the schema, as the checker makes it
    ports = [free_port(), free_port()]
    with ExitStack() as stack:
        for i, port in enumerate(ports):
            args = serve_args(TEST_ZONES, port, demo_geoip, tmp_path / f"state{i}")
            args[args.index("--store") + 1] = url
            args += ["--health-interval", str(INTERVAL), "--region-timeout", "0"]
            stack.enter_context(ServerProcess(args, port, tmp_path / f"server{i}.log"))
        yield url, ports


def test_drain_expiry_and_undrain_on_two_servers(two_servers: tuple[str, list[int]]) -> None:
    url, ports = two_servers
    for port in ports:
        assert answer(port) == {"127.1.0.1", DE2}
    base = ["--config", str(TEST_ZONES), "--store", url]

    # drain for 3 s: out on both within a poll (plus a rebuild) of the command's end
    t0 = time.monotonic()
    code, out = checker("drain", "mirror-de2", *base, "--reason", "e2e test", "--for", "3s")
    t_done = time.monotonic()
    assert code == 0, out
    for port in ports:
        until(lambda p=port: DE2 not in answer(p), INTERVAL + 2.5)
    out_after = time.monotonic() - t_done
    assert out_after < INTERVAL + 2.5, out_after
    for port in ports:  # and it stays out, whatever the rotation
        assert all(DE2 not in answer(port) for _ in range(10))

    # ... and back by itself after its end (nobody writes to the store then)
    with Store(url) as s:
        version = s.state_version()
    for port in ports:
        back = until(lambda p=port: DE2 in answer(p), 3 + INTERVAL + 3)
        assert time.monotonic() - t0 >= 3.0 - 0.05, back  # not before its end
    with Store(url) as s:
        assert s.state_version() == version and s.drains() == []

    # drained, then the checker finds it down: undrain leaves it out until it is up
    code, out = checker("drain", "mirror-de2", *base, "--reason", "maintenance")
    assert code == 0, out
    for port in ports:
        until(lambda p=port: DE2 not in answer(p), INTERVAL + 2.5)
    with Store(url) as s:  # what `checker run` records while the drain is on
        s.set_state("distfiles", "mirror-de2", DE2, False, "connection refused")
    code, out = checker("undrain", "mirror-de2", *base)
    assert code == 0, out
    time.sleep(2 * INTERVAL + 0.2)  # two polls later: still out, it is down
    for port in ports:
        assert all(DE2 not in answer(port) for _ in range(10))
    with Store(url) as s:  # `rise` passing checks later
        s.set_state("distfiles", "mirror-de2", DE2, True, "recovered: tls passed 2 checks")
    for port in ports:
        until(lambda p=port: DE2 in answer(p), INTERVAL + 2.5)
