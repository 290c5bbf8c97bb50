"""GeoIP layer and demo database writer, against real generated .mmdb files."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import geoip2.database
import maxminddb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPNetwork, IPSet

from geodns.steering.geo import (
    CONTINENT_OF,
    CONTINENTS,
    GeoDB,
    GeoInfo,
    continent_of,
    distance_km,
)
from geodns.steering.mmdb_writer import (
    DemoNetworksError,
    geoip_demo_command,
    load_networks,
    write_databases,
)
from tests.geodata import make_databases

ip = ipaddress.ip_address

FRANKFURT = (50.1109, 8.6821)
BERLIN = (52.52, 13.405)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_databases(out)
    return out


@pytest.fixture
def demo(demo_dir: Path) -> GeoDB:
    return GeoDB(demo_dir / "GeoLite2-ASN.mmdb", demo_dir / "GeoLite2-City.mmdb")


# --------------------------------------------------------------------------- demo database


@pytest.mark.parametrize(
    "address, expected",
    [
        ("127.1.0.1", GeoInfo(64501, "DE", "EU", FRANKFURT, 16)),
        ("127.2.255.254", GeoInfo(64502, "US", "NA", (39.0438, -77.4874), 16)),
        ("127.3.0.1", GeoInfo(64503, "JP", "AS", (35.6762, 139.6503), 16)),
        ("127.4.0.1", GeoInfo(64504, "FR", "EU", (48.8566, 2.3522), 16)),
        ("127.5.0.1", GeoInfo(64501, "DE", "EU", (49.4521, 11.0767), 16)),
        ("::1", GeoInfo(64501, "DE", "EU", FRANKFURT, 128)),
        ("192.0.2.77", GeoInfo(64510, "DE", "EU", BERLIN, 24)),
        ("198.51.100.1", GeoInfo(64520, "US", "NA", (40.7128, -74.006), 24)),
        ("203.0.113.200", GeoInfo(64530, "JP", "AS", (34.6937, 135.5023), 24)),
        ("81.2.69.160", GeoInfo(64540, "GB", "EU", (51.5074, -0.1278), 24)),
        ("2001:db8:1::53", GeoInfo(64510, "DE", "EU", BERLIN, 48)),
        ("2001:db8:2:ffff::1", GeoInfo(64520, "US", "NA", (40.7128, -74.006), 48)),
        ("2001:db8:3::1", GeoInfo(64550, "BR", "SA", (-23.5505, -46.6333), 48)),
        # IPv4-mapped IPv6 is looked up as IPv4, scope stays in IPv6 terms
        ("::ffff:192.0.2.77", GeoInfo(64510, "DE", "EU", BERLIN, 96 + 24)),
    ],
)
def test_demo_lookups(demo: GeoDB, address: str, expected: GeoInfo) -> None:
    addr = ip(address)
    assert demo.lookup(addr) == expected
    assert demo.lookup(addr.packed) == expected  # packed form, as parsed from the wire
    assert demo.lookup(addr) == expected  # and again from the cache


def test_demo_files_read_with_maxminddb_and_geoip2(demo_dir: Path) -> None:
    asn_path, city_path = demo_dir / "GeoLite2-ASN.mmdb", demo_dir / "GeoLite2-City.mmdb"
    with geoip2.database.Reader(str(city_path)) as city:
        assert city.metadata().database_type == "GeoLite2-City"
        r = city.city("192.0.2.1")
        assert (r.country.iso_code, r.continent.code, r.city.name) == ("DE", "EU", "Berlin")
        assert r.country.name == "Germany" and r.continent.name == "Europe"
        assert (r.location.latitude, r.location.longitude) == BERLIN
        assert r.location.accuracy_radius == 20
        assert r.traits.network == ipaddress.ip_network("192.0.2.0/24")
        r = city.city("2001:db8:3::1")
        assert (r.country.iso_code, r.continent.code, r.city.name) == ("BR", "SA", "São Paulo")
        assert r.traits.network == ipaddress.ip_network("2001:db8:3::/48")
    with geoip2.database.Reader(str(asn_path)) as asn:
        assert asn.metadata().database_type == "GeoLite2-ASN"
        r = asn.asn("127.5.0.1")
        assert (r.autonomous_system_number, r.autonomous_system_organization) == (
            64501,
            "Demo Mirrors DE",
        )
        assert r.network == ipaddress.ip_network("127.5.0.0/16")
    with maxminddb.open_database(str(asn_path)) as reader:
        md = reader.metadata()
        assert (md.ip_version, md.binary_format_major_version, md.languages) == (6, 2, ["en"])
        # IPv4 lives at ::/96 and is aliased at ::ffff:0:0/96, as in MaxMind's files
        rec, plen = reader.get_with_prefix_len("::ffff:81.2.69.1")
        assert rec["autonomous_system_number"] == 64540 and plen == 96 + 24
        assert reader.get_with_prefix_len("81.2.69.1")[1] == 24  # IPv4 length for IPv4 input


def test_demo_write_is_atomic_and_repeatable(tmp_path: Path) -> None:
    first = write_databases(tmp_path)
    inode = os.stat(first[1]).st_ino
    second = write_databases(tmp_path)
    assert first == second
    assert os.stat(second[1]).st_ino != inode  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["GeoLite2-ASN.mmdb", "GeoLite2-City.mmdb"]
    assert oct(os.stat(second[0]).st_mode & 0o777) == "0o644"


def test_geoip_demo_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert geoip_demo_command(str(tmp_path / "out"), None) == 0
    assert "GeoLite2-City.mmdb" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {network: 10.0.0.1/8, asn: 1}\n")
    assert geoip_demo_command(str(tmp_path / "out2"), str(bad)) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1: network #1 (10.0.0.1/8): network:" in err
    assert "did you mean 10.0.0.0/8?" in err
    assert not (tmp_path / "out2").exists()


def test_networks_file_errors_name_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "nets.yaml"
    f.write_text(
        "# comment\n"
        "- {network: 10.0.0.0/8, asn: 1, country: DE}\n"
        "- network: 10.1.0.0/16\n"
        "  country: NO\n"  # YAML 1.1 reads NO as false
        "  colour: blue\n"
        "- {network: 10.0.0.0/8, asn: 2}\n"
        "- {network: 10.2.0.0/16, location: [91, 0], continent: XX}\n"
        "- {network: 10.3.0.0/16, asn: -5, org: 7}\n"
        "- {network: 10.4.0.0/16}\n"
        "- {asn: 3}\n"
    )
    with pytest.raises(DemoNetworksError) as info:
        load_networks(f)
    problems = info.value.problems
    assert problems == (
        f"{f}:3: network #2 (10.1.0.0/16): colour: unknown field (expected one of accuracy_radius,"
        " asn, city, continent, country, location, network, org)",
        f"{f}:3: network #2 (10.1.0.0/16): country: YAML read this as true/false; quote the code,"
        ' e.g. "NO"',
        f"{f}:6: network #3 (10.0.0.0/8): network: listed twice (first at {f}:2)",
        f"{f}:7: network #4 (10.2.0.0/16): continent: 'XX' is not one of AF AN AS EU NA OC SA",
        f"{f}:7: network #4 (10.2.0.0/16): location: [91, 0] is not [latitude, longitude]"
        " in degrees",
        f"{f}:8: network #5 (10.3.0.0/16): asn: -5 is not an AS number (1..4294967295)",
        f"{f}:8: network #5 (10.3.0.0/16): org: must be text",
        f"{f}:9: network #6 (10.4.0.0/16): network: gives neither asn nor"
        " country/continent/city/location",
        f"{f}:10: network #7: network: required (a CIDR like 192.0.2.0/24)",
    )


def test_networks_file_duplicate_keys_and_merge_keys(tmp_path: Path) -> None:
    f = tmp_path / "nets.yaml"
    f.write_text(
        "- &de {network: 10.0.0.0/8, asn: 1, country: DE}\n"
        "- {<<: *de, network: 10.1.0.0/16}\n"  # merged keys may be overridden
        "- {network: 10.2.0.0/16, asn: 1, asn: 2}\n"
        "- {network: 10, asn: 1}\n"
    )
    with pytest.raises(DemoNetworksError) as info:
        load_networks(f)
    assert info.value.problems == (
        f"{f}:3: network #3 (10.2.0.0/16): asn: given twice",
        f"{f}:4: network #4 (10): network: 10 is not a CIDR like 192.0.2.0/24",
    )


def test_networks_file_yaml_syntax_error(tmp_path: Path) -> None:
    f = tmp_path / "nets.yaml"
    f.write_text("- {network: 10.0.0.0/8\n- x: [\n")
    with pytest.raises(DemoNetworksError, match=rf"^{f}:\d+: invalid YAML"):
        load_networks(f)


def test_packaged_networks_cover_the_demo() -> None:
    nets = {str(n.network): n for n in load_networks()}
    assert nets["127.5.0.0/16"].asn == nets["127.1.0.0/16"].asn == 64501
    assert nets["2001:db8:3::/48"].continent == "SA"
    assert len(nets) == 13


# --------------------------------------------------------------------------- prefixes


def test_prefix_is_the_intersection_asn_more_specific(tmp_path: Path) -> None:
    asn, city = make_databases(
        tmp_path,
        [
            {"network": "10.0.0.0/8", "country": "DE", "location": [50.0, 8.0]},
            {"network": "10.1.2.0/24", "asn": 64999},
        ],
    )
    db = GeoDB(asn, city)
    assert db.lookup(ip("10.1.2.3")) == GeoInfo(64999, "DE", "EU", (50.0, 8.0), 24)
    # The ASN tree's empty network around 10.1.3.1 is 10.1.3.0/24: it still
    # narrows the scope, though it holds no data.
    assert db.lookup(ip("10.1.3.1")) == GeoInfo(None, "DE", "EU", (50.0, 8.0), 24)
    assert db.lookup(ip("10.128.0.1")) == GeoInfo(None, "DE", "EU", (50.0, 8.0), 9)


def test_prefix_is_the_intersection_city_more_specific(tmp_path: Path) -> None:
    asn, city = make_databases(
        tmp_path,
        [
            {"network": "10.0.0.0/8", "asn": 64999},
            {"network": "10.1.0.0/16", "country": "FR"},
            {"network": "2001:db8::/32", "asn": 64998},
            {"network": "2001:db8:1:2::/64", "country": "JP", "location": [35.0, 139.0]},
        ],
    )
    db = GeoDB(asn, city)
    assert db.lookup(ip("10.1.200.1")) == GeoInfo(64999, "FR", "EU", None, 16)
    assert db.lookup(ip("10.2.0.1")) == GeoInfo(64999, None, None, None, 15)
    assert db.lookup(ip("11.0.0.1")) == GeoInfo(None, None, None, None, 8)
    assert db.lookup(ip("2001:db8:1:2::99")) == GeoInfo(64998, "JP", "AS", (35.0, 139.0), 64)
    assert db.lookup(ip("2001:db8:1:3::99")).prefix == 64
    # the City file's empty network here is 2001:db8:8000::/33, inside the ASN /32
    assert db.lookup(ip("2001:db8:ffff::1")) == GeoInfo(64998, None, None, None, 33)


def test_network_inside_broader_network_of_same_database(tmp_path: Path) -> None:
    asn, city = make_databases(
        tmp_path,
        [
            {"network": "10.1.0.0/16", "country": "FR"},  # listed first, inserted last
            {"network": "10.0.0.0/8", "country": "DE"},
        ],
    )
    db = GeoDB(asn, city)
    assert db.lookup(ip("10.1.0.1")) == GeoInfo(None, "FR", "EU", None, 16)
    assert db.lookup(ip("10.0.0.1")) == GeoInfo(None, "DE", "EU", None, 16)
    assert db.lookup(ip("10.200.0.1")) == GeoInfo(None, "DE", "EU", None, 1 + 8)


def test_lookup_network_for_ecs(demo: GeoDB) -> None:
    # The ECS address arrives with host bits zeroed; scope = database network
    assert demo.lookup_network(ip("192.0.2.0"), 24).prefix == 24
    assert demo.lookup_network(ip("192.0.2.0"), 22).prefix == 24  # db narrower than source
    assert demo.lookup_network(bytes(16), 0).prefix > 0
    assert demo.lookup_network(ip("2001:db8:1::"), 56) == demo.lookup(ip("2001:db8:1::1"))


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory) -> GeoDB:
    """Overlapping networks at many lengths in both files, for property tests."""
    nets: list[dict[str, object]] = []
    for i, (net, field) in enumerate(
        [
            ("10.0.0.0/8", "asn"),
            ("10.64.0.0/10", "country"),
            ("10.64.32.0/19", "asn"),
            ("10.64.33.0/24", "country"),
            ("10.64.33.128/25", "asn"),
            ("10.200.7.9/32", "country"),
            ("172.16.0.0/12", "country"),
            ("172.16.5.0/24", "asn"),
            ("2001:db8::/32", "asn"),
            ("2001:db8:40::/42", "country"),
            ("2001:db8:40:1::/64", "asn"),
            ("2001:db8:40:1:8000::/65", "country"),
        ]
    ):
        if field == "asn":
            nets.append({"network": net, "asn": 64000 + i})
        else:
            nets.append({"network": net, "country": ["DE", "FR", "JP", "US"][i % 4]})
    asn, city = make_databases(tmp_path_factory.mktemp("layered"), nets)
    return GeoDB(asn, city, cache_size=50)


def _independent(db: GeoDB, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """The scope computed straight from the readers."""
    assert db.asn_path and db.city_path
    with (
        maxminddb.open_database(str(db.asn_path)) as a,
        maxminddb.open_database(str(db.city_path)) as c,
    ):
        return max(a.get_with_prefix_len(addr)[1], c.get_with_prefix_len(addr)[1])


_V4 = st.sampled_from(["10.0.0.0/8", "10.64.33.0/24", "10.200.7.0/24", "172.16.0.0/12"]).flatmap(
    lambda n: st.integers(
        int(ipaddress.ip_network(n).network_address), int(ipaddress.ip_network(n).broadcast_address)
    )
)
_V6 = st.integers(int(ip("2001:db8::")), int(ip("2001:db8:40:1:ffff:ffff:ffff:ffff")))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), v6=st.booleans())
def test_scope_is_truthful(layered: GeoDB, data: st.DataObject, v6: bool) -> None:
    """Every address inside the claimed scope gets the same answer (RFC 7871 §7.2.1)."""
    n = data.draw(_V6 if v6 else _V4)
    addr = ipaddress.IPv6Address(n) if v6 else ipaddress.IPv4Address(n)
    info = layered.lookup(addr)
    assert info.prefix == _independent(layered, addr)
    net = ipaddress.ip_network(f"{addr}/{info.prefix}", strict=False)
    lo, hi = int(net.network_address), int(net.broadcast_address)
    other = data.draw(st.integers(lo, hi))
    same = ipaddress.IPv6Address(other) if v6 else ipaddress.IPv4Address(other)
    assert layered.lookup(same) == info
    assert layered.cached_networks <= layered.cache_size


# --------------------------------------------------------------------------- missing databases


def test_missing_asn_database_skips_the_tier(
    demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "geodns.steering.geo")
    missing = tmp_path / "GeoLite2-ASN.mmdb"
    db = GeoDB(missing, demo_dir / "GeoLite2-City.mmdb")
    assert not db.has_asn and db.has_city
    assert db.lookup(ip("192.0.2.1")) == GeoInfo(None, "DE", "EU", BERLIN, 24)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(missing) in warnings[0].getMessage()
    assert not db.refresh()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # once


def test_missing_city_database_skips_the_tier(demo_dir: Path) -> None:
    db = GeoDB(demo_dir / "GeoLite2-ASN.mmdb", None)
    assert db.has_asn and not db.has_city
    assert db.lookup(ip("2001:db8:2::1")) == GeoInfo(64520, None, None, None, 48)


def test_no_database_at_all() -> None:
    db = GeoDB(None, None)
    assert db.lookup(ip("192.0.2.1")) == GeoInfo(None, None, None, None, 0)
    assert db.lookup(ip("2001:db8::1")).prefix == 0
    assert db.generation == 0


def test_discover_prefers_commercial_and_watches_for_new_files(
    demo_dir: Path, tmp_path: Path
) -> None:
    other, empty = tmp_path / "a", tmp_path / "b"
    other.mkdir()
    empty.mkdir()
    db = GeoDB.discover(dirs=[empty, other])
    assert not db.has_asn and not db.has_city and db.generation == 0

    # A database that appears later (first geoipupdate run) is picked up.
    (other / "GeoLite2-City.mmdb").write_bytes((demo_dir / "GeoLite2-City.mmdb").read_bytes())
    assert db.refresh()
    assert db.has_city and db.generation == 1
    assert db.lookup(ip("192.0.2.1")).country == "DE"

    (empty / "GeoIP2-ISP.mmdb").write_bytes((demo_dir / "GeoLite2-ASN.mmdb").read_bytes())
    (other / "GeoLite2-ASN.mmdb").write_bytes((demo_dir / "GeoLite2-ASN.mmdb").read_bytes())
    db2 = GeoDB.discover(dirs=[empty, other])
    assert db2.asn_path == empty / "GeoIP2-ISP.mmdb"
    assert db2.city_path == other / "GeoLite2-City.mmdb"
    assert GeoDB.discover(city=demo_dir / "GeoLite2-City.mmdb", dirs=[empty]).city_path == (
        demo_dir / "GeoLite2-City.mmdb"
    )


# --------------------------------------------------------------------------- cache


def test_cache_hits_per_network(demo: GeoDB) -> None:
    first = demo.lookup(ip("192.0.2.1"))
    assert demo.cached_networks == 1
    assert demo.lookup(ip("192.0.2.254")) is first  # same /24: a dict hit, no reader call
    assert demo.lookup(bytes([192, 0, 2, 9])) is first
    assert demo.cached_networks == 1
    v6 = demo.lookup(ip("2001:db8:1::1"))
    assert demo.lookup(ip("2001:db8:1:ffff::1")) is v6
    assert demo.cached_networks == 2


def test_cache_is_bounded(demo_dir: Path) -> None:
    db = GeoDB(demo_dir / "GeoLite2-ASN.mmdb", demo_dir / "GeoLite2-City.mmdb", cache_size=3)
    for _ in range(3):
        for a in ("127.1.0.1", "127.2.0.1", "127.3.0.1", "127.4.0.1", "8.8.8.8", "::1"):
            assert db.lookup(ip(a)).prefix > 0
            assert db.cached_networks <= 3
            assert len(db._exact4) <= 3 and len(db._exact6) <= 3
    assert db.lookup(ip("127.4.0.1")).country == "FR"


def test_bad_input() -> None:
    db = GeoDB(None, None)
    with pytest.raises(ValueError):
        db.lookup(b"\x01\x02\x03")
    with pytest.raises(ValueError):
        GeoDB(None, None, cache_size=0)


# --------------------------------------------------------------------------- refresh


def _networks(country: str) -> list[dict[str, object]]:
    return [
        {"network": "192.0.2.0/24", "asn": 64510, "country": country},
        {"network": "2001:db8::/32", "asn": 64511, "country": country},
    ]


def test_refresh_picks_up_atomic_replacement(tmp_path: Path) -> None:
    asn, city = make_databases(tmp_path, _networks("DE"))
    db = GeoDB(asn, city)
    gen = db.generation
    assert gen == 2
    assert db.lookup(ip("192.0.2.1")).country == "DE"
    assert not db.refresh()  # nothing changed: no swap

    make_databases(tmp_path, _networks("FR"))  # temp file + rename, like geoipupdate
    assert db.refresh()
    assert db.generation == gen + 2
    assert db.lookup(ip("192.0.2.1")).country == "FR"
    assert db.lookup(ip("2001:db8::1")).continent == "EU"
    assert not db.refresh()


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda good: b"this is not a MaxMind DB", id="garbage"),
        pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
        # Metadata intact, search tree pointing past the data: fails the probe lookups
        pytest.param(lambda good: b"\xff" * 64 + good[64:], id="bad-tree"),
    ],
)
def test_refresh_keeps_old_reader_on_corrupt_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, corrupt: object
) -> None:
    asn, city = make_databases(tmp_path, _networks("DE"))
    good = city.read_bytes()
    db = GeoDB(asn, city)
    gen = db.generation
    assert db.lookup(ip("192.0.2.1")).country == "DE"

    caplog.set_level(logging.INFO, "geodns.steering.geo")
    _replace(city, corrupt(good))  # type: ignore[operator]
    assert not db.refresh()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(city) in errors[0].getMessage()
    assert db.generation == gen
    assert db.lookup(ip("192.0.2.1")).country == "DE"  # old reader still serving
    assert db.lookup(ip("198.51.100.1")).prefix > 0

    assert not db.refresh()  # the same bad file is not retried (or logged) again
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    make_databases(tmp_path, _networks("JP"))  # a good file later
    assert db.refresh()
    assert db.lookup(ip("192.0.2.1")).country == "JP"


# --------------------------------------------------------------------------- helpers


def test_distance_km() -> None:
    assert distance_km(BERLIN, BERLIN) == 0.0
    assert distance_km(FRANKFURT, BERLIN) == pytest.approx(424, abs=2)
    assert distance_km((0.0, 0.0), (0.0, 1.0)) == pytest.approx(111.195, abs=0.01)
    assert distance_km((0.0, 0.0), (0.0, 180.0)) == pytest.approx(math.pi * 6371.0088)
    assert distance_km((51.5, -0.13), (40.71, -74.0)) == pytest.approx(5570, abs=10)


def test_continent_table() -> None:
    assert set(CONTINENT_OF.values()) == set(CONTINENTS)
    assert len(CONTINENT_OF) == 249 + 1  # every ISO 3166-1 code, and XK (Kosovo) as MaxMind
    assert [continent_of(c) for c in ("DE", "us", "BR", "JP", "AU", "ZA", "AQ", "RU", "TR")] == [
        "EU", "NA", "SA", "AS", "OC", "AF", "AN", "EU", "AS"
    ]  # fmt: skip
    assert continent_of(None) is None and continent_of("ZZ") is None


# --------------------------------------------------------------------------- cost


def _fat_city(tmp_path: Path) -> Path:
    """A City file with records as heavy as GeoLite2's (names in 8 languages)."""
    langs = ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]
    w = MMDBWriter(
        ip_version=6, database_type="GeoLite2-City", description="x", ipv4_compatible=True
    )
    for i in range(256):
        names = {lang: f"City {i} {lang}" for lang in langs}
        rec = {
            "city": {"geoname_id": 1000 + i, "names": names},
            "continent": {"code": "EU", "geoname_id": 6255148, "names": dict(names)},
            "country": {"geoname_id": 2921044, "iso_code": "DE", "names": dict(names)},
            "location": {"accuracy_radius": 20, "latitude": 50.0 + i / 100, "longitude": 8.0,
                         "time_zone": "Europe/Berlin"},
            "postal": {"code": f"{10000 + i}"},
            "registered_country": {"geoname_id": 2921044, "iso_code": "DE", "names": dict(names)},
            "subdivisions": [{"geoname_id": 2905330, "iso_code": "HE", "names": dict(names)}],
        }  # fmt: skip
        w.insert_network(IPSet([IPNetwork(f"10.{i}.0.0/16")]), rec)
    path = tmp_path / "GeoLite2-City.mmdb"
    w.to_db_file(str(path))
    return path


def test_lookup_cost_report(
    tmp_path: Path, demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prints µs per lookup (not a timed assertion); run with -s to see it."""
    city = _fat_city(tmp_path)
    first = [ipaddress.IPv4Address(f"10.{i}.{j}.1") for i in range(256) for j in range(4)]
    other = [ipaddress.IPv4Address(f"10.{i}.{j}.2") for i in range(256) for j in range(4)]

    def per_lookup(db: GeoDB, keys: Sequence[object], n: int = 1) -> float:
        t = time.perf_counter()
        for _ in range(n):
            for a in keys:
                db.lookup(a)  # type: ignore[arg-type]
        return (time.perf_counter() - t) / (n * len(keys)) * 1e6

    asn = demo_dir / "GeoLite2-ASN.mmdb"
    uncached = per_lookup(GeoDB(asn, city, cache_size=1), first, 2)
    db = GeoDB(asn, city)
    per_lookup(db, first)
    network_hit = per_lookup(db, other)  # new addresses in cached networks
    exact_hit = per_lookup(db, first, 10)
    packed = per_lookup(db, [a.packed for a in first], 10)
    with capsys.disabled():
        print(
            f"\nGeoDB.lookup: uncached {uncached:.2f} µs, cached network {network_hit:.2f} µs, "
            f"cached address {exact_hit:.2f} µs (packed {packed:.2f} µs)"
        )
    assert exact_hit < uncached * 10  # sanity only


def test_a_database_rewritten_in_place_cannot_crash_the_lookups(
    demo_geoip: tuple[Path, Path], tmp_path: Path
) -> None:
    """`cp new.mmdb GeoLite2-City.mmdb` truncates the watched file first: with
    the file itself mapped, the next lookup was SIGBUS. In a child process, so
    the old behaviour fails this test instead of killing the test run."""
    import shutil
    import subprocess
    import sys

    asn, city = (tmp_path / "asn.mmdb", tmp_path / "city.mmdb")
    shutil.copy(demo_geoip[0], asn)
    shutil.copy(demo_geoip[1], city)
    script = f"""
from geodns.steering.geo import GeoDB
db = GeoDB({str(asn)!r}, {str(city)!r})
open({str(city)!r}, "wb").close()  # truncated in place, as cp does before writing
open({str(asn)!r}, "wb").close()
hits = [db.lookup(bytes([100, 64 + i, 1, 1])) for i in range(32)]  # uncached networks
print("alive", len(hits))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "alive 32", (out.returncode, out.stderr)
