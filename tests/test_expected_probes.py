"""Checkers reading the expected state from the store (issue 17), against real
HTTPS demo mirrors on loopback: new objects first on every mirror, two checkers
sharing one expected state, removed objects still served, nothing published."""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from checker import cli
from checker.publish import publish
from checker.scheduler import Checker
from demo.mirror import DemoMirror, DemoPKI, Faults, MirrorThread, demo_config, mirror_entry
from demo.tree import Tree
from geodns.model import Checks, Mirror, ObjectsCheck, Pool
from geodns.store import Store

try:
    from pg import pg_server  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover - tests/ became a package
    from tests.pg import pg_server  # noqa: F401


pytestmark = pytest.mark.timeout(90)

OLD = 1_700_000_000


def put(root: Path, rel: str, data: bytes, mtime: int) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, (mtime, mtime))


def settle(root: Path) -> Path:
    """Directories at a fixed mtime, so the rows a publish changes are exact."""
    for d, _dirs, _files in os.walk(root):
        os.utime(d, (OLD, OLD))
    return root


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    for i in range(300):
        put(root, f"d/{i % 10}/f{i:03d}", bytes([i % 256]) * (i % 50 + 1), OLD + i)
    return settle(root)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/health.sqlite")
    yield s
    s.close()


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as st:
        yield st


async def serve(
    stack: AsyncExitStack, pki: DemoPKI, origin: Path, host: str, **kw: Any
) -> DemoMirror:
    """A mirror with a copy of the origin as it is now (it lags from then on)."""
    m = DemoMirror(
        host=host, hostname=f"m{host[-1]}.test", pki=pki, tree=Tree.from_dir(origin), **kw
    )
    return await stack.enter_async_context(m)


def checker(
    store: Store, pki: DemoPKI, tmp: Path, mirrors: list[Mirror], region: str = "", **kw: Any
) -> Checker:
    obj = ObjectsCheck(expected=kw.pop("expected", "p"), concurrency=4, **kw)
    pool = Pool("p", tuple(mirrors), checks=Checks(objects=obj, fall=2, rise=1, timeout=2.0))
    # expected_interval=0: look at the store's head every round (tests run rounds back to back)
    return Checker(
        demo_config([pool], tmp),
        store,
        region=region,
        ca_bundle=pki.ca_bundle,
        expected_interval=0,
    )


def objects_data(store: Store, mirror: str, address: str, region: str = "") -> dict[str, Any]:
    s = store.get_state("p", mirror, address, region)
    assert s is not None
    return dict(s.kinds["objects"]["data"])


async def test_new_objects_are_checked_first_on_every_mirror(
    stack: AsyncExitStack, pki: DemoPKI, store: Store, origin: Path, tmp_path: Path
) -> None:
    publish(store, "p", origin)
    a = await serve(stack, pki, origin, "127.0.0.1")
    b = await serve(stack, pki, origin, "127.0.0.2")
    c = checker(store, pki, tmp_path, [mirror_entry("a", a), mirror_entry("b", b)], sample=20)
    try:
        await c.round()
        for m, addr in (("a", "127.0.0.1"), ("b", "127.0.0.2")):
            d = objects_data(store, m, addr)
            assert (d["version"], d["new"], d["checked"], d["missing"]) == (1, 0, 20, 0)

        # Twelve objects arrive on the origin with OLD mtimes (as upstream
        # tarballs do), so "newest by mtime" would not pick the oldest of them.
        new = [f"d/new/n{j:02d}" for j in range(12)]
        for j, path in enumerate(new):
            put(origin, path, b"new" * (j + 1), OLD - 1000 - j)
        publish(store, "p", origin)
        lagging = new[-1]
        for j, path in enumerate(new[:-1]):  # mirror a has synced all but one
            a.tree.add(path, b"new" * (j + 1), mtime=OLD - 1000 - j)
        # mirror b has not synced at all

        await c.round()
        da, db = objects_data(store, "a", "127.0.0.1"), objects_data(store, "b", "127.0.0.2")
        assert (da["version"], da["new"], da["new_pending"]) == (2, 12, 0)
        assert (db["version"], db["new"], db["new_pending"]) == (2, 12, 0)
        assert da["missing"] == 1 and da["examples"] == [lagging]
        assert db["missing"] == 12
        sa = store.get_state("p", "a", "127.0.0.1")
        assert sa is not None and sa.detail == (
            f"objects failing 1/2: 1 of 20 objects missing (e.g. {lagging})"
        )
        # The cursor moved past them: the next round samples as usual again.
        assert da["new_after"][1] == lagging
        await c.round()
        assert objects_data(store, "a", "127.0.0.1")["new"] == 0
        assert objects_data(store, "b", "127.0.0.2")["new"] == 0
    finally:
        c.close()


async def test_more_new_objects_than_the_sample_carry_over_to_the_next_round(
    stack: AsyncExitStack, pki: DemoPKI, store: Store, origin: Path, tmp_path: Path
) -> None:
    publish(store, "p", origin)
    a = await serve(stack, pki, origin, "127.0.0.1")
    c = checker(store, pki, tmp_path, [mirror_entry("a", a)], sample=10)
    try:
        await c.round()
        for j in range(25):
            put(origin, f"d/new/n{j:02d}", b"n", OLD - j)
        publish(store, "p", origin)
        seen = []
        for _ in range(3):
            await c.round()
            d = objects_data(store, "a", "127.0.0.1")
            seen.append((d["new"], d["new_pending"]))
        # 9 per round (one slot stays with the rotation), the rest next time
        assert seen == [(9, 16), (9, 7), (7, 0)]
    finally:
        c.close()


async def test_two_checkers_share_one_expected_state(
    stack: AsyncExitStack, pki: DemoPKI, store_url: str, origin: Path, tmp_path: Path
) -> None:
    store = Store(store_url)
    a = await serve(stack, pki, origin, "127.0.0.1")
    eu = checker(store, pki, tmp_path, [mirror_entry("a", a)], region="eu", sample=10)
    us = checker(store, pki, tmp_path, [mirror_entry("a", a)], region="us", sample=10)
    try:
        publish(store, "p", origin)
        await eu.round()
        await us.round()
        put(origin, "d/new/one", b"1", OLD)
        put(origin, "d/new/two", b"22", OLD)
        publish(store, "p", settle(origin))  # the origin has both; the mirror only one
        a.tree.add("d/new/one", b"1", mtime=OLD)
        await eu.round()
        await us.round()
        for region, c in (("eu", eu), ("us", us)):
            d = objects_data(store, "a", "127.0.0.1", region)
            assert (d["version"], d["new"], d["missing"], d["examples"]) == (
                2,
                2,
                1,
                ["d/new/two"],
            )
            cache = c._expected["p"]
            # one full load, then only the rows of version 2 (2 objects + the directory)
            assert (cache.full_loads, cache.deltas, cache.rows_read) == (1, 1, 300 + 3)
        assert sorted(s.region for s in store.states(pool="p")) == ["eu", "us"]
    finally:
        eu.close()
        us.close()
        store.close()


async def test_removed_objects_still_served_are_a_warning_only(
    stack: AsyncExitStack, pki: DemoPKI, store: Store, origin: Path, tmp_path: Path
) -> None:
    publish(store, "p", origin)
    removed = ["d/3/f003", "d/4/f004"]
    keeps = await serve(stack, pki, origin, "127.0.0.1")  # has not deleted them yet
    deleted = await serve(stack, pki, origin, "127.0.0.2", faults=Faults(missing=set(removed)))
    for path in removed:
        (origin / path).unlink()
    publish(store, "p", origin)
    c = checker(
        store,
        pki,
        tmp_path,
        [mirror_entry("a", keeps), mirror_entry("b", deleted)],
        sample=10,
        gone_sample=5,
        gone_after=0.0,
    )
    try:
        await c.round()
        s = store.get_state("p", "a", "127.0.0.1")
        assert s is not None and s.up and s.detail.startswith("ok, ")
        assert s.warning is not None and s.warning.startswith(
            "2 of 2 objects removed from the origin still served (e.g. d/"
        )
        d = objects_data(store, "a", "127.0.0.1")
        assert (d["gone_checked"], d["gone_served"]) == (2, 2)
        sb = store.get_state("p", "b", "127.0.0.2")
        assert sb is not None and sb.up and sb.warning is None
        assert objects_data(store, "b", "127.0.0.2")["gone_checked"] == 2
    finally:
        c.close()


async def test_nothing_published_yet_is_a_warning_not_down(
    stack: AsyncExitStack, pki: DemoPKI, store: Store, origin: Path, tmp_path: Path
) -> None:
    a = await serve(stack, pki, origin, "127.0.0.1")
    c = checker(store, pki, tmp_path, [mirror_entry("a", a)], expected="distfiles", sample=10)
    try:
        await c.round()
        s = store.get_state("p", "a", "127.0.0.1")
        assert s is not None and s.up and a.requests == 0
        assert s.warning == (
            "no expected state published for 'distfiles' "
            "(run `checker manifest publish ROOT --pool distfiles` on the origin)"
        )
        publish(store, "distfiles", origin)
        await c.round()
        s = store.get_state("p", "a", "127.0.0.1")
        assert s is not None and s.up and s.warning is None and a.requests == 10
        assert objects_data(store, "a", "127.0.0.1")["version"] == 1
    finally:
        c.close()


def test_checker_run_once_reads_the_expected_state_named_in_the_pool_yaml(
    pki: DemoPKI, origin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator's path: publish on the origin, `manifest: store:NAME` in the
    YAML, `checker run --once` (cron) on a checker."""
    url = f"sqlite:///{tmp_path}/health.sqlite"
    assert (
        cli.main(["manifest", "publish", str(origin), "--pool", "distfiles", "--store", url]) == 0
    )
    tree = Tree.from_dir(origin)
    missing = "d/7/f007"
    mirror = DemoMirror(hostname="m1.test", pki=pki, tree=tree, faults=Faults(missing={missing}))
    with MirrorThread(mirror) as m:
        zones = tmp_path / "zones"
        zones.mkdir()
        (zones / "p.yaml").write_text(
            textwrap.dedent(
                f"""\
                pool: p
                checks:
                  objects: {{manifest: "store:distfiles", sample: 400, critical: [{missing}]}}
                  timeout: 2s
                mirrors:
                  - {{name: m1, url: "https://m1.test:{m.port}/", ipv4: [127.0.0.1]}}
                """
            )
        )
        argv = ["run", "--config", str(zones), "--once", "--store", url]
        assert cli.main([*argv, "--ca-bundle", str(pki.ca_bundle)]) == 0
    out = capsys.readouterr().out
    assert f"p/m1 127.0.0.1: DOWN: 1 of 300 objects missing, critical {missing} missing" in out
    with Store(url) as store:
        d = objects_data(store, "m1", "127.0.0.1")
        assert (d["version"], d["checked"], d["total"]) == (1, 300, 300)
