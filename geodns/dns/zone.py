"""Config zones compiled into lookup tables, and the authoritative lookup.

Everything here happens once per config generation: owner names become
lower-case wire keys, rdata becomes wire bytes (via dnspython, at compile
time only), every ancestor of an owner becomes an empty non-terminal node so
NODATA and NXDOMAIN can be told apart (RFC 8020). `lookup()` is pure: it
returns which records answer a question; `geodns.dns.answer` turns that into bytes.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from geodns.dns import wire
from geodns.dns.names import to_wire
from geodns.dnssec.signer import DNSKEY, dnskey_rdatas, sign_zone
from geodns.model import Config, Steered, Zone

if TYPE_CHECKING:
    from geodns.dnssec.signer import ZoneSigner

MAX_CHAIN = 8  # CNAME hops followed inside our zones

RR = tuple[bytes, bytes]  # (owner wire name, everything after the owner)


@dataclass(slots=True)
class RRSet:
    owner: bytes  # lower-case wire
    rtype: int
    ttl: int
    tails: tuple[bytes, ...]
    targets: tuple[bytes, ...] = ()  # names in rdata (NS/MX/SRV/CNAME targets), lower wire

    def rrs(self, owner: bytes | None = None) -> list[RR]:
        o = self.owner if owner is None else owner
        return [(o, t) for t in self.tails]


@dataclass(slots=True)
class Node:
    rrsets: dict[int, RRSet] = field(default_factory=dict)
    steered: Steered | None = None


@dataclass(slots=True)
class CompiledZone:
    apex: bytes
    name: str
    nodes: dict[bytes, Node]
    soa: RRSet
    negative: RR  # the SOA as it goes into negative answers (RFC 2308 §3 TTL)
    signer: ZoneSigner | None = None  # zones with `dnssec:` (geodns.dnssec)


@dataclass(slots=True)
class Resolution:
    """What answers a question, before the client-dependent part is known."""

    rcode: int
    aa: bool
    answer: list[RR]
    authority: list[RR]
    additional: list[RR]
    # Steered: the addresses for (steered, family) are appended to the answer
    # with owner `steer_owner`; an empty result turns this into NODATA with
    # `steer_negative` in the authority section.
    steer: Steered | None = None
    steer_family: int = 0
    steer_owner: bytes = b""
    steer_negative: RR | None = None


class Tables:
    """All zones of one config generation, keyed by lower-case wire apex."""

    def __init__(
        self, config: Config, *, now: float | None = None, previous: Tables | None = None
    ) -> None:
        self.zones: dict[bytes, CompiledZone] = {}
        for z in config.zones:
            cz = _compile(z)
            self.zones[cz.apex] = cz
        # DNSSEC: the DNSKEY RRset, then RRSIGs and NSECs made now; `previous`
        # lends the signatures that are still good (geodns.dnssec.signer)
        self.signing = any(z.dnssec for z in config.zones)
        now = time.time() if now is None else now
        for z in config.zones:
            if z.dnssec is not None:
                cz = self.zones[to_wire(z.name)]
                tails = tuple(
                    wire.rr_tail(DNSKEY, z.ttl, rd) for rd in dnskey_rdatas(z.dnssec, now)
                )
                cz.nodes[cz.apex].rrsets[DNSKEY] = RRSet(cz.apex, DNSKEY, z.ttl, tails)
                old = previous.zones.get(cz.apex) if previous is not None else None
                cz.signer = sign_zone(z, cz, config, now, old.signer if old is not None else None)

    def find_zone(self, qname: bytes) -> CompiledZone | None:
        """Longest zone apex that is a suffix of qname (lower wire)."""
        off = 0
        zones = self.zones
        while True:
            cz = zones.get(qname[off:])
            if cz is not None:
                return cz
            n = qname[off]
            if n == 0:
                return None
            off += 1 + n

    def lookup(self, qname: bytes, qtype: int) -> Resolution | None:
        """Resolve (lower wire qname, qtype); None means not our zone (REFUSED)."""
        cz = self.find_zone(qname)
        if cz is None:
            return None
        res = Resolution(wire.NOERROR, True, [], [], [])
        name, owner = qname, qname
        seen = {qname}
        for _hop in range(MAX_CHAIN):
            cname = _lookup_in(cz, name, owner, qtype, res)
            if cname is None:
                return res
            if cname in seen:
                return res  # a loop: each CNAME once (RFC 2181 §5), the resolver gives up
            seen.add(cname)
            nxt = self.find_zone(cname)
            if nxt is None:
                return res  # target outside our zones: the resolver follows it
            cz, name, owner = nxt, cname, cname
        return res  # chain too long (or a loop): return what we have


def _lookup_in(
    cz: CompiledZone, qname: bytes, owner: bytes, qtype: int, res: Resolution
) -> bytes | None:
    """Fill `res` for qname in zone cz. Returns a CNAME target to chase, or None."""
    nodes = cz.nodes
    # Walk from just below the apex down to qname looking for a zone cut.
    labels = _label_offsets(qname, len(cz.apex))
    for off in reversed(labels):
        anc = qname[off:]
        node = nodes.get(anc)
        if node is None:
            break
        ns = node.rrsets.get(wire.NS)
        if ns is not None and anc != cz.apex:
            if off == 0 and qtype == wire.DS:
                # RFC 4035 §3.1.4.1: DS belongs to the parent side of the cut (here)
                ds = node.rrsets.get(wire.DS)
                if ds is not None:
                    res.answer.extend(ds.rrs(owner))
                else:
                    res.authority.append(cz.negative)
                return None
            _referral(cz, ns, res)
            return None
    node = nodes.get(qname)
    synthesized = False
    if node is None:
        node = _wildcard(cz, qname)
        if node is None:
            # RFC 6604 §3: after a CNAME chain the rcode speaks of the last name
            res.rcode = wire.NXDOMAIN
            res.authority.append(cz.negative)
            return None
        synthesized = True
    rrsets = node.rrsets
    cname = rrsets.get(wire.CNAME)
    if cname is not None and qtype != wire.CNAME:
        res.answer.extend(cname.rrs(owner))
        return cname.targets[0]
    if node.steered is not None and not synthesized and qtype in (wire.A, wire.AAAA, wire.ANY):
        res.steer = node.steered
        res.steer_family = 6 if qtype == wire.AAAA else 4
        res.steer_owner = owner
        res.steer_negative = cz.negative
        return None
    if qtype == wire.ANY:
        # RFC 8482 §4.2: answer with one RRset rather than everything.
        for t in _ANY_PREFERENCE:
            rs = rrsets.get(t)
            if rs is not None:
                res.answer.extend(rs.rrs(owner))
                return None
        for rs in rrsets.values():
            res.answer.extend(rs.rrs(owner))
            return None
        res.authority.append(cz.negative)
        return None
    rs = rrsets.get(qtype)
    if rs is None:
        res.authority.append(cz.negative)  # NODATA (RFC 2308 §2.2)
        return None
    res.answer.extend(rs.rrs(owner))
    if qtype in (wire.NS, wire.MX, wire.SRV):
        _glue(cz, rs.targets, res.additional)
    return None


_ANY_PREFERENCE = (wire.A, wire.AAAA, wire.MX, wire.TXT, wire.SOA)


def _referral(cz: CompiledZone, ns: RRSet, res: Resolution) -> None:
    """RFC 1034 §4.3.2 step 3b: not authoritative below a cut; NS + glue."""
    res.aa = False
    res.authority.extend(ns.rrs())
    _glue(cz, ns.targets, res.additional)


def _glue(cz: CompiledZone, targets: tuple[bytes, ...], out: list[RR]) -> None:
    seen: set[bytes] = set()
    for t in targets:
        if t in seen:
            continue
        seen.add(t)
        node = cz.nodes.get(t)
        if node is None:
            continue
        for rtype in (wire.A, wire.AAAA):
            rs = node.rrsets.get(rtype)
            if rs is not None:
                out.extend(rs.rrs())


def _wildcard(cz: CompiledZone, qname: bytes) -> Node | None:
    """RFC 4592 §3.3.1: find the closest encloser, then its `*` child."""
    off = 0
    apex_len = len(cz.apex)
    while len(qname) - off > apex_len:
        off += 1 + qname[off]
        encloser = qname[off:]
        if encloser in cz.nodes:
            return cz.nodes.get(b"\x01*" + encloser)
    return None


def _label_offsets(qname: bytes, apex_len: int) -> list[int]:
    """Offsets of every suffix of qname that is longer than the apex, qname first."""
    offs = []
    off = 0
    while len(qname) - off > apex_len:
        offs.append(off)
        off += 1 + qname[off]
    return offs


# ----------------------------------------------------------------------------- compile


def _compile(z: Zone) -> CompiledZone:
    apex = to_wire(z.name)
    origin = dns.name.from_text(z.name + ".") if z.name else dns.name.root
    nodes: dict[bytes, Node] = {}

    def node(name: str) -> Node:
        key = to_wire(name)
        n = nodes.get(key)
        if n is None:
            n = nodes[key] = Node()
            # every ancestor down to the apex exists (empty non-terminals)
            parent = name
            while parent != z.name and "." in parent:
                parent = parent.split(".", 1)[1]
                pk = to_wire(parent)
                if pk in nodes:
                    break
                nodes[pk] = Node()
        return n

    soa_rdata = (
        to_wire(z.soa.mname)
        + to_wire(z.soa.rname)
        + struct.pack(
            "!IIIII", z.soa.serial, z.soa.refresh, z.soa.retry, z.soa.expire, z.soa.minimum
        )
    )
    soa = RRSet(apex, wire.SOA, z.soa.ttl, (wire.rr_tail(wire.SOA, z.soa.ttl, soa_rdata),))
    apex_node = node(z.name)
    apex_node.rrsets[wire.SOA] = soa
    ns_targets = tuple(to_wire(n) for n in z.ns)
    apex_node.rrsets[wire.NS] = RRSet(
        apex, wire.NS, z.ttl, tuple(wire.rr_tail(wire.NS, z.ttl, t) for t in ns_targets), ns_targets
    )
    for rr in z.rrsets:
        rtype = wire.TYPE_CODES[rr.rtype]
        tails = []
        targets = []
        for text in rr.rdata:
            rd = dns.rdata.from_text(
                dns.rdataclass.IN,
                dns.rdatatype.from_text(rr.rtype),
                text,
                origin=origin,
                relativize=False,
            )
            tails.append(wire.rr_tail(rtype, rr.ttl, rd.to_wire() or b""))
            for attr in ("target", "exchange"):
                t = getattr(rd, attr, None)
                if isinstance(t, dns.name.Name):
                    targets.append(t.canonicalize().to_wire() or b"")
        node(rr.name).rrsets[rtype] = RRSet(
            to_wire(rr.name), rtype, rr.ttl, tuple(tails), tuple(targets)
        )
    for st in z.steered:
        node(st.name).steered = st
    # RFC 2308 §3: the negative TTL is the smaller of the SOA's TTL and MINIMUM.
    neg_ttl = min(z.soa.ttl, z.soa.minimum)
    negative = (apex, wire.rr_tail(wire.SOA, neg_ttl, soa_rdata))
    return CompiledZone(apex, z.name, nodes, soa, negative)
