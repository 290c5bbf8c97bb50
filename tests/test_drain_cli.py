"""`checker drain | undrain | drains`, and drains in report, nagios and history."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from checker import cli
from geodns.store import Store

from .conftest import TEST_ZONES

Z = str(TEST_ZONES)


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps to the terminal width
    monkeypatch.setenv("SUDO_USER", "alice")  # the operator behind sudo


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/health.sqlite"
    with Store(url) as s:  # a checker ran: mirror-de is up, mirror-us down
        s.set_state("distfiles", "mirror-de", "127.1.0.1", True, "first check: passed")
        s.set_state("distfiles", "mirror-de", "2001:db8:de::1", True, "first check: passed")
        s.set_state("distfiles", "mirror-us", "127.2.0.1", False, "stale: 9h behind origin")
    return url


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_names_are_usage_errors_and_write_nothing(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(url) as s:
        version = s.state_version()
    cases = [
        (
            ["drain", "mirror-xx"],
            "no mirror named 'mirror-xx' in "
            f"{Z} (mirrors: a, b, mirror-de, mirror-de2, mirror-fr, mirror-jp, mirror-us, origin)",
        ),
        (
            ["drain", "mirror-de", "--address", "127.9.9.9"],
            "mirror 'mirror-de' has no address 127.9.9.9 (its addresses: 127.1.0.1, "
            "2001:db8:de::1)",
        ),
        (["drain", "mirror-de", "--address", "nope"], "--address: 'nope' is not an IP address"),
        (["drain", "mirror-de", "--pool", "nopool"], "no pool named 'nopool' in"),
        (
            ["drain", "mirror-de", "--pool", "v4only"],
            "mirror 'mirror-de' is not in pool 'v4only' (it is in: distfiles)",
        ),
        (["drain", "mirror-de", "--reason", " "], "--reason: say why"),
        (["undrain", "mirror-xx"], "no mirror named 'mirror-xx'"),
    ]
    for argv, message in cases:
        full = argv + ["--config", Z, "--store", url]
        if argv[0] == "drain" and "--reason" not in argv:
            full += ["--reason", "test"]
        code, out, err = run(full, capsys)
        assert code == 2, (argv, out, err)
        assert f"checker: {message}" in err, err
    with Store(url) as s:
        assert s.drains() == [] and s.drain_events() == [] and s.state_version() == version
    # and no store is created for a mistake
    nowhere = f"sqlite:///{tmp_path}/none/health.sqlite"
    assert cli.main(["drain", "nope", "--config", Z, "--store", nowhere, "--reason", "x"]) == 2
    assert not (tmp_path / "none").exists()
    with pytest.raises(SystemExit) as exit_:  # a drain without a reason: usage
        cli.main(["drain", "mirror-de", "--config", Z, "--store", url])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            ["drain", "mirror-de", "--config", Z, "--store", url, "--reason", "x", "--for", "0"]
        )
    assert exit_.value.code == 2


def test_drain_shows_everywhere_and_undrain_ends_it(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        ["drain", "mirror-de", "--config", Z, "--store", url, "--reason", "kernel upgrade"]
        + ["--for", "2h"],
        capsys,
    )
    assert code == 0
    assert out.startswith("drained mirror-de (2 addresses: 127.1.0.1, 2001:db8:de::1) by alice ")
    assert re.search(
        r"until 20\d\d-\d\d-\d\d \d\d:\d\d:\d\dZ \(in (2h|1h59m)\): kernel upgrade$", out
    )
    code, out, _ = run(
        ["drain", "mirror-us", "--config", Z, "--store", url, "--reason", "moving racks"], capsys
    )
    assert code == 0 and "by alice until undrained: moving racks" in out

    # checker drains: who, when, reason, until
    code, out, _ = run(["drains", "--store", url, "--json"], capsys)
    listed = json.loads(out)
    assert [(d["mirror"], d["who"], d["reason"]) for d in listed] == [
        ("mirror-de", "alice", "kernel upgrade"),
        ("mirror-us", "alice", "moving racks"),
    ]
    assert listed[0]["until"] > listed[0]["at"] and listed[1]["until"] is None
    code, out, _ = run(["drains", "--store", url], capsys)
    assert code == 0 and "kernel upgrade" in out and "2 drains" in out
    assert re.search(r"\(in (2h|1h59m)\)", out)

    # report: state drained, with its reason, end and the address's health
    code, out, _ = run(["report", "--store", url, "--config", Z], capsys)
    rows = {
        line.split("│")[3].strip(): line
        for line in out.splitlines()
        if line.count("│") > 5 and "Pool" not in line
    }
    assert "│ drained " in rows["127.1.0.1"] and "kernel upgrade; health: up" in rows["127.1.0.1"]
    assert "moving racks; health: down (stale: 9h behind origin)" in rows["127.2.0.1"]
    assert "│ unknown " in rows["127.5.0.1"]
    assert "4 drained" in out  # mirror-us has an IPv6 address never checked
    code, out, _ = run(["report", "--store", url, "--json", "--config", Z], capsys)
    doc = json.loads(out)
    assert doc["summary"]["drained"] == 4 and doc["summary"]["down"] == 0
    by = {a["address"]: a for a in doc["addresses"]}
    de = by["2001:db8:de::1"]
    assert (de["state"], de["health"], de["drain"]["reason"]) == ("drained", "up", "kernel upgrade")
    assert de["drain"]["who"] == "alice" and de["drain"]["until"] and de["drain"]["scope"]
    assert (by["127.2.0.1"]["health"], by["127.2.0.1"]["drain"]["until"]) == ("down", None)
    assert by["127.5.0.1"]["drain"] is None and by["127.5.0.1"]["health"] == "unknown"
    code, out, _ = run(["report", "--store", url, "--json", "--state", "drained"], capsys)
    assert {a["mirror"] for a in json.loads(out)["addresses"]} == {"mirror-de", "mirror-us"}

    # nagios: counted apart, and no alert for drained addresses, even a down one
    code, out, _ = run(["nagios", "--store", url], capsys)
    status = out.splitlines()[0]
    assert code == 0, out
    assert status.startswith("GEODNS MIRRORS OK - 0 of 3 up, 3 drained | ")
    assert "down=0;;1;0;3" in status and "drained=3;;;0;3" in status
    assert "DRAINED: distfiles/mirror-us 127.2.0.1: by alice until undrained" in out

    # history: drain and undrain, by name and by address
    code, out, err = run(
        ["undrain", "mirror-us", "--config", Z, "--store", url, "--address", "127.2.0.1"], capsys
    )
    assert code == 1 and "has no drain matching that (its drains: mirror-us)" in err
    code, out, err = run(["undrain", "mirror-us", "--config", Z, "--store", url], capsys)
    assert code == 0 and out.startswith("undrained mirror-us (was drained by alice")
    code, out, err = run(["undrain", "mirror-us", "--config", Z, "--store", url], capsys)
    assert code == 1 and "'mirror-us' is not drained (drained: mirror-de)" in err
    code, out, _ = run(["history", "127.2.0.1", "--store", url, "--json"], capsys)
    hist = json.loads(out)
    assert [(h["state"], h.get("who")) for h in hist] == [
        ("undrained", "alice"),
        ("drained", "alice"),
        ("down", None),
    ]
    assert hist[1]["reason"] == "by alice until undrained: moving racks"
    code, out, _ = run(["history", "mirror-de", "--store", url], capsys)
    assert code == 0 and "drained" in out and "kernel upgrade" in out
    # the report after undrain: mirror-us is down (its own verdict), not back
    code, out, _ = run(["report", "--store", url, "--json"], capsys)
    us = next(a for a in json.loads(out)["addresses"] if a["mirror"] == "mirror-us")
    assert (us["state"], us["drain"]) == ("down", None)


def test_an_address_drain_inside_a_mirror_drain(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--config", Z, "--store", url]
    assert cli.main(["drain", "mirror-de", *base, "--reason", "all of it"]) == 0
    v6 = ["--address", "2001:db8:de::1"]
    assert cli.main(["drain", "mirror-de", *base, "--reason", "v6", *v6]) == 0
    capsys.readouterr()
    # undraining the address leaves it drained by the whole-mirror drain: say so
    code, out, err = run(["undrain", "mirror-de", *base, "--address", "2001:db8:de::1"], capsys)
    assert code == 1 and out.startswith("undrained mirror-de 2001:db8:de::1")
    assert "'mirror-de' is still drained: mirror-de by alice until undrained: all of it" in err


def test_draining_a_whole_pool_warns(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--config", Z, "--store", url]
    code, _, err = run(["drain", "a", *base, "--reason", "x"], capsys)  # b is enabled: false
    assert code == 0
    assert "every address of pool 'v4only' is drained now" in err


def test_a_timed_drain_runs_out(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--config", Z, "--store", url]
    assert cli.main(["drain", "mirror-jp", *base, "--reason", "reboot", "--for", "1s"]) == 0
    capsys.readouterr()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        code, out, _ = run(["drains", "--store", url, "--json"], capsys)
        if json.loads(out) == []:
            break
        time.sleep(0.1)
    assert json.loads(out) == []
    code, out, _ = run(["history", "mirror-jp", "--store", url, "--json"], capsys)
    assert [h["state"] for h in json.loads(out)] == ["drain ended", "drained"]
