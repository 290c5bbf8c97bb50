"""Slow mirrors (issue 18), piece by piece: the settings, the byte-limited HTTP
read, the throughput probe against real HTTPS demo mirrors (normal, throttled,
ignoring Range), the median and the slow hysteresis, the store's slow read,
the ranking one group behind, and the reports.

The end-to-end path (checker → store → DNS answers) is tests/test_slow_e2e.py.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from checker import history, nagios, report
from checker.http import HTTPClient
from checker.manifest import Manifest, from_dict
from checker.probes.throughput import choose, judge, probe_throughput
from checker.scheduler import Checker
from checker.state import advance
from checker.target import Target
from demo.mirror import DemoMirror, DemoPKI, Faults, byte_range, demo_config, mirror_entry
from demo.tree import Tree
from geodns.config import load_config
from geodns.config.fields import parse_size
from geodns.errors import ConfigError
from geodns.model import Checks, Pool, ThroughputCheck
from geodns.steering.geo import GeoInfo
from geodns.steering.rank import Candidate, answer_variants, demote_slow, rank
from geodns.store import ProbeRecord, Store

from .stores import alembic
from .util import silence_region

try:
    from pg import pg_server  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover - tests/ became a package
    from tests.pg import pg_server  # noqa: F401

pytestmark = pytest.mark.timeout(60)

KiB = 1024
SAMPLE = 32 * KiB
BUDGET = 64 * KiB


# --------------------------------------------------------------------------- settings

POOL = """\
pool: p
checks:
  objects: {manifest: m.json}
  throughput: %s
mirrors:
  - {name: m1, url: "https://m1.example.net/", ipv4: [192.0.2.10]}
"""


def _load(tmp: Path, throughput: str, *, objects: bool = True) -> Any:
    (tmp / "m.json").write_text(json.dumps(Tree.generate(3).manifest()))
    text = POOL % throughput
    if not objects:
        text = text.replace("  objects: {manifest: m.json}\n", "")
    (tmp / "pools").mkdir(exist_ok=True)
    (tmp / "pools" / "p.yaml").write_text(textwrap.dedent(text))
    return load_config(tmp)


def test_settings_with_units_and_defaults(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        "{min_mbps: 2, max_ttfb: 2s, rounds: 3, sample_bytes: 1MiB, budget: 4MB, interval: 10m}",
    )
    tp = cfg.pools["p"].checks.throughput
    assert tp == ThroughputCheck(
        manifest=(tmp_path / "m.json").resolve(),  # the objects check's, by default
        min_mbps=2.0,
        max_ttfb=2.0,
        rounds=3,
        sample_bytes=1 << 20,
        budget=4_000_000,
        interval=600.0,
    )
    d = _load(tmp_path, "{}").pools["p"].checks.throughput
    assert (d.min_mbps, d.max_ttfb, d.rounds, d.sample_bytes, d.budget, d.interval) == (
        1.0,
        None,
        3,
        1 << 20,
        4 << 20,
        600.0,
    )
    assert [parse_size(v) for v in ("512KiB", "1.5 MiB", "2kB", 7, "7", "4M", "-1", True)] == [
        512 * 1024,
        1536 * 1024,
        2000,
        7,
        7,
        None,
        None,
        None,
    ]


def test_settings_errors_name_file_line_and_field_all_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        _load(
            tmp_path,
            "{min_mbps: fast, rounds: 0, sample_bytes: 2MiB, budget: 1MiB, max_ttfb: soon, "
            "interval: -1, speed: 3}",
        )
    ps = ei.value.problems
    where = "pools/p.yaml:4: pool 'p' checks throughput: "
    assert all(p.startswith(where) or "pools/p.yaml:4:" in p for p in ps), ps
    text = "\n".join(ps)
    for expected in (
        "unknown key 'speed'",
        "min_mbps: expected a number, got 'fast'",
        "rounds: 0 is out of range 1..50",
        "budget: 1MiB is less than sample_bytes 2MiB",
        "max_ttfb: expected a positive duration",
        "interval: expected a positive duration",
    ):
        assert expected in text, (expected, ps)
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, "{sample_bytes: huge}", objects=False)
    text = "\n".join(ei.value.problems)
    assert "sample_bytes: expected a size like 1MiB, 512KiB or 4MB, got 'huge'" in text
    assert "needs a manifest to choose its sample from" in text


# --------------------------------------------------------------------------- HTTP reader


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as st:
        yield st


def _tree() -> Tree:
    t = Tree.generate(5)
    t.add("pub/big.bin", size=256 * KiB)
    t.add("pub/mid.bin", size=48 * KiB)  # fits the 64 KiB budget whole
    t.add("pub/small.bin", size=8 * KiB)
    return t


async def _mirror(stack: AsyncExitStack, pki: DemoPKI, tree: Tree, **faults: Any) -> DemoMirror:
    m = DemoMirror(pki=pki, tree=tree, hostname="m.test", faults=Faults(**faults))
    return await stack.enter_async_context(m)


async def test_stop_after_reads_no_more_and_closes(stack: AsyncExitStack, pki: DemoPKI) -> None:
    tree = _tree()
    m = await _mirror(stack, pki, tree, no_range=True)
    got: list[int] = []
    async with HTTPClient("127.0.0.1", m.port, host="m.test", ssl_context=_insecure()) as c:
        r = await c.get("/pub/big.bin", sink=lambda d: got.append(len(d)), stop_after=10_000)
        assert (r.status, r.truncated, sum(got)) == (200, True, 10_000)
        assert c._conns == []  # the connection went: the rest of the body is never read
        # a body that fits is read whole, not truncated, on a reusable connection
        r = await c.get("/pub/small.bin", stop_after=8 * KiB)
        assert (r.truncated, len(r.body)) == (False, 8 * KiB)
        assert r.body == tree.content("pub/small.bin")
        with pytest.raises(ValueError):
            await c.get("/pub/small.bin", stop_after=0)


def _insecure() -> Any:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_demo_byte_ranges_rfc9110() -> None:
    """RFC 9110 §14.1.2: first-last, first-, -suffix; past the end is 416."""
    assert byte_range("bytes=0-99", 1000) == (0, 99)
    assert byte_range("bytes=900-2000", 1000) == (900, 999)
    assert byte_range("bytes=990-", 1000) == (990, 999)
    assert byte_range("bytes=-10", 1000) == (990, 999)
    assert byte_range("bytes=1000-", 1000) == "unsatisfiable"
    assert byte_range("bytes=0-1,5-6", 1000) is None  # several: ignored, whole object
    assert byte_range("bytes=5-1", 1000) is None  # invalid: ignored
    assert byte_range("items=0-1", 1000) is None
    assert byte_range(None, 1000) is None


# --------------------------------------------------------------------------- the probe


def _target(m: DemoMirror, check: ThroughputCheck, timeout: float = 3.0) -> Target:
    return Target("p", mirror_entry("m", m), "127.0.0.1", Checks(throughput=check, timeout=timeout))


def _check(**kw: Any) -> ThroughputCheck:
    base: dict[str, Any] = {
        "manifest": Path("unused"),
        "min_mbps": 0.3,
        "rounds": 2,
        "sample_bytes": SAMPLE,
        "budget": BUDGET,
    }
    return ThroughputCheck(**{**base, **kw})


def _manifest(tree: Tree) -> Manifest:
    return from_dict(tree.manifest())


def test_sample_object_chosen_for_size() -> None:
    m = _manifest(_tree())
    assert choose(m, SAMPLE, BUDGET, whole=False).path == "pub/mid.bin"  # smallest >= sample
    assert choose(m, SAMPLE, BUDGET, whole=True).path == "pub/mid.bin"  # largest <= budget
    assert choose(m, 1 << 20, 4 << 20, whole=False).path == "pub/big.bin"  # none big enough
    assert choose(m, SAMPLE, 16 * KiB, whole=True).path == "pub/small.bin"


async def test_ranged_sample_reads_exactly_the_sample(stack: AsyncExitStack, pki: DemoPKI) -> None:
    m = await _mirror(stack, pki, _tree())
    check = _check()
    r = await probe_throughput(_target(m, check), check, _manifest(_tree()), {})
    d = r.data
    assert (r.ok, d["status"], d["ranges"], d["bytes"], d["object"]) == (
        True,
        206,
        True,
        SAMPLE,
        "pub/mid.bin",
    )
    assert d["slow"] is None and "measuring, 1 of 2 samples" in r.detail  # no verdict yet
    assert d["mbps"] > check.min_mbps and d["ttfb"] > 0
    assert m.body_bytes == SAMPLE and list(m.gets) == [("pub/mid.bin", 206, SAMPLE)]
    r = await probe_throughput(_target(m, check), check, _manifest(_tree()), d)
    assert r.data["slow"] is False and len(r.data["samples"]) == 2
    assert m.body_bytes == 2 * SAMPLE  # the budget, counted at the mirror: one sample per round


async def test_throttled_mirror_measures_its_rate(stack: AsyncExitStack, pki: DemoPKI) -> None:
    rate = 32_000  # bytes/s: 32 KiB take about a second
    m = await _mirror(stack, pki, _tree(), throttle=rate)
    check = _check(rounds=1)
    r = await probe_throughput(_target(m, check), check, _manifest(_tree()), {})
    assert r.data["mbps"] == pytest.approx(rate / 1e6, rel=0.25), r.detail
    assert r.data["slow"] is True and not r.ok
    assert r.data["summary"] == f"{r.data['mbps']:.3g} MB/s median over 1 round (min 0.3)"
    assert m.body_bytes == SAMPLE


async def test_mirror_ignoring_range_is_cut_off_then_sampled_whole(
    stack: AsyncExitStack, pki: DemoPKI
) -> None:
    """A 200 to a Range request: the sample is read and the connection closed;
    later rounds fetch an object within the budget whole. Paced, so the bytes
    the mirror managed to send are what the client took (plus a chunk)."""
    m = await _mirror(stack, pki, _tree(), no_range=True, throttle=400_000)
    check = _check(min_mbps=0.1)
    tree = _manifest(_tree())
    r1 = await probe_throughput(_target(m, check), check, tree, {})
    assert (r1.data["status"], r1.data["ranges"], r1.data["bytes"]) == (200, False, SAMPLE)
    assert "Range ignored" in r1.detail
    for _ in range(50):  # the mirror notices the closed connection at its next write
        if m.gets:
            break
        await asyncio.sleep(0.02)
    chunk = 400_000 // 20
    assert SAMPLE <= m.body_bytes <= SAMPLE + 2 * chunk, m.gets
    before = m.body_bytes
    r2 = await probe_throughput(_target(m, check), check, tree, r1.data)
    assert (r2.data["object"], r2.data["bytes"]) == ("pub/mid.bin", 48 * KiB)
    assert r2.data["slow"] is False and r2.data["bytes"] <= check.budget
    assert m.body_bytes - before == 48 * KiB  # whole, within the budget


async def test_a_stalled_transfer_is_judged_at_the_timeout(
    stack: AsyncExitStack, pki: DemoPKI
) -> None:
    m = await _mirror(stack, pki, _tree(), throttle=4_000)
    check = _check(rounds=1)
    r = await probe_throughput(_target(m, check, timeout=0.6), check, _manifest(_tree()), {})
    assert r.data["slow"] is True and 0 < r.data["bytes"] < SAMPLE
    assert r.data["mbps"] < 0.02 and "stopped at the 0.6s timeout" in r.detail


async def test_a_failed_request_is_no_sample(stack: AsyncExitStack, pki: DemoPKI) -> None:
    tree = _tree()
    m = await _mirror(stack, pki, tree, missing={"pub/mid.bin"})
    check = _check()
    prev = {"samples": [[5.0, 0.01], [6.0, 0.01]], "ranges": True}
    r = await probe_throughput(_target(m, check), check, _manifest(tree), prev)
    assert not r.ok and r.detail == "throughput: pub/mid.bin answered 404"
    assert r.data["samples"] == prev["samples"] and r.data["slow"] is None


# --------------------------------------------------------------------------- median, hysteresis


def test_one_bad_sample_does_nothing() -> None:
    check = _check(rounds=3, min_mbps=2)
    assert judge([[10, 0.01], [0.1, 5.0], [9, 0.02]], check).slow is False
    assert judge([[10, 0.01], [0.1, 5.0]], check).slow is None  # 2 of 3: measuring
    v = judge([[0.4, 0.01], [0.3, 0.02], [9, 0.02]], check)
    assert v.slow is True and v.summary == "0.4 MB/s median over 3 rounds (min 2)"
    even = _check(rounds=2, min_mbps=2, max_ttfb=1.0)
    assert judge([[0.1, 0.01], [10, 0.01]], even).slow is False  # upper median: not one alone
    v = judge([[10, None], [10, 3.0]], even)
    assert v.slow is True and v.summary == "first byte after 3000 ms median over 2 rounds (max 1s)"


def _rec(slow: bool | None, summary: str = "0.4 MB/s median over 3 rounds (min 2)") -> ProbeRecord:
    return ProbeRecord(
        "throughput", slow is not True, "sample", None, {"slow": slow, "summary": summary}
    )


def test_slow_uses_fall_and_rise_and_is_never_down() -> None:
    kinds: dict[str, Any] | None = None
    up, slow = True, False
    seen = []
    for verdict in (True, True, True, None, False, False, True, False, False):
        ev = advance(kinds, up, [_rec(verdict)], prev_slow=slow, fall=3, rise=2)
        assert ev.up
        if ev.slow != slow:
            seen.append(ev.reason)
        kinds, slow = ev.kinds, ev.slow
    assert seen == [
        "slow: 0.4 MB/s median over 3 rounds (min 2)",
        "fast again: 0.4 MB/s median over 3 rounds (min 2)",
    ]
    # a down address is not also slow, and comes back slow at once
    ev = advance(None, True, [_rec(True)], fall=1, rise=1)
    assert ev.slow
    down = ProbeRecord("tls", False, "TLS certificate expired", unrecoverable=True)
    ev2 = advance(ev.kinds, True, [down], prev_slow=True, fall=1, rise=1)
    assert not ev2.up and not ev2.slow
    ok = ProbeRecord("tls", True, "ok")
    ev3 = advance(ev2.kinds, False, [ok], fall=1, rise=1)
    assert (
        ev3.up and ev3.slow and ev3.reason.endswith("; slow: 0.4 MB/s median over 3 rounds (min 2)")
    )


# --------------------------------------------------------------------------- ranking


def _cand(
    name: str, loc: tuple[float, float], *, slow: bool = False, country: str = "DE"
) -> Candidate:
    addr = ipaddress.IPv4Address(f"127.9.{len(name)}.{ord(name[0])}")
    return Candidate("p", name, addr, 100, GeoInfo(None, country, "EU", loc, 16), slow=slow)


CLIENT = GeoInfo(None, "DE", "EU", (52.5, 13.4), 24)  # Berlin


def _names(groups: list[tuple[Any, ...]]) -> list[list[str]]:
    return [sorted(r.candidate.mirror for r in g) for g in groups]


def test_slow_ranks_one_group_behind() -> None:
    near, near2 = (52.5, 13.5), (52.4, 13.3)  # Berlin
    paris = (48.9, 2.35)  # same continent: the next group
    a, b = _cand("a", near, slow=True), _cand("b", near2)
    c = _cand("c", paris, country="FR")
    assert _names(rank([a, c], CLIENT)) == [["c"], ["a"]]  # a fast mirror farther wins
    assert _names(rank([a, b, c], CLIENT)) == [["b"], ["c"], ["a"]]
    d = _cand("d", paris, slow=True, country="FR")
    assert _names(rank([a, d], CLIENT)) == [["a"], ["d"]]  # nothing fast: the near slow one
    assert _names(rank([_cand("a", near, slow=False), c], CLIENT)) == [["a"], ["c"]]
    # min_answers pads with the slow one before anything farther
    groups = rank([a, b, c, _cand("e", (35.7, 139.7), country="JP")], CLIENT)
    assert [r.candidate.mirror for r in answer_variants(groups, 3, min_answers=3)[0]] == [
        "b",
        "c",
        "a",
    ]
    assert demote_slow([]) == []


# --------------------------------------------------------------------------- store and reports


def test_migration_from_0001_keeps_rows_as_not_slow(store_url: str) -> None:
    """A store made by the previous release (revision 0001) is upgraded in place."""
    from sqlalchemy import create_engine, text

    alembic(store_url, "upgrade", "0001")
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO mirror_addresses (pool, mirror, address, family) "
                    "VALUES ('p', 'a', '127.0.0.1', 4)"
                )
            )
            aid = conn.execute(text("SELECT id FROM mirror_addresses")).scalar_one()
            conn.execute(
                text(
                    "INSERT INTO address_states (address_id, region, up, disabled, reason, "
                    "since, checked_at, detail, kinds) VALUES (:id, '', :t, :f, 'old', "
                    ":now, :now, 'ok', '{}')"
                ),
                {"id": aid, "t": True, "f": False, "now": datetime.now(UTC).replace(tzinfo=None)},
            )
    finally:
        engine.dispose()
    # a DNS node upgraded before the checker: an old store reads as nothing slow,
    # and this code still writes and reads it (slow is left out until migrated)
    with Store(store_url, create=False) as old:
        assert old.slow_addresses() == {} and old.down_addresses() == frozenset()
        old.set_state("p", "b", "127.0.0.2", True, "0.1 MB/s", slow=True)
        assert [(x.mirror, x.slow) for x in old.states()] == [("a", False), ("b", False)]
        assert [c.state for c in old.history("b")] == ["up"]
    with Store(store_url) as s:  # upgrades to the head
        st = s.get_state("p", "a", "127.0.0.1")
        assert st is not None and st.up and not st.slow and st.slow_reason == ""
        assert [c.slow for c in s.history("b")] == [False]
        assert s.slow_addresses() == {}
        s.set_state("p", "a", "127.0.0.1", True, "0.4 MB/s median over 3 rounds (min 2)", slow=True)
        assert s.slow_addresses() == {
            ("p", "a", "127.0.0.1"): "0.4 MB/s median over 3 rounds (min 2)"
        }


def test_store_slow_votes_quorum_history_and_version(store_url: str) -> None:
    url = store_url
    with Store(url, quorum=2, region_timeout=timedelta(minutes=5)) as s:
        v0 = s.state_version()
        s.set_state(
            "p",
            "a",
            "127.0.0.1",
            True,
            "0.4 MB/s median over 3 rounds (min 2)",
            region="eu",
            slow=True,
        )
        assert s.state_version() > v0
        assert s.slow_addresses() == {}  # one region of two needed
        s.set_state("p", "a", "127.0.0.1", False, "timeout", region="us")
        # one slow, one down: slow or worse in two regions → slow (down needs both)
        assert s.slow_addresses() == {
            ("p", "a", "127.0.0.1"): "0.4 MB/s median over 3 rounds (min 2)"
        }
        assert s.down_addresses() == frozenset()
        silence_region(s, "us", timedelta(hours=1))  # us stops voting: quorum shrinks to 1
        assert list(s.slow_addresses()) == [("p", "a", "127.0.0.1")]
        s.set_state("p", "a", "127.0.0.1", True, "fast again", region="eu")
        assert s.slow_addresses() == {}
        assert [c.state for c in s.history("a", region="eu")] == ["up", "slow"]
        # slow is a state of serving addresses only
        s.set_state("p", "b", "127.0.0.2", False, "down", slow=True)
        assert not s.get_state("p", "b", "127.0.0.2").slow  # type: ignore[union-attr]


def test_health_snapshot_file_keeps_the_slow_set(tmp_path: Path) -> None:
    """A node restarted during a store outage still ranks slow mirrors behind."""
    from geodns.runtime import health_snapshot as hs

    key = ("p", "a", "127.0.0.1")
    snap = hs.make([("p", "b", "127.0.0.2")], "sqlite://", 7, 1, slow={key: "0.4 MB/s median"})
    hs.save(tmp_path / hs.FILENAME, snap)
    back = hs.load(tmp_path / hs.FILENAME)
    assert back is not None and dict(back.slow) == {key: "0.4 MB/s median"}
    old = json.loads(hs.dumps(snap))
    del old["slow"]  # a file written before slow existed
    assert hs.loads(json.dumps(old)).slow == ()
    old["slow"] = [["p", "a"]]
    with pytest.raises(hs.SnapshotError, match=r"slow\[0\]: expected \[pool, mirror"):
        hs.loads(json.dumps(old))


def test_report_json_nagios_and_history_show_slow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/h.sqlite"
    kinds = {
        "throughput": {
            "ok": False,
            "slow": True,
            "data": {"median_mbps": 0.4, "median_ttfb": 0.012, "summary": "x"},
        }
    }
    with Store(url) as s:
        s.record("p", "fast", "127.0.0.1", up=True, reason="first check: passed")
        s.record(
            "p",
            "slow",
            "127.0.0.2",
            up=True,
            reason="slow: 0.4 MB/s median over 3 rounds (min 2)",
            detail="slow: 0.4 MB/s median over 3 rounds (min 2)",
            kinds=kinds,
            slow=True,
            slow_reason="0.4 MB/s median over 3 rounds (min 2)",
        )
        rows = report.build_rows(s.states())
        changes = s.history("slow")
    slow = next(r for r in rows if r.mirror == "slow")
    assert (slow.state, slow.throughput_mbps, slow.ttfb_ms) == ("slow", 0.4, 12.0)
    doc = json.loads(report.to_json(rows))
    assert doc["summary"]["slow"] == 1 and doc["summary"]["up"] == 1
    code, out = nagios.nagios(rows)
    assert code == nagios.WARNING  # a warning, never critical
    assert out.splitlines()[0].startswith(
        "GEODNS MIRRORS WARNING - 1 of 2 slow (slow: slow 0.4 MB/s) | up=2;;;0;2"
    )
    assert "slow=1;;;0;2" in out and "throughput_min_mbps=0.4;;;0" in out
    assert "SLOW: p/slow 127.0.0.2: slow: 0.4 MB/s median over 3 rounds (min 2)" in out
    assert json.loads(history.history_json(history.history_lines(changes)))[0]["state"] == "slow"
    table = io.StringIO()
    report.print_table(rows, table, color=False, width=200)
    line = next(ln for ln in table.getvalue().splitlines() if "127.0.0.2" in ln)
    assert (
        " slow " in line and "0.4 MB/s median over 3 rounds" in line and "MB/s" in table.getvalue()
    )
    assert "1 up, 1 slow" in table.getvalue()
    hist = io.StringIO()
    history.print_history(history.history_lines(changes), hist, color=False, width=200)
    assert " slow " in hist.getvalue()
    # the status page: a state badge of its own, and the median in a sortable column
    from checker.web.render import export_html

    page = export_html(rows, max_age=3600)
    assert '<span class="state state-slow">slow</span>' in page
    assert ">MB/s<" in page and 'title="first byte after 12 ms (median)">0.4</td>' in page
    assert [r.mirror for r in report.build_rows(rows_of(url), state="slow")] == ["slow"]
    assert {r.mirror for r in report.build_rows(rows_of(url), state="up")} == {"fast", "slow"}


def rows_of(url: str) -> list[Any]:
    with Store(url) as s:
        return s.states()


# --------------------------------------------------------------------------- scheduler


async def test_checker_round_marks_slow_and_exports_the_rate(
    tmp_path: Path, stack: AsyncExitStack, pki: DemoPKI
) -> None:
    tree = _tree()
    m = await _mirror(stack, pki, tree, throttle=32_000)
    (tmp_path / "m.json").write_text(json.dumps(tree.manifest()))
    check = _check(manifest=tmp_path / "m.json", rounds=1)
    pool = Pool("p", (mirror_entry("a", m),), checks=Checks(throughput=check, fall=1, rise=1))
    with Store(f"sqlite:///{tmp_path}/h.sqlite") as store:
        checker = Checker(demo_config([pool], tmp_path), store, ca_bundle=pki.ca_bundle)
        try:
            result = await checker.round()
            assert result.slow == [("p", "a", "127.0.0.1")] and result.down == []
            assert result.changes[0].state == "SLOW"
            st = store.get_state("p", "a", "127.0.0.1")
            assert st is not None and st.up and st.slow
            assert st.slow_reason.endswith("MB/s median over 1 round (min 0.3)")
            rate = REGISTRY.get_sample_value(
                "geodns_checker_throughput_bytes_per_second",
                {"pool": "p", "mirror": "a", "address": "127.0.0.1"},
            )
            assert rate == pytest.approx(32_000, rel=0.25)
            assert (
                REGISTRY.get_sample_value("geodns_checker_mirrors", {"pool": "p", "state": "slow"})
                == 1
            )
            m.faults.throttle = 0
            result = await checker.round()
            assert result.slow == [] and result.changes[0].state == "up"
            assert result.changes[0].reason.startswith("fast again: ")
        finally:
            checker.close()
