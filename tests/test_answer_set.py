"""The answer set (issue 12): the best group only, standby, padding, and
`geodns explain` naming every healthy address left out and why.

Mirrors and clients come from the generated WORLD GeoIP data (tests/geodata.py):
fra 10.1 (Frankfurt, AS65001), muc 10.2 (Munich), par 10.3 (Paris),
ash 10.4 (Ashburn), tyo 10.5 (Tokyo), sao 10.6 (São Paulo), nue 10.7
(Nuremberg, AS65001). Clients: 198.51.100.5 Berlin (DE, AS65100),
100.64.1.5 Osaka (JP).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from geodns.runtime.explain import explain
from geodns.runtime.server import Server

from .geodata import WORLD, make_databases
from .util import settings_for

ZONE = """\
zone: example.org
soa: {mname: ns1.example.org, rname: hostmaster.example.org}
ns: [ns1.example.org]
records:
  ns1: {A: 192.0.2.53}
steered:
  dl: {pool: p, answers: 3}
  pad: {pool: p, answers: 3, min_answers: 2}
"""

MIRRORS = {
    "fra": "10.1.0.10",
    "muc": "10.2.0.10",
    "par": "10.3.0.10",
    "ash": "10.4.0.10",
    "tyo": "10.5.0.10",
    "sao": "10.6.0.10",
    "nue": "10.7.0.10",
}
BERLIN, OSAKA = "198.51.100.5", "100.64.1.5"


def pool_yaml(weights: dict[str, int]) -> str:
    lines = ["pool: p", "mirrors:"]
    for name, v4 in MIRRORS.items():
        w = weights.get(name, 100)
        lines.append(f"  - {{name: {name}, url: 'https://{name}.example.net/', ")
        lines[-1] += f"ipv4: [{v4}], weight: {w}}}"
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def geoip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_databases(tmp_path_factory.mktemp("world"), WORLD)


def server(tmp: Path, geoip: tuple[Path, Path], weights: dict[str, int]) -> Server:
    conf = tmp / "zones"
    (conf / "pools").mkdir(parents=True, exist_ok=True)
    (conf / "z.yaml").write_text(textwrap.dedent(ZONE))
    (conf / "pools" / "p.yaml").write_text(pool_yaml(weights))
    srv = Server(settings_for(conf, tmp, geoip))
    srv.load_initial()
    return srv


@pytest.fixture
def srv(tmp_path: Path, geoip: tuple[Path, Path]) -> Iterator[Server]:
    yield server(tmp_path, geoip, {})


def rows(result: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {m["mirror"]: m for m in result["mirrors"]}


def test_berlin_gets_the_german_group_and_explain_says_why_not_the_rest(srv: Server) -> None:
    r = explain(srv, "dl.example.org", BERLIN)
    # nue 378 km, fra 423, muc 504 are within 1.5 x 378: one group of three
    assert {a for v in r["variants"] for a in v} == {"10.7.0.10", "10.1.0.10", "10.2.0.10"}
    assert all(len(v) == 3 for v in r["variants"])
    m = rows(r)
    assert m["par"]["why"] == "farther group: tier continent (the best group is tier country)"
    assert m["ash"]["why"].startswith("farther group: tier world")
    for name in ("nue", "fra", "muc"):
        assert m[name]["state"] == "answered" and m[name]["why"] == "in 100% of answers"


def test_outside_the_band_is_named(tmp_path: Path, geoip: tuple[Path, Path]) -> None:
    srv = server(tmp_path, geoip, {})
    r = explain(srv, "dl.example.org", OSAKA)
    assert r["variants"] == [["10.5.0.10"]]  # Tokyo alone: no farther slot filler
    m = rows(r)
    # world tier from Osaka: the next group, then São Paulo beyond its band
    assert m["sao"]["why"].startswith("farther group")
    assert r["answer"] == ["10.5.0.10"]


def test_over_answers_and_padding(tmp_path: Path, geoip: tuple[Path, Path]) -> None:
    srv = server(tmp_path, geoip, {"fra": 300, "nue": 100, "muc": 100})
    r = explain(srv, "dl.example.org", BERLIN)
    # W=500, w_max=300: sets of one, so fra leads 3 in 5 after any shuffle
    assert all(len(v) == 1 for v in r["variants"])
    m = rows(r)
    assert m["fra"]["first_share"] == 0.6 and m["nue"]["first_share"] == 0.2
    assert "shares the set by weight" in m["nue"]["why"]
    r = explain(srv, "pad.example.org", OSAKA)
    assert all(v[0] == "10.5.0.10" and len(v) == 2 for v in r["variants"])
    assert any("padding from group 2 (min_answers 2)" in x["why"] for x in r["mirrors"])


def test_standby_only_when_no_positive_weight_address_is_healthy(
    tmp_path: Path, geoip: tuple[Path, Path]
) -> None:
    # nue (right beside Berlin) is a standby: Berlin gets fra and muc instead
    srv = server(tmp_path, geoip, {"nue": 0})
    r = explain(srv, "dl.example.org", BERLIN)
    assert "10.7.0.10" not in {a for v in r["variants"] for a in v}
    assert rows(r)["nue"]["state"] == "standby"
    assert rows(r)["nue"]["why"].startswith("standby (weight 0)")
    # every positive-weight mirror down: the standby answers (case "standby"),
    # rebuilt as a health poll rebuilds the answers
    srv.health.down = frozenset(("p", n, a) for n, a in MIRRORS.items() if n != "nue")
    assert srv.config is not None and srv.tables is not None
    srv._install(srv.config, srv.tables, srv._build(srv.config, srv.tables))
    r = explain(srv, "dl.example.org", BERLIN)
    assert r["case"] == "standby" and r["variants"] == [["10.7.0.10"]]
