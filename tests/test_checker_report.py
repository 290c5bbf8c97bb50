"""`checker report`, `nagios` and `history` over a store filled by a real round."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from checker import cli
from checker.scheduler import run_once
from demo.mirror import DemoMirror, DemoPKI, Faults, MirrorThread, demo_config, mirror_entry
from demo.tree import Tree
from geodns.model import Checks, Config, FreshnessCheck, ObjectsCheck, Pool, TLSCheck
from geodns.store import Store

pytestmark = pytest.mark.timeout(60)

PERFDATA = re.compile(r"^'?[A-Za-z_]+'?=-?[\d.]+[a-zA-Z%]*(;-?[\d.]*){0,4}$")


@dataclass
class World:
    url: str
    config: Config
    ports: dict[str, int]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Three mirrors — good, expiring certificate, expired and stale — checked once."""
    tmp = tmp_path_factory.mktemp("report")
    pki = DemoPKI()
    tree = Tree.generate(30, critical=("releases/latest.iso",))
    (tmp / "m.json").write_text(json.dumps(tree.manifest()))
    checks = Checks(
        tls=TLSCheck(warn_days=14),
        freshness=FreshnessCheck(path="/timestamp.txt", max_lag=6 * 3600),
        objects=ObjectsCheck(manifest=tmp / "m.json", sample=10, critical=("releases/latest.iso",)),
        fall=1,
        rise=1,
        timeout=1.0,
    )
    with ExitStack() as stack:
        ms = {
            name: stack.enter_context(
                MirrorThread(
                    DemoMirror(
                        host=host,
                        hostname=f"{name}.test",
                        pki=pki,
                        tree=tree,
                        cert=cert,
                        faults=Faults(stale=stale),
                    )
                )
            )
            for name, host, cert, stale in [
                ("ftp-good", "127.0.0.1", "good", 0),
                ("ftp-soon", "127.0.0.2", "expiring", 0),
                ("ftp-bad", "127.0.0.3", "expired", 9 * 3600 + 12 * 60 + 30),
            ]
        }
        dist = Pool("distfiles", tuple(mirror_entry(n, m) for n, m in ms.items()), checks=checks)
        other = Pool("isos", (mirror_entry("ftp-iso", ms["ftp-good"]),), checks=checks)
        config = demo_config([dist, other], tmp)
        url = f"sqlite:///{tmp}/health.sqlite"
        with Store(url) as store:
            asyncio.run(run_once(config, store, ca_bundle=pki.ca_bundle, pools=["distfiles"]))
        yield World(url, config, {n: m.port for n, m in ms.items()})
    pki.cleanup()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().out


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "220")  # rich wraps to the terminal width


def test_table_has_one_row_per_address(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["report", "--store", world.url], capsys)
    assert code == 0
    header = next(line for line in out.splitlines() if "Pool" in line)
    for col in (
        "Pool",
        "Mirror",
        "Address",
        "State",
        "Since",
        "Reason",
        "TLS",
        "Lag",
        "Objects",
        "Latency",
    ):
        assert col in header
    rows = {
        line.split("│")[2].strip(): line
        for line in out.splitlines()
        if line.count("│") > 5 and "Pool" not in line
    }
    assert set(rows) == {"ftp-good", "ftp-soon", "ftp-bad"}
    assert re.search(r"│ up\s+│ \S+ ago\s+│ first check: passed\s+│\s+(89|90)d │", rows["ftp-good"])
    assert re.search(r"│\s+0/10 │", rows["ftp-good"])
    assert "│ warning " in rows["ftp-soon"]
    assert "TLS certificate expires in 5 days" in rows["ftp-soon"]
    bad = rows["ftp-bad"]
    assert "│ down " in bad and "TLS certificate expired 3 days ago" in bad
    assert "9h12m" in bad  # the lag column
    assert "3 addresses: 1 up, 1 warning, 1 down" in out


def test_filters_by_state_and_pool(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(["report", "--store", world.url, "--state", "down"], capsys)
    assert "ftp-bad" in out and "ftp-good" not in out and "ftp-soon" not in out
    _, out = run(["report", "--store", world.url, "--state", "up"], capsys)
    assert "ftp-good" in out and "ftp-soon" in out and "ftp-bad" not in out
    _, out = run(["report", "--store", world.url, "--state", "warning"], capsys)
    assert "ftp-soon" in out and "ftp-good" not in out
    _, out = run(["report", "--store", world.url, "--pool", "isos"], capsys)
    assert "0 addresses" in out


def test_config_adds_never_checked_addresses(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_load_config", lambda root: world.config)
    _, out = run(
        ["report", "--store", world.url, "--config", "zones", "--json", "--pool", "isos"], capsys
    )
    doc = json.loads(out)
    assert [(a["mirror"], a["state"], a["reason"]) for a in doc["addresses"]] == [
        ("ftp-iso", "unknown", "never checked")
    ]
    code, out = run(["nagios", "--store", world.url, "--config", "zones", "--pool", "isos"], capsys)
    assert code == 1 and out.startswith("GEODNS MIRRORS WARNING - 0 of 1 fine, 1 need a look |")


def test_json_schema(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["report", "--store", world.url, "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"schema", "generated", "summary", "addresses", "regions", "expected"}
    assert doc["schema"] == 1  # "regions" and "expected" were added compatibly
    assert doc["expected"] == {}  # nothing published into this store
    assert list(doc["regions"]) == [""]  # one untagged checker
    assert doc["summary"] == {
        "up": 1,
        "warning": 1,
        "slow": 0,  # added compatibly, with throughput_mbps and ttfb_ms (issue 18)
        "down": 1,
        "disabled": 0,
        "drained": 0,
        "unknown": 0,
        "total": 3,
        "stale": 0,
    }
    types = {
        "pool": str,
        "mirror": str,
        "address": str,
        "family": int,
        "region": str,
        "state": str,
        "since": str,
        "checked_at": str,
        "reason": str,
        "detail": str,
        "warning": (str, type(None)),
        "stale": bool,
        "tls_expires_days": (float, int),
        "lag_seconds": (float, int),
        "objects_missing": int,
        "objects_checked": int,
        "latency_ms": (float, int),
        "health": str,  # added compatibly with drains: the state a drain hides
        "drain": type(None),  # or {"reason", "who", "at", "until", "scope"}
        "throughput_mbps": type(None),  # no throughput check configured here
        "ttfb_ms": type(None),
    }
    for a in doc["addresses"]:
        assert set(a) == set(types)
        for k, t in types.items():
            assert isinstance(a[k], t), (k, a[k])
    bad = next(a for a in doc["addresses"] if a["mirror"] == "ftp-bad")
    assert bad["state"] == "down" and bad["address"] == "127.0.0.3"
    assert bad["tls_expires_days"] < -2.9
    assert abs(bad["lag_seconds"] - (9 * 3600 + 12 * 60 + 30)) < 5
    assert bad["reason"].startswith("TLS certificate expired 3 days ago")


def _check_nagios(out: str) -> tuple[str, list[str]]:
    status, _, perf = out.splitlines()[0].partition(" | ")
    items = perf.split()
    assert items and all(PERFDATA.match(i) for i in items), items
    return status, items


def test_nagios_critical_with_perfdata(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["nagios", "--store", world.url], capsys)
    assert code == 2
    status, perf = _check_nagios(out)
    assert status == "GEODNS MIRRORS CRITICAL - 1 of 3 down (ftp-bad: TLS expired)"
    assert perf[:5] == [
        "up=2;;;0;3",
        "down=1;;1;0;3",
        "warning=1;;;0;3",
        "disabled=0;;;0;3",
        "unknown=0;;;0;3",
    ]
    assert any(p.startswith("lag_max=") and p.endswith("s;;;0") for p in perf)
    lines = out.splitlines()[1:]
    assert any(
        line.startswith("DOWN: distfiles/ftp-bad 127.0.0.3: TLS certificate expired")
        for line in lines
    )
    assert any(
        line.startswith("WARNING: distfiles/ftp-soon 127.0.0.2: TLS certificate expires")
        for line in lines
    )
    # `report --nagios` is the same plugin
    assert run(["report", "--nagios", "--store", world.url], capsys) == (code, out)


def test_nagios_thresholds_and_ok(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["nagios", "--store", world.url, "--crit-down", "2"], capsys)
    assert code == 1 and out.startswith("GEODNS MIRRORS WARNING - 1 of 3 down")
    assert "down=1;;2;0;3" in out
    code, out = run(
        ["nagios", "--store", world.url, "--pool", "distfiles", "--max-age", "0"], capsys
    )
    assert code == 2 and "(last check " in out


def test_nagios_ok_and_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/h.sqlite"
    with Store(url) as s:
        code, out = run(["nagios", "--store", url], capsys)
        assert code == 3 and out.startswith("GEODNS MIRRORS UNKNOWN - no mirror addresses")
        s.set_state("p", "m", "192.0.2.1", True, "fine")
        s.set_state("p", "m", "2001:db8::1", True, "fine")
    code, out = run(["nagios", "--store", url], capsys)
    assert code == 0
    status, perf = _check_nagios(out)
    assert status == "GEODNS MIRRORS OK - 2 of 2 up"
    assert perf[:2] == ["up=2;;;0;2", "down=0;;1;0;2"]
    code, out = run(["nagios", "--store", f"sqlite:///{tmp_path}/missing.sqlite"], capsys)
    assert code == 3 and out.startswith("GEODNS MIRRORS UNKNOWN - store sqlite:///")
    assert "does not exist" in out


def test_history(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["history", "ftp-bad", "--store", world.url], capsys)
    assert code == 0
    assert "ftp-bad" in out and "down" in out and "TLS certificate expired" in out
    code, out = run(["history", "127.0.0.3", "--store", world.url, "--json"], capsys)
    assert code == 0
    (change,) = json.loads(out)
    assert change["mirror"] == "ftp-bad" and change["state"] == "down"
    assert change["reason"].startswith("TLS certificate expired 3 days ago (notAfter ")
    assert cli.main(["history", "nobody", "--store", world.url]) == 1


def test_report_on_missing_store_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["report", "--store", f"sqlite:///{tmp_path}/none.sqlite"])
    err = capsys.readouterr().err
    assert code == 1 and "database file" in err and "does not exist" in err


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("TLS certificate expired 3 days ago (notAfter 2026-11-20)", "TLS expired"),
        ("TLS certificate does not match dl.example.org (it names x)", "TLS wrong host"),
        ("stale: 9h12m behind origin (max 6h)", "stale 9h12m"),
        ("connection to [::1]:8441 refused (nothing listening)", "connection refused"),
        ("mid-sync: dists/bookworm/InRelease lists main/x as 1 bytes, mirror has 2", "mid-sync"),
        (
            "2 of 200 objects missing, critical releases/latest.iso missing",
            "critical releases/latest.iso missing",
        ),
        ("2 of 200 objects missing (e.g. a; b)", "2 objects missing"),
        ("freshness: GET /t on 1.2.3.4:443: no answer within 5s", "timeout"),
    ],
)
def test_brief_reasons_for_status_lines(reason: str, words: str) -> None:
    from checker.nagios import brief

    assert brief(reason) == words


def test_nagios_groups_addresses_of_one_mirror(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/h.sqlite"
    with Store(url) as s:
        for addr in ("192.0.2.1", "2001:db8::1"):
            s.set_state("p", "ftp-x", addr, False, "stale: 9h12m behind origin (max 6h)")
        s.set_state(
            "p",
            "ftp-y",
            "192.0.2.2",
            False,
            "connection to 192.0.2.2:443 refused (nothing listening)",
        )
        s.set_state("p", "ftp-z", "192.0.2.3", True, "first check: passed")
    code, out = run(["nagios", "--store", url], capsys)
    assert code == 2
    assert out.splitlines()[0] == (
        "GEODNS MIRRORS CRITICAL - 3 of 4 down (ftp-x x2: stale 9h12m; ftp-y: connection refused)"
        " | up=1;;;0;4 down=3;;1;0;4 warning=0;;;0;4 disabled=0;;;0;4 unknown=0;;;0;4"
        " drained=0;;;0;4"
    )
    assert len(out.splitlines()) == 4


def test_forget_addresses_gone_from_the_yaml_and_a_closed_region(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .conftest import TEST_ZONES

    url = f"sqlite:///{tmp_path}/health.sqlite"
    with Store(url) as s:
        s.set_state("distfiles", "mirror-de2", "127.5.0.1", False, "timeout", region="eu")
        s.set_state("distfiles", "mirror-de2", "127.5.0.1", True, "fine", region="old")
        s.set_state("distfiles", "mirror-gone", "127.9.9.9", False, "removed mirror")
        version = s.state_version()
    gone = "distfiles/mirror-gone 127.9.9.9"
    code, out = run(["forget", "--config", str(TEST_ZONES), "--store", url, "--dry-run"], capsys)
    assert code == 0 and out.splitlines() == [gone]
    with Store(url) as s:
        assert len(s.addresses()) == 2 and s.state_version() == version
    code, out = run(["forget", "--config", str(TEST_ZONES), "--store", url], capsys)
    assert code == 0 and out.splitlines() == [gone]
    with Store(url) as s:
        assert s.addresses() == [("distfiles", "mirror-de2", "127.5.0.1")]
        assert s.history(mirror="mirror-gone") == []
        assert s.state_version() > version  # servers re-read the down-set
        version = s.state_version()
    code, out = run(["forget", "--region", "old", "--store", url], capsys)
    assert code == 0 and "forgot region 'old': 1 states" in out
    with Store(url) as s:
        assert {st.region for st in s.states()} == {"eu"}
        assert {c.region for c in s.history(mirror="mirror-de2")} == {"eu"}
        assert s.state_version() > version
    assert cli.main(["forget", "--region", "old", "--store", url]) == 1  # a typo is an error
    assert "no region 'old' in the store (regions: 'eu')" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # neither --config nor --region: usage
        cli.main(["forget", "--store", url])
    assert exit_.value.code == 2


def test_report_shows_when_each_region_last_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import timedelta

    from .util import silence_region

    url = f"sqlite:///{tmp_path}/health.sqlite"
    with Store(url) as s:
        s.set_state("p", "m", "192.0.2.7", False, "timeout", region="eu")
        s.set_state("p", "m", "192.0.2.7", True, "fine", region="us")
        silence_region(s, "us", timedelta(hours=2))  # us's checker stopped
    code, out = run(["report", "--store", url], capsys)
    assert code == 0
    assert re.search(r"^regions: eu last checked \S+ ago, us last checked 2h ago$", out, re.M), out
    code, out = run(["report", "--store", url, "--json"], capsys)
    regions = json.loads(out)["regions"]
    assert list(regions) == ["eu", "us"] and regions["eu"] > regions["us"]


def test_piped_table_keeps_every_row_on_one_line(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`checker report | less` or `> file`: stdout is not a terminal, so rows
    keep their natural width instead of wrapping cells at 80 columns."""
    monkeypatch.setenv("COLUMNS", "80")
    _, out = run(["report", "--store", world.url], capsys)
    lines = out.splitlines()
    rows = [line for line in lines if line.startswith("│") and "Pool" not in line]
    assert len(rows) == 3, out  # one line per address: no cell wrapped onto a second
    bad = next(line for line in rows if "ftp-bad" in line)
    assert "TLS certificate expired 3 days ago" in bad and "9h12m" in bad
    assert max(len(line) for line in lines) > 120  # wider than the 80 columns asked
    assert len({len(line) for line in lines if line[:1] in "┏┃┡│└"}) == 1  # one table width
    assert "\x1b[" not in out  # no colour codes in a file
