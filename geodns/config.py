"""Operator YAML → frozen `geodns.model.Config`, with complete, strict validation.

`load_config(root)` reads every `*.yaml`/`*.yml` below `root`: a file whose
top-level mapping has `zone:` is a zone, one with `pool:` is a pool. Every
problem found in every file is collected and raised once as `ConfigError`,
each naming file, line and field (octoDNS style). `geodns validate` calls this
same function — there is no second, looser parser.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT

from .errors import ConfigError
from .fields import Problems, Section, kind_of, parse_ip
from .model import (
    SOA,
    AptCheck,
    Checks,
    Config,
    FreshnessCheck,
    Mirror,
    ObjectsCheck,
    Pool,
    RRSet,
    Steered,
    TLSCheck,
    Where,
    Zone,
)
from .names import absolute, in_zone, name_problem, parent
from .yamlsrc import YAMLProblem, YMap, load_yaml

RECORD_TYPES = ("A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA", "NS", "PTR")
CONTINENTS = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")
MAX_TTL = 2**31 - 1  # RFC 2181 §8
AUTO_SERIAL = -1  # placeholder until _assign_serials runs


# (file as shown, root, sha256 of its bytes) → (what it defines, line of its zone:/pool: key)
FileCache = dict[tuple[str, str, str], tuple["Zone | Pool", int]]


def load_config(
    root: Path | str, *, serial_state: Path | None = None, cache: FileCache | None = None
) -> Config:
    """Load and validate the configuration directory (or a single file).

    serial_state: a JSON file remembering each zone's content digest and serial,
    so that `serial: auto` increases exactly when a zone's content changes.
    cache: the zone or pool built from each (file, exact content) by the last
    load; files whose bytes are unchanged are not parsed again (a reload after
    editing one zone of a hundred reads a hundred files but parses one). It is
    replaced in place with this load's entries (files without problems only).
    """
    root = Path(root)
    p = Problems()
    fresh: FileCache = {}
    files = _yaml_files(root, p)
    digest = hashlib.sha256()
    zones: list[Zone] = []
    zone_digests: dict[str, str] = {}
    pools: dict[str, Pool] = {}
    for path in files:
        shown = _display(path)
        raw = path.read_bytes()
        digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
        digest.update(raw)
        key = (shown, str(root), hashlib.sha256(raw).hexdigest())
        found = cache.get(key) if cache is not None else None
        if found is None:
            before = len(p.items)
            found = _build_file(path, shown, root, p)
            if found is not None and len(p.items) == before:
                fresh[key] = found
        else:
            fresh[key] = found
        if found is None:
            continue
        built, line = found
        if isinstance(built, Zone):
            if any(o.name == built.name for o in zones):
                other = next(o for o in zones if o.name == built.name)
                p.add(
                    shown,
                    line,
                    "",
                    f"zone: '{built.name or '.'}' is already defined in {other.where}",
                )
            else:
                zones.append(built)
                zone_digests[built.name] = key[2]
        elif built.name in pools:
            p.add(
                shown,
                line,
                "",
                f"pool: '{built.name}' is already defined in {pools[built.name].where}",
            )
        else:
            pools[built.name] = built
    for z in zones:
        for s in z.steered:
            if s.pool not in pools:
                known = ", ".join(sorted(pools)) or "none defined"
                p.add(
                    s.where.file,
                    s.where.line,
                    f"steered '{_rel(s.name, z.name)}'",
                    f"pool: no pool named '{s.pool}' (known pools: {known})",
                )
    if p:
        raise ConfigError(p.items)
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    zones = _assign_serials(zones, zone_digests, serial_state)
    return Config(zones=tuple(zones), pools=pools, root=root, digest=digest.hexdigest())


def _build_file(path: Path, shown: str, root: Path, p: Problems) -> tuple[Zone | Pool, int] | None:
    """Parse one YAML file into the zone or pool it defines (problems into `p`)."""
    try:
        doc, dups = load_yaml(path)
    except YAMLProblem as e:
        p.add(shown, e.line, "", e.message)
        return None
    except UnicodeDecodeError:
        p.add(shown, 0, "", "file is not UTF-8 text")
        return None
    except RecursionError:
        p.add(shown, 0, "", "nested too deeply to be a zone or pool file")
        return None
    try:
        return _build_doc(doc, dups, shown, root, p)
    except (ValueError, OverflowError, OSError, TypeError, RecursionError) as e:
        # a value no check above foresaw: still an error report, never a traceback
        p.add(shown, 0, "", f"cannot use this file: {type(e).__name__}: {e}")
        return None


def _build_doc(
    doc: Any, dups: list[tuple[int, str]], shown: str, root: Path, p: Problems
) -> tuple[Zone | Pool, int] | None:
    for line, msg in dups:
        p.add(shown, line, "", msg)
    if doc is None:
        p.add(shown, 0, "", "file is empty (expected a mapping with 'zone:' or 'pool:')")
    elif not isinstance(doc, YMap):
        p.add(shown, 1, "", "expected a mapping with 'zone:' or 'pool:' at the top")
    elif "zone" in doc:
        z = _zone(Section(p, shown, doc, ""), shown)
        return None if z is None else (z, doc.lines["zone"])
    elif "pool" in doc:
        pool = _pool(Section(p, shown, doc, ""), shown, root)
        return None if pool is None else (pool, doc.lines["pool"])
    else:
        p.add(shown, doc.line, "", "expected a top-level 'zone:' or 'pool:' key")
    return None


# ----------------------------------------------------------------------------- files


def _yaml_files(root: Path, p: Problems) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        p.add(str(root), 0, "", "no such file or directory")
        raise ConfigError(p.items)
    files = sorted(
        f
        for f in root.rglob("*")
        if f.suffix in (".yaml", ".yml")
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(root).parts)
    )
    if not files:
        p.add(str(root), 0, "", "no *.yaml files found")
        raise ConfigError(p.items)
    return files


def _display(path: Path) -> str:
    """Paths as the operator typed them: relative below the cwd, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path.resolve()) if rel.startswith("..") else rel


def _rel(name: str, zone: str) -> str:
    if name == zone:
        return "@"
    return name[: -len(zone) - 1] if zone and name.endswith("." + zone) else name


# ----------------------------------------------------------------------------- zones


def _zone(s: Section, file: str) -> Zone | None:
    s.keys(("zone", "ttl", "soa", "ns", "records", "steered"), required=("zone", "soa", "ns"))
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


def _texts(s: Section, key: str, *, required: bool = False) -> list[str]:
    """A list of plain words: each item a non-empty string (or a number)."""
    out = []
    for v, line in s.list_(key, required=required):
        if isinstance(v, bool) or not isinstance(v, str | int) or not str(v).strip():
            s.error(key, f"expected a word or path, got {kind_of(v)}", line)
        else:
            out.append(str(v).strip())
    return out


def _http_url(text: str) -> bool:
    try:
        u = urlsplit(text)
        return u.scheme in ("http", "https") and bool(u.hostname) and u.port != 0
    except ValueError:
        return False


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
    s.keys(("pool", "answers", "ttl"), required=("pool",))
    pool = s.str_("pool", required=True)
    answers = s.int_("answers", 3, lo=1, hi=32)
    ttl = s.int_("ttl", 60, hi=MAX_TTL)
    if pool is None:
        return None
    return Steered(owner, pool, answers or 3, ttl if ttl is not None else 60, Where(file, line))


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
        label = _rel(owner, z.name)
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
        if owner in cuts and len(types) > 1:
            extra = [t for t in types if t not in ("NS",)]
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
                    f"{not_glue[0]}: is below the delegation '{_rel(cut, z.name)}' "
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
        label = _rel(name, z.name)
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
                f"is at or below the delegation '{_rel(cut, z.name)}'",
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
                    f"zone '{z.name}' record '{_rel(rr.name, z.name)}'",
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
                where_ctx = "ns" if owner == z.name else f"record '{_rel(owner, z.name)}' NS"
                s.p.add(
                    w.file,
                    w.line,
                    f"zone '{z.name}' {where_ctx}",
                    f"name server '{tn}' is inside the zone but has no A/AAAA (glue) records",
                )


# ----------------------------------------------------------------------------- pools


def _pool(s: Section, file: str, root: Path) -> Pool | None:
    s.keys(
        ("pool", "fallback", "on_empty", "tie_km", "checks", "mirrors"),
        required=("pool", "mirrors"),
    )
    name = s.str_("pool", required=True)
    if name is None:
        return None
    if not _ident_ok(name):
        s.error("pool", f"'{name}' is not a valid pool name (letters, digits, '.', '_', '-')")
    s.ctx = f"pool '{name}'"
    on_empty = s.choice("on_empty", ("failopen", "servfail"), "failopen")
    checks = _checks(s.sub("checks", f"pool '{name}' checks"), root)
    mirrors: list[Mirror] = []
    items = s.data.get("mirrors")
    if "mirrors" in s.data and not isinstance(items, list):
        s.error("mirrors", "expected a list of mirrors")
        items = []
    seen_addr: dict[str, str] = {}
    for item, line in zip(items or [], getattr(items, "lines", []), strict=False):
        m = _mirror(Section(s.p, file, item, f"pool '{name}' mirror", line), file)
        if m is None:
            continue
        if any(o.name == m.name for o in mirrors):
            s.p.add(file, line, f"pool '{name}'", f"mirror: duplicate mirror name '{m.name}'")
            continue
        for a in m.addresses():
            if str(a) in seen_addr:
                s.p.add(
                    file,
                    line,
                    f"pool '{name}' mirror '{m.name}'",
                    f"ipv{a.version}: address {a} is already used by mirror '{seen_addr[str(a)]}'",
                )
            seen_addr[str(a)] = m.name
        mirrors.append(m)
    if "mirrors" in s.data and isinstance(items, list) and not items:
        s.error("mirrors", "a pool needs at least one mirror")
    fallback: list[str] = []
    for v, line in s.list_("fallback"):
        if not any(m.name == str(v) for m in mirrors):
            s.error("fallback", f"no mirror named '{v}' in this pool", line)
        else:
            fallback.append(str(v))
    return Pool(
        name=name,
        mirrors=tuple(mirrors),
        fallback=tuple(fallback),
        on_empty=on_empty,  # type: ignore[arg-type]
        tie_km=s.float_("tie_km", 100.0, lo=0.0, hi=20_000.0) or 0.0,
        checks=checks,
        where=Where(file, s.line),
    )


def _ident_ok(v: str) -> bool:
    return bool(v) and all(c.isalnum() or c in "._-" for c in v) and v.isascii()


def _mirror(s: Section, file: str) -> Mirror | None:
    if not s.ok:
        return None
    s.keys(
        (
            "name",
            "url",
            "ipv4",
            "ipv6",
            "weight",
            "enabled",
            "asn",
            "country",
            "continent",
            "location",
        ),
        required=("name", "url"),
    )
    name = s.str_("name", required=True)
    nameless = name is None  # still check the rest: report everything at once
    name = name or "?"
    s.ctx = f"{s.ctx} '{name}'"
    if not nameless and not _ident_ok(name):
        s.error("name", f"'{name}' is not a valid mirror name (letters, digits, '.', '_', '-')")
    url = s.str_("url", required=True) or ""
    if url:
        try:
            parts = urlsplit(url)
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:  # "https://[::1/": a broken IPv6 literal
            parts, port_ok = urlsplit(""), False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            s.error("url", f"'{url}' is not an http:// or https:// URL with a host name")
    ips: dict[int, list[Any]] = {4: [], 6: []}
    before = len(s.p.items)
    for fam in (4, 6):
        key = f"ipv{fam}"
        for v, line in s.list_(key):
            ip = parse_ip(v, fam)
            if ip is None:
                s.error(key, f"'{v}' is not an IPv{fam} address", line)
            elif ip in ips[fam]:
                s.error(key, f"duplicate address {ip}", line)
            else:
                ips[fam].append(ip)
    if not ips[4] and not ips[6] and len(s.p.items) == before:  # bad ones were reported above
        s.error(None, "a mirror needs at least one address in 'ipv4' or 'ipv6'")
    country = s.str_("country")
    if country is not None:
        if len(country) != 2 or not country.isalpha() or not country.isascii():
            s.error("country", f"'{country}' is not a two-letter ISO 3166 country code")
            country = None
        else:
            country = country.upper()
    continent = s.str_("continent")
    if continent is not None:
        continent = continent.upper()
        if continent not in CONTINENTS:
            s.error("continent", f"'{continent}' is not one of {', '.join(CONTINENTS)}")
            continent = None
    location = None
    if "location" in s.data and s.data["location"] is not None:
        loc = s.data["location"]
        ok = (
            isinstance(loc, list)
            and len(loc) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in loc)
            and -90 <= loc[0] <= 90
            and -180 <= loc[1] <= 180
        )
        if ok:
            location = (float(loc[0]), float(loc[1]))
        else:
            s.error("location", f"expected [latitude, longitude] in degrees, got {loc!r}")
    mirror = Mirror(
        name=name,
        url=url,
        ipv4=tuple(ips[4]),
        ipv6=tuple(ips[6]),
        weight=s.int_("weight", 100, hi=1_000_000) if "weight" in s.data else 100,  # type: ignore[arg-type]
        enabled=s.bool_("enabled", True),
        asn=s.int_("asn", None, lo=1, hi=2**32 - 1),
        country=country,
        continent=continent,
        location=location,
        where=Where(file, s.line),
    )
    return None if nameless else mirror


def _checks(s: Section | None, root: Path) -> Checks:
    if s is None or not s.ok:
        return Checks()
    s.keys(("tls", "freshness", "objects", "apt", "fall", "rise", "timeout"))
    tls = fresh = objects = apt = None
    if (t := s.sub("tls", s.ctx + " tls")) is not None and t.ok:
        t.keys(("sni", "warn_days", "ca_bundle", "interval"))
        ca = t.str_("ca_bundle")
        tls = TLSCheck(
            sni=t.str_("sni"),
            warn_days=t.int_("warn_days", 14, hi=3650) or 0,
            ca_bundle=_path(ca, root) if ca else None,
            interval=t.duration("interval", 300.0) or 300.0,
        )
    if (f := s.sub("freshness", s.ctx + " freshness")) is not None and f.ok:
        f.keys(("path", "max_lag", "format", "origin", "interval"), required=("path", "max_lag"))
        path = f.str_("path", required=True)
        lag = f.duration("max_lag", required=True)
        origin = f.str_("origin")
        if origin and not _http_url(origin):
            f.error("origin", f"'{origin}' is not an http:// or https:// URL")
        if path and not path.startswith("/"):
            f.error("path", f"'{path}' must start with '/'")
        fmt = f.choice("format", ("auto", "epoch", "rfc3339", "debian-trace"), "auto")
        interval = f.duration("interval", 300.0) or 300.0  # checked even if path/max_lag fail
        if path and lag:
            fresh = FreshnessCheck(
                path=path,
                max_lag=lag,
                origin=origin,
                format=fmt,  # type: ignore[arg-type]
                interval=interval,
            )
    if (o := s.sub("objects", s.ctx + " objects")) is not None and o.ok:
        o.keys(
            (
                "manifest",
                "sample",
                "critical",
                "concurrency",
                "max_missing",
                "verify_sha256",
                "interval",
            ),
            required=("manifest",),
        )
        manifest = o.str_("manifest", required=True)
        # every field checked, with or without a usable manifest
        sample = o.int_("sample", 200, lo=1, hi=10_000_000) or 200
        critical = tuple(p.lstrip("/") for p in _texts(o, "critical"))
        concurrency = o.int_("concurrency", 8, lo=1, hi=256) or 8
        max_missing = o.int_("max_missing", 0) or 0
        verify = o.int_("verify_sha256", 0, hi=10_000) or 0
        interval = o.duration("interval", 900.0) or 900.0
        if manifest:
            mpath = _path(manifest, root)
            if not mpath.is_file():
                o.error(
                    "manifest", f"no such file: {mpath} (build it with `checker manifest build`)"
                )
            objects = ObjectsCheck(
                manifest=mpath,
                sample=sample,
                critical=critical,
                concurrency=concurrency,
                max_missing=max_missing,
                verify_sha256=verify,
                interval=interval,
            )
    if (a := s.sub("apt", s.ctx + " apt")) is not None and a.ok:
        a.keys(("suites", "interval"), required=("suites",))
        suites = tuple(_texts(a, "suites", required=True))
        if a.data.get("suites") == []:
            a.error("suites", "name at least one suite (like bookworm)")
        if suites:
            apt = AptCheck(suites=suites, interval=a.duration("interval", 300.0) or 300.0)
    return Checks(
        tls=tls,
        freshness=fresh,
        objects=objects,
        apt=apt,
        fall=s.int_("fall", 3, lo=1, hi=100) or 3,
        rise=s.int_("rise", 2, lo=1, hi=100) or 2,
        timeout=s.duration("timeout", 10.0) or 10.0,
    )


def _path(v: str, root: Path) -> Path:
    p = Path(v)
    base = root if root.is_dir() else root.parent
    return p if p.is_absolute() else (base / p).resolve()


# ----------------------------------------------------------------------------- serials


def _assign_serials(zones: list[Zone], digests: dict[str, str], state: Path | None) -> list[Zone]:
    """`serial: auto` → YYYYMMDDnn that moves forward exactly when the zone's
    file content changes (remembered in a small JSON file in the state dir;
    without one, e.g. for `geodns validate`, today's YYYYMMDD00)."""
    known: dict[str, Any] = {}
    if state is not None:
        try:
            known = json.loads(state.read_text())
        except (OSError, ValueError):
            known = {}
    today = int(dt.datetime.now(dt.UTC).strftime("%Y%m%d")) * 100
    out = []
    changed = False
    for z in zones:
        if z.soa.serial != AUTO_SERIAL:
            out.append(z)
            continue
        prev = known.get(z.name) or {}
        if prev.get("digest") == digests[z.name] and isinstance(prev.get("serial"), int):
            serial = prev["serial"]
        else:
            serial = max(today, int(prev.get("serial", 0)) + 1) % 2**32
            known[z.name] = {"digest": digests[z.name], "serial": serial}
            changed = True
        out.append(_with_serial(z, serial))
    if changed and state is not None:
        try:
            state.parent.mkdir(parents=True, exist_ok=True)
            tmp = state.with_suffix(".tmp")
            tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
            tmp.replace(state)
        except OSError:
            pass  # serials still move forward from the date; only persistence is lost
    return out


def _with_serial(z: Zone, serial: int) -> Zone:
    return replace(z, soa=replace(z.soa, serial=serial))
