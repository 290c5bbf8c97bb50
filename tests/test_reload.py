"""Reload on SIGHUP: good edits apply, bad ones are rejected, no query is lost."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import dns.exception
import dns.rcode

from .conftest import TEST_ZONES
from .util import ServerProcess, free_port, query, rrset_texts, serve_args, udp


def _copy_zones(tmp_path: Path) -> Path:
    d = tmp_path / "zones"
    shutil.copytree(TEST_ZONES, d)
    return d


def test_sighup_reload_good_then_bad(tmp_path: Path, demo_geoip: tuple[Path, Path]) -> None:
    zones = _copy_zones(tmp_path)
    port = free_port()
    addr = ("127.0.0.1", port)
    args = serve_args(zones, port, demo_geoip, tmp_path / "state")
    with ServerProcess(args, port, tmp_path / "server.log") as sp:
        assert rrset_texts(udp(query("mail.example.org"), addr).answer) == [
            "mail.example.org. 3600 IN A 192.0.2.25"
        ]
        # Queries keep flowing during reloads; none may be lost.
        stop = threading.Event()
        failures: list[str] = []
        sent = [0]

        def hammer() -> None:
            while not stop.is_set() and sent[0] < 20000:
                try:
                    r = udp(query("dl.example.org", ecs="192.0.2.0/24"), addr, timeout=1)
                    if r.rcode() != dns.rcode.NOERROR or not r.answer:
                        failures.append(f"rcode {r.rcode()}")
                except dns.exception.Timeout:
                    failures.append("timeout")
                sent[0] += 1

        t = threading.Thread(target=hammer, daemon=True)
        t.start()
        try:
            # good edit: a new address and a new mirror
            zf = zones / "example.org.yaml"
            zf.write_text(zf.read_text().replace("mail: {A: 192.0.2.25}", "mail: {A: 192.0.2.26}"))
            pf = zones / "pools" / "distfiles.yaml"
            pf.write_text(
                pf.read_text().replace(
                    "  - {name: origin,",
                    '  - {name: mirror-de3, url: "https://de3.example.net/", ipv4: [192.0.2.77], '
                    "country: DE, continent: EU, location: [52.52, 13.40], weight: 1000}\n"
                    "  - {name: origin,",
                )
            )
            sp.signal(signal.SIGHUP)
            assert sp.wait_log("config generation 2 loaded"), sp.log()
            assert rrset_texts(udp(query("mail.example.org"), addr).answer) == [
                "mail.example.org. 3600 IN A 192.0.2.26"
            ]
            r = udp(query("dl.example.org", ecs="192.0.2.0/24"), addr)
            assert r.answer[0][0].address == "192.0.2.77" or "192.0.2.77" in {
                x.address for x in r.answer[0]
            }
            # bad edit: rejected, old config keeps serving
            pf.write_text(pf.read_text().replace("192.0.2.77", "192.0.2.777"))
            sp.signal(signal.SIGHUP)
            assert sp.wait_log("reload rejected"), sp.log()
            assert "ipv4: '192.0.2.777' is not an IPv4 address" in sp.log()
            assert rrset_texts(udp(query("mail.example.org"), addr).answer) == [
                "mail.example.org. 3600 IN A 192.0.2.26"
            ]
            # several good reloads in a row under load
            pf.write_text(pf.read_text().replace("192.0.2.777", "192.0.2.78"))
            for i in range(3):
                sp.signal(signal.SIGHUP)
                assert sp.wait_log("loaded:", count=3 + i), sp.log()
            time.sleep(0.3)
        finally:
            stop.set()
            t.join(10)
        assert sent[0] > 50
        assert failures == [], f"{len(failures)} of {sent[0]} queries failed: {failures[:5]}"
        assert "192.0.2.78" in {
            x.address for x in udp(query("dl.example.org", ecs="192.0.2.0/24"), addr).answer[0]
        }


def test_invalid_config_at_startup_exits_nonzero(tmp_path: Path) -> None:
    import subprocess
    import sys

    zones = _copy_zones(tmp_path)
    (zones / "pools" / "distfiles.yaml").write_text("pool: distfiles\nmirrors: []\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "geodns.cli",
            "serve",
            "--config",
            str(zones),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--store",
            "none",
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert (
        "distfiles.yaml:2: pool 'distfiles': mirrors: a pool needs at least one mirror" in r.stderr
    )
    assert "not starting" in r.stderr
