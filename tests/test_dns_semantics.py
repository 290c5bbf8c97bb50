"""Authoritative DNS semantics over real sockets, asserted on whole responses."""

from __future__ import annotations

import socket
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from .util import ServerThread, query, raw_tcp_many, raw_udp, rrset_texts, tcp, udp

SOA_NEG = (
    "example.org. 300 IN SOA ns1.example.org. hostmaster.example.org. "
    "2026010100 3600 600 1209600 300"
)


def texts(msg: dns.message.Message) -> tuple[list[str], list[str], list[str]]:
    return rrset_texts(msg.answer), rrset_texts(msg.authority), rrset_texts(msg.additional)


def test_static_answer_flags_and_ttl(server: ServerThread) -> None:
    r = udp(query("mail.example.org"), server.addr())
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.QR and r.flags & dns.flags.AA and r.flags & dns.flags.RD
    assert not r.flags & dns.flags.RA and not r.flags & dns.flags.TC
    assert texts(r) == (["mail.example.org. 3600 IN A 192.0.2.25"], [], [])
    assert r.edns == -1  # no EDNS asked, none given


def test_rd_clear_is_copied(server: ServerThread) -> None:
    r = udp(query("mail.example.org", rd=False), server.addr())
    assert not r.flags & dns.flags.RD and r.flags & dns.flags.AA


def test_ipv6_listener_udp_and_tcp(server: ServerThread) -> None:
    for fn in (udp, tcp):
        r = fn(query("ns1.example.org", "AAAA"), server.addr(1))
        assert texts(r) == (["ns1.example.org. 3600 IN AAAA 2001:db8::53"], [], [])


def test_nxdomain_has_soa_with_rfc2308_negative_ttl(server: ServerThread) -> None:
    """RFC 2308 §3: the SOA TTL in negative answers is min(SOA TTL, MINIMUM)."""
    r = udp(query("nope.example.org"), server.addr())
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    assert texts(r) == ([], [SOA_NEG], [])


def test_nodata_has_soa(server: ServerThread) -> None:
    """RFC 2308 §2.2: NOERROR, empty answer, SOA in authority."""
    r = udp(query("mail.example.org", "TXT"), server.addr())
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert texts(r) == ([], [SOA_NEG], [])


def test_empty_non_terminal_is_nodata_not_nxdomain(server: ServerThread) -> None:
    """RFC 8020: `_tcp.dl` exists because `_https._tcp.dl` does."""
    r = udp(query("_tcp.dl.example.org", "A"), server.addr())
    assert r.rcode() == dns.rcode.NOERROR
    assert texts(r) == ([], [SOA_NEG], [])


def test_refused_outside_our_zones(server: ServerThread) -> None:
    r = udp(query("example.com"), server.addr())
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.flags & dns.flags.AA
    assert texts(r) == ([], [], [])


def test_apex_soa_and_ns_with_glue(server: ServerThread) -> None:
    r = udp(query("example.org", "SOA"), server.addr())
    assert texts(r)[0] == [SOA_NEG.replace(" 300 IN", " 3600 IN")]
    r = udp(query("example.org", "NS"), server.addr())
    assert texts(r) == (
        [
            "example.org. 3600 IN NS ns.elsewhere.net.",
            "example.org. 3600 IN NS ns1.example.org.",
            "example.org. 3600 IN NS ns2.example.org.",
        ],
        [],
        [
            "ns1.example.org. 3600 IN A 192.0.2.53",
            "ns1.example.org. 3600 IN AAAA 2001:db8::53",
            "ns2.example.org. 3600 IN A 198.51.100.53",
        ],
    )


def test_mx_caa_srv_txt(server: ServerThread) -> None:
    r = udp(query("example.org", "MX"), server.addr())
    assert texts(r) == (
        [
            "example.org. 3600 IN MX 10 mail.example.org.",
            "example.org. 3600 IN MX 20 mx.elsewhere.net.",
        ],
        [],
        ["mail.example.org. 3600 IN A 192.0.2.25"],
    )
    assert texts(udp(query("example.org", "CAA"), server.addr()))[0] == [
        'example.org. 3600 IN CAA 0 issue "letsencrypt.org"'
    ]
    assert texts(udp(query("_https._tcp.dl.example.org", "SRV"), server.addr()))[0] == [
        "_https._tcp.dl.example.org. 3600 IN SRV 0 100 443 dl.example.org."
    ]
    assert texts(udp(query("example.org", "TXT"), server.addr()))[0] == [
        'example.org. 3600 IN TXT "v=spf1 mx -all"'
    ]


def test_referral_for_delegation_with_glue(server: ServerThread) -> None:
    """RFC 1034 §4.3.2: below a cut we refer, not authoritative (AA clear)."""
    r = udp(query("host.deep.lab.example.org"), server.addr())
    assert r.rcode() == dns.rcode.NOERROR and not r.flags & dns.flags.AA
    assert texts(r) == (
        [],
        [
            "lab.example.org. 3600 IN NS ns.elsewhere.net.",
            "lab.example.org. 3600 IN NS ns.lab.example.org.",
        ],
        [
            "ns.lab.example.org. 3600 IN A 192.0.2.99",
            "ns.lab.example.org. 3600 IN AAAA 2001:db8::99",
        ],
    )


def test_ds_at_delegation_is_answered_by_parent(server: ServerThread) -> None:
    r = udp(query("lab.example.org", "DS"), server.addr())
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert texts(r) == ([], [SOA_NEG], [])


def test_wildcard_synthesis(server: ServerThread) -> None:
    """RFC 4592: the owner is the query name; other types → NODATA."""
    r = udp(query("Alice.users.example.org"), server.addr())
    assert texts(r) == (["Alice.users.example.org. 300 IN A 192.0.2.80"], [], [])
    r = udp(query("alice.users.example.org", "AAAA"), server.addr())
    assert r.rcode() == dns.rcode.NOERROR and texts(r) == ([], [SOA_NEG], [])
    # the wildcard does not cover its own parent
    assert udp(query("users.example.org"), server.addr()).rcode() == dns.rcode.NOERROR


def test_cname_chain_followed_inside_zone(server: ServerThread) -> None:
    r = udp(query("downloads.example.org", "MX"), server.addr())
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    # downloads → www → dl (steered, no MX) → NODATA after the chain
    assert texts(r) == (
        [
            "downloads.example.org. 3600 IN CNAME www.example.org.",
            "www.example.org. 3600 IN CNAME dl.example.org.",
        ],
        [SOA_NEG],
        [],
    )


def test_cname_chain_across_our_zones(server: ServerThread) -> None:
    r = udp(query("hop.other.test", "TXT"), server.addr())
    assert rrset_texts(r.answer) == [
        "hop.other.test. 3600 IN CNAME www.example.org.",
        "www.example.org. 3600 IN CNAME dl.example.org.",
    ]


def test_cname_out_of_zone_and_dangling_and_loop(server: ServerThread) -> None:
    r = udp(query("ext.example.org"), server.addr())
    assert texts(r) == (["ext.example.org. 3600 IN CNAME www.elsewhere.net."], [], [])
    r = udp(query("dangling.example.org"), server.addr())
    # RFC 6604: the rcode speaks of the last name in the chain
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert texts(r) == (
        ["dangling.example.org. 3600 IN CNAME nothing-here.example.org."],
        [SOA_NEG],
        [],
    )
    r = udp(query("loop1.example.org"), server.addr())
    assert r.rcode() == dns.rcode.NOERROR and len(r.answer) == 2
    raw = raw_udp(query("loop1.example.org").to_wire(), server.addr())
    assert raw is not None and struct.unpack("!H", raw[6:8])[0] == 2  # each CNAME once


def test_cname_query_type_returns_cname_only(server: ServerThread) -> None:
    r = udp(query("www.example.org", "CNAME"), server.addr())
    assert texts(r) == (["www.example.org. 3600 IN CNAME dl.example.org."], [], [])


def test_qname_case_preserved(server: ServerThread) -> None:
    r = udp(query("MaIl.ExAmPlE.oRg"), server.addr())
    assert r.question[0].name.to_text() == "MaIl.ExAmPlE.oRg."
    assert r.answer[0].name.to_text() == "MaIl.ExAmPlE.oRg."
    raw = raw_udp(query("MaIl.ExAmPlE.oRg").to_wire(), server.addr())
    assert raw is not None and b"\x04MaIl\x07ExAmPlE\x03oRg\x00" in raw


def test_any_is_minimal_rfc8482(server: ServerThread) -> None:
    """RFC 8482 §4.2: one RRset, not everything."""
    for fn in (udp, tcp):
        r = fn(query("example.org", "ANY"), server.addr())
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
        assert len(r.answer) == 1


def test_edns_payload_and_do_bit(server: ServerThread) -> None:
    r = udp(query("mail.example.org", edns=0, payload=4096), server.addr())
    assert r.edns == 0 and r.payload == 1232
    q = query("mail.example.org", edns=0)
    q.want_dnssec(True)
    r = udp(q, server.addr())
    assert r.ednsflags & dns.flags.DO  # RFC 3225 §3: copied


def test_edns_unknown_option_ignored_not_echoed(server: ServerThread) -> None:
    q = query("mail.example.org", options=[dns.edns.GenericOption(65001, b"hello")])
    r = udp(q, server.addr())
    assert r.rcode() == dns.rcode.NOERROR and r.edns == 0 and list(r.options) == []
    assert texts(r)[0] == ["mail.example.org. 3600 IN A 192.0.2.25"]


def test_badvers_for_edns_version_1(server: ServerThread) -> None:
    """RFC 6891 §6.1.3: BADVERS, and our OPT says version 0."""
    r = udp(query("mail.example.org", edns=1), server.addr())
    assert r.rcode() == dns.rcode.BADVERS and r.edns == 0
    assert texts(r) == ([], [], [])


def test_notimp_for_other_opcodes(server: ServerThread) -> None:
    for opcode in (dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS, 3, 15):
        q = query("example.org", "SOA")
        q.set_opcode(opcode)
        raw = raw_udp(q.to_wire(), server.addr())
        assert raw is not None
        qid, flags = struct.unpack("!HH", raw[:4])
        assert qid == q.id and flags & 0x8000 and (flags >> 11) & 0xF == opcode
        assert flags & 0xF == dns.rcode.NOTIMP


def _hdr(
    qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x07example\x03org\x00\x00\x06\x00\x01"


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (_hdr(qd=0), "no question"),
        (_hdr(qd=2) + QUESTION + QUESTION, "two questions"),
        (_hdr() + b"\x07example\x03or", "truncated name"),
        (_hdr() + b"\x07example\x03org\x00\x00\x06", "truncated type/class"),
        (_hdr() + b"\x47example\x03org\x00\x00\x06\x00\x01", "extended label type"),
        (_hdr() + b"\xc0\x0c\x00\x06\x00\x01", "compression pointer in question"),
        (
            _hdr() + b"\x3f" + b"a" * 63 + (b"\x3f" + b"a" * 63) * 3 + b"\x00\x00\x01\x00\x01",
            "name > 255",
        ),
        (_hdr(ar=1) + QUESTION + b"\x00\x00\x29\x04", "truncated OPT"),
        (
            _hdr(ar=2) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" * 2,
            "two OPT records",
        ),
        (
            _hdr(ar=1)
            + QUESTION
            + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x05\x00\x0a\x00\x09x",
            "option overruns",
        ),
        (_hdr() + b"\x07example\x03org\x00\x00\x29\x00\x01", "OPT as the query type"),
    ],
)
def test_formerr_for_malformed_queries(server: ServerThread, packet: bytes, why: str) -> None:
    raw = raw_udp(packet, server.addr())
    assert raw is not None, why
    qid, flags, qd, an, ns, _ar = struct.unpack("!HHHHHH", raw[:12])
    assert qid == 0x1234 and flags & 0x8000, why
    assert flags & 0xF == dns.rcode.FORMERR, why
    assert flags & 0x0100, why  # RD copied
    assert an == ns == 0, why


def test_formerr_for_an_edns_query_carries_opt(server: ServerThread) -> None:
    """RFC 6891 §7: a query with a valid OPT gets one back, errors included."""
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"  # payload 1232, DO
    raw = raw_udp(_hdr(ar=1) + b"\x07example\x03org\x00\x00\x29\x00\x01" + opt, server.addr())
    assert raw is not None
    msg = dns.message.from_wire(raw)
    assert msg.rcode() == dns.rcode.FORMERR and msg.edns == 0
    assert msg.ednsflags & dns.flags.DO


def test_short_packets_and_responses_are_dropped(server: ServerThread) -> None:
    assert raw_udp(b"\x12", server.addr(), timeout=0.3) is None
    assert raw_udp(b"\x12\x34\x81\x00" + b"\x00" * 8, server.addr(), timeout=0.3) is None  # QR=1
    assert udp(query("mail.example.org"), server.addr()).rcode() == dns.rcode.NOERROR


def test_axfr_refused_and_chaos_refused(server: ServerThread) -> None:
    r = tcp(query("example.org", "AXFR"), server.addr())
    assert r.rcode() == dns.rcode.REFUSED
    q = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    assert udp(q, server.addr()).rcode() == dns.rcode.REFUSED


def test_truncation_then_tcp_retry(server: ServerThread) -> None:
    """RFC 2181 §9 / RFC 7766: TC=1 over UDP when it does not fit; full answer over TCP."""
    r = udp(query("big.example.org", "TXT"), server.addr())
    assert r.flags & dns.flags.TC and r.rcode() == dns.rcode.NOERROR
    assert texts(r) == ([], [], [])
    r = udp(query("big.example.org", "TXT", edns=0, payload=1232), server.addr())
    assert r.flags & dns.flags.TC and r.edns == 0  # 7 × ~210 bytes > 1232
    r = tcp(query("big.example.org", "TXT"), server.addr())
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 7


def test_referral_whose_glue_does_not_fit_is_truncated(server: ServerThread) -> None:
    """RFC 9471: in-domain glue is required. A referral whose glue does not
    fit is sent with TC=1 (the resolver retries over TCP), never without it."""
    r = udp(query("www.manyns.example.org"), server.addr())
    assert r.flags & dns.flags.TC and texts(r) == ([], [], [])
    full = tcp(query("www.manyns.example.org"), server.addr())
    assert not full.flags & dns.flags.TC and len(full.authority[0]) == 6
    assert sum(len(x) for x in full.additional) == 24
    r = udp(query("www.manyns.example.org", edns=0, payload=1232), server.addr())
    assert not r.flags & dns.flags.TC and sum(len(x) for x in r.additional) == 24


def test_tcp_pipelined_queries_in_order(server: ServerThread) -> None:
    names = ["mail.example.org", "ns1.example.org", "nope.example.org", "example.com"]
    qs = [query(n) for n in names]
    answers = raw_tcp_many([q.to_wire() for q in qs], server.addr())
    assert len(answers) == 4
    msgs = [dns.message.from_wire(a) for a in answers]
    assert [m.id for m in msgs] == [q.id for q in qs]
    assert [m.rcode() for m in msgs] == [0, 0, dns.rcode.NXDOMAIN, dns.rcode.REFUSED]


def test_tcp_idle_connection_closed(server: ServerThread) -> None:
    """RFC 7766 §6.2.3: idle clients are timed out (1 s in this fixture)."""
    with socket.create_connection(server.addr(), timeout=5) as s:
        t0 = time.monotonic()
        assert s.recv(10) == b""
        assert 0.5 < time.monotonic() - t0 < 4


def test_tcp_slow_partial_query_times_out(server: ServerThread) -> None:
    with socket.create_connection(server.addr(), timeout=5) as s:
        s.sendall(b"\x00\x30\x12")  # announces 48 bytes, sends 1, then stalls
        assert s.recv(10) == b""


def test_tcp_connection_cap_closes_the_longest_idle(server: ServerThread) -> None:
    """RFC 7766 §6.2.2: at the cap a newcomer is admitted and the connection
    idle the longest is closed (refusing newcomers let the first comers keep
    the server to themselves)."""
    limits = server.server.tcp_limits
    old = limits.max_connections
    limits.max_connections = 2
    socks = []
    q = query("mail.example.org").to_wire()
    framed = struct.pack("!H", len(q)) + q
    try:
        for _ in range(2):
            socks.append(socket.create_connection(server.addr(), timeout=3))
            time.sleep(0.05)
        socks[1].sendall(framed)  # the second is active, the first idle
        assert len(socks[1].recv(2000)) > 2
        extra = socket.create_connection(server.addr(), timeout=3)
        extra.sendall(framed)
        assert len(extra.recv(2000)) > 2  # the newcomer is served
        assert socks[0].recv(10) == b""  # the longest idle was closed for it
        socks[1].sendall(framed)
        assert len(socks[1].recv(2000)) > 2
        extra.close()
    finally:
        for s in socks:
            s.close()
        limits.max_connections = old


def test_tcp_garbage_frame_closes_only_that_connection(server: ServerThread) -> None:
    with socket.create_connection(server.addr(), timeout=3) as s:
        s.sendall(b"\x00\x02\xff\xff")
        assert s.recv(10) == b""
    assert tcp(query("mail.example.org"), server.addr()).rcode() == 0


def test_truncated_answer_is_counted_once(server: ServerThread) -> None:
    """An answer too big for UDP is fitted, not resolved a second time: one
    query, one ECS query, one truncation in the counters."""
    stats = server.server.stats
    before = (stats.ecs, stats.truncated, stats.qtypes[0][0].get(dns.rdatatype.TXT, 0))
    r = udp(query("big.example.org", "TXT", ecs="192.0.2.0/24", payload=512), server.addr())
    assert r.flags & dns.flags.TC
    after = (stats.ecs, stats.truncated, stats.qtypes[0][0].get(dns.rdatatype.TXT, 0))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
