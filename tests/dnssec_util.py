"""DNSSEC test helpers: signed copies of the test zones, and a strict check of
signed responses with dnspython's own validator (`dns.dnssec.validate`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset

from geodns.dnssec.keyfiles import dnskey_of, generate, read_key

DATA = Path(__file__).resolve().parent / "data"
TEST_ZONES = DATA / "zones"


def keygen(keydir: Path, zone: str, *, sep: bool) -> str:
    """A new key for `zone`; its path relative to keydir's parent (the config dir)."""
    base = generate(zone, keydir, sep=sep)
    return f"{keydir.name}/{base.name}"


def dnssec_yaml(keys: Iterable[str | tuple[str, bool]], extra: str = "") -> str:
    lines = ["dnssec:", "  keys:"]
    for k in keys:
        if isinstance(k, tuple):
            lines.append(f"    - {{file: {k[0]}, sign: {'true' if k[1] else 'false'}}}")
        else:
            lines.append(f"    - {k}")
    return "\n".join(lines) + "\n" + extra


def signed_test_zones(dest: Path, *, zsk: bool = True) -> dict[str, list[str]]:
    """TEST_ZONES copied to `dest` with example.org signed by a KSK (+ a ZSK)
    and other.test by a CSK; returns the key paths per zone."""
    shutil.copytree(TEST_ZONES, dest)
    keydir = dest / "keys"
    keys = {"example.org": [keygen(keydir, "example.org", sep=True)]}
    if zsk:
        keys["example.org"].append(keygen(keydir, "example.org", sep=False))
    keys["other.test"] = [keygen(keydir, "other.test", sep=True)]
    for zone, ks in keys.items():
        with open(dest / f"{zone}.yaml", "a") as f:
            f.write(dnssec_yaml(ks))
    return keys


def dnskey_rrset(config_dir: Path, zone: str, keys: Iterable[str]) -> dns.rrset.RRset:
    rrs = dns.rrset.RRset(dns.name.from_text(zone + "."), 1, dns.rdatatype.DNSKEY)
    for k in keys:
        rrs.add(dnskey_of(read_key(config_dir / k, zone)), 3600)
    return rrs


def check_signed(
    msg: dns.message.Message,
    trusted: dict[dns.name.Name, dns.rrset.RRset],
    *,
    unsigned_ok: Iterable[tuple[str, str]] = (),
) -> list[str]:
    """Every RRset of every section must carry a valid RRSIG by a trusted
    DNSKEY set; returns the RRsets (as 'name TYPE') that are signed (the
    unsigned ones named in `unsigned_ok` are allowed: referral NS and glue).
    Raises AssertionError on any unsigned or bogus RRset."""
    allowed = {(dns.name.from_text(n), dns.rdatatype.from_text(t)) for n, t in unsigned_ok}
    ok = []
    for section in (msg.answer, msg.authority, msg.additional):
        sigs = {(rr.name, rr.covers): rr for rr in section if rr.rdtype == dns.rdatatype.RRSIG}
        for rr in section:
            if rr.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.OPT):
                continue
            sig = sigs.get((rr.name, rr.rdtype))
            what = f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)}"
            if sig is None:
                assert (rr.name, rr.rdtype) in allowed, f"{what} has no RRSIG:\n{msg}"
                continue
            try:
                dns.dnssec.validate(rr, sig, trusted)
            except dns.dnssec.ValidationFailure as e:
                raise AssertionError(f"{what}: {e}\n{msg}") from None
            ok.append(what)
    return ok


def nsec_of(msg: dns.message.Message, section: str = "authority") -> dns.rrset.RRset:
    for rr in getattr(msg, section):
        if rr.rdtype == dns.rdatatype.NSEC:
            return rr
    raise AssertionError(f"no NSEC in the {section} section:\n{msg}")


def nsec_types(rrset: dns.rrset.RRset) -> set[str]:
    rd = rrset[0]
    return {
        dns.rdatatype.to_text(t)
        for window, bits in rd.windows
        for i, byte in enumerate(bits)
        for b in range(8)
        if byte & (0x80 >> b)
        for t in [window * 256 + i * 8 + b]
    }
