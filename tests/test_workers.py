"""--workers N: processes share the port with SO_REUSEPORT; reloads reach all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path

from .conftest import TEST_ZONES
from .util import ServerProcess, free_port, query, rrset_texts, serve_args, udp


def test_two_workers_share_the_port_and_reload_together(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    zones = tmp_path / "zones"
    shutil.copytree(TEST_ZONES, zones)
    port = free_port()
    addr = ("127.0.0.1", port)
    args = serve_args(zones, port, demo_geoip, tmp_path / "state", "--workers", "2")
    with ServerProcess(args, port, tmp_path / "server.log") as sp:
        assert sp.wait_log("listening on", count=2), sp.log()
        for _ in range(50):
            assert udp(query("mail.example.org"), addr).rcode() == 0
        zf = zones / "example.org.yaml"
        zf.write_text(zf.read_text().replace("mail: {A: 192.0.2.25}", "mail: {A: 192.0.2.27}"))
        sp.signal(signal.SIGHUP)
        assert sp.wait_log("config generation 2 loaded", count=2), sp.log()
        for _ in range(50):  # whichever worker the kernel picks answers the new data
            assert rrset_texts(udp(query("mail.example.org"), addr).answer) == [
                "mail.example.org. 3600 IN A 192.0.2.27"
            ]
        sp.signal(signal.SIGTERM)
        assert sp.proc is not None
        assert sp.proc.wait(15) == 0
        assert sp.log().count("stopped") == 2


def _scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 — loopback
        return str(r.read().decode())


def _requests_total(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("geodns_dns_requests_total{")
    )


def test_metrics_add_up_every_workers_counters(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    port, mport = free_port(), free_port()
    addr = ("127.0.0.1", port)
    state = tmp_path / "state"
    stale = state / "workers" / "worker-3.json"  # left by an earlier run with more workers
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    args = serve_args(
        TEST_ZONES, port, demo_geoip, state, "--workers", "2", "--metrics", f"127.0.0.1:{mport}"
    )
    with ServerProcess(args, port, tmp_path / "server.log") as sp:
        assert sp.wait_log("listening on", count=2), sp.log()
        assert not stale.exists()
        n = 300
        for _ in range(n):  # a new source port each: the kernel spreads them over both
            assert udp(query("mail.example.org"), addr).rcode() == 0
        deadline = time.monotonic() + 10
        text = _scrape(mport)
        while _requests_total(text) < n and time.monotonic() < deadline:
            time.sleep(0.2)
            text = _scrape(mport)
        assert "geodns_workers 2.0" in text
        assert _requests_total(text) == n, text
        # worker 1 really answered some of them (else the sum proves nothing)
        snap = json.loads((state / "workers" / "worker-1.json").read_text())
        assert sum(n for row in snap["qtypes"] for d in row for _, n in d) > 0
        # worker 1 dies and is restarted: its counts so far are not forgotten
        os.kill(snap["pid"], signal.SIGKILL)
        assert sp.wait_log("worker 1 (pid", count=2, timeout=20), sp.log()
        for _ in range(n):
            assert udp(query("mail.example.org"), addr).rcode() == 0
        deadline = time.monotonic() + 10
        text = _scrape(mport)
        while _requests_total(text) < 2 * n and time.monotonic() < deadline:
            time.sleep(0.2)
            text = _scrape(mport)
        assert _requests_total(text) == 2 * n, text
