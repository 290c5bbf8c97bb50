"""Object manifests: what the origin holds, for the objects probe.

    checker manifest build /srv/mirror/distfiles --sha256 -o manifests/distfiles.json

Format (JSON, version 1):
    {"version": 1, "generated": "2026-11-23T18:00:00+00:00", "root": "/srv/...",
     "objects": [{"path": "releases/latest.iso", "size": 123, "mtime": 1763900000,
                  "sha256": "…"}, …]}
`path` is relative to the mirror URL, "/"-separated, not percent-encoded;
`mtime` is integer Unix seconds; `sha256` is optional per object.

Manifests also come from the store (`objects: {manifest: store}`, see
checker/expected.py), as the expected state an origin publishes.

Sampling (`plan()`): every round checks the critical objects, then (expected
state only) every object new since the address's last round, then the newest
quarter of the sample (highest mtime: what a lagging mirror lacks first), then
a window of the remaining objects that moves on by its length each round, so
every object is covered over ceil(rest / window) rounds. The window position is
kept in the store with the address's state, so cron-driven `--once` runs cover
the manifest too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from checker.errors import ManifestError
from checker.target import quote_path

# rsync's and apt-mirror's temporary names; never part of a published tree
DEFAULT_EXCLUDES = (".~tmp~", ".*.??????", "*.tmp", ".rsync-partial")


@dataclass(frozen=True, slots=True)
class ManifestObject:
    path: str
    size: int
    mtime: int
    sha256: str | None = None
    # when the origin's publisher first saw this content (microseconds since
    # the epoch); 0 for manifest files, which do not know
    first_seen: int = 0

    @property
    def target_suffix(self) -> str:
        return quote_path(self.path)


@dataclass(frozen=True)
class Manifest:
    objects: tuple[ManifestObject, ...]  # newest first (mtime desc, then path)
    by_path: dict[str, ManifestObject]
    source: str = ""

    def __len__(self) -> int:
        return len(self.objects)


def _excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def build(
    root: Path,
    *,
    sha256: bool = False,
    exclude: Iterable[str] = DEFAULT_EXCLUDES,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Walk `root` (not following symlinks) into a manifest dict."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a directory")
    patterns = tuple(exclude)
    objects: list[dict[str, Any]] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as exc:
            raise ManifestError(f"{d}: cannot list: {exc.strerror}") from None
        for e in entries:
            if _excluded(e.name, patterns):
                continue
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
                continue
            if not e.is_file(follow_symlinks=False):
                continue  # symlinks, sockets: mirrors serve them differently, skip
            st = e.stat(follow_symlinks=False)
            obj: dict[str, Any] = {
                "path": Path(e.path).relative_to(root).as_posix(),
                "size": st.st_size,
                "mtime": int(st.st_mtime),
            }
            if sha256:
                h = hashlib.sha256()
                with open(e.path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                obj["sha256"] = h.hexdigest()
            objects.append(obj)
            if progress is not None:
                progress(1)
    objects.sort(key=lambda o: o["path"])
    return {
        "version": 1,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "root": str(root.resolve()),
        "objects": objects,
    }


def from_dict(doc: Any, source: str = "") -> Manifest:
    where = source or "manifest"
    if not isinstance(doc, dict) or not isinstance(doc.get("objects"), list):
        raise ManifestError(f"{where}: not a manifest (expected an object with an 'objects' list)")
    if doc.get("version", 1) != 1:
        raise ManifestError(f"{where}: unsupported manifest version {doc.get('version')!r}")
    objs: list[ManifestObject] = []
    for i, o in enumerate(doc["objects"]):
        try:
            path = str(o["path"]).lstrip("/")
            size = int(o["size"])
            mtime = int(o.get("mtime", 0))
            sha = o.get("sha256")
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(
                f"{where}: object #{i}: needs 'path' and integer 'size' ({exc})"
            ) from None
        if not path or size < 0:
            raise ManifestError(f"{where}: object #{i}: empty path or negative size")
        objs.append(ManifestObject(path, size, mtime, str(sha).lower() if sha else None))
    objs.sort(key=lambda o: (-o.mtime, o.path))
    return Manifest(tuple(objs), {o.path: o for o in objs}, source)


_cache: dict[Path, tuple[float, int, Manifest]] = {}


def load(path: Path) -> Manifest:
    """Load (and cache until the file changes) a manifest file."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ManifestError(
            f"{path}: cannot read manifest: {exc.strerror} "
            "(make one with `checker manifest build ROOT -o FILE`)"
        ) from None
    hit = _cache.get(path)
    if hit and hit[0] == st.st_mtime and hit[1] == st.st_size:
        return hit[2]
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None
    manifest = from_dict(doc, str(path))
    _cache[path] = (st.st_mtime, st.st_size, manifest)
    return manifest


@dataclass(frozen=True, slots=True)
class Plan:
    objects: list[ManifestObject]
    critical: list[str]  # critical paths (also present in objects when in the manifest)
    cursor: int  # window position for the next round
    newest: int  # how many of `objects` were picked as newest
    new_taken: int = 0  # how many of `new` (a prefix of it) are in `objects`


def plan(
    manifest: Manifest,
    sample: int,
    critical: Iterable[str],
    cursor: int = 0,
    new: Sequence[ManifestObject] = (),
) -> Plan:
    """`new`: objects that appeared since this address's last round (expected
    state from the store, oldest first); they come right after the critical
    ones, leaving at least one rotating slot, and what does not fit is new
    again next round (`new_taken` says how far the caller may move on)."""
    crit = [c.lstrip("/") for c in critical]
    objs = manifest.objects
    picked: list[ManifestObject] = []
    seen: set[str] = set()

    def take(o: ManifestObject) -> None:
        if o.path not in seen:
            seen.add(o.path)
            picked.append(o)

    for c in crit:
        # A critical path absent from the manifest is still checked (size unknown).
        take(manifest.by_path.get(c) or ManifestObject(c, -1, 0))
    if sample <= 0 or sample >= len(objs):
        for o in objs:
            take(o)
        return Plan(picked, crit, 0, 0, len(new))
    new_taken = 0
    for o in new:
        if len(picked) >= sample - 1:
            break
        take(o)
        new_taken += 1
    newest = max(1, sample // 4)
    for o in objs[:newest]:
        take(o)
    rest = [o for o in objs[newest:] if o.path not in seen]
    # at least one rotating slot, even when critical and newest objects fill the
    # sample: every object must come round eventually
    window = max(1, sample - len(picked))
    if not rest or window == 0:
        return Plan(picked, crit, cursor, newest, new_taken)
    start = cursor % len(rest)
    for i in range(min(window, len(rest))):
        take(rest[(start + i) % len(rest)])
    return Plan(picked, crit, (start + window) % len(rest), newest, new_taken)
