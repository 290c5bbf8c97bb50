"""A store filled by real checker rounds over demo HTTPS mirrors, for the status page.

    from .statusworld import status_world  # noqa: F401  (a session-scoped fixture)

Mirrors (real HTTPS servers on loopback, certificates from a throw-away CA):
  distfiles  ftp-good   127.0.0.1  healthy                          → up
             ftp-soon   127.0.0.2  certificate expires in 5 days    → warning
             ftp-stale  127.0.0.3  timestamp 9 hours old            → down (stale)
             XSS_NAME   127.0.0.4  timestamp answered 503 XSS_REASON → down
  isos       ftp-iso    127.0.0.1  (ftp-good's server)              → up
Two rounds as region "eu", then one round of `isos` as region "us", whose
checker is then made silent (its last check 2 hours ago).

`WebProcess` runs `checker web` as a real process on a free port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from checker.scheduler import run_once
from demo.mirror import DemoMirror, DemoPKI, Faults, MirrorThread, demo_config, mirror_entry
from demo.tree import Tree
from geodns.model import Checks, Config, FreshnessCheck, ObjectsCheck, Pool, TLSCheck
from geodns.store import Store

from .util import REPO, free_port, silence_region

# Remote and YAML text that must stay text: a mirror name and an HTTP reason phrase.
XSS_NAME = '<script>alert("name")</script>'
XSS_REASON = "<script>alert('reason')</script><img src=x onerror=alert(2)>"


@dataclass
class StatusWorld:
    url: str  # the SQLite store
    path: Path  # its file
    config: Config


@pytest.fixture(scope="session")
def status_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StatusWorld]:
    tmp = tmp_path_factory.mktemp("status")
    pki = DemoPKI()
    tree = Tree.generate(30, critical=("releases/latest.iso",))
    (tmp / "m.json").write_text(json.dumps(tree.manifest()))
    checks = Checks(
        tls=TLSCheck(warn_days=14),
        freshness=FreshnessCheck(path="/timestamp.txt", max_lag=6 * 3600),
        objects=ObjectsCheck(manifest=tmp / "m.json", sample=10, critical=("releases/latest.iso",)),
        fall=1,
        rise=1,
        timeout=2.0,
    )
    try:
        with ExitStack() as stack:

            def start(host: str, **kw: object) -> DemoMirror:
                m = DemoMirror(host=host, hostname=f"{host}.test", pki=pki, tree=tree, **kw)  # type: ignore[arg-type]
                return stack.enter_context(MirrorThread(m))

            good = start("127.0.0.1")
            soon = start("127.0.0.2", cert="expiring")
            stale = start("127.0.0.3", faults=Faults(stale=9 * 3600))
            hostile = start(
                "127.0.0.4",
                faults=Faults(errors={"timestamp.txt"}, error_reason=XSS_REASON),
            )
            dist = Pool(
                "distfiles",
                (
                    mirror_entry("ftp-good", good),
                    mirror_entry("ftp-soon", soon),
                    mirror_entry("ftp-stale", stale),
                    mirror_entry(XSS_NAME, hostile),
                ),
                checks=checks,
            )
            isos = Pool("isos", (mirror_entry("ftp-iso", good),), checks=checks)
            config = demo_config([dist, isos], tmp)
            path = tmp / "health.sqlite"
            url = f"sqlite:///{path}"
            with Store(url) as store:
                for _ in range(2):  # two results per address for the lag chart
                    asyncio.run(run_once(config, store, region="eu", ca_bundle=pki.ca_bundle))
                asyncio.run(
                    run_once(config, store, region="us", ca_bundle=pki.ca_bundle, pools=["isos"])
                )
                silence_region(store, "us", timedelta(hours=2))
            yield StatusWorld(url, path, config)
    finally:
        pki.cleanup()


class WebProcess:
    """`checker web` as a real process; always stopped (its own process group)."""

    def __init__(self, store_url: str, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = ["web", "--listen", f"127.0.0.1:{self.port}", "--store", store_url, *extra]
        self.logpath = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WebProcess:
        self.logfile = open(self.logpath, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "checker.cli", *self.args],
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"checker web exited: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"checker web did not answer: {self.log()}")

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.logfile.close()
