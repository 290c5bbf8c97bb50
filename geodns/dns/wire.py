"""DNS wire format: a bounds-checked query parser and small encoders.

Written here rather than with dnslib/dnspython objects because the server
must not build library objects per query (docs/architecture.md, "The query path"), and
because every malformed input has to map to an exact response code. dnspython
is used at config-compile time (rdata text → wire) and as the test client.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# RFC 1035 §4.1.1 / RFC 6895 codes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # RFC 6891 §9: extended RCODE, upper 8 bits go into the OPT TTL
RCODE_NAMES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    16: "BADVERS",
}

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, DS = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 43
IXFR, AXFR, MAILB, MAILA, ANY, CAA = 251, 252, 253, 254, 255, 257
TYPE_CODES = {
    "A": A,
    "NS": NS,
    "CNAME": CNAME,
    "SOA": SOA,
    "PTR": PTR,
    "MX": MX,
    "TXT": TXT,
    "AAAA": AAAA,
    "SRV": SRV,
    "CAA": CAA,
    "DS": DS,
}
TYPE_NAMES = {v: k for k, v in TYPE_CODES.items()} | {
    ANY: "ANY",
    DS: "DS",
    AXFR: "AXFR",
    IXFR: "IXFR",
    OPT: "OPT",
}
CLASS_IN = 1
ECS_CODE = 8  # RFC 7871 §6
COOKIE_CODE = 10  # RFC 7873 §4
EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: fits every common path MTU
MAX_LABEL, MAX_NAME = 63, 255


class WireError(Exception):
    """The packet cannot be answered normally; `rcode` says how to refuse it."""

    def __init__(self, rcode: int, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason
        # set when the OPT record itself parsed (an option inside was bad):
        # the error response then carries an OPT too (RFC 6891 §7)
        self.opt_do: bool | None = None


@dataclass(slots=True)
class ECS:
    family: int  # 1 = IPv4, 2 = IPv6
    source: int  # SOURCE PREFIX-LENGTH
    address: bytes  # the option's address bytes as sent (ceil(source/8) long)

    def padded(self) -> bytes:
        return self.address + b"\x00" * ((4 if self.family == 1 else 16) - len(self.address))

    def echo(self, scope: int) -> bytes:
        """The option as it goes back: same family/source/address, our scope."""
        body = struct.pack("!HBB", self.family, self.source, scope) + self.address
        return struct.pack("!HH", ECS_CODE, len(body)) + body


@dataclass(slots=True)
class EDNS:
    payload: int
    version: int
    do: bool
    ecs: ECS | None
    # RFC 7873 COOKIE option data as sent (checked by geodns.dns.cookies, which
    # may be switched off: then it is an unknown option like any other)
    cookie: bytes | None = None
    cookie_dup: bool = False  # more than one COOKIE option


@dataclass(slots=True)
class Query:
    id: int
    flags: int  # the 16-bit flags word as received
    opcode: int
    qname: bytes  # wire form as sent (case preserved)
    qname_lower: bytes
    qtype: int
    qclass: int
    question: bytes  # the whole question entry as sent, echoed in the response
    edns: EDNS | None

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)


def read_name(data: bytes, off: int) -> tuple[bytes, int]:
    """An uncompressed name at `off` → (wire bytes, offset after it).

    Compression is refused: in a query's question it can only point into the
    header, and RFC 1035 never produces it there.
    """
    start = off
    end = len(data)
    while True:
        if off >= end:
            raise WireError(FORMERR, "name runs past the end of the packet")
        n = data[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0:
            raise WireError(FORMERR, "compressed or extended label in the question")
        off += 1 + n
        if off - start > MAX_NAME:
            raise WireError(FORMERR, "name longer than 255 octets")
    if off > end:
        raise WireError(FORMERR, "name runs past the end of the packet")
    if off - start > MAX_NAME:
        raise WireError(FORMERR, "name longer than 255 octets")
    return data[start:off], off


def skip_name(data: bytes, off: int) -> int:
    """Skip a possibly compressed name in a resource record."""
    end = len(data)
    hops = 0
    while True:
        if off >= end:
            raise WireError(FORMERR, "record name runs past the end of the packet")
        n = data[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            if off + 2 > end:
                raise WireError(FORMERR, "truncated compression pointer")
            return off + 2
        if n & 0xC0:
            raise WireError(FORMERR, "unknown label type")
        off += 1 + n
        hops += 1
        if hops > 127:
            raise WireError(FORMERR, "name has too many labels")


def parse_header(data: bytes) -> tuple[int, int, int, int, int, int]:
    if len(data) < 12:
        raise WireError(-1, "shorter than a DNS header")
    return struct.unpack_from("!HHHHHH", data, 0)


def parse_query(data: bytes, empty_ok: bool = False) -> Query:
    """Parse a query completely. Raises WireError with the rcode to answer:
    FORMERR, NOTIMP, BADVERS; rcode -1 means "drop, do not answer".
    `empty_ok`: a query without a question parses (qname b"", qtype 0), for
    the caller to answer if it may (RFC 7873 §5.4: a query for a cookie)."""
    qid, flags, qd, an, ns, ar = parse_header(data)
    if flags & 0x8000:
        raise WireError(-1, "a response, not a query")  # never answer answers (loops)
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        raise WireError(NOTIMP, f"opcode {opcode} is not implemented")
    if qd == 0 and empty_ok:
        qname, off, qtype, qclass = b"", 12, 0, 0
    elif qd != 1:
        raise WireError(FORMERR, f"QDCOUNT is {qd}, expected 1")
    else:
        qname, off = read_name(data, 12)
        if off + 4 > len(data):
            raise WireError(FORMERR, "question truncated")
        qtype, qclass = struct.unpack_from("!HH", data, off)
        off += 4
    question = data[12:off]
    # Skip answer and authority records (a query should have none; tolerate them).
    for _ in range(an + ns):
        off = skip_rr(data, off)
    edns = None
    for _ in range(ar):
        rr_start = off
        off = skip_name(data, off)
        if off + 10 > len(data):
            raise WireError(FORMERR, "additional record truncated")
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
        off += 10
        if off + rdlen > len(data):
            raise WireError(FORMERR, "record data runs past the end of the packet")
        if rtype == OPT:
            if edns is not None:
                raise WireError(FORMERR, "more than one OPT record")  # RFC 6891 §6.1.1
            if data[rr_start] != 0:
                raise WireError(FORMERR, "OPT record owner is not the root")
            try:
                edns = _parse_opt(rclass, ttl, data[off : off + rdlen])
            except BadVersion:
                raise
            except WireError as e:
                e.opt_do = bool(ttl & 0x8000)
                raise
        off += rdlen
    qlower = qname.lower()  # bytes.lower() folds ASCII only, as DNS does (RFC 4343)
    if qtype == OPT:
        err = WireError(FORMERR, "OPT is not a query type")
        if edns is not None:  # the query's EDNS was fine: the answer carries OPT too
            err.opt_do = edns.do
        raise err
    return Query(qid, flags, opcode, qname, qlower, qtype, qclass, question, edns)


def skip_rr(data: bytes, off: int) -> int:
    """Skip one (possibly compressed) resource record."""
    off = skip_name(data, off)
    if off + 10 > len(data):
        raise WireError(FORMERR, "record truncated")
    (rdlen,) = struct.unpack_from("!H", data, off + 8)
    off += 10 + rdlen
    if off > len(data):
        raise WireError(FORMERR, "record data runs past the end of the packet")
    return off


def _parse_opt(payload: int, ttl: int, rdata: bytes) -> EDNS:
    version = (ttl >> 16) & 0xFF
    do = bool(ttl & 0x8000)
    ecs = None
    cookie: bytes | None = None
    cookie_dup = False
    off = 0
    while off < len(rdata):
        if off + 4 > len(rdata):
            raise WireError(FORMERR, "EDNS option header truncated")
        code, olen = struct.unpack_from("!HH", rdata, off)
        off += 4
        if off + olen > len(rdata):
            raise WireError(FORMERR, "EDNS option runs past the OPT record")
        if code == ECS_CODE and version == 0:
            if ecs is not None:
                raise WireError(FORMERR, "more than one Client Subnet option")
            ecs = parse_ecs(rdata[off : off + olen])
        elif code == COOKIE_CODE:
            if cookie is None:
                cookie = rdata[off : off + olen]
            else:
                cookie_dup = True
        # RFC 6891 §6.1.2: unknown options are ignored
        off += olen
    edns = EDNS(max(payload, 512), version, do, ecs, cookie, cookie_dup)
    if version > 0:
        raise BadVersion(edns)
    return edns


class BadVersion(WireError):
    def __init__(self, edns: EDNS) -> None:
        super().__init__(BADVERS, f"EDNS version {edns.version} (we speak 0)")
        self.edns = edns


def parse_ecs(opt: bytes) -> ECS:
    """RFC 7871 §6 validation; anything malformed is FORMERR (§7.1.1)."""
    if len(opt) < 4:
        raise WireError(FORMERR, "Client Subnet option shorter than 4 octets")
    family, source, scope = struct.unpack_from("!HBB", opt, 0)
    addr = opt[4:]
    if family == 1:
        bits = 32
    elif family == 2:
        bits = 128
    else:
        raise WireError(FORMERR, f"Client Subnet family {family} is not 1 (IPv4) or 2 (IPv6)")
    if source > bits:
        raise WireError(FORMERR, f"Client Subnet source prefix /{source} exceeds {bits} bits")
    if scope != 0:
        raise WireError(FORMERR, "Client Subnet scope must be 0 in queries")
    need = (source + 7) // 8
    if len(addr) != need:
        raise WireError(
            FORMERR, f"Client Subnet address has {len(addr)} octets, /{source} needs {need}"
        )
    if need and source % 8:
        mask = 0xFF >> (source % 8)
        if addr[-1] & mask:
            raise WireError(FORMERR, "Client Subnet address has bits set beyond the source prefix")
    return ECS(family, source, bytes(addr))


# ----------------------------------------------------------------------------- encoding


def rr_tail(rtype: int, ttl: int, rdata: bytes) -> bytes:
    """Everything of a resource record after its owner name."""
    return struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata


def opt_record(do: bool, options: bytes = b"", ext_rcode: int = 0) -> bytes:
    """Our OPT RR: root owner, 1232-byte payload, version 0, DO echoed
    (RFC 3225 §3: the DO bit of the query is copied to the response)."""
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", OPT, EDNS_PAYLOAD, ttl, len(options)) + options


class NameCompressor:
    """Owner-name compression (RFC 1035 §4.1.4) against names already written."""

    __slots__ = ("offsets",)

    def __init__(self) -> None:
        self.offsets: dict[bytes, int] = {}

    def add(self, wire_lower: bytes, at: int) -> None:
        off = 0
        while wire_lower[off] and at + off < 0x3FFF:
            self.offsets.setdefault(wire_lower[off:], at + off)
            off += 1 + wire_lower[off]

    def encode(self, wire: bytes, at: int) -> bytes:
        """Wire bytes for `wire` written at offset `at`, pointing into earlier names."""
        lower = wire.lower()
        off = 0
        while lower[off]:
            ptr = self.offsets.get(lower[off:])
            if ptr is not None:
                if off == 0:
                    return struct.pack("!H", 0xC000 | ptr)
                i = 0  # the labels written before the pointer become targets too
                while i < off and at + i < 0x3FFF:
                    self.offsets.setdefault(lower[i:], at + i)
                    i += 1 + lower[i]
                return wire[:off] + struct.pack("!H", 0xC000 | ptr)
            off += 1 + lower[off]
        self.add(lower, at)
        return wire
