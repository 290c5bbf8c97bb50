"""The checker and drains: a drained mirror is still probed (the report shows
its health), the gauge counts it as drained, and undraining a mirror that went
down meanwhile leaves it down until `rise` passing checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from checker.report import build_rows
from checker.scheduler import Checker
from demo.mirror import DemoMirror, DemoPKI, Faults, demo_config, mirror_entry
from demo.tree import Tree
from geodns.model import Pool
from geodns.store import Store

from .test_checker_run import fast_checks

pytestmark = pytest.mark.timeout(60)


def gauge(state: str) -> float:
    return REGISTRY.get_sample_value("geodns_checker_mirrors", {"pool": "pd", "state": state}) or 0


async def test_drained_mirror_is_probed_and_undrain_waits_for_rise(
    tmp_path: Path, pki: DemoPKI
) -> None:
    tree = Tree.generate(10)
    store = Store(f"sqlite:///{tmp_path}/h.sqlite")
    async with DemoMirror(pki=pki, tree=tree, hostname="a.test", faults=Faults()) as a:
        pool = Pool("pd", (mirror_entry("a", a),), checks=fast_checks(tmp_path, tree))
        checker = Checker(demo_config([pool], tmp_path), store, ca_bundle=pki.ca_bundle)
        try:
            store.drain("a", reason="maintenance", who="alice")
            r = await checker.round()
            assert r.probes == 3 and r.down == []  # probed all the same
            assert (gauge("drained"), gauge("up"), gauge("down")) == (1, 0, 0)

            a.faults.stale = 2 * 3600  # it breaks while drained (fall 2)
            await checker.round()
            r = await checker.round()
            assert r.down == [("pd", "a", "127.0.0.1")]
            assert (gauge("drained"), gauge("down")) == (1, 0)
            (row,) = build_rows(store.states(), drains=store.drains())
            assert (row.state, row.health) == ("drained", "down")

            assert [d.mirror for d in store.undrain("a", who="alice")] == ["a"]
            a.faults.stale = 0  # fixed: it still needs rise=2 passing checks
            r = await checker.round()
            assert r.down == [("pd", "a", "127.0.0.1")]
            assert (gauge("drained"), gauge("down")) == (0, 1)
            r = await checker.round()
            assert r.down == [] and (gauge("up"), gauge("down")) == (1, 0)
            assert "recovered" in r.changes[0].reason
        finally:
            checker.close()
            store.close()
