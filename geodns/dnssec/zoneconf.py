"""The `dnssec:` key of a zone file, and loading the key files it names.

```yaml
dnssec:
  keys:                                  # relative to the --config directory
    - keys/Kexample.org.+013+31337       # a CSK (flags 257) signs everything
    - {file: keys/Kexample.org.+013+4242, sign: false}   # published only
  validity: 14d      # signatures expire this long after they are made
  refresh: 7d        # re-sign (in the background) when less than this is left
```
`parse_dnssec` reads the YAML (called by the zone parser in one line);
`load_zone_keys` reads and checks the key files after every file has been
parsed (called by `load_config` in one line), so a key file that changed is
read again even when the YAML is unchanged and cached.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from geodns.config.fields import Problems, Section, kind_of
from geodns.dnssec.keyfiles import KeyFileError, read_key, split_path
from geodns.dnssec.model import DnssecPolicy, KeyRef, ZoneKey
from geodns.model import Where, Zone

DEFAULT_VALIDITY = 14 * 86400.0
DEFAULT_REFRESH = 7 * 86400.0
MIN_REFRESH = 60.0


def parse_dnssec(s: Section, zname: str) -> DnssecPolicy | None:
    """The zone's `dnssec:` mapping, or None when the zone is not signed."""
    d = s.sub("dnssec", f"zone '{zname or '.'}' dnssec")
    if d is None or not d.ok:
        return None
    d.keys(("keys", "validity", "refresh"), required=("keys",))
    validity = d.duration("validity", DEFAULT_VALIDITY) or DEFAULT_VALIDITY
    refresh = d.duration("refresh", min(DEFAULT_REFRESH, validity / 2)) or DEFAULT_REFRESH
    bad_window = False
    if refresh < MIN_REFRESH:
        d.error("refresh", f"at least {MIN_REFRESH:.0f}s (re-signing would never stop)")
        bad_window = True
    elif refresh >= validity:
        d.error(
            "refresh",
            "must be shorter than validity (signatures would be due for re-signing "
            "as soon as they are made)",
        )
        bad_window = True
    refs: list[KeyRef] = []
    for item, line in d.list_("keys", required=True):
        ref = _key_ref(d, item, line)
        if ref is not None:
            if any(r.path == ref.path for r in refs):
                d.error("keys", f"'{ref.path}' is listed twice", line)
            else:
                refs.append(ref)
    if d.data.get("keys") == []:
        d.error("keys", "name at least one key (make one with `geodns dnssec keygen`)")
    if not refs or bad_window:
        return None
    return DnssecPolicy(tuple(refs), validity, refresh, Where(d.file, s.key_line_of("dnssec")))


def _key_ref(d: Section, item: object, line: int) -> KeyRef | None:
    if isinstance(item, str) and item.strip():
        return KeyRef(split_path(item.strip()), True, Where(d.file, line))
    if isinstance(item, dict):
        k = Section(d.p, d.file, item, d.ctx + " keys", line)
        k.keys(("file", "sign"), required=("file",))
        path = k.str_("file", required=True)
        sign = k.bool_("sign", True)
        if path is None or not path.strip():
            return None
        return KeyRef(split_path(path.strip()), sign, Where(d.file, k.line))
    d.error("keys", f"expected a key file path or {{file: PATH, sign: false}}, got {kind_of(item)}")
    return None


def load_zone_keys(
    zones: list[Zone], root: Path, p: Problems, now: float | None = None
) -> list[Zone]:
    """Every signed zone with its key files read and checked (problems into `p`)."""
    now = time.time() if now is None else now
    base = root if root.is_dir() else root.parent
    out = []
    for z in zones:
        pol = z.dnssec
        if pol is None:
            out.append(z)
            continue
        ctx = f"zone '{z.name or '.'}' dnssec"
        keys: list[ZoneKey] = []
        for ref in pol.keys:
            path = Path(ref.path)
            try:
                key = read_key(path if path.is_absolute() else base / path, z.name, sign=ref.sign)
            except KeyFileError as e:
                p.add(ref.where.file, ref.where.line, ctx, f"keys: {e}")
                continue
            same = next((k for k in keys if k.tag == key.tag), None)
            if same is not None:
                p.add(
                    ref.where.file,
                    ref.where.line,
                    ctx,
                    f"keys: key tag {key.tag} is also the tag of {same.path}; "
                    "resolvers could not tell them apart (make another key)",
                )
                continue
            keys.append(key)
        if len(keys) == len(pol.keys):
            for why in key_set_problems(keys, now):
                p.add(pol.where.file, pol.where.line, ctx, why)
        out.append(replace(z, dnssec=replace(pol, loaded=tuple(keys))))
    return out


def key_set_problems(keys: list[ZoneKey] | tuple[ZoneKey, ...], now: float) -> list[str]:
    """Why these keys cannot sign the zone at `now` (empty when they can)."""
    # an active ZSK signs the zone's data, else the KSK does (it is a CSK then);
    # the DNSKEY set always needs a key-signing key
    if any(k.sep and k.active(now) for k in keys):
        return []
    return [
        "no key-signing key (flags 257: a KSK or CSK) signs now; "
        + (_why_not(keys, now, sep=True) or "make one with `geodns dnssec keygen --csk`")
    ]


def _why_not(keys: list[ZoneKey] | tuple[ZoneKey, ...], now: float, *, sep: bool) -> str:
    import datetime as dt

    def when(t: int) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    reasons = []
    for k in keys:
        if k.sep != sep:
            continue
        if not k.sign:
            reasons.append(f"{Path(k.path).name} has sign: false")
        elif k.delete is not None and now >= k.delete:
            reasons.append(f"{Path(k.path).name} was deleted on {when(k.delete)}")
        elif k.inactive is not None and now >= k.inactive:
            reasons.append(f"{Path(k.path).name} expired (inactive since {when(k.inactive)})")
        elif k.publish is not None and now < k.publish:
            reasons.append(f"{Path(k.path).name} is not published before {when(k.publish)}")
        elif k.activate is not None and now < k.activate:
            reasons.append(f"{Path(k.path).name} is not active before {when(k.activate)}")
    return "; ".join(reasons)
