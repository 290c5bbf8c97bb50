"""--workers N: processes share the port with SO_REUSEPORT; reloads reach all."""

from __future__ import annotations

import shutil
import signal
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
