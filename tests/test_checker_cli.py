"""`checker run` as operators run it: a process reading real pool YAML.

Starts demo mirrors, writes a config directory, runs the checker as a
subprocess with `--metrics`, reloads it with SIGHUP and stops it with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo.mirror import DemoMirror, DemoPKI, Faults, MirrorThread
from demo.tree import Tree
from geodns.store import Store, StoreError

from .util import free_port

pytestmark = pytest.mark.timeout(90)

POOL = """\
pool: dist
checks:
  tls: {{warn_days: 14, interval: 1s}}
  freshness: {{path: /project/trace/master, max_lag: 6h, interval: 1s}}
  objects: {{manifest: manifest.json, sample: 12, critical: [releases/latest.iso], interval: 1s}}
  apt: {{suites: [bookworm], interval: 1s}}
  fall: 2
  rise: 1
  timeout: 1s
mirrors:
  - name: good
    url: https://good.test:{good}/debian/
    ipv4: [127.0.0.1]
  - name: stale
    url: https://stale.test:{stale}/debian/
    ipv4: [127.0.0.2]
{extra}"""

DISABLED = """\
  - name: resting
    url: https://resting.test:{good}/debian/
    ipv4: [127.0.0.3]
    enabled: false
"""


def wait(cond: Callable[[], object], limit: float, what: str) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            if cond():
                return
        except StoreError:
            pass  # the checker has not created the store yet
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def mirrors() -> Iterator[tuple[DemoPKI, Tree, dict[str, int]]]:
    pki = DemoPKI()
    tree = Tree.generate(40, critical=("releases/latest.iso",))
    tree.add_apt_suite("bookworm")
    try:
        with (
            MirrorThread(
                DemoMirror(hostname="good.test", pki=pki, tree=tree, base_path="/debian/")
            ) as good,
            MirrorThread(
                DemoMirror(
                    host="127.0.0.2",
                    hostname="stale.test",
                    pki=pki,
                    tree=tree,
                    base_path="/debian/",
                    faults=Faults(stale=8 * 3600),
                )
            ) as stale,
        ):
            yield pki, tree, {"good": good.port, "stale": stale.port}
    finally:
        pki.cleanup()


def test_run_process_metrics_reload_and_stop(
    tmp_path: Path, mirrors: tuple[DemoPKI, Tree, dict[str, int]]
) -> None:
    pki, tree, ports = mirrors
    conf = tmp_path / "zones"
    (conf / "pools").mkdir(parents=True)
    (conf / "manifest.json").write_text(json.dumps(tree.manifest()))
    pool_file = conf / "pools" / "dist.yaml"
    pool_file.write_text(POOL.format(extra="", **ports))
    url = f"sqlite:///{tmp_path}/state/health.sqlite"
    metrics = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "checker.cli",
            "run",
            "--config",
            str(conf),
            "--store",
            url,
            "--ca-bundle",
            str(pki.ca_bundle),
            "--metrics",
            f"127.0.0.1:{metrics}",
            "--log-level",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:

        def down_stale() -> bool:
            with Store(url, create=False) as s:
                return s.down_addresses() == frozenset({("dist", "stale", "127.0.0.2")})

        wait(down_stale, 20, "the stale mirror to go down")
        with Store(url, create=False) as s:
            good = s.get_state("dist", "good", "127.0.0.1")
            assert good is not None and good.up
            assert set(good.kinds) == {"tls", "freshness", "objects", "apt"}
            stale = s.get_state("dist", "stale", "127.0.0.2")
            assert stale is not None
            assert stale.reason == "stale: 8h behind the checker's clock (max 6h)"

        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read()
        text = body.decode()
        assert 'geodns_checker_probes_total{kind="tls",result="ok"}' in text
        assert 'geodns_checker_probes_total{kind="freshness",result="fail"}' in text
        assert 'geodns_checker_mirrors{pool="dist",state="down"} 1.0' in text
        assert "geodns_checker_round_duration_seconds_count" in text

        # SIGHUP: a broken file keeps the old config; a good one is picked up.
        pool_file.write_text("pool: dist\nmirrors: [oops\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        pool_file.write_text(POOL.format(extra=DISABLED.format(**ports), **ports))
        proc.send_signal(signal.SIGHUP)

        def resting() -> bool:
            with Store(url, create=False) as s:
                st = s.get_state("dist", "resting", "127.0.0.3")
                return st is not None and st.disabled

        wait(resting, 20, "the reloaded config's disabled mirror")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "reload failed, keeping the old configuration" in err
    assert "configuration reloaded: 3 addresses" in err
    assert "dist/stale 127.0.0.2 is DOWN: stale: 8h behind" in err


def test_run_with_invalid_config_explains_and_exits_2(tmp_path: Path) -> None:
    conf = tmp_path / "zones"
    (conf / "pools").mkdir(parents=True)
    (conf / "pools" / "dist.yaml").write_text(
        "pool: dist\nmirrors:\n  - name: a\n    url: https://a.test/\n    ipv4: [300.1.2.3]\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "checker.cli",
            "run",
            "--once",
            "--config",
            str(conf),
            "--store",
            f"sqlite:///{tmp_path}/h.sqlite",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("checker: configuration is not valid:\n  ")
    assert "300.1.2.3" in proc.stderr
