"""DNSSEC: signed answers checked with dnspython's validator over real sockets,
DO=0 byte-identity, compact denial (RFC 9824), size handling, background
re-signing, key-file and policy errors, and the `geodns dnssec` commands."""

from __future__ import annotations

import random
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from geodns.cli import main
from geodns.config import load_config
from geodns.dns.answer import Responder
from geodns.dns.stats import Stats
from geodns.dns.zone import Tables
from geodns.dnssec.keyfiles import ds_text, read_key
from geodns.errors import ConfigError
from geodns.steering.geo import GeoDB
from geodns.steering.steer import Steering

from .dnssec_util import (
    TEST_ZONES,
    check_signed,
    dnskey_rrset,
    dnssec_yaml,
    keygen,
    nsec_of,
    nsec_types,
    signed_test_zones,
)
from .util import ServerThread, ecs_of, query, settings_for, tcp, udp

EX = dns.name.from_text("example.org.")
OT = dns.name.from_text("other.test.")


class Signed:
    """A server for signed copies of the test zones, with the trusted keys."""

    def __init__(self, st: ServerThread, root: Path, keys: dict[str, list[str]]) -> None:
        self.st = st
        self.root = root
        self.keys = keys
        self.trusted = {
            EX: dnskey_rrset(root, "example.org", keys["example.org"]),
            OT: dnskey_rrset(root, "other.test", keys["other.test"]),
        }

    def ask(self, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
        q = query(name, rdtype, **kw)  # type: ignore[arg-type]
        q.use_edns(0, dns.flags.DO, 1232, options=q.options)
        return udp(q, self.st.addr())

    def tag(self, zone: str, i: int) -> int:
        return read_key(self.root / self.keys[zone][i], zone).tag


def _lab_ds(root: Path) -> str:
    """A DS for the `lab` delegation (the child's key exists only for its DS)."""
    child = read_key(root / keygen(root / "keys", "lab.example.org", sep=True), "lab.example.org")
    return ds_text("lab.example.org", child).split(" DS ", 1)[1]


@pytest.fixture(scope="module")
def signed(
    tmp_path_factory: pytest.TempPathFactory, demo_geoip: tuple[Path, Path]
) -> Iterator[Signed]:
    tmp = tmp_path_factory.mktemp("dnssec")
    root = tmp / "zones"
    keys = signed_test_zones(root)
    zf = root / "example.org.yaml"
    text = zf.read_text()
    lab = "lab: {NS: [ns.lab.example.org., ns.elsewhere.net.]}"
    assert lab in text
    zf.write_text(text.replace(lab, lab[:-1] + f', DS: "{_lab_ds(root)}"}}'))
    settings = settings_for(root, tmp, demo_geoip, tcp_idle_timeout=2.0)
    with ServerThread(settings) as st:
        yield Signed(st, root, keys)


# ----------------------------------------------------------------------------- DO=0


def _responder(config_dir: Path, geoip: tuple[Path, Path]) -> Responder:
    config = load_config(config_dir)
    geodb = GeoDB(*geoip)
    return Responder(Tables(config), Steering(config, geodb), geodb, Stats())


QUESTIONS = [
    (name, rdtype)
    for name in (
        "example.org",
        "dl.example.org",
        "www.example.org",
        "downloads.example.org",
        "one.example.org",
        "v4only.example.org",
        "mail.example.org",
        "nope.example.org",
        "_tcp.dl.example.org",
        "_https._tcp.dl.example.org",
        "x.users.example.org",
        "lab.example.org",
        "www.lab.example.org",
        "manyns.example.org",
        "dangling.example.org",
        "loop1.example.org",
        "ext.example.org",
        "big.example.org",
        "hop.other.test",
        "other.test",
        "outside.invalid",
    )
    for rdtype in ("A", "AAAA", "MX", "TXT", "NS", "SOA", "SRV", "ANY", "CNAME", "NSEC", "DS")
]


def test_do0_answers_are_byte_identical_to_an_unsigned_zone(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    """DO=0 (and no EDNS) answers from a signed zone are exactly today's bytes;
    only DNSKEY, which an unsigned zone does not have, differs."""
    signed_test_zones(tmp_path / "zones")
    plain = _responder(TEST_ZONES, demo_geoip)
    signed_ = _responder(tmp_path / "zones", demo_geoip)
    assert signed_.signing and not plain.signing
    compared = 0
    for name, rdtype in QUESTIONS:
        for kw in ({}, {"edns": 0}, {"ecs": "192.0.2.0/24"}, {"ecs": "2001:db8:3::/48"}):
            wire_q = query(name, rdtype, **kw).to_wire()  # type: ignore[arg-type]
            for src in ("127.0.0.1", "203.0.113.9"):
                random.seed(compared)  # rotations start at a random variant
                a = plain.handle(wire_q, src)
                random.seed(compared)
                b = signed_.handle(wire_q, src)
                assert a == b, (name, rdtype, kw)
                compared += 1
    q = query("example.org", "DNSKEY", edns=0)
    assert dns.message.from_wire(plain.handle(q.to_wire(), "127.0.0.1") or b"").answer == []
    assert len(dns.message.from_wire(signed_.handle(q.to_wire(), "127.0.0.1") or b"").answer) == 1
    assert compared == len(QUESTIONS) * 8


# ----------------------------------------------------------------------------- positive


def test_dnskey_signed_by_ksk_and_data_by_zsk(signed: Signed) -> None:
    """RFC 6781 §3.1: the KSK signs the DNSKEY set, the ZSK everything else."""
    r = signed.ask("example.org", "DNSKEY")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert check_signed(r, signed.trusted) == ["example.org. DNSKEY"]
    keys = r.find_rrset(r.answer, EX, 1, dns.rdatatype.DNSKEY)
    assert sorted(k.flags for k in keys) == [256, 257]
    sig = r.find_rrset(r.answer, EX, 1, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY)
    assert [s.key_tag for s in sig] == [signed.tag("example.org", 0)]
    r = signed.ask("example.org", "SOA")
    assert check_signed(r, signed.trusted) == ["example.org. SOA"]
    sig = r.find_rrset(r.answer, EX, 1, dns.rdatatype.RRSIG, dns.rdatatype.SOA)
    assert [s.key_tag for s in sig] == [signed.tag("example.org", 1)]
    # validity window: inception an hour back, expiration 14 days ahead (defaults)
    now = time.time()
    assert now - 3700 < sig[0].inception < now - 3500
    assert abs(sig[0].expiration - (now + 14 * 86400)) < 120


def test_additional_section_glue_is_signed_and_its_rrsigs_come_last(signed: Signed) -> None:
    r = signed.ask("example.org", "MX")
    assert check_signed(r, signed.trusted) == [
        "example.org. MX",
        "mail.example.org. A",
    ]
    assert r.additional[-1].rdtype == dns.rdatatype.RRSIG


@pytest.mark.parametrize(
    ("subnet", "rdtype", "expect"),
    [
        ("192.0.2.0/24", "A", {"127.1.0.1", "127.5.0.1"}),  # Berlin → German mirrors
        ("198.51.100.0/24", "A", {"127.2.0.1"}),  # New York → US
        ("203.0.113.0/24", "A", {"127.3.0.1"}),  # Osaka → Tokyo
        ("81.2.69.0/24", "A", {"127.4.0.1", "127.1.0.1", "127.5.0.1"}),  # London → EU
        # the IPv6 mirrors have no GeoIP location: the pool's two, by weight
        ("2001:db8:3::/48", "AAAA", {"2001:db8:5::1", "2001:db8:de::1"}),  # São Paulo
        ("2001:db8:1::/48", "AAAA", {"2001:db8:5::1", "2001:db8:de::1"}),  # Berlin
    ],
)
def test_steered_answers_are_signed_with_the_true_ecs_scope(
    signed: Signed, subnet: str, rdtype: str, expect: set[str]
) -> None:
    """RFC 7871: the scope of a signed answer is the one DO=0 gets; the RRSIG
    covers the RRset only (the OPT record is never signed)."""
    plain = udp(query("one.example.org", rdtype, ecs=subnet), signed.st.addr())
    for _ in range(3):  # a few turns of the rotation: each variant is signed
        r = signed.ask("one.example.org", rdtype, ecs=subnet)
        assert r.rcode() == dns.rcode.NOERROR
        assert check_signed(r, signed.trusted) == [f"one.example.org. {rdtype}"]
        got = {rd.address for rd in r.answer[0]}
        assert got <= expect, (got, expect)
        ecs, ecs0 = ecs_of(r), ecs_of(plain)
        assert ecs is not None and ecs0 is not None
        assert ecs.scopelen == ecs0.scopelen > 0
        sig = r.find_rrset(r.answer, r.answer[0].name, 1, dns.rdatatype.RRSIG, r.answer[0].rdtype)
        assert sig[0].labels == 3 and sig[0].original_ttl == 60


def test_rotation_variants_of_one_address_set_share_a_signature(signed: Signed) -> None:
    """The RRSIG covers the canonical (sorted) RRset: the order of addresses,
    which rotates, does not need another signature."""
    sigs = set()
    orders = set()
    for _ in range(8):
        r = signed.ask("dl.example.org", ecs="198.51.100.0/24")
        check_signed(r, signed.trusted)
        rrs = r.answer[0]
        orders.add(tuple(rd.address for rd in rrs))
        sig = r.find_rrset(r.answer, rrs.name, 1, dns.rdatatype.RRSIG, dns.rdatatype.A)
        sigs.add((frozenset(rd.address for rd in rrs), sig[0].signature))
    assert len({s for _, s in sigs}) == len({a for a, _ in sigs})


def test_cname_chain_through_two_signed_zones(signed: Signed) -> None:
    r = signed.ask("hop.other.test", ecs="203.0.113.0/24")
    assert check_signed(r, signed.trusted) == [
        "hop.other.test. CNAME",
        "www.example.org. CNAME",
        "dl.example.org. A",
    ]
    by = {(rr.name.to_text(), rr.covers): rr for rr in r.answer if rr.rdtype == 46}
    assert by[("hop.other.test.", dns.rdatatype.CNAME)][0].signer == OT
    assert by[("www.example.org.", dns.rdatatype.CNAME)][0].signer == EX


def test_wildcard_answer_is_signed_as_the_name_asked(signed: Signed) -> None:
    """RFC 9824 §3.3 (online signing): a synthesized RRset is signed at the
    query name itself, so no wildcard proof is needed."""
    r = signed.ask("Some.Users.example.org")
    assert check_signed(r, signed.trusted) == ["Some.Users.example.org. A"]
    sig = r.find_rrset(r.answer, r.answer[0].name, 1, dns.rdatatype.RRSIG, dns.rdatatype.A)
    assert sig[0].labels == 4
    r = signed.ask("some.users.example.org", "TXT")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    check_signed(r, signed.trusted)
    assert nsec_types(nsec_of(r)) == {"A", "RRSIG", "NSEC"}


# ----------------------------------------------------------------------------- denial


def _compact(r: dns.message.Message, name: str) -> set[str]:
    """RFC 9824: one NSEC at the name, next name \\000.name, signed; its types."""
    nsec = nsec_of(r)
    assert nsec.name == dns.name.from_text(name)
    assert nsec[0].next == dns.name.from_text("\\000." + name)
    assert nsec.ttl == 300  # RFC 9077: min(SOA TTL, SOA MINIMUM)
    return nsec_types(nsec)


def test_nxdomain_is_compact_nodata_with_nxname(signed: Signed) -> None:
    """RFC 9824 §3.1: NOERROR, SOA and one minimally covering NSEC with the
    NXNAME bit. Without DO it stays NXDOMAIN (today's bytes)."""
    assert udp(query("nope.example.org"), signed.st.addr()).rcode() == dns.rcode.NXDOMAIN
    r = signed.ask("nope.example.org")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and not r.answer
    assert check_signed(r, signed.trusted) == ["example.org. SOA", "nope.example.org. NSEC"]
    assert _compact(r, "nope.example.org.") == {"RRSIG", "NSEC", "NXNAME"}
    # a random name each time: signed online, then cached
    for i in range(5):
        name = f"r{random.getrandbits(40)}-{i}.example.org."
        r = signed.ask(name, "AAAA")
        check_signed(r, signed.trusted)
        assert _compact(r, name) == {"RRSIG", "NSEC", "NXNAME"}


@pytest.mark.parametrize(
    ("name", "rdtype", "types"),
    [
        ("mail.example.org.", "TXT", {"A", "RRSIG", "NSEC"}),
        ("example.org.", "A", {"SOA", "NS", "MX", "TXT", "CAA", "DNSKEY", "RRSIG", "NSEC"}),
        ("_tcp.dl.example.org.", "A", {"RRSIG", "NSEC"}),  # empty non-terminal
        ("users.example.org.", "TXT", {"RRSIG", "NSEC"}),  # ENT above a wildcard
        ("dl.example.org.", "TXT", {"A", "AAAA", "RRSIG", "NSEC"}),  # steered name
        ("v4only.example.org.", "AAAA", {"A", "RRSIG", "NSEC"}),  # pool without IPv6
        ("manyns.example.org.", "DS", {"NS", "RRSIG", "NSEC"}),  # insecure delegation
    ],
)
def test_nodata_proofs(signed: Signed, name: str, rdtype: str, types: set[str]) -> None:
    r = signed.ask(name, rdtype)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.flags & dns.flags.AA
    assert check_signed(r, signed.trusted) == ["example.org. SOA", f"{name} NSEC"]
    assert _compact(r, name) == types


def test_nxdomain_at_the_end_of_a_cname_chain(signed: Signed) -> None:
    """RFC 6604 §3 with compact denial: the NSEC speaks of the last name."""
    r = signed.ask("dangling.example.org")
    assert r.rcode() == dns.rcode.NOERROR
    assert check_signed(r, signed.trusted) == [
        "dangling.example.org. CNAME",
        "example.org. SOA",
        "nothing-here.example.org. NSEC",
    ]
    assert _compact(r, "nothing-here.example.org.") == {"RRSIG", "NSEC", "NXNAME"}


def test_nsec_query_is_answered_with_the_nsec(signed: Signed) -> None:
    r = signed.ask("mail.example.org", "NSEC")
    assert check_signed(r, signed.trusted) == ["mail.example.org. NSEC"]
    assert not r.authority
    assert nsec_types(nsec_of(r, "answer")) == {"A", "RRSIG", "NSEC"}


# ----------------------------------------------------------------------------- referrals


def test_referral_carries_ds_or_its_denial(signed: Signed) -> None:
    """RFC 4035 §3.1.4: NS and glue unsigned; the DS RRset signed, or an NSEC
    at the cut (NS, no DS) proving the child is insecure."""
    r = signed.ask("www.lab.example.org")
    assert r.rcode() == dns.rcode.NOERROR and not r.flags & dns.flags.AA and not r.answer
    glue = [("ns.lab.example.org", "A"), ("ns.lab.example.org", "AAAA")]
    ok = check_signed(r, signed.trusted, unsigned_ok=[("lab.example.org", "NS"), *glue])
    assert ok == ["lab.example.org. DS"]
    r = signed.ask("www.manyns.example.org")
    ok = check_signed(
        r,
        signed.trusted,
        unsigned_ok=[("manyns.example.org", "NS")]
        + [(f"{c}.ns.manyns.example.org", t) for c in "abcdef" for t in ("A", "AAAA")],
    )
    assert ok == ["manyns.example.org. NSEC"]
    assert nsec_types(nsec_of(r)) == {"NS", "RRSIG", "NSEC"}
    # the DS itself, asked for: an authoritative answer, signed (DO=0 too)
    r = signed.ask("lab.example.org", "DS")
    assert r.flags & dns.flags.AA and check_signed(r, signed.trusted) == ["lab.example.org. DS"]
    r = udp(query("lab.example.org", "DS"), signed.st.addr())
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.DS]


# ----------------------------------------------------------------------------- size


def test_udp_too_small_drops_additional_rrsigs_first_then_tc(signed: Signed) -> None:
    """RRSIGs leave the additional section first; then the glue; a signed
    answer section that does not fit is TC=1, and TCP carries it whole."""
    full = tcp(_do_query("example.org", "NS"), signed.st.addr())
    glue_sigs = [rr for rr in full.additional if rr.rdtype == dns.rdatatype.RRSIG]
    assert glue_sigs and check_signed(full, signed.trusted)
    full_len = len(full.to_wire())
    assert full_len - 1 > 512
    r = udp(_do_query("example.org", "NS", payload=full_len - 1), signed.st.addr())
    assert not r.flags & dns.flags.TC and len(r.to_wire()) < full_len
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.NS, dns.rdatatype.RRSIG]
    assert r.additional and all(rr.rdtype != dns.rdatatype.RRSIG for rr in r.additional)
    r = udp(_do_query("example.org", "NS", payload=512), signed.st.addr())
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.NS, dns.rdatatype.RRSIG]
    # big TXT: the signed answer does not fit 1232 → TC, and TCP has it all
    r = udp(_do_query("big.example.org", "TXT"), signed.st.addr())
    assert r.flags & dns.flags.TC and not r.answer
    r = tcp(_do_query("big.example.org", "TXT"), signed.st.addr())
    assert check_signed(r, signed.trusted) == ["big.example.org. TXT"]


def _do_query(name: str, rdtype: str, payload: int = 1232) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, want_dnssec=True, payload=payload)


# ----------------------------------------------------------------------------- re-signing


def test_signatures_are_renewed_in_the_background_without_a_reload(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    """With 3 s left before `refresh`, the server signs again by itself and
    swaps tables; every answer meanwhile validates."""
    root = tmp_path / "zones"
    keys = signed_test_zones(root)
    zf = root / "example.org.yaml"
    zf.write_text(zf.read_text() + "  validity: 1h\n  refresh: 3597s\n")
    trusted = {EX: dnskey_rrset(root, "example.org", keys["example.org"])}
    with ServerThread(settings_for(root, tmp_path, demo_geoip)) as st:
        seen: set[int] = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(seen) < 2:
            for name in ("dl.example.org", "mail.example.org", "nope.example.org"):
                r = udp(_do_query(name, "A"), st.addr())
                check_signed(r, trusted)
                for rr in (*r.answer, *r.authority):
                    if rr.rdtype == dns.rdatatype.RRSIG:
                        seen.add(rr[0].inception)
            time.sleep(0.2)
        assert len(seen) == 2, seen
        assert st.server.generation >= 2


def _set_times(priv: Path, **times: float) -> None:
    """Rewrite BIND timing metadata (Publish, Activate, Inactive, Delete)."""
    import datetime as dt

    lines = [ln for ln in priv.read_text().splitlines() if ln.split(":")[0] not in times]
    for field, t in times.items():
        lines.append(f"{field}: {dt.datetime.fromtimestamp(t, dt.UTC):%Y%m%d%H%M%S}")
    priv.write_text("\n".join(lines) + "\n")


def test_key_timing_metadata_rolls_the_zsk_without_a_reload(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    """BIND timing metadata drive a rollover by themselves: the old ZSK turns
    Inactive and the pre-published new one Activates at the same second; the
    server re-signs at that moment (no reload), both keys stay published."""
    root = tmp_path / "zones"
    keys = signed_test_zones(root)
    ksk, zsk1 = keys["example.org"]
    zsk2 = keygen(root / "keys", "example.org", sep=False)
    switch = int(time.time()) + 3
    _set_times(root / f"{zsk1}.private", Inactive=switch)
    _set_times(root / f"{zsk2}.private", Activate=switch)
    zf = root / "example.org.yaml"
    zf.write_text(zf.read_text().split("dnssec:")[0] + dnssec_yaml([ksk, zsk1, zsk2]))
    trusted = {EX: dnskey_rrset(root, "example.org", [ksk, zsk1, zsk2])}
    tag1 = read_key(root / zsk1, "example.org").tag
    tag2 = read_key(root / zsk2, "example.org").tag
    with ServerThread(settings_for(root, tmp_path, demo_geoip)) as st:
        tags = []
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and tag2 not in tags:
            r = udp(_do_query("mail.example.org", "A"), st.addr())
            check_signed(r, trusted)
            tags.append(r.answer[1][0].key_tag)
            time.sleep(0.2)
        assert tags[0] == tag1 and tags[-1] == tag2, tags
        assert time.time() >= switch
        r = udp(_do_query("example.org", "DNSKEY"), st.addr())
        assert len(r.answer[0]) == 3  # the old ZSK is still published (no Delete yet)


def test_signature_expiry_is_a_metric(signed: Signed) -> None:
    from geodns.runtime.metrics import ServerCollector

    (fam,) = [
        f
        for f in ServerCollector(signed.st.server).collect()
        if f.name == "geodns_dnssec_signature_expiration_timestamp_seconds"
    ]
    by_zone = {s.labels["zone"]: s.value for s in fam.samples}
    r = signed.ask("example.org", "SOA")
    sig = r.find_rrset(r.answer, EX, 1, dns.rdatatype.RRSIG, dns.rdatatype.SOA)
    assert by_zone == {"example.org": sig[0].expiration, "other.test": sig[0].expiration}


# ----------------------------------------------------------------------------- errors


def _one_zone(tmp: Path, dnssec: str, records: str = "") -> Path:
    root = tmp / "zones"
    root.mkdir(exist_ok=True)
    (root / "z.yaml").write_text(
        "zone: example.org\n"
        "soa: {mname: ns1.example.org, rname: hostmaster.example.org, serial: 1}\n"
        "ns: [ns1.example.org]\n"
        "records:\n"
        "  ns1: {A: 192.0.2.53}\n" + records + dnssec
    )
    return root


def _problems(root: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(root)
    return e.value.problems


def test_tampered_and_mismatched_key_files_are_load_errors(tmp_path: Path) -> None:
    keys = tmp_path / "zones" / "keys"
    k1 = keygen(keys, "example.org", sep=True)
    k2 = keygen(keys, "example.org", sep=True)
    root = _one_zone(tmp_path, dnssec_yaml([k1]))
    assert load_config(root).zones[0].dnssec is not None
    # the private half of another key
    (root / f"{k1}.private").write_bytes((root / f"{k2}.private").read_bytes())
    (p,) = _problems(root)
    assert re.match(
        r".*z\.yaml:8: zone 'example\.org' dnssec: keys: .*\.private: the private key "
        r"does not belong to the public key",
        p,
    ), p
    # a DNSKEY edited in place: its tag no longer matches the file name
    k3 = keygen(keys, "example.org", sep=True)
    text = (root / f"{k3}.key").read_text()
    b64 = text.rsplit(" ", 1)[1]
    (root / f"{k3}.key").write_text(
        text.replace(b64, b64[:10] + ("A" if b64[10] != "A" else "B") + b64[11:])
    )
    root = _one_zone(tmp_path, dnssec_yaml([k3]))
    (p,) = _problems(root)
    assert "does not belong to the public key" in p or "key tag" in p, p
    # a key for another zone, a missing private file, a broken one
    other = keygen(keys, "example.net", sep=True)
    k4 = keygen(keys, "example.org", sep=True)
    (root / f"{k4}.private").write_text("Private-key-format: v1.3\nAlgorithm: 13\nPrivateKey: !!\n")
    k5 = keygen(keys, "example.org", sep=True)
    (root / f"{k5}.private").unlink()
    root = _one_zone(tmp_path, dnssec_yaml([other, k4, k5]))
    probs = _problems(root)
    assert len(probs) == 3, probs
    assert "the key is for 'example.net', not for zone 'example.org'" in probs[0]
    assert "PrivateKey is not base64" in probs[1]
    assert "no such file (the private half of the key)" in probs[2]


def test_key_policy_errors(tmp_path: Path) -> None:
    keys = tmp_path / "zones" / "keys"
    zsk = keygen(keys, "example.org", sep=False)
    ksk = keygen(keys, "example.org", sep=True)
    # only a ZSK: nothing can sign the DNSKEY set
    (p,) = _problems(_one_zone(tmp_path, dnssec_yaml([zsk])))
    assert "z.yaml:6: zone 'example.org' dnssec: no key-signing key" in p, p
    # the KSK's signing window has expired (BIND timing metadata)
    priv = tmp_path / "zones" / f"{ksk}.private"
    priv.write_text(priv.read_text() + "Inactive: 20200101000000\n")
    (p,) = _problems(_one_zone(tmp_path, dnssec_yaml([zsk, ksk])))
    assert "expired (inactive since 2020-01-01 00:00 UTC)" in p, p
    # published only
    ksk2 = keygen(keys, "example.org", sep=True)
    (p,) = _problems(_one_zone(tmp_path, dnssec_yaml([zsk, (ksk2, False)])))
    assert "has sign: false" in p, p
    # windows that cannot work, unknown keys, a DS where there is no delegation
    probs = _problems(
        _one_zone(
            tmp_path,
            dnssec_yaml([ksk2], "  validity: 1d\n  refresh: 2d\n  nsec3: yes\n"),
            records="  www: {DS: '12345 13 2 " + "ab" * 32 + "'}\n",
        )
    )
    assert any("refresh: must be shorter than validity" in p for p in probs), probs
    assert any("unknown key 'nsec3'" in p for p in probs), probs
    assert any("DS: only at a delegation point" in p for p in probs), probs


def test_serve_refuses_to_start_with_a_bad_key(tmp_path: Path) -> None:
    keys = tmp_path / "zones" / "keys"
    k1 = keygen(keys, "example.org", sep=True)
    k2 = keygen(keys, "example.org", sep=True)
    root = _one_zone(tmp_path, dnssec_yaml([k1]))
    (root / f"{k1}.private").write_bytes((root / f"{k2}.private").read_bytes())
    args = ["serve", "--config", str(root), "--listen", "127.0.0.1:0"]
    args += ["--state-dir", str(tmp_path / "state"), "--store", "none"]
    assert main(args) == 1
    assert main(["validate", str(root)]) == 1


def test_reload_with_a_tampered_key_keeps_the_good_signatures(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    root = tmp_path / "zones"
    keys = signed_test_zones(root, zsk=False)
    trusted = {EX: dnskey_rrset(root, "example.org", keys["example.org"])}
    with ServerThread(settings_for(root, tmp_path, demo_geoip)) as st:
        check_signed(udp(_do_query("dl.example.org", "A"), st.addr()), trusted)
        other = keygen(root / "keys", "example.org", sep=True)
        (root / f"{keys['example.org'][0]}.private").write_bytes(
            (root / f"{other}.private").read_bytes()
        )
        assert st.reload() is False
        for name in ("dl.example.org", "mail.example.org", "nope.example.org"):
            check_signed(udp(_do_query(name, "A"), st.addr()), trusted)


# ----------------------------------------------------------------------------- commands


def test_keygen_and_ds_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "zones" / "keys"
    assert main(["dnssec", "keygen", "Example.Org.", "--csk", "--dir", str(keys)]) == 0
    base = Path(capsys.readouterr().out.strip())
    assert re.fullmatch(r"Kexample\.org\.\+013\+\d{5}", base.name)
    assert (Path(str(base) + ".private").stat().st_mode & 0o777) == 0o600
    pub = Path(str(base) + ".key").read_text()
    assert re.search(r"^example\.org\. IN DNSKEY 257 3 13 \S+$", pub, re.M), pub
    assert main(["dnssec", "keygen", "example.org", "--dir", str(keys)]) == 0
    zsk = Path(capsys.readouterr().out.strip())
    assert " DNSKEY 256 3 13 " in Path(str(zsk) + ".key").read_text()
    root = _one_zone(tmp_path, dnssec_yaml([f"keys/{base.name}", f"keys/{zsk.name}.key"]))
    assert main(["dnssec", "ds", "example.org", "--config", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    key = read_key(base, "example.org")
    dnskey = dns.rrset.from_text(
        "example.org.", 3600, "IN", "DNSKEY", pub.splitlines()[-1].split("DNSKEY ", 1)[1]
    )[0]
    ds = dns.dnssec.make_ds("example.org.", dnskey, "SHA256")
    assert out == [f"; {base.name}: KSK, tag {key.tag}, signing", f"example.org. IN DS {ds}"]
    assert main(["dnssec", "ds", "nope.org", "--config", str(root)]) == 1


def test_signatures_survive_pickling_and_sign_after(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    """Tables cross from the forked builder as a pickle: the signer must still
    sign what only exists later (a name that does not exist, a new variant)."""
    import pickle

    root = tmp_path / "zones"
    keys = signed_test_zones(root)
    config = load_config(root)
    tables = pickle.loads(pickle.dumps(Tables(config)))
    geodb = GeoDB(*demo_geoip)
    resp = Responder(tables, Steering(config, geodb), geodb, Stats())
    trusted = {EX: dnskey_rrset(root, "example.org", keys["example.org"])}
    for name in ("nope.example.org", "dl.example.org"):
        out = resp.handle(_do_query(name, "A").to_wire(), "192.0.2.1")
        assert out is not None
        check_signed(dns.message.from_wire(out), trusted)
    assert struct.unpack("!H", out[6:8])[0] >= 2  # an A and its RRSIG
