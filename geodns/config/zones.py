"""A zone file (`zone:`) → `geodns.model.Zone`: SOA, NS, records, steered names,
and the checks that span a whole zone (CNAME rules, glue, delegations).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT

from geodns.config.fields import Section, parse_ip
from geodns.config.serials import AUTO_SERIAL
from geodns.dns.names import absolute, in_zone, name_problem, parent
from geodns.dnssec.zoneconf import parse_dnssec
from geodns.model import (
    SOA,
    RRSet,
    Steered,
    Where,
    Zone,
)

RECORD_TYPES = ("A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA", "NS", "PTR", "DS")


MAX_TTL = 2**31 - 1  # RFC 2181 §8


def relative_name(name: str, zone: str) -> str:
    if name == zone:
        return "@"
    return name[: -len(zone) - 1] if zone and name.endswith("." + zone) else name


def build_zone(s: Section, file: str) -> Zone | None:
    s.keys(
        ("zone", "ttl", "soa", "ns", "records", "steered", "dnssec"), required=("zone", "soa", "ns")
    )
    zname_raw = s.str_("zone", required=True)
    if zname_raw is None:
        return None
    zname = zname_raw.strip().lower().rstrip(".")
    if (why := name_problem(zname)) is not None:
        s.error("zone", f"'{zname_raw}' is not a valid zone name: {why}")
        return None
    s.ctx = f"zone '{zname}'"
    default_ttl = s.int_("ttl", 3600, hi=MAX_TTL) or 0
    soa = _soa(s, zname)
    ns_names: list[str] = []
    for v, line in s.list_("ns", required=True):
        n = _name_value(s, "ns", v, line, zname)
        if n is not None:
            ns_names.append(n)
    if "ns" in s.data and not ns_names and s.data["ns"] is not None:
        s.error("ns", "at least one name server is required")

    rrsets: list[RRSet] = []
    recs = s.sub("records")
    # `www`, `WWW` and `www.example.org.` are one owner: written twice, the
    # second would silently replace the first
    seen: dict[str, dict[str, tuple[str, int]]] = {"record": {}, "steered": {}}

    def once(sec: Section, owner_raw: str, what: str) -> bool:
        owner = absolute(str(owner_raw), zname).lower()
        line = sec.key_line_of(owner_raw)
        written = seen[what]
        if owner in written:
            first, first_line = written[owner]
            s.p.add(
                file,
                line,
                f"zone '{zname or '.'}' {what} '{owner_raw}'",
                f"the same name as {first} on line {first_line}; write each name once",
            )
            return False
        written[owner] = (f"{what} '{owner_raw}'", line)
        return True

    if recs is not None:
        for owner_raw in recs.data:
            if once(recs, owner_raw, "record"):
                rrsets.extend(_owner(recs, file, owner_raw, zname, default_ttl))
    steered: list[Steered] = []
    st = s.sub("steered")
    if st is not None:
        for owner_raw in st.data:
            if not once(st, owner_raw, "steered"):
                continue
            item = _steered(st, file, owner_raw, zname)
            if item is not None:
                steered.append(item)
    dnssec = parse_dnssec(s, zname)
    if soa is None:
        return None
    zone = Zone(
        name=zname,
        soa=soa,
        ns=tuple(ns_names),
        ttl=default_ttl,
        rrsets=tuple(rrsets),
        steered=tuple(steered),
        where=Where(file, s.line),
        dnssec=dnssec,
    )
    _check_zone(zone, s)
    return zone


def _soa(s: Section, zname: str) -> SOA | None:
    soa = s.sub("soa", f"zone '{zname}' soa")
    if soa is None:
        return None
    soa.keys(
        ("mname", "rname", "serial", "refresh", "retry", "expire", "minimum", "ttl"),
        required=("mname", "rname"),
    )
    mname_raw = soa.str_("mname", required=True)
    rname_raw = soa.str_("rname", required=True)
    mname = _name_value(soa, "mname", mname_raw, soa.line_of("mname"), zname) if mname_raw else None
    rname = None
    if rname_raw:
        # Accept the mail form hostmaster@example.org as operators write it.
        rname_txt = rname_raw.replace("@", ".", 1) if "@" in rname_raw else rname_raw
        rname = _name_value(soa, "rname", rname_txt, soa.line_of("rname"), zname)
    serial_v = soa.data.get("serial", "auto")
    serial = AUTO_SERIAL
    if serial_v != "auto":
        serial = soa.int_("serial", 0, lo=0, hi=2**32 - 1) or 0
    # every field is checked, so one run reports all of the SOA's problems
    refresh = soa.int_("refresh", 3600, hi=MAX_TTL) or 0
    retry = soa.int_("retry", 600, hi=MAX_TTL) or 0
    expire = soa.int_("expire", 1209600, hi=MAX_TTL) or 0
    minimum = soa.int_("minimum", 300, hi=MAX_TTL) or 0
    ttl = soa.int_("ttl", 3600, hi=MAX_TTL) or 0
    if mname is None or rname is None:
        return None
    return SOA(
        mname=mname,
        rname=rname,
        serial=serial,
        refresh=refresh,
        retry=retry,
        expire=expire,
        minimum=minimum,
        ttl=ttl,
    )


def _name_value(s: Section, field: str, v: Any, line: int, zname: str) -> str | None:
    if not isinstance(v, str) or not v.strip():
        s.error(field, f"expected a domain name, got {v!r}", line)
        return None
    n = absolute(v, zname)
    if (why := name_problem(n)) is not None:
        s.error(field, f"'{v}' is not a valid domain name: {why}", line)
        return None
    return n


def _owner(recs: Section, file: str, owner_raw: str, zname: str, default_ttl: int) -> list[RRSet]:
    line = recs.line_of(owner_raw)
    owner = absolute(owner_raw, zname)
    ctx = f"zone '{zname}' record '{owner_raw}'"
    if (why := name_problem(owner, allow_wildcard=True)) is not None:
        recs.p.add(file, line, ctx, f"not a valid owner name: {why}")
        return []
    if not in_zone(owner, zname):
        recs.p.add(file, line, ctx, f"'{owner}' is not inside zone '{zname}' (out-of-zone data)")
        return []
    s = Section(recs.p, file, recs.data[owner_raw], ctx, line)
    if not s.ok:
        return []
    s.keys((*RECORD_TYPES, "ttl"))
    ttl = s.int_("ttl", default_ttl, hi=MAX_TTL)
    origin = dns.name.from_text(zname + ".") if zname else dns.name.root
    out: list[RRSet] = []
    for rtype in RECORD_TYPES:
        if rtype not in s.data:
            continue
        values: list[str] = []
        for v, vline in s.list_(rtype):
            text = _rdata(s, rtype, v, vline, origin)
            if text is not None:
                if text in values:
                    s.error(rtype, f"duplicate record {v!r}", vline)
                else:
                    values.append(text)
        if rtype == "CNAME" and len(values) > 1:
            s.error(rtype, "a name has one CNAME at most (RFC 2181 §10.1)", s.line_of(rtype))
            values = values[:1]
        if values:
            out.append(
                RRSet(
                    owner,
                    rtype,
                    ttl if ttl is not None else default_ttl,
                    tuple(values),
                    Where(file, s.line_of(rtype)),
                )
            )
    return out


def _rdata(s: Section, rtype: str, v: Any, line: int, origin: dns.name.Name) -> str | None:
    """Validate one value; return canonical presentation text with absolute names."""
    if v is None or isinstance(v, dict | list) or isinstance(v, bool):
        s.error(rtype, f"expected a value, got {v!r}", line)
        return None
    if rtype in ("A", "AAAA"):
        fam = 4 if rtype == "A" else 6
        ip = parse_ip(v, fam)
        if ip is None:
            s.error(rtype, f"'{v}' is not an IPv{fam} address", line)
            return None
        return str(ip)
    text = str(v).strip()
    if rtype in ("CNAME", "NS", "PTR", "MX", "SRV") and text:
        # the target is the last token; make it absolute by our rule (names.absolute)
        head, _, last = text.rpartition(" ")
        zone = origin.to_text(omit_final_dot=True).lower()
        absname = absolute(last, zone) + "." if last != "." else "."
        text = f"{head} {absname}" if head else absname
    if rtype == "TXT":
        # Operators write plain text; one character-string per 255 bytes, cut on
        # bytes (a character may straddle two strings, as in any TXT record);
        # dnspython writes the presentation form with its escapes.
        raw = text.encode("utf-8")
        if len(raw) > 60_000:
            s.error(rtype, f"{len(raw)} bytes of text: a record holds at most 65,535", line)
            return None
        chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
        return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks).to_text()
    try:
        rd = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.from_text(rtype), text, origin=origin, relativize=False
        )
    except (dns.exception.DNSException, ValueError) as e:
        s.error(rtype, f"'{v}' is not valid {rtype} data: {e}", line)
        return None
    # names inside rdata must be valid host-like names too
    for attr in ("target", "exchange"):
        target = getattr(rd, attr, None)
        if isinstance(target, dns.name.Name):
            tname = target.to_text(omit_final_dot=True).lower()
            if tname != "" and (why := name_problem(tname)) is not None:
                s.error(rtype, f"'{v}': {why}", line)
                return None
    return rd.to_text()


def _steered(st: Section, file: str, owner_raw: str, zname: str) -> Steered | None:
    line = st.line_of(owner_raw)
    owner = absolute(owner_raw, zname)
    ctx = f"zone '{zname}' steered '{owner_raw}'"
    if (why := name_problem(owner)) is not None:
        st.p.add(file, line, ctx, f"not a valid name: {why}")
        return None
    if not in_zone(owner, zname):
        st.p.add(file, line, ctx, f"'{owner}' is not inside zone '{zname}'")
        return None
    s = Section(st.p, file, st.data[owner_raw], ctx, line)
    if not s.ok:
        return None
    s.keys(("pool", "answers", "min_answers", "ttl"), required=("pool",))
    pool = s.str_("pool", required=True)
    answers = s.int_("answers", 3, lo=1, hi=32) or 3
    min_answers = s.int_("min_answers", None, lo=1, hi=32)
    if min_answers is not None and min_answers > answers:
        s.error("min_answers", f"{min_answers} is more than answers ({answers})")
    ttl = s.int_("ttl", 60, hi=MAX_TTL)
    if pool is None:
        return None
    ttl = ttl if ttl is not None else 60
    return Steered(owner, pool, answers, ttl, min_answers=min_answers, where=Where(file, line))


def _check_zone(z: Zone, s: Section) -> None:
    """Cross-record rules: CNAME exclusivity, delegations, glue, steered names."""
    by_owner: dict[str, dict[str, RRSet]] = {}
    for rr in z.rrsets:
        by_owner.setdefault(rr.name, {})[rr.rtype] = rr
    steered = {st.name: st for st in z.steered}
    cuts = {o for o, types in by_owner.items() if "NS" in types and o != z.name}

    def below_cut(name: str) -> str | None:
        n = name
        while n != z.name and n:
            if n in cuts and n != name:
                return n
            n = parent(n)
        return None

    for owner, types in by_owner.items():
        first = next(iter(types.values()))
        w = first.where
        label = relative_name(owner, z.name)
        if "CNAME" in types:
            if owner == z.name:
                s.p.add(
                    w.file,
                    types["CNAME"].where.line,
                    f"zone '{z.name}' record '@'",
                    "CNAME: not allowed at the zone apex (the apex has SOA and NS)",
                )
            others = [t for t in types if t != "CNAME"]
            if others or owner in steered:
                what = ", ".join(others) if others else "a steered name"
                s.p.add(
                    w.file,
                    types["CNAME"].where.line,
                    f"zone '{z.name}' record '{label}'",
                    f"CNAME: cannot stand beside other data ({what}) — RFC 1034 §3.6.2",
                )
        if owner == z.name and "NS" in types:
            s.p.add(
                w.file,
                types["NS"].where.line,
                f"zone '{z.name}' record '@'",
                "NS: apex name servers go in the zone's 'ns:' list",
            )
        if "DS" in types and owner not in cuts:
            s.p.add(
                w.file,
                types["DS"].where.line,
                f"zone '{z.name}' record '{label}'",
                "DS: only at a delegation point, beside its NS records (RFC 4035 §2.4)",
            )
        extra = [t for t in types if t not in ("NS", "DS")]
        if owner in cuts and extra:
            s.p.add(
                w.file,
                types["NS"].where.line,
                f"zone '{z.name}' record '{label}'",
                f"NS: a delegation point cannot have other data ({', '.join(extra)})",
            )
        cut = below_cut(owner)
        if cut is not None:
            not_glue = [t for t in types if t not in ("A", "AAAA")]
            if not_glue:
                s.p.add(
                    w.file,
                    w.line,
                    f"zone '{z.name}' record '{label}'",
                    f"{not_glue[0]}: is below the delegation '{relative_name(cut, z.name)}' "
                    "(only A/AAAA glue may stand there)",
                )
        if owner.startswith("*.") and "NS" in types:
            s.p.add(
                w.file,
                types["NS"].where.line,
                f"zone '{z.name}' record '{label}'",
                "NS: a wildcard name cannot be a delegation",
            )

    for name, st in steered.items():
        label = relative_name(name, z.name)
        types = by_owner.get(name, {})
        clash = [t for t in ("A", "AAAA", "CNAME", "NS") if t in types]
        if clash and "CNAME" not in clash:
            s.p.add(
                st.where.file,
                st.where.line,
                f"zone '{z.name}' steered '{label}'",
                f"pool: the name also has static {'/'.join(clash)} records",
            )
        if (cut := below_cut(name) or (name if name in cuts else None)) is not None:
            s.p.add(
                st.where.file,
                st.where.line,
                f"zone '{z.name}' steered '{label}'",
                f"is at or below the delegation '{relative_name(cut, z.name)}'",
            )
        if name == z.name:
            s.p.add(
                st.where.file,
                st.where.line,
                f"zone '{z.name}' steered '@'",
                "steering the zone apex is not supported (use a name below it)",
            )

    # RFC 2181 §10.3: MX and SRV targets (and NS) must not be aliases
    for rr in z.rrsets:
        if rr.rtype not in ("MX", "SRV", "NS"):
            continue
        for rd in rr.rdata:
            target = rd.rsplit(" ", 1)[-1].rstrip(".").lower()
            if "CNAME" in by_owner.get(target, {}):
                s.p.add(
                    rr.where.file,
                    rr.where.line,
                    f"zone '{z.name}' record '{relative_name(rr.name, z.name)}'",
                    f"{rr.rtype}: target '{target}' is a CNAME; name the canonical host "
                    "(RFC 2181 §10.3)",
                )

    # Glue: an in-zone name server needs address records we can hand out.
    apex_ns = Where(z.where.file, s.line_of("ns"))  # the zone's `ns:` line
    ns_sets: list[tuple[str, Iterable[str], Where]] = [(z.name, z.ns, apex_ns)]
    ns_sets += [(rr.name, rr.rdata, rr.where) for rr in z.rrsets if rr.rtype == "NS"]
    for owner, targets, w in ns_sets:
        for t in targets:
            tn = t.rstrip(".").lower()
            if not in_zone(tn, z.name):
                continue
            types = by_owner.get(tn, {})
            if "A" not in types and "AAAA" not in types:
                rel = relative_name(owner, z.name)
                where_ctx = "ns" if owner == z.name else f"record '{rel}' NS"
                s.p.add(
                    w.file,
                    w.line,
                    f"zone '{z.name}' {where_ctx}",
                    f"name server '{tn}' is inside the zone but has no A/AAAA (glue) records",
                )
