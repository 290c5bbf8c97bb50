"""A pool file (`pool:`) → `geodns.model.Pool`: its mirrors and their checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from geodns.config.countries import country_code
from geodns.config.fields import Section, kind_of, parse_ip, show_size
from geodns.model import (
    AptCheck,
    Checks,
    FreshnessCheck,
    Mirror,
    ObjectsCheck,
    Pool,
    ThroughputCheck,
    TLSCheck,
    Where,
)

CONTINENTS = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")


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


def build_pool(s: Section, file: str, root: Path) -> Pool | None:
    s.keys(
        (
            "pool",
            "fallback",
            "on_empty",
            "tie_km",
            "band_factor",
            "min_answers",
            "checks",
            "mirrors",
        ),
        required=("pool", "mirrors"),
    )
    name = s.str_("pool", required=True)
    if name is None:
        return None
    if not _ident_ok(name):
        s.error("pool", f"'{name}' is not a valid pool name (letters, digits, '.', '_', '-')")
    s.ctx = f"pool '{name}'"
    on_empty = s.choice("on_empty", ("failopen", "servfail"), "failopen")
    checks = _checks(s.sub("checks", f"pool '{name}' checks"), root, name)
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
        band_factor=s.float_("band_factor", 1.5, lo=1.0, hi=100.0) or 1.5,
        min_answers=s.int_("min_answers", 1, lo=1, hi=32) or 1,
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
            "only",
            "also_countries",
            "exclude_countries",
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
    country = None
    if s.data.get("country") is not None:
        country, why = country_code(s.data["country"])
        if why:
            s.error("country", why)
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
    only, also, exclude = _scope(s)
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
        only=only,  # type: ignore[arg-type]
        also_countries=also,
        exclude_countries=exclude,
        where=Where(file, s.line),
    )
    return None if nameless else mirror


def _countries(s: Section, key: str) -> tuple[str, ...]:
    out: list[str] = []
    for v, line in s.list_(key):
        code, why = country_code(v)
        if why:
            s.error(key, why, line)
        elif code in out:
            s.error(key, f"{code} is listed twice", line)
        else:
            out.append(code)  # type: ignore[arg-type]
    return tuple(out)


def _scope(s: Section) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """`only`, `also_countries`, `exclude_countries` (docs: README "Scope")."""
    only = None
    if s.data.get("only") is not None:
        only = s.choice("only", ("asn", "country", "continent"), "")
        only = only or None
    also = _countries(s, "also_countries")
    exclude = _countries(s, "exclude_countries")
    for code in sorted(set(also) & set(exclude)):
        s.error(
            "exclude_countries",
            f"{code} is also in also_countries: a country cannot be both added and excluded",
        )
    if only == "asn" and also:
        s.error(
            "also_countries",
            "has no effect with 'only: asn' (only clients of the mirror's own ASN get it)",
        )
    return only, also, exclude


def _checks(s: Section | None, root: Path, pool: str) -> Checks:
    if s is None or not s.ok:
        return Checks()
    s.keys(("tls", "freshness", "objects", "apt", "throughput", "fall", "rise", "timeout"))
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
        objects = _objects(o, root, pool)
    if (a := s.sub("apt", s.ctx + " apt")) is not None and a.ok:
        a.keys(("suites", "interval"), required=("suites",))
        suites = tuple(_texts(a, "suites", required=True))
        if a.data.get("suites") == []:
            a.error("suites", "name at least one suite (like bookworm)")
        if suites:
            apt = AptCheck(suites=suites, interval=a.duration("interval", 300.0) or 300.0)
    throughput = None
    if (p := s.sub("throughput", s.ctx + " throughput")) is not None and p.ok:
        throughput = _throughput(p, root, pool, objects)
    return Checks(
        tls=tls,
        freshness=fresh,
        objects=objects,
        apt=apt,
        throughput=throughput,
        fall=s.int_("fall", 3, lo=1, hi=100) or 3,
        rise=s.int_("rise", 2, lo=1, hi=100) or 2,
        timeout=s.duration("timeout", 10.0) or 10.0,
    )


def _objects(o: Section, root: Path, pool: str) -> ObjectsCheck | None:
    o.keys(
        (
            "manifest",
            "sample",
            "critical",
            "concurrency",
            "max_missing",
            "verify_sha256",
            "interval",
            "gone_sample",
            "gone_after",
            "gone_within",
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
    gone_sample = o.int_("gone_sample", 0, hi=100_000) or 0
    gone_after = o.duration("gone_after", 86400.0) or 86400.0
    gone_within = o.duration("gone_within", 30 * 86400.0) or 30 * 86400.0
    if gone_within <= gone_after:
        key = "gone_within" if "gone_within" in o.data else "gone_after"
        o.error(key, "gone_within must be longer than gone_after (checks happen in between)")
    if not manifest:
        return None
    expected: str | None = None
    mpath: Path | None = None
    # `store` names the expected state an origin publishes into the store
    # (`checker manifest publish ROOT --pool NAME`); `./store` is a file
    if manifest == "store" or manifest.startswith("store:"):
        expected = manifest.partition(":")[2] or pool
        if not _ident_ok(expected):
            o.error(
                "manifest",
                f"'{manifest}': '{expected}' is not a valid pool name "
                "(letters, digits, '.', '_', '-')",
            )
    else:
        mpath = _path(manifest, root)
        if not mpath.is_file():
            o.error(
                "manifest",
                f"no such file: {mpath} (build it with `checker manifest build`, or use "
                "`manifest: store` for the expected state an origin publishes)",
            )
        for key in ("gone_sample", "gone_after", "gone_within"):
            if key in o.data:
                o.error(
                    key,
                    "needs `manifest: store` (a manifest file does not list removed objects)",
                )
    return ObjectsCheck(
        manifest=mpath,
        expected=expected,
        sample=sample,
        critical=critical,
        concurrency=concurrency,
        max_missing=max_missing,
        verify_sha256=verify,
        interval=interval,
        gone_sample=gone_sample,
        gone_after=gone_after,
        gone_within=gone_within,
    )


def _throughput(
    s: Section, root: Path, pool: str, objects: ObjectsCheck | None
) -> ThroughputCheck | None:
    s.keys(
        ("manifest", "min_mbps", "max_ttfb", "rounds", "sample_bytes", "budget", "interval"),
    )
    manifest = s.str_("manifest")
    min_mbps = s.float_("min_mbps", 1.0, lo=0.001, hi=1_000_000.0)
    max_ttfb = s.duration("max_ttfb")
    rounds = s.int_("rounds", 3, lo=1, hi=50) or 3
    sample = s.size("sample_bytes", 1 << 20, lo=1 << 10, hi=1 << 30)
    # the fallback for mirrors that ignore Range: a whole object of at most this size
    budget = s.size("budget", 4 * sample, lo=1 << 10, hi=4 << 30)
    if budget < sample:
        s.error(
            "budget",
            f"{show_size(budget)} is less than sample_bytes {show_size(sample)}: "
            "the budget bounds every round's download, the sample included",
        )
    interval = s.duration("interval", 600.0) or 600.0
    path: Path | None = None
    expected: str | None = None
    if manifest == "store" or (manifest or "").startswith("store:"):
        # the expected state an origin publishes, as for the objects check
        expected = (manifest or "").partition(":")[2] or pool
        if not _ident_ok(expected):
            s.error("manifest", f"'{manifest}': '{expected}' is not a valid pool name")
    elif manifest:
        path = _path(manifest, root)
        if not path.is_file():
            s.error("manifest", f"no such file: {path} (build it with `checker manifest build`)")
    elif objects is not None:
        # the same objects: the sample is chosen from them by size
        path, expected = objects.manifest, objects.expected
    else:
        s.error(
            None,
            "needs a manifest to choose its sample from: set 'manifest' here or "
            "configure the objects check",
        )
        return None
    return ThroughputCheck(
        manifest=path,
        expected=expected,
        min_mbps=min_mbps or 1.0,
        max_ttfb=max_ttfb,
        rounds=rounds,
        sample_bytes=sample,
        budget=max(budget, sample),
        interval=interval,
    )


def _path(v: str, root: Path) -> Path:
    p = Path(v)
    base = root if root.is_dir() else root.parent
    return p if p.is_absolute() else (base / p).resolve()
