"""The DO=1 form of an answer: the same sections with DNSSEC records added.

Called once per encoded answer (`geodns.answer` caches the result beside the
DO=0 body), never per query. Given the records `geodns.zone` chose, it adds:

- an RRSIG after every RRset of the answer section (each signed by the zone it
  belongs to, so a CNAME chain through two of our zones carries both zones'
  signatures; a zone without `dnssec:` adds none);
- for NXDOMAIN and NODATA, RFC 9824 compact denial: the SOA's RRSIG and one
  NSEC at the name that has no data, with next name `\\000.name`. A name that
  does not exist gets the NXNAME type bit and the answer becomes NOERROR
  (RFC 9824 §3.1); the NSEC is made and signed on first use;
- for a referral, the DS RRset of the child and its RRSIG, or the NSEC that
  proves there is no DS (RFC 4035 §3.1.4); the NS and glue stay unsigned;
- RRSIGs of additional-section RRsets at the very end of the message, so that
  an answer too large for UDP sheds them first (`ar_sigs`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from geodns.dns import wire
from geodns.dnssec.signer import NSEC, rrsig_rrs

if TYPE_CHECKING:
    from geodns.dns.zone import RR, Tables


@dataclass(slots=True)
class Signed:
    rcode: int
    answer: list[RR]
    authority: list[RR]
    additional: list[RR]
    ar_sigs: int  # trailing RRSIG records of the additional section


def sign_sections(
    tables: Tables,
    qname: bytes,
    qtype: int,
    rcode: int,
    aa: bool,
    answer: list[RR],
    authority: list[RR],
    additional: list[RR],
) -> Signed | None:
    """The signed sections, or None when no record comes from a signed zone."""
    signed = False
    an: list[RR] = []
    name = qname
    for owner, rtype, ttl, rrs in _rrsets(answer):
        an.extend(rrs)
        cz = tables.find_zone(owner)
        s = cz.signer if cz is not None else None
        if rtype == wire.CNAME and owner == name:
            name = rrs[0][1][10:].lower()  # the chain goes on at the target
        if s is None:
            continue
        an.extend(rrsig_rrs(owner, ttl, s.rrsigs(owner, rtype, ttl, [t[10:] for _, t in rrs])))
        signed = True
    ns: list[RR] = list(authority)
    first_type = _type(authority[0][1]) if authority else 0
    if first_type == wire.SOA and rcode in (wire.NOERROR, wire.NXDOMAIN):
        apex, soa_tail = authority[0]
        cz = tables.zones.get(apex)
        s = cz.signer if cz is not None else None
        if s is not None:
            neg_ttl = _ttl(soa_tail)
            ns = [authority[0], *rrsig_rrs(apex, neg_ttl, s.soa_sigs)]
            if rcode == wire.NXDOMAIN:
                rdata, sigs = s.nxname(name)
                rcode = wire.NOERROR  # RFC 9824 §3.1: the name "exists", without data
            else:
                rdata, sigs = s.denial(name)
            nsec = [
                (name, wire.rr_tail(NSEC, s.nsec_ttl, rdata)),
                *rrsig_rrs(name, s.nsec_ttl, sigs),
            ]
            if qtype == NSEC:
                an.extend(nsec)  # the NSEC asked for is the one we make: an answer
                ns = []
            else:
                ns.extend(nsec)
            signed = True
    elif first_type == wire.NS and not aa:  # a referral (perhaps after a CNAME)
        cut = authority[0][0]
        cz = tables.find_zone(cut)
        s = cz.signer if cz is not None else None
        node = cz.nodes.get(cut) if cz is not None else None
        if s is not None and node is not None:
            ds = node.rrsets.get(wire.DS)
            if ds is not None:
                ns.extend(ds.rrs())
                ns.extend(
                    rrsig_rrs(
                        cut, ds.ttl, s.rrsigs(cut, wire.DS, ds.ttl, [t[10:] for t in ds.tails])
                    )
                )
            else:
                rdata, sigs = s.denial(cut)  # NS, RRSIG, NSEC — and no DS
                ns.append((cut, wire.rr_tail(NSEC, s.nsec_ttl, rdata)))
                ns.extend(rrsig_rrs(cut, s.nsec_ttl, sigs))
            signed = True
    ar_sigs: list[RR] = []
    for owner, rtype, ttl, rrs in _rrsets(additional):
        cz = tables.find_zone(owner)
        s = cz.signer if cz is not None else None
        if s is None or not s.authoritative(owner):
            continue
        ar_sigs.extend(rrsig_rrs(owner, ttl, s.rrsigs(owner, rtype, ttl, [t[10:] for _, t in rrs])))
    if not signed and not ar_sigs:
        return None
    return Signed(rcode, an, ns, [*additional, *ar_sigs], len(ar_sigs))


def _rrsets(rrs: list[RR]) -> Iterator[tuple[bytes, int, int, list[RR]]]:
    """Runs of records with one owner and type (the tables emit RRsets whole)."""
    i = 0
    n = len(rrs)
    while i < n:
        owner, tail = rrs[i]
        rtype = _type(tail)
        j = i + 1
        while j < n and rrs[j][0] == owner and _type(rrs[j][1]) == rtype:
            j += 1
        yield owner, rtype, _ttl(tail), rrs[i:j]
        i = j


def _type(tail: bytes) -> int:
    return int(struct.unpack_from("!H", tail, 0)[0])


def _ttl(tail: bytes) -> int:
    return int(struct.unpack_from("!I", tail, 4)[0])
