"""EDNS Client Subnet (RFC 7871) and geo steering through the running server."""

from __future__ import annotations

import logging
import shutil
import struct
from collections import Counter
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import pytest

from geodns.runtime.explain import explain
from geodns.runtime.server import Server

from .conftest import TEST_ZONES
from .geodata import make_databases
from .util import ServerThread, ecs_of, query, raw_udp, rrset_texts, settings_for, udp


def addrs(msg: dns.message.Message) -> list[str]:
    return sorted(rr.address for rrset in msg.answer for rr in rrset if hasattr(rr, "address"))


def ecs_packet(option: bytes, name: bytes = b"\x02dl\x07example\x03org\x00") -> bytes:
    opt_rdata = struct.pack("!HH", 8, len(option)) + option
    return (
        struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 1)
        + name
        + b"\x00\x01\x00\x01"
        + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"
        + struct.pack("!H", len(opt_rdata))
        + opt_rdata
    )


@pytest.mark.parametrize(
    ("option", "why"),
    [
        (struct.pack("!HBB", 3, 24, 0) + b"\xc0\x00\x02", "unknown family 3"),
        (struct.pack("!HBB", 1, 33, 0) + b"\xc0\x00\x02\x00\x00", "IPv4 source prefix > 32"),
        (struct.pack("!HBB", 2, 129, 0) + b"\x20\x01" + b"\x00" * 15, "IPv6 source prefix > 128"),
        (
            struct.pack("!HBB", 1, 24, 0) + b"\xc0\x00\x02\x00",
            "address longer than the prefix needs",
        ),
        (struct.pack("!HBB", 1, 24, 0) + b"\xc0\x00", "address shorter than the prefix needs"),
        (struct.pack("!HBB", 1, 23, 0) + b"\xc0\x00\x03", "host bits set beyond the prefix"),
        (struct.pack("!HBB", 1, 24, 16) + b"\xc0\x00\x02", "scope not zero in a query"),
        (struct.pack("!HB", 1, 24), "option shorter than 4 octets"),
    ],
)
def test_malformed_ecs_is_formerr(server: ServerThread, option: bytes, why: str) -> None:
    """RFC 7871 §7.1.1 / §6: a malformed option → FORMERR (with an OPT, no ECS)."""
    raw = raw_udp(ecs_packet(option), server.addr())
    assert raw is not None, why
    msg = dns.message.from_wire(raw)
    assert msg.rcode() == dns.rcode.FORMERR, why
    assert msg.id == 0x4242 and not msg.answer, why
    assert msg.edns == 0 and ecs_of(msg) is None, why


def test_two_ecs_options_is_formerr(server: ServerThread) -> None:
    opt = struct.pack("!HBB", 1, 24, 0) + b"\xc0\x00\x02"
    one = struct.pack("!HH", 8, len(opt)) + opt
    pkt = (
        struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 1)
        + b"\x02dl\x07example\x03org\x00\x00\x01\x00\x01"
        + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"
        + struct.pack("!H", 2 * len(one))
        + one
        + one
    )
    raw = raw_udp(pkt, server.addr())
    assert raw is not None and dns.message.from_wire(raw).rcode() == dns.rcode.FORMERR


@pytest.mark.parametrize(
    ("subnet", "expected", "scope"),
    [
        # DE client → one of the German mirrors (weights 100:50 make sets of one,
        # so that a resolver's shuffle cannot even out the shares)
        ("192.0.2.0/24", [["127.1.0.1"], ["127.5.0.1"]], 24),
        ("192.0.2.128/25", [["127.1.0.1"], ["127.5.0.1"]], 24),  # more specific: the db's /24
        ("198.51.100.0/24", [["127.2.0.1"]], 24),  # US client → the US mirror alone
    ],
)
def test_ecs_steers_and_scope_is_the_geoip_network(
    server: ServerThread, subnet: str, expected: list[list[str]], scope: int
) -> None:
    r = udp(query("dl.example.org", ecs=subnet), server.addr())
    assert r.rcode() == dns.rcode.NOERROR
    assert addrs(r) in expected
    e = ecs_of(r)
    assert e is not None
    addr, _, plen = subnet.partition("/")
    assert (e.address, e.srclen, e.scopelen) == (addr, int(plen), scope)
    assert {rrset.ttl for rrset in r.answer} == {60}


def test_jp_client_gets_jp_alone_or_padded_from_the_nearest_group(server: ServerThread) -> None:
    """Osaka: JP is the best group alone; no farther mirror fills a slot. With
    `min_answers: 2` the answer is padded from the next group: Frankfurt and
    Nuremberg are equally far (within the band), so the second slot alternates
    between them by weight."""
    for _ in range(10):
        r = udp(query("dl.example.org", ecs="203.0.113.0/24"), server.addr())
        assert addrs(r) == ["127.3.0.1"]
    seconds = Counter()
    for _ in range(30):
        r = udp(query("pad.example.org", ecs="203.0.113.0/24"), server.addr())
        got = [rr.address for rrset in r.answer for rr in rrset]
        assert got[0] == "127.3.0.1" and len(got) == 2  # the near one first
        seconds[got[1]] += 1
    assert len(seconds) > 1 and "127.3.0.1" not in seconds
    assert seconds["127.1.0.1"] > seconds["127.5.0.1"]  # weight 100 over 50


def test_answers_match_explain(server: ServerThread) -> None:
    """The running server and `geodns explain` give the same answer and scope."""
    for subnet in (
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "81.2.69.0/24",
        "10.9.0.0/16",
    ):
        r = udp(query("dl.example.org", ecs=subnet), server.addr())
        ex = explain(server.server, "dl.example.org", subnet, "A")
        assert addrs(r) in [sorted(v) for v in ex["variants"]], subnet
        e = ecs_of(r)
        assert e is not None and e.scopelen == ex["ecs_scope"], subnet


def test_explain_refuses_clients_the_server_would_not_take_as_given(
    server: ServerThread,
) -> None:
    with pytest.raises(ValueError, match="steers by the resolver's own address"):
        explain(server.server, "dl.example.org", "0.0.0.0/0", "A")
    with pytest.raises(ValueError, match="FORMERR"):  # host bits set beyond /24
        explain(server.server, "dl.example.org", "192.0.2.77/24", "A")
    assert explain(server.server, "dl.example.org", "192.0.2.77", "A")["client"] == "192.0.2.77"


def test_unknown_client_gets_a_sane_answer(server: ServerThread) -> None:
    """A client in no database: every mirror ranks alike; answers still come, scope honest."""
    r = udp(query("dl.example.org", ecs="10.9.0.0/16"), server.addr())
    assert len(addrs(r)) == 2 and "127.1.0.10" not in addrs(r)  # never the fallback origin
    e = ecs_of(r)
    assert e is not None and 0 < e.scopelen <= 16 + 16


def test_ipv6_client_and_aaaa(server: ServerThread) -> None:
    r = udp(query("dl.example.org", "AAAA", ecs="2001:db8:2::/48"), server.addr())
    assert addrs(r) == ["2001:db8:5::1", "2001:db8:de::1"]
    e = ecs_of(r)
    assert e is not None and (e.srclen, e.scopelen) == (48, 48)


def test_ipv4_only_pool_has_no_aaaa(server: ServerThread) -> None:
    r = udp(query("v4only.example.org", "AAAA", ecs="192.0.2.0/24"), server.addr())
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    assert len(r.authority) == 1
    r = udp(query("v4only.example.org", "A"), server.addr())
    assert addrs(r) == ["127.1.0.21"]  # the disabled mirror never appears


def test_no_ecs_in_query_none_in_answer(server: ServerThread) -> None:
    r = udp(query("dl.example.org", edns=0), server.addr())
    assert r.edns == 0 and ecs_of(r) is None and len(addrs(r)) == 2


def test_non_steered_name_echoes_scope_zero(server: ServerThread) -> None:
    r = udp(query("mail.example.org", ecs="192.0.2.0/24"), server.addr())
    e = ecs_of(r)
    assert e is not None and (e.address, e.srclen, e.scopelen) == ("192.0.2.0", 24, 0)
    r = udp(query("nope.example.org", ecs="192.0.2.0/24"), server.addr())
    assert r.rcode() == dns.rcode.NXDOMAIN and ecs_of(r).scopelen == 0  # type: ignore[union-attr]


def test_source_prefix_zero_uses_packet_source(server: ServerThread) -> None:
    """RFC 7871 §7.1.2: /0 means 'do not use my address'; scope 0 back."""
    r = udp(query("dl.example.org", ecs="0.0.0.0/0"), server.addr())
    e = ecs_of(r)
    assert e is not None and (e.srclen, e.scopelen) == (0, 0)
    assert len(addrs(r)) == 2


def test_weights_spread_load_2_to_1(server: ServerThread) -> None:
    """Equally near mirrors of weight 100 and 50 lead answers 2:1 (±5 %)."""
    n = 3000
    seen: Counter[str] = Counter()
    for _ in range(n):
        r = udp(query("one.example.org", ecs="192.0.2.0/24"), server.addr())
        (a,) = addrs(r)
        seen[a] += 1
    assert set(seen) == {"127.1.0.1", "127.5.0.1"}
    share = seen["127.1.0.1"] / n
    assert abs(share - 2 / 3) < 0.05 * (2 / 3), seen


def test_round_robin_order_rotates(server: ServerThread) -> None:
    firsts = set()
    for _ in range(12):
        r = udp(query("dl.example.org", ecs="192.0.2.0/24"), server.addr())
        firsts.add(r.answer[0][0].address)
    assert firsts == {"127.1.0.1", "127.5.0.1"}


def test_ecs_from_untrusted_source_is_ignored(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    import ipaddress

    s = settings_for(
        TEST_ZONES, tmp_path, demo_geoip, ecs_trust=(ipaddress.ip_network("10.0.0.0/8"),)
    )
    with ServerThread(s) as st:
        r = udp(query("dl.example.org", ecs="198.51.100.0/24"), st.addr())
        e = ecs_of(r)
        assert e is not None and e.scopelen == 0  # echoed, but not used
        # steered as if there were no ECS: the same addresses over the rotation
        with_ecs: set[str] = set()
        without: set[str] = set()
        for _ in range(8):
            with_ecs |= set(addrs(udp(query("dl.example.org", ecs="198.51.100.0/24"), st.addr())))
            without |= set(addrs(udp(query("dl.example.org"), st.addr())))
        assert with_ecs == without


def test_geoip_files_replaced_on_disk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """geoipupdate renames new files into place: answers follow without a restart;
    a corrupt replacement keeps the old database with an error logged."""
    geo = tmp_path / "geoip"
    nets = [
        {
            "network": "127.1.0.0/16",
            "asn": 64501,
            "country": "DE",
            "continent": "EU",
            "location": [50.11, 8.68],
        },
        {
            "network": "127.2.0.0/16",
            "asn": 64502,
            "country": "US",
            "continent": "NA",
            "location": [39.04, -77.49],
        },
        {
            "network": "127.3.0.0/16",
            "asn": 64503,
            "country": "JP",
            "continent": "AS",
            "location": [35.68, 139.65],
        },
        {
            "network": "127.4.0.0/16",
            "asn": 64504,
            "country": "FR",
            "continent": "EU",
            "location": [48.86, 2.35],
        },
        {
            "network": "127.5.0.0/16",
            "asn": 64501,
            "country": "DE",
            "continent": "EU",
            "location": [49.45, 11.08],
        },
        {
            "network": "100.64.0.0/24",
            "asn": 64999,
            "country": "US",
            "continent": "NA",
            "location": [40.71, -74.01],
        },
    ]
    asn, city = make_databases(geo, nets)
    s = settings_for(TEST_ZONES, tmp_path, (asn, city))
    with ServerThread(s) as st:
        r = udp(query("one.example.org", ecs="100.64.0.0/24"), st.addr())
        assert addrs(r) == ["127.2.0.1"]
        # the same network moves to Japan in the new edition
        nets[-1] = {
            "network": "100.64.0.0/24",
            "asn": 64998,
            "country": "JP",
            "continent": "AS",
            "location": [34.69, 135.50],
        }
        staged = tmp_path / "staged"
        make_databases(staged, nets)
        for f in ("GeoLite2-ASN.mmdb", "GeoLite2-City.mmdb"):
            shutil.copy(staged / f, geo / (f + ".tmp"))
            (geo / (f + ".tmp")).rename(geo / f)
        st.call(st.server.refresh_geoip())
        r = udp(query("one.example.org", ecs="100.64.0.0/24"), st.addr())
        assert addrs(r) == ["127.3.0.1"]
        # a corrupt replacement: old reader stays, error logged, answers unchanged
        caplog.set_level(logging.ERROR, logger="geodns.steering.geo")
        (geo / "bad.tmp").write_bytes(b"not a maxmind database" * 10)
        (geo / "bad.tmp").rename(geo / "GeoLite2-City.mmdb")
        st.call(st.server.refresh_geoip())
        assert any("GeoLite2-City.mmdb" in rec.getMessage() for rec in caplog.records)
        r = udp(query("one.example.org", ecs="100.64.0.0/24"), st.addr())
        assert addrs(r) == ["127.3.0.1"]
        assert rrset_texts(udp(query("mail.example.org"), st.addr()).answer) == [
            "mail.example.org. 3600 IN A 192.0.2.25"
        ]


def test_tie_km_zero_means_strictly_nearest(tmp_path: Path, demo_geoip: tuple[Path, Path]) -> None:
    """Nuremberg (378 km) and Frankfurt (424 km) share Berlin's load by weight
    within the default band; with `tie_km: 0` and `band_factor: 1` only the
    nearest answers."""
    zones = tmp_path / "zones"
    shutil.copytree(TEST_ZONES, zones)
    pool = zones / "pools" / "distfiles.yaml"
    strict = "fallback: [origin]\ntie_km: 0\nband_factor: 1"
    pool.write_text(pool.read_text().replace("fallback: [origin]", strict))
    with ServerThread(settings_for(zones, tmp_path, demo_geoip)) as st:
        seen = {
            addrs(udp(query("one.example.org", ecs="192.0.2.0/24"), st.addr()))[0]
            for _ in range(30)
        }
    assert seen == {"127.5.0.1"}


def test_an_option_cached_from_a_trusted_resolver_is_not_used_for_an_untrusted_one(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    import ipaddress

    import dns.query

    s = settings_for(
        TEST_ZONES, tmp_path, demo_geoip, ecs_trust=(ipaddress.ip_network("127.0.0.2/32"),)
    )
    with ServerThread(s) as st:
        host, port = st.addr()
        q = query("dl.example.org", ecs="198.51.100.0/24")  # New York
        for _ in range(3):  # trusted, and cached under the option's bytes
            trusted = dns.query.udp(q, host, port=port, source="127.0.0.2", timeout=3)
            e = ecs_of(trusted)
            assert e is not None and e.scopelen > 0
        for _ in range(3):  # the same option bytes from a resolver we do not trust
            untrusted = dns.query.udp(q, host, port=port, source="127.0.0.1", timeout=3)
            e = ecs_of(untrusted)
            assert e is not None and e.scopelen == 0, untrusted


def _steer_world(tmp: Path, clients: list[dict[str, object]]) -> Server:
    import textwrap

    from .geodata import WORLD, make_databases

    cfg = tmp / "zones"
    (cfg / "pools").mkdir(parents=True)
    (cfg / "z.yaml").write_text(
        "zone: example.org\nsoa: {mname: ns1.example.org, rname: h.example.org}\n"
        "ns: [ns1]\nrecords:\n  ns1: {A: 192.0.2.53}\nsteered:\n  dl: {pool: p, answers: 1}\n"
    )
    (cfg / "pools" / "p.yaml").write_text(
        textwrap.dedent("""\
        pool: p
        mirrors:
          - {name: alpha, url: "https://a.example.net/", ipv4: [10.1.0.1], weight: 100}
          - {name: beta, url: "https://b.example.net/", ipv4: [10.1.0.2], weight: 100}
          - {name: gamma, url: "https://c.example.net/", ipv4: [10.1.0.3], weight: 50}
        """)
    )
    geo = make_databases(tmp / "geo", [*WORLD, *clients])
    srv = Server(settings_for(cfg, tmp, geo))
    srv.load_initial()
    return srv


def _first(srv: Server, ecs: str) -> str:
    out = srv.current.responder.handle(query("dl.example.org", ecs=ecs).to_wire(), "127.0.0.1")  # type: ignore[union-attr]
    assert out is not None
    return str(dns.message.from_wire(out).answer[0][0].address)


def test_weights_hold_over_many_clients_with_one_query_each(tmp_path: Path) -> None:
    """Every client profile has its own rotation; if each began at variant 0,
    clients asking once would all get the first mirror (the old behaviour)."""
    n = 2000
    clients = [
        {
            "network": f"100.{80 + i // 256}.{i % 256}.0/24",
            "asn": 64000 + i % 50,
            "country": "DE",
            "location": [50.0 + (i % 100) / 100, 8.0 + (i // 100) / 100],
        }
        for i in range(n)
    ]
    srv = _steer_world(tmp_path, clients)
    got = Counter(_first(srv, f"100.{80 + i // 256}.{i % 256}.0/24") for i in range(n))
    for addr, share in (("10.1.0.1", 0.4), ("10.1.0.2", 0.4), ("10.1.0.3", 0.2)):
        assert abs(got[addr] / n - share) < 0.05, got


async def test_a_rebuild_does_not_restart_the_rotation(tmp_path: Path) -> None:
    srv = _steer_world(tmp_path, [])
    got: Counter[str] = Counter()
    for _ in range(100):  # two queries per generation, as between health changes
        for _ in range(2):
            got[_first(srv, "192.0.2.0/24")] += 1
        assert srv.config is not None and srv.tables is not None
        await srv.swap_in(srv.config, srv.tables, reason="test")
    assert got == {"10.1.0.1": 80, "10.1.0.2": 80, "10.1.0.3": 40}, (
        got
    )  # exact: 200 = 40 rounds of 5
