"""Scope keys and drains in ranking, on generated GeoIP data (tests/geodata.py
WORLD plus a Brussels client and a client inside Tokyo's AS65005).

Mirrors: fra 10.1 (Frankfurt, DE, AS65001), muc 10.2 (Munich, DE), par 10.3
(Paris, FR), ash 10.4 (Ashburn, US), tyo 10.5 (Tokyo, JP, AS65005), sao 10.6
(São Paulo), nue 10.7 (Nuremberg, DE, AS65001).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geodns.runtime.explain import explain
from geodns.runtime.server import Server
from geodns.store import Store

from .geodata import WORLD, make_databases
from .util import ServerThread, query, settings_for, udp

ZONE = """\
zone: example.org
soa: {mname: ns1.example.org, rname: hostmaster.example.org}
ns: [ns1.example.org]
records:
  ns1: {A: 192.0.2.53}
steered:
  dl: {pool: p, answers: 3}
"""

POOL = """\
pool: p
mirrors:
  - {name: fra, url: "https://fra.example.net/", ipv4: [10.1.0.10], only: continent}
  - {name: muc, url: "https://muc.example.net/", ipv4: [10.2.0.10], exclude_countries: [DE]}
  - name: par
    url: https://par.example.net/
    ipv4: [10.3.0.10]
    only: country
    also_countries: [BE]
  - {name: ash, url: "https://ash.example.net/", ipv4: [10.4.0.10], also_countries: [GB]}
  - {name: tyo, url: "https://tyo.example.net/", ipv4: [10.5.0.10], only: asn}
  - {name: sao, url: "https://sao.example.net/", ipv4: [10.6.0.10]}
  - {name: nue, url: "https://nue.example.net/", ipv4: [10.7.0.10]}
"""

EXTRA = [
    {"network": "100.64.4.0/24", "asn": 65700, "country": "BE", "location": [50.85, 4.35]},
    {"network": "100.64.5.0/24", "asn": 65005, "country": "JP", "location": [35.69, 139.70]},
]
LONDON, BRUSSELS, BERLIN = "203.0.113.5", "100.64.4.5", "198.51.100.5"
OSAKA, TOKYO_AS, BERLIN_AS65001 = "100.64.1.5", "100.64.5.5", "192.0.2.5"
NOWHERE = "198.18.0.1"  # in no GeoIP network: every field unknown


@pytest.fixture(scope="module")
def geoip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_databases(tmp_path_factory.mktemp("world"), [*WORLD, *EXTRA])


def zones(tmp: Path) -> Path:
    conf = tmp / "zones"
    (conf / "pools").mkdir(parents=True, exist_ok=True)
    (conf / "z.yaml").write_text(textwrap.dedent(ZONE))
    (conf / "pools" / "p.yaml").write_text(POOL)
    return conf


@pytest.fixture
def srv(tmp_path: Path, geoip: tuple[Path, Path]) -> Iterator[Server]:
    s = Server(settings_for(zones(tmp_path), tmp_path, geoip))
    s.load_initial()
    yield s


def answered(r: dict[str, Any]) -> set[str]:
    return {a for v in r["variants"] for a in v}


def why(r: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {m["mirror"]: (m["state"], m["why"]) for m in r["mirrors"]}


def test_only_country_with_also_countries(srv: Server) -> None:
    r = explain(srv, "dl.example.org", LONDON)
    assert why(r)["par"] == ("excluded", "excluded: only country (mirror FR +BE, client GB)")
    # Brussels has no mirror: par counts as Belgian for it, in the country tier
    r = explain(srv, "dl.example.org", BRUSSELS)
    assert answered(r) == {"10.3.0.10"}
    assert why(r)["par"][0] == "answered"
    assert next(m for m in r["mirrors"] if m["mirror"] == "par")["tier"] == "country"
    # an unknown client never matches
    r = explain(srv, "dl.example.org", NOWHERE)
    assert why(r)["par"] == ("excluded", "excluded: only country (mirror FR +BE, client ?)")


def test_also_countries_ranks_in_the_country_tier(srv: Server) -> None:
    # London's nearest is Paris (continent tier), but ash stands in GB for it
    r = explain(srv, "dl.example.org", LONDON)
    assert answered(r) == {"10.4.0.10"}
    ash = next(m for m in r["mirrors"] if m["mirror"] == "ash")
    assert ash["tier"] == "country" and ash["distance_km"] > 5000  # real distance kept
    # other clients see ash where it stands
    r = explain(srv, "dl.example.org", BERLIN)
    assert "10.4.0.10" not in answered(r)


def test_only_continent(srv: Server) -> None:
    r = explain(srv, "dl.example.org", OSAKA)
    assert why(r)["fra"] == ("excluded", "excluded: only continent (mirror EU, client AS)")
    assert "10.1.0.10" not in answered(r)
    r = explain(srv, "dl.example.org", LONDON)
    assert why(r)["fra"][0] != "excluded"


def test_only_asn(srv: Server) -> None:
    r = explain(srv, "dl.example.org", TOKYO_AS)
    assert answered(r) == {"10.5.0.10"} and why(r)["tyo"][0] == "answered"
    r = explain(srv, "dl.example.org", OSAKA)  # Japan, but another network
    assert why(r)["tyo"] == ("excluded", "excluded: only asn (mirror AS65005, client AS65400)")
    assert "10.5.0.10" not in answered(r)
    r = explain(srv, "dl.example.org", NOWHERE)
    assert why(r)["tyo"] == ("excluded", "excluded: only asn (mirror AS65005, client AS?)")


def test_exclude_countries(srv: Server) -> None:
    for client in (BERLIN, BERLIN_AS65001):
        r = explain(srv, "dl.example.org", client)
        assert why(r)["muc"] == ("excluded", "excluded: exclude_countries (client DE)")
        assert "10.2.0.10" not in answered(r)
    assert answered(explain(srv, "dl.example.org", BERLIN)) == {"10.7.0.10", "10.1.0.10"}
    # everywhere else muc is an ordinary mirror
    assert why(explain(srv, "dl.example.org", LONDON))["muc"][0] != "excluded"


def test_scope_holds_when_failing_open(
    tmp_path: Path, geoip: tuple[Path, Path], srv: Server
) -> None:
    # every mirror down: fail open answers every enabled mirror the client may get
    srv.health.down = frozenset(("p", m, a) for m, a in _addresses(srv))
    assert srv.config is not None and srv.tables is not None
    srv._install(srv.config, srv.tables, srv._build(srv.config, srv.tables))
    r = explain(srv, "dl.example.org", OSAKA)
    assert r["case"] == "failopen"
    assert "10.1.0.10" not in answered(r) and "10.5.0.10" not in answered(r)


def _addresses(srv: Server) -> list[tuple[str, str]]:
    assert srv.config is not None
    return [(m.name, str(a)) for m in srv.config.pools["p"].mirrors for a in m.addresses()]


def test_drained_is_never_answered_and_explain_says_why(
    tmp_path: Path, geoip: tuple[Path, Path]
) -> None:
    url = f"sqlite:///{tmp_path}/health.sqlite"
    with Store(url) as store:
        store.drain("nue", reason="disk swap", who="alice")
        store.drain("tyo", reason="rack move", who="bob", address="10.5.0.10")
        # everything else down: failing open must still leave the drained ones out
        for m, a in (("fra", "10.1.0.10"), ("muc", "10.2.0.10"), ("sao", "10.6.0.10")):
            store.set_state("p", m, a, False, "test: down")
    s = Server(settings_for(zones(tmp_path), tmp_path, geoip, store_url=url))
    s.load_initial()
    try:
        r = explain(s, "dl.example.org", BERLIN_AS65001)
        assert "10.7.0.10" not in answered(r)
        assert why(r)["nue"] == ("drained", "drained until undrained (disk swap; by alice)")
        assert r["health"]["drains"] == 2
        r = explain(s, "dl.example.org", TOKYO_AS)
        assert why(r)["tyo"] == ("drained", "drained until undrained (rack move; by bob)")
        assert "10.5.0.10" not in answered(r)
        with Store(url) as store:
            for m, a in (("ash", "10.4.0.10"), ("par", "10.3.0.10")):
                store.set_state("p", m, a, False, "test: down")
        s.poller.poll()
        assert s.config is not None and s.tables is not None
        s._install(s.config, s.tables, s._build(s.config, s.tables))
        r = explain(s, "dl.example.org", BERLIN_AS65001)
        assert r["case"] == "failopen"
        assert answered(r) and not answered(r) & {"10.7.0.10", "10.5.0.10"}
    finally:
        assert s.poller.store is not None
        s.poller.close()


def test_answers_over_dns_follow_the_client_profile(
    tmp_path: Path, geoip: tuple[Path, Path]
) -> None:
    """The same rules through the server's cached per-profile answers (ECS)."""
    settings = settings_for(zones(tmp_path), tmp_path, geoip)
    with ServerThread(settings) as st:

        def seen(client: str) -> set[str]:
            got: set[str] = set()
            for _ in range(12):  # the whole rotation, whatever its start
                msg = udp(query("dl.example.org", ecs=f"{client}/24"), st.addr())
                got |= {rr.address for rrset in msg.answer for rr in rrset}
            return got

        assert seen(LONDON) == {"10.4.0.10"}
        assert seen(BRUSSELS) == {"10.3.0.10"}
        assert seen(TOKYO_AS) == {"10.5.0.10"}
        assert "10.2.0.10" not in seen(BERLIN)
        assert not seen(OSAKA) & {"10.1.0.10", "10.5.0.10"}
