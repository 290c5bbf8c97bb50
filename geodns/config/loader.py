"""Operator YAML → frozen `geodns.model.Config`, with complete, strict validation.

`load_config(root)` reads every `*.yaml`/`*.yml` below `root`: a file whose
top-level mapping has `zone:` is a zone, one with `pool:` is a pool. Every
problem found in every file is collected and raised once as `ConfigError`,
each naming file, line and field (octoDNS style). `geodns validate` calls this
same function — there is no second, looser parser. Zones are checked in
`zones`, pools in `pools`, serials assigned in `serials`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from geodns.config.fields import Problems, Section
from geodns.config.pools import build_pool
from geodns.config.serials import assign_serials
from geodns.config.yamlsrc import YAMLProblem, YMap, load_yaml
from geodns.config.zones import build_zone, relative_name
from geodns.dnssec.zoneconf import load_zone_keys
from geodns.errors import ConfigError
from geodns.model import (
    Config,
    Pool,
    Zone,
)

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
    broken_pools: dict[str, str] = {}  # pool name → the file that failed to define it
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
            elif found is None and (name := _declared_pool(raw)):
                broken_pools.setdefault(name, shown)
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
            if s.pool in pools:
                continue
            if s.pool in broken_pools:
                # a consequence of the broken file reported above, said as such
                why = f"pool '{s.pool}' is not loaded: {broken_pools[s.pool]} has errors"
            else:
                known = ", ".join(sorted(pools)) or "none defined"
                why = f"no pool named '{s.pool}' (known pools: {known})"
            p.add(
                s.where.file,
                s.where.line,
                f"steered '{relative_name(s.name, z.name)}'",
                f"pool: {why}",
            )
    zones = load_zone_keys(zones, root, p)  # key files are read on every load
    if p:
        raise ConfigError(p.items)
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    zones = assign_serials(zones, zone_digests, serial_state)
    return Config(zones=tuple(zones), pools=pools, root=root, digest=digest.hexdigest())


_POOL_KEY = re.compile(rb"^pool:[ \t]*[\"']?([A-Za-z0-9_.-]+)", re.M)


def _declared_pool(raw: bytes) -> str | None:
    """The `pool:` name a file that failed to load meant to define, read from
    its raw text (its YAML may not parse), so that references to it can say
    why the pool is missing instead of reporting a second, unrelated problem."""
    m = _POOL_KEY.search(raw)
    return m.group(1).decode() if m else None


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
        z = build_zone(Section(p, shown, doc, ""), shown)
        return None if z is None else (z, doc.lines["zone"])
    elif "pool" in doc:
        pool = build_pool(Section(p, shown, doc, ""), shown, root)
        return None if pool is None else (pool, doc.lines["pool"])
    else:
        p.add(shown, doc.line, "", "expected a top-level 'zone:' or 'pool:' key")
    return None


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
