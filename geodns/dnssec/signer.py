"""RRSIGs and compact-denial NSEC records for one zone.

A `ZoneSigner` is made with the zone's tables (`geodns.zone.Tables`), in the
forked child that builds them: every static RRset and the NSEC of every name
that exists are signed then (`sign_zone`). RRsets that only exist per client or
per query — steered answer variants, names synthesized from a wildcard, the
NSEC of a name that does not exist — are signed when first encoded and kept in
a bounded cache (`TwoGen`), so the per-query path never signs: it joins
prebuilt bytes.

Signed data (RFC 4034 §3.1.8.1) is assembled here from the wire bytes the
tables already hold — owner names are lower-case wire, rdata canonical — and
signed by `dns.dnssecalgs` (the `cryptography` package; RFC 6979 deterministic
ECDSA). dnspython's `dns.dnssec.sign` would build a dozen library objects per
signature, five times the cost of the ECDSA itself; the tests check every
kind of signature we make with `dns.dnssec.validate` and with real validators.

Key use (RFC 6781 §3.1): the DNSKEY RRset is signed by every active key with
the SEP flag (KSK/CSK); everything else by the active ZSKs, or by the SEP keys
when no ZSK is active (a CSK). A key listed with `sign: false`, or outside its
Activate..Inactive window, is published but signs nothing — the pre-publish and
retire steps of a rollover.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype

from geodns.dns import wire
from geodns.dns.gencache import TwoGen
from geodns.dnssec.keyfiles import signer_of
from geodns.dnssec.model import ALGORITHM, INCEPTION_SKEW, DnssecPolicy, ZoneKey

if TYPE_CHECKING:
    from geodns.dns.zone import CompiledZone, Tables
    from geodns.model import Config, Zone

RRSIG, NSEC, DNSKEY, NXNAME = 46, 47, 48, 128  # NXNAME: RFC 9824 §3.1
# RFC 4034 §6.2 as amended by RFC 6840 §5.1: names inside these types' rdata
# are lower-cased in the canonical form (the ones geodns serves)
_NAME_TYPES = frozenset((wire.NS, wire.CNAME, wire.SOA, wire.PTR, wire.MX, wire.SRV))
DYNAMIC_CACHE = 50_000  # signatures per generation of the bounded cache
INHERIT = 20_000  # dynamic signatures handed to the next tables (same keys and window)

SigKey = tuple[bytes, int, int, tuple[bytes, ...]]  # (owner, type, original TTL, rdatas)


class ZoneSigner:
    """Signatures for one zone with one set of keys and one validity window."""

    __slots__ = (
        "apex",
        "inception",
        "expiration",
        "due",
        "fingerprint",
        "zsks",
        "ksks",
        "nsec_ttl",
        "static",
        "dynamic",
        "node_types",
        "node_nsec",
        "occluded",
        "soa_sigs",
        "_impl",
    )
    inception: int
    expiration: int
    due: float

    def __init__(
        self,
        apex: bytes,
        policy: DnssecPolicy,
        nsec_ttl: int,
        now: float,
        previous: ZoneSigner | None = None,
    ) -> None:
        keys = policy.loaded
        self.apex = apex
        self.nsec_ttl = nsec_ttl
        active = [k for k in keys if k.active(now)]
        self.ksks: tuple[ZoneKey, ...] = tuple(k for k in active if k.sep)
        self.zsks: tuple[ZoneKey, ...] = tuple(k for k in active if not k.sep) or self.ksks
        if not self.ksks:
            raise SignError(f"zone {_text(apex)}: no key-signing key is active now")
        self.fingerprint = (
            apex,
            tuple((k.tag, k.flags, k.private, k.published(now), k.active(now)) for k in keys),
            policy.validity,
            policy.refresh,
            nsec_ttl,
        )
        reuse = (
            previous is not None and previous.fingerprint == self.fingerprint and now < previous.due
        )
        if reuse:
            assert previous is not None
            self.inception, self.expiration = previous.inception, previous.expiration
        else:
            self.inception = int(now) - INCEPTION_SKEW
            self.expiration = int(now + policy.validity)
        # re-sign when `refresh` is left, or at the next key timing event
        events = [t for k in keys for t in k.events() if t > now]
        self.due = min([self.expiration - policy.refresh, *events])
        self.static: dict[SigKey, tuple[bytes, ...]] = {}
        self.dynamic: TwoGen[SigKey, tuple[bytes, ...]] = TwoGen(DYNAMIC_CACHE)
        if reuse:
            assert previous is not None
            for k, v in previous.dynamic.items()[-INHERIT:]:
                self.dynamic.put(k, v)
        self.node_types: dict[bytes, frozenset[int]] = {}
        self.node_nsec: dict[bytes, tuple[bytes, tuple[bytes, ...]]] = {}
        self.occluded: set[bytes] = set()
        self.soa_sigs: tuple[bytes, ...] = ()
        self._impl: dict[int, Any] = {}

    # pickled with the tables (geodns.forked): the key objects are made again
    def __getstate__(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__ if s != "_impl"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        self._impl = {}

    # ------------------------------------------------------------------ signatures

    def rrsigs(
        self, owner: bytes, rtype: int, ttl: int, rdatas: Iterable[bytes]
    ) -> tuple[bytes, ...]:
        """RRSIG rdatas for the RRset (owner lower wire, rdata as on the wire)."""
        key = (owner, rtype, ttl, tuple(sorted(set(rdatas))))
        sigs = self.static.get(key)
        if sigs is None:
            sigs = self.dynamic.get(key)
            if sigs is None:
                sigs = self._sign(key)
                self.dynamic.put(key, sigs)
        return sigs

    def sign_static(
        self,
        owner: bytes,
        rtype: int,
        ttl: int,
        rdatas: Iterable[bytes],
        previous: ZoneSigner | None,
    ) -> tuple[bytes, ...]:
        """Sign at build time (reusing the previous tables' signature when the
        keys, window and RRset are the same)."""
        key = (owner, rtype, ttl, tuple(sorted(set(rdatas))))
        sigs = None
        if previous is not None and previous.fingerprint == self.fingerprint:
            if previous.inception == self.inception:
                sigs = previous.static.get(key) or previous.dynamic.get(key)
        if sigs is None:
            sigs = self._sign(key)
        self.static[key] = sigs
        return sigs

    def _sign(self, key: SigKey) -> tuple[bytes, ...]:
        owner, rtype, ttl, rdatas = key
        if rtype in _NAME_TYPES:
            rdatas = tuple(sorted({_canonical(rtype, rd) for rd in rdatas}))
        labels = label_count(owner)
        rrs = b"".join(owner + struct.pack("!HHIH", rtype, 1, ttl, len(rd)) + rd for rd in rdatas)
        out = []
        for k in self.ksks if rtype == DNSKEY else self.zsks:
            head = (
                struct.pack(
                    "!HBBIIIH",
                    rtype,
                    ALGORITHM,
                    labels,
                    ttl,
                    self.expiration & 0xFFFFFFFF,  # RFC 4034 §3.1.5: serial arithmetic
                    self.inception & 0xFFFFFFFF,
                    k.tag,
                )
                + self.apex
            )
            impl = self._impl.get(k.tag)
            if impl is None:
                impl = self._impl[k.tag] = signer_of(k)
            out.append(head + impl.sign(head + rrs, verify=False, deterministic=True))
        return tuple(out)

    # ------------------------------------------------------------------ denial (RFC 9824)

    def nsec(self, name: bytes, types: Iterable[int]) -> tuple[bytes, tuple[bytes, ...]]:
        """The minimally covering NSEC at `name` (next = \\000.name) with these
        types (RRSIG and NSEC added), and its signatures."""
        rdata = successor(name) + bitmap({*types, RRSIG, NSEC})
        return rdata, self.rrsigs(name, NSEC, self.nsec_ttl, (rdata,))

    def nxname(self, name: bytes) -> tuple[bytes, tuple[bytes, ...]]:
        """RFC 9824 §3.1: a name that does not exist, answered as NODATA."""
        return self.nsec(name, (NXNAME,))

    def denial(self, name: bytes) -> tuple[bytes, tuple[bytes, ...]]:
        """NSEC for a NODATA answer at `name`: its own types if it exists, the
        wildcard's if it is synthesized from one, else NXNAME."""
        found = self.node_nsec.get(name)
        if found is not None:
            return found
        types = self.wildcard_types(name)
        return self.nxname(name) if types is None else self.nsec(name, types)

    def wildcard_types(self, name: bytes) -> frozenset[int] | None:
        """RFC 4592 §3.3.1: the types of the wildcard that would answer `name`."""
        off = 0
        while name[off]:
            off += 1 + name[off]
            encloser = name[off:]
            if encloser in self.node_types:
                return self.node_types.get(b"\x01*" + encloser)
            if encloser == self.apex:
                break
        return None

    def authoritative(self, owner: bytes) -> bool:
        """Data we sign: in the zone and not glue below a delegation."""
        return owner in self.node_types


class SignError(Exception):
    pass


# ----------------------------------------------------------------------------- build


def sign_zone(
    z: Zone, cz: CompiledZone, config: Config, now: float, previous: ZoneSigner | None
) -> ZoneSigner:
    """Sign every static RRset of a compiled zone (its DNSKEY RRset included:
    `dns.zone` puts `dnskey_rdatas` at the apex first) and the NSEC of every name."""
    pol = z.dnssec
    assert pol is not None
    neg_ttl = min(z.soa.ttl, z.soa.minimum)  # RFC 9077: NSEC TTL as the negative TTL
    s = ZoneSigner(cz.apex, pol, neg_ttl, now, previous)
    if previous is not None and previous.fingerprint != s.fingerprint:
        previous = None
    cuts = {n for n, node in cz.nodes.items() if wire.NS in node.rrsets and n != cz.apex}
    families = {
        name: (
            any(m.enabled and m.ipv4 for m in pool.mirrors),
            any(m.enabled and m.ipv6 for m in pool.mirrors),
        )
        for name, pool in config.pools.items()
    }
    for name, node in cz.nodes.items():
        if _below(name, cuts, cz.apex):
            s.occluded.add(name)  # glue: not ours to sign (RFC 4035 §2.2)
            continue
        types = set(node.rrsets)
        if node.steered is not None:
            v4, v6 = families.get(node.steered.pool, (True, True))
            types |= {wire.A} if v4 else set()
            types |= {wire.AAAA} if v6 else set()
        s.node_types[name] = frozenset(types)
        for rs in node.rrsets.values():
            if name in cuts and rs.rtype == wire.NS:
                continue  # the delegation's NS belongs to the child: unsigned
            sigs = s.sign_static(name, rs.rtype, rs.ttl, [t[10:] for t in rs.tails], previous)
            if rs.rtype == wire.SOA and name == cz.apex:
                s.soa_sigs = sigs
        rdata = successor(name) + bitmap({*types, RRSIG, NSEC})
        s.node_nsec[name] = (rdata, s.sign_static(name, NSEC, neg_ttl, (rdata,), previous))
    return s


def _below(name: bytes, cuts: set[bytes], apex: bytes) -> bool:
    """Strictly below one of the cuts (the cut itself is the parent's)."""
    off = 0
    while name[off] and name[off:] != apex:
        off += 1 + name[off]
        if name[off:] in cuts:
            return True
    return False


# ----------------------------------------------------------------------------- wire helpers


def label_count(owner: bytes) -> int:
    """RRSIG Labels (RFC 4034 §3.1.3): labels of the owner, without the root
    and without a leading `*`."""
    n = 0
    off = 0
    while owner[off]:
        n += 1
        off += 1 + owner[off]
    return n - 1 if owner.startswith(b"\x01*") else n


def successor(name: bytes) -> bytes:
    """The next name in canonical order (RFC 4034 §6.1): `\\000.name`, or for
    a name too long for one more label, its first label with a 0 octet added
    (RFC 4471 §3.1.2: nothing can exist in between, as no child fits)."""
    if len(name) + 2 <= wire.MAX_NAME:
        return b"\x01\x00" + name
    first = name[0]
    if first < wire.MAX_LABEL and len(name) < wire.MAX_NAME:
        return bytes((first + 1,)) + name[1 : 1 + first] + b"\x00" + name[1 + first :]
    # a full first label in a full name: increment its last octet that can be
    label = bytearray(name[1 : 1 + first])
    for i in range(len(label) - 1, -1, -1):
        if label[i] < 0xFF:
            label[i] += 1
            del label[i + 1 :]
            return bytes((len(label),)) + bytes(label) + name[1 + first :]
    return b"\x01\x00" + name[1 + first :]  # unreachable for real names


def bitmap(types: Iterable[int]) -> bytes:
    """NSEC type bit maps (RFC 4034 §4.1.2)."""
    windows: dict[int, bytearray] = {}
    for t in sorted(set(types)):
        win, low = t >> 8, t & 0xFF
        bits = windows.setdefault(win, bytearray())
        need = low // 8 + 1
        if len(bits) < need:
            bits.extend(b"\x00" * (need - len(bits)))
        bits[low // 8] |= 0x80 >> (low % 8)
    return b"".join(bytes((w, len(b))) + bytes(b) for w, b in sorted(windows.items()))


def _canonical(rtype: int, rdata: bytes) -> bytes:
    rd = dns.rdata.from_wire(
        dns.rdataclass.IN, dns.rdatatype.RdataType(rtype), rdata, 0, len(rdata)
    )
    return rd.to_digestable()


def _text(name: bytes) -> str:
    from geodns.dns.names import from_wire

    return from_wire(name) or "."


def rrsig_rrs(owner: bytes, ttl: int, sigs: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    return [(owner, wire.rr_tail(RRSIG, ttl, sig)) for sig in sigs]


def dnskey_rdatas(policy: DnssecPolicy, now: float) -> list[bytes]:
    """The zone's DNSKEY RRset: every key published at `now`."""
    return sorted(k.dnskey_rdata() for k in policy.loaded if k.published(now))


def resign_due(tables: Tables) -> float | None:
    """When the tables need signing again (POSIX seconds), None when unsigned."""
    dues = [cz.signer.due for cz in tables.zones.values() if cz.signer is not None]
    return min(dues) if dues else None
