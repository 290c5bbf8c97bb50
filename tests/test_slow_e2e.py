"""Issue 18 end to end: a throttled demo mirror (real bytes over HTTPS, paced)
goes `slow` in the checker's store, the DNS server stops preferring it (a fast
mirror one group farther away is answered instead), `geodns explain` says
why, and it comes back when the throttle is lifted. The far mirror ignores
Range all along, and no GET of either mirror ever sends more than the budget.

Near: 127.1.18.1 (Frankfurt in the demo GeoIP), far: 127.4.18.1 (Paris); the
client is Berlin (192.0.2.0/24 by ECS), so near is the country tier and far
the continent tier: one group apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from checker.scheduler import Checker
from demo.mirror import DemoMirror, DemoPKI, Faults
from demo.tree import Tree
from geodns.cli.explain import render
from geodns.config import load_config
from geodns.runtime.explain import explain
from geodns.store import Store

from .util import ServerThread, free_port, query, settings_for, udp

pytestmark = pytest.mark.timeout(90)

NEAR, FAR = "127.1.18.1", "127.4.18.1"
BERLIN = "192.0.2.0/24"
KiB = 1024
SAMPLE, BUDGET = 32 * KiB, 64 * KiB
THROTTLE = 32_000  # bytes per second: a 32 KiB sample takes about a second

ZONE = """\
zone: example.org
soa: {mname: ns1.example.org, rname: hostmaster.example.org}
ns: [ns1.example.org]
records:
  ns1: {A: 192.0.2.53}
steered:
  dl: {pool: speed, answers: 1, ttl: 5}
"""
POOL = """\
pool: speed
checks:
  throughput: {manifest: manifest.json, min_mbps: 0.3, rounds: 2, sample_bytes: 32KiB,
               budget: 64KiB, interval: 0.3}
  fall: 1
  rise: 1
  timeout: 3s
mirrors:
  - {name: near, url: "https://near.test:%d/", ipv4: [%s]}
  - {name: far, url: "https://far.test:%d/", ipv4: [%s]}
"""


def _answer(st: ServerThread) -> list[str]:
    msg = udp(query("dl.example.org", ecs=BERLIN), st.addr())
    return [rr.address for rrset in msg.answer for rr in rrset]


async def _until(pred: Callable[[], bool], limit: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if await asyncio.to_thread(pred):
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {limit}s: {what}")


async def test_throttled_mirror_goes_slow_loses_to_a_farther_one_and_comes_back(
    tmp_path: Path, pki: DemoPKI, demo_geoip: tuple[Path, Path]
) -> None:
    tree = Tree.generate(5)
    tree.add("pub/sample.bin", size=48 * KiB)  # >= the sample, and within the budget whole
    near_port, far_port = free_port(NEAR), free_port(FAR)
    zones = tmp_path / "zones"
    (zones / "pools").mkdir(parents=True)
    (zones / "example.org.yaml").write_text(ZONE)
    (zones / "pools" / "speed.yaml").write_text(POOL % (near_port, NEAR, far_port, FAR))
    (zones / "manifest.json").write_text(json.dumps(tree.manifest()))
    url = f"sqlite:///{tmp_path}/health.sqlite"
    near = DemoMirror(host=NEAR, port=near_port, hostname="near.test", pki=pki, tree=tree)
    far = DemoMirror(
        host=FAR,
        port=far_port,
        hostname="far.test",
        pki=pki,
        tree=tree,
        faults=Faults(no_range=True),
    )
    settings = settings_for(zones, tmp_path, demo_geoip, store_url=url, health_interval=0.1)
    store = Store(url)
    stop = asyncio.Event()
    async with near, far:
        checker = Checker(load_config(zones), store, ca_bundle=pki.ca_bundle)
        run = asyncio.create_task(checker.run(stop, jitter=0.05))
        try:
            with ServerThread(settings) as st:

                def verdict(address: str) -> Any:
                    s = store.get_state("speed", "near" if address == NEAR else "far", address)
                    data = (s.kinds.get("throughput") or {}).get("data", {}) if s else {}
                    return data.get("slow")

                await _until(lambda: verdict(NEAR) is False, 20, "near measured fast")
                assert await asyncio.to_thread(_answer, st) == [NEAR]

                near.faults.throttle = THROTTLE
                took = await _until(lambda: _answer(st) == [FAR], 20, "far answered")
                s = store.get_state("speed", "near", NEAR)
                assert s is not None and s.up and s.slow
                assert (
                    s.reason.startswith("slow: ") and "median over 2 rounds (min 0.3)" in s.reason
                )
                data = s.kinds["throughput"]["data"]
                assert data["median_mbps"] == pytest.approx(THROTTLE / 1e6, rel=0.3)
                assert (await asyncio.to_thread(store.get_state, "speed", "far", FAR)).slow is False

                async def why() -> dict[str, Any]:
                    return explain(st.server, "dl.example.org", BERLIN)

                shown = await asyncio.to_thread(st.call, why())
                near_row = next(m for m in shown["mirrors"] if m["mirror"] == "near")
                assert near_row["slow"] and near_row["state"] == "ranked"
                assert near_row["why"] == f"slow: {s.slow_reason}; ranks one group behind"
                assert s.slow_reason == data["summary"]
                assert shown["answer"] == [FAR]
                text = render(shown)
                assert "0 address(es) down, 0 drain(s), 1 slow" in text
                assert f"slow: {s.slow_reason}; ranks one group behind" in text

                near.faults.throttle = 0
                back = await _until(lambda: _answer(st) == [NEAR], 20, "near answered again")
                changes = [(c.state, c.reason) for c in store.history("near")]
                assert [state for state, _ in changes[:2]] == ["up", "slow"]
                assert changes[0][1].startswith("fast again: ")
        finally:
            stop.set()
            await asyncio.wait_for(run, 10)
            checker.close()
            store.close()
    # the budget, counted by the mirrors: no GET ever sent more
    for m in (near, far):
        assert m.gets and all(n <= BUDGET for _, _, n in m.gets), list(m.gets)
    assert all(status == 206 and n == SAMPLE for _, status, n in near.gets)
    # the far mirror ignores Range: its first sample was cut at SAMPLE by the
    # reader; later ones fetch the 48 KiB object whole, within the budget
    assert {status for _, status, _ in far.gets} == {200}
    print(f"\nslow after {took:.1f}s, back after {back:.1f}s; near GETs {len(near.gets)}")
