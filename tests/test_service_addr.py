"""Anycast service addresses: on `lo` while the server answers, withdrawn when it
stops (before the sockets close), and removable by `geodns withdraw` after a crash.
Runs inside a network namespace this test creates."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geodns.runtime import service_addr

from .conftest import TEST_ZONES
from .netns import NetnsBed, in_netns, require_netns
from .util import REPO, query, udp

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

SERVICE = [ipaddress.ip_interface("10.98.0.53/32"), ipaddress.ip_interface("fd00:98::53/128")]


def _on_lo(bed: NetnsBed, ns: str) -> set[str]:
    return in_netns(ns, lambda: service_addr.present(SERVICE, "lo"))


def _wait(pred, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_service_addresses_follow_the_server(tmp_path: Path) -> None:
    require_netns()
    with NetnsBed() as bed:
        host = bed.add_host("anycast", "10.99.0.60", "fd00:99::60")
        argv = [
            sys.executable,
            "-m",
            "geodns.cli",
            "serve",
            "--config",
            str(TEST_ZONES),
            "--store",
            "none",
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            "10.98.0.53:53",
            "--listen",
            "[fd00:98::53]:53",
            "--service-dev",
            "lo",
            "--service-drain",
            "0.2",
            *[a for s in SERVICE for a in ("--service-address", str(s))],
        ]
        log = tmp_path / "serve.log"
        assert _on_lo(bed, host.ns) == set()
        proc = bed.popen(host, argv, log=log, cwd=REPO)
        # bound first (IP_FREEBIND), announced only once it answers
        _wait(lambda: "announced" in log.read_text() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert text.index("listening on fd00:98::53") < text.index("announced"), text
        assert _on_lo(bed, host.ns) == {"10.98.0.53", "fd00:98::53"}
        for addr in ("10.98.0.53", "fd00:98::53"):
            r = in_netns(host.ns, lambda a=addr: udp(query("mail.example.org"), (a, 53)))
            assert [rr.address for rr in r.answer[0]] == ["192.0.2.25"]
        # a clean stop withdraws the addresses (then closes)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
        assert _on_lo(bed, host.ns) == set()
        assert "withdrawn" in log.read_text()

        # a crash leaves them; `geodns withdraw` (ExecStopPost=) removes them
        proc = bed.popen(host, argv, log=tmp_path / "serve2.log", cwd=REPO)
        _wait(lambda: _on_lo(bed, host.ns) == {"10.98.0.53", "fd00:98::53"})
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _on_lo(bed, host.ns) == {"10.98.0.53", "fd00:98::53"}
        r = bed.run(
            host,
            [
                sys.executable,
                "-m",
                "geodns.cli",
                "withdraw",
                *[a for s in SERVICE for a in ("--service-address", str(s))],
            ],
            cwd=REPO,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert _on_lo(bed, host.ns) == set()
        # and withdrawing again is not an error
        again = bed.run(
            host,
            [sys.executable, "-m", "geodns.cli", "withdraw", "--service-address", "10.98.0.53/32"],
            cwd=REPO,
        )
        assert again.returncode == 0, again.stderr
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "geodns.cli",
                "withdraw",
                "--service-address",
                "10.98.0.53/32",
                "--service-dev",
                "nosuchdev0",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 1 and "no network device named 'nosuchdev0'" in bad.stderr
