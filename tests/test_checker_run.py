"""The scheduler loop, `checker run`, and the metrics it exports."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from checker import cli
from checker.scheduler import Checker, run_once
from checker.target import Target
from demo.mirror import DemoMirror, DemoPKI, Faults, demo_config, mirror_entry
from demo.tree import Tree
from geodns.model import Checks, FreshnessCheck, ObjectsCheck, Pool, TLSCheck
from geodns.store import Store

pytestmark = pytest.mark.timeout(60)


def fast_checks(tmp: Path, tree: Tree, interval: float = 0.2) -> Checks:
    (tmp / "m.json").write_text(json.dumps(tree.manifest()))
    return Checks(
        tls=TLSCheck(interval=interval),
        freshness=FreshnessCheck(path="/timestamp.txt", max_lag=3600, interval=interval),
        objects=ObjectsCheck(manifest=tmp / "m.json", sample=5, interval=interval * 2),
        fall=2,
        rise=2,
        timeout=0.5,
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_run_loop_follows_a_mirror_down_and_up(tmp_path: Path, pki: DemoPKI) -> None:
    tree = Tree.generate(20)
    store = Store(f"sqlite:///{tmp_path}/h.sqlite")
    async with DemoMirror(
        pki=pki, tree=tree, hostname="mirror-a.test", faults=Faults(stale=2 * 3600)
    ) as a:
        pool = Pool("p", (mirror_entry("a", a),), checks=fast_checks(tmp_path, tree))
        checker = Checker(demo_config([pool], tmp_path), store, ca_bundle=pki.ca_bundle)
        stop = asyncio.Event()
        task = asyncio.create_task(checker.run(stop, jitter=0.1))

        async def wait_for(up: bool, limit: float = 10.0) -> float:
            t0 = time.monotonic()
            while time.monotonic() - t0 < limit:
                s = store.get_state("p", "a", "127.0.0.1")
                if s is not None and s.up is up and not (up and s.detail != "ok"):
                    return time.monotonic() - t0
                await asyncio.sleep(0.05)
            raise AssertionError(f"never became {'up' if up else 'down'}")

        try:
            took = await wait_for(False)
            assert took < 3, "fall=2 at a 0.2s interval"
            a.faults.stale = 0
            await wait_for(True)
            tls_runs = len(store.results(kind="tls", limit=1000))
            assert tls_runs >= 3, "TLS is re-checked every interval"
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            checker.close()
    changes = [(c.up, c.reason) for c in store.history("a")]
    assert changes[0] == (True, "recovered: freshness passed 2 consecutive checks")
    assert changes[1] == (False, "stale: 2h behind the checker's clock (max 1h)")
    assert sample("geodns_checker_mirrors", pool="p", state="up") == 1
    store.close()


async def test_run_once_api_and_metrics(tmp_path: Path, pki: DemoPKI) -> None:
    tree = Tree.generate(10)
    before_ok = sample("geodns_checker_probes_total", kind="tls", result="ok")
    before_fail = sample("geodns_checker_probes_total", kind="tls", result="fail")
    rounds = sample("geodns_checker_round_duration_seconds_count")
    async with (
        DemoMirror(pki=pki, tree=tree, hostname="a.test") as a,
        DemoMirror(pki=pki, tree=tree, hostname="b.test", host="127.0.0.2", cert="expired") as b,
    ):
        pool = Pool(
            "p", (mirror_entry("a", a), mirror_entry("b", b)), checks=fast_checks(tmp_path, tree)
        )
        with Store("sqlite://") as store:
            result = await run_once(
                demo_config([pool], tmp_path), store, region="eu", ca_bundle=pki.ca_bundle
            )
            assert result.targets == 2 and result.probes == 6
            assert result.down == [("p", "b", "127.0.0.2")]
            assert sorted(c.mirror for c in result.changes) == ["a", "b"]
            assert store.states(region="eu")[0].region == "eu"
            assert "2 addresses, 6 probes (1 failed), 1 down" in result.summary()
    assert sample("geodns_checker_probes_total", kind="tls", result="ok") == before_ok + 1
    assert sample("geodns_checker_probes_total", kind="tls", result="fail") == before_fail + 1
    assert sample("geodns_checker_round_duration_seconds_count") == rounds + 1
    assert sample("geodns_checker_mirrors", pool="p", state="down") == 1


async def test_cli_run_once(
    tmp_path: Path,
    pki: DemoPKI,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tree = Tree.generate(10)
    async with DemoMirror(pki=pki, tree=tree, hostname="a.test") as a:
        config = demo_config(
            [Pool("p", (mirror_entry("a", a),), checks=fast_checks(tmp_path, tree))], tmp_path
        )
        monkeypatch.setattr(cli, "_load_config", lambda root: config)
        url = f"sqlite:///{tmp_path}/state/h.sqlite"
        argv = [
            "run",
            "--config",
            "zones",
            "--store",
            url,
            "--once",
            "--ca-bundle",
            str(pki.ca_bundle),
        ]
        # The CLI runs its own event loop; keep this test's loop (and mirror) in another thread.
        code = await asyncio.to_thread(cli.main, argv)
        out = capsys.readouterr().out
        assert code == 0
        assert "p/a 127.0.0.1: up: first check: passed" in out
        assert out.strip().endswith("0 down, 1 changes in " + out.strip().rsplit(" ", 1)[1])
        # --pipeline reaches the objects probe's HTTP client
        seen: list[int] = []
        client = Target.client

        def spy(self: Target, **kw: Any) -> Any:
            seen.append(kw.get("pipeline", 1))
            return client(self, **kw)

        monkeypatch.setattr(Target, "client", spy)
        code = await asyncio.to_thread(cli.main, [*argv, "--pipeline", "4"])
        assert code == 0 and 4 in seen, (seen, capsys.readouterr())
        assert "0 down" in capsys.readouterr().out
        code = await asyncio.to_thread(cli.main, [*argv, "--pool", "nope"])
        err = capsys.readouterr().err
        assert code == 2 and "no pool named 'nope'; the config has p" in err
    with Store(url, create=False) as s:
        assert s.get_state("p", "a", "127.0.0.1") is not None
