"""The leader's side of the expected state: walk the origin, publish the differences.

    checker manifest publish /srv/mirror/distfiles --pool distfiles --store URL [--sha256]

Run on the origin after every sync (a post-sync hook, cron or a systemd
timer). It walks ROOT (not following directory symlinks) and records files,
symlinks to files inside ROOT (with the target's size: that is what a mirror's
web server answers) and directories, then compares with the pool's state in
the store, in memory (path → type, size, mtime, sha256):

  * unchanged objects are not written at all;
  * new and changed objects are written with `first_seen` = now;
  * objects gone from ROOT keep their row with `gone_at` (never deleted);
  * with --sha256 only new and changed files are hashed (plus files that were
    published without a hash so far): an unchanged size and mtime is trusted,
    as rsync trusts it.

Everything goes into the store in one transaction (`Store.publish_expected`),
as version N+1 of the pool; hashing happens before that transaction, so the
store is never locked while files are read. Should another publisher commit
in between, the comparison is redone against its result.

A walk that would mark more than `max_removed` of the live objects removed
is refused (an unmounted file system or a wrong ROOT looks exactly like that);
`--max-removed 1` allows it.

`--paths-from FILE` publishes only what a sync says it changed (rsync's
`--out-format=%n` list): the listed paths are looked at again — directories
with everything below them, missing ones become removed with everything below
them — and the directories above them; the rest of the published state stays
as it is. The cost follows the change, not the size of the tree; a full
publish now and then (nightly) catches anything a list missed.
"""

from __future__ import annotations

import fnmatch
import functools
import gc
import hashlib
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

from checker.errors import ManifestError
from checker.manifest import DEFAULT_EXCLUDES
from geodns.store import (
    ExpectedConflict,
    ExpectedEntry,
    ExpectedHead,
    ExpectedTotals,
    Store,
    StoredIndex,
)

# path → (type, size, mtime) as found on the origin
Walked = dict[str, tuple[str, int, int]]

P = ParamSpec("P")
R = TypeVar("R")

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_RETRIES = 3


def check_pool_name(name: str) -> str:
    """The rule the pool YAML applies to pool names."""
    if not _NAME.fullmatch(name):
        raise ManifestError(f"{name!r} is not a valid pool name (letters, digits, '.', '_', '-')")
    return name


def _matcher(patterns: Iterable[str]) -> tuple[Callable[[str], object], Callable[[str], object]]:
    """(match a name, match a relative path): one compiled regex each, since a
    per-pattern fnmatch on 150,000 names costs more than the walk itself.
    Patterns with a '/' match the path relative to ROOT, the others a name."""
    names = [fnmatch.translate(p) for p in patterns if "/" not in p]
    paths = [fnmatch.translate(p.strip("/")) for p in patterns if "/" in p]

    def compile_(parts: list[str]) -> Callable[[str], object]:
        if not parts:
            return lambda _s: None
        return re.compile("|".join(f"(?:{p})" for p in parts)).match

    return compile_(names), compile_(paths)


def walk(
    root: Path,
    exclude: Iterable[str] = DEFAULT_EXCLUDES,
    *,
    below: str = "",
    problems: list[str] | None = None,
) -> Walked:
    """Every file, symlink to a file inside ROOT, and directory below ROOT (or
    below ROOT/`below`, with paths still relative to ROOT). Names that are not
    UTF-8 cannot be stored (nor asked for in a URL reliably): they are left out
    and named in `problems`.

    One lstat per entry, relative to an open directory (listdir + lstat with
    dir_fd: ~25% less CPU than scandir's DirEntry.stat at 150,000 files; the
    stat calls are most of a publish's time)."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a directory")
    real_root = os.path.realpath(root) + os.sep
    name_excluded, path_excluded = _matcher(exclude)
    lstat, S_ISREG, S_ISDIR, S_ISLNK = os.lstat, stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK
    out: Walked = {}
    start = os.path.join(str(root), below) if below else str(root)
    stack: list[tuple[str, str]] = [(start, below + "/" if below else "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walked: it is gone, like its contents
        except OSError as exc:
            raise ManifestError(f"{directory}: cannot list: {exc.strerror}") from None
        try:
            for name in os.listdir(fd):
                if name_excluded(name):
                    continue
                if not name.isascii() and not _utf8(name):
                    if problems is not None:
                        problems.append(f"{prefix}{name!r}: not a UTF-8 name, left out")
                    continue
                rel = prefix + name
                if path_excluded(rel):
                    continue
                try:
                    st = lstat(name, dir_fd=fd)
                    mode = st.st_mode
                    if S_ISREG(mode):
                        out[rel] = ("file", st.st_size, int(st.st_mtime))
                    elif S_ISDIR(mode):
                        out[rel] = ("dir", 0, int(st.st_mtime))
                        stack.append((os.path.join(directory, name), rel + "/"))
                    elif S_ISLNK(mode):
                        target = _link_target(directory, name, fd, real_root)
                        if target is not None:
                            out[rel] = ("link", target.st_size, int(target.st_mtime))
                except FileNotFoundError:
                    continue  # deleted between listing and stat
        finally:
            os.close(fd)
    return out


# --------------------------------------------------------------------------- what a sync changed


def sync_path(line: str) -> str | None:
    """A path from a sync's list, relative to ROOT ("" is ROOT itself), or None
    for a blank line. Understands what `rsync --out-format=%n` prints (directories
    with a trailing '/', "deleting PATH") and `rsync -i` deletions ("*deleting PATH")."""
    text = line.rstrip("\r\n")
    if text.startswith("*deleting "):
        text = text[len("*deleting ") :].lstrip(" ")
    elif text.startswith("deleting "):
        text = text[len("deleting ") :]
    if not text.strip():
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ManifestError(f"{text!r}: a path leaving ROOT")
    return "/".join(parts)


@dataclass
class Scope:
    """The part of the tree a sync changed: `listed` paths (directories with all
    below them) and the directories above them (their mtimes changed)."""

    listed: set[str]
    above: set[str]

    @classmethod
    def of(cls, paths: Iterable[str]) -> Scope | None:
        """None when ROOT itself is listed: that is a full publish."""
        listed = set(paths)
        if "" in listed:
            return None
        # a path below another listed one is covered by that one's walk
        listed = {p for p in listed if not any(a in listed for a in _ancestors(p))}
        above = {a for p in listed for a in _ancestors(p)} - listed
        return cls(listed, above)

    def walk(self, root: Path, exclude: Iterable[str], problems: list[str] | None = None) -> Walked:
        patterns = tuple(exclude)
        name_excluded, path_excluded = _matcher(patterns)
        real_root = os.path.realpath(root) + os.sep
        out: Walked = {}
        for rel in sorted(self.listed | self.above):
            parts = rel.split("/")
            if any(name_excluded(n) for n in parts) or any(
                path_excluded("/".join(parts[: i + 1])) for i in range(len(parts))
            ):
                continue  # the full walk would not look there either
            if not _utf8(rel):
                continue
            full = os.path.join(root, rel)
            try:
                st = os.lstat(full)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed: its row (and those below it) become gone
            if stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, int(st.st_mtime))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0, int(st.st_mtime))
                if rel in self.listed:
                    out.update(walk(root, patterns, below=rel, problems=problems))
            elif stat.S_ISLNK(st.st_mode):
                d, name = os.path.split(full)
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    target = _link_target(d, name, fd, real_root)
                finally:
                    os.close(fd)
                if target is not None:
                    out[rel] = ("link", target.st_size, int(target.st_mtime))
        return out


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:  # undecodable bytes, kept as surrogates by os.listdir
        return False
    return True


def _link_target(directory: str, name: str, fd: int, real_root: str) -> os.stat_result | None:
    """The file a symlink serves (what a web server answers with), or None: a
    link to a directory or a device is not an object, a dangling or looping
    one serves nothing, and one leaving ROOT is not copied by `rsync
    --safe-links` mirrors (expecting it would call them broken)."""
    try:
        target = os.stat(name, dir_fd=fd)
    except OSError:
        return None
    if not stat.S_ISREG(target.st_mode):
        return None
    if not os.path.realpath(os.path.join(directory, name)).startswith(real_root):
        return None
    return target


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)  # absent or removed so far
    changed: list[str] = field(default_factory=list)  # type, size or mtime differ
    rehash: list[str] = field(default_factory=list)  # unchanged, but no hash stored yet
    removed: list[str] = field(default_factory=list)
    live_before: int = 0


def compare(walked: Walked, stored: StoredIndex, *, sha256: bool) -> Diff:
    """What differs: one dict lookup and one tuple comparison per object (~50 ms
    of CPU for 150,000 objects; dict-view set differences cost twice that,
    since they build a set of every item)."""
    live = stored.live
    d = Diff(live_before=len(live))
    get = live.get
    for path, found in walked.items():
        was = get(path)
        if was != found:
            (d.added if was is None else d.changed).append(path)
    d.removed = [p for p in live if p not in walked]
    if sha256:
        d.rehash = [p for p in stored.unhashed if walked.get(p) == live[p]]
    return d


@dataclass
class Published:
    head: ExpectedHead
    added: int
    changed: int
    removed: int
    rehashed: int
    hashed: int
    problems: list[str]  # left out or published without a hash, in words
    seconds: dict[str, float]  # walk, read, compare, hash, write


def _totals(walked: Walked) -> ExpectedTotals:
    return ExpectedTotals(
        objects=sum(1 for v in walked.values() if v[0] != "dir"),
        dirs=sum(1 for v in walked.values() if v[0] == "dir"),
        bytes=sum(v[1] for v in walked.values() if v[0] != "dir"),
    )


def _moved_totals(stored: StoredIndex, walked: Walked, diff: Diff) -> ExpectedTotals:
    """The head's totals moved by a scoped diff (a full publish recounts them)."""
    h = stored.head
    n = {"file": 0, "dir": 0}
    size = 0
    if h is not None:
        n["file"], n["dir"], size = h.objects, h.dirs, h.bytes

    def count(entry: tuple[str, int, int], sign: int) -> None:
        nonlocal size
        kind = "dir" if entry[0] == "dir" else "file"
        n[kind] += sign
        if kind != "dir":
            size += sign * entry[1]

    for p in diff.changed:
        count(stored.live[p], -1)
        count(walked[p], +1)
    for p in diff.added:
        count(walked[p], +1)
    for p in diff.removed:
        count(stored.live[p], -1)
    return ExpectedTotals(objects=n["file"], dirs=n["dir"], bytes=size)


def _without_gc(fn: Callable[P, R]) -> Callable[P, R]:
    """Pause the cyclic garbage collector while `fn` runs: a publish makes
    hundreds of thousands of tuples and strings and no cycles, and the
    collector's passes over them cost more CPU than building them."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return run


@_without_gc
def publish(
    store: Store,
    pool: str,
    root: Path,
    *,
    paths: Iterable[str] | None = None,
    sha256: bool = False,
    exclude: Iterable[str] = DEFAULT_EXCLUDES,
    max_removed: float = 0.5,
    source: str | None = None,
    on_written: Callable[[], None] | None = None,
) -> Published:
    """Walk `root` and publish it as the next version of `pool` (see module doc).

    `paths` (relative to ROOT, see `sync_path`): only look at these — listed
    directories with everything below them — and keep the rest as published;
    a sync's list of what it changed, so the cost follows the change, not the
    tree."""
    check_pool_name(pool)
    patterns = tuple(exclude)
    timings: dict[str, float] = {"walk": 0.0, "read": 0.0, "compare": 0.0, "hash": 0.0}
    problems: list[str] = []
    t0 = time.perf_counter()
    scope = Scope.of(paths) if paths is not None else None
    if scope is None:
        walked = walk(root, patterns, problems=problems)
    else:
        if not Path(root).is_dir():
            raise ManifestError(f"{root}: not a directory")
        walked = scope.walk(root, patterns, problems)
    timings["walk"] = time.perf_counter() - t0
    base = str(root)
    src = source if source is not None else f"{socket.gethostname()}:{Path(root).resolve()}"
    hashes: dict[tuple[str, int, int], str] = {}  # kept across retries

    def digest(path: str) -> str | None:
        kind, size, mtime = walked[path]
        if kind == "dir":
            return None
        key = (path, size, mtime)
        if key not in hashes:
            try:
                hashes[key] = sha256_of(os.path.join(base, path))
            except OSError as exc:
                problems.append(f"{path}: cannot read for sha256 ({exc.strerror}), left without")
                return None
        return hashes[key]

    for _attempt in range(_RETRIES):
        t = time.perf_counter()
        if scope is None:
            stored = store.expected_index(pool)
        else:
            # rows below a listed path only where it is a directory now or gone
            # (it may have been one): a listed file needs no range scan
            maybe_dirs = {p for p in scope.listed if walked.get(p, ("dir",))[0] == "dir"}
            stored = store.expected_index(pool, paths=scope.listed | scope.above, under=maybe_dirs)
        version = stored.version
        timings["read"] += time.perf_counter() - t
        t = time.perf_counter()
        diff = compare(walked, stored, sha256=sha256)
        gone = stored.gone
        if scope is None:
            totals, live_before = _totals(walked), diff.live_before
        else:
            totals = _moved_totals(stored, walked, diff)
            live_before = stored.head.objects + stored.head.dirs if stored.head else 0
        del stored
        timings["compare"] += time.perf_counter() - t
        n_removed = len(diff.removed)
        if n_removed and n_removed > max_removed * live_before:
            if n_removed >= 100 or totals.objects + totals.dirs == 0:
                share = n_removed / max(1, live_before)
                raise ManifestError(
                    f"refusing to publish {pool!r}: {n_removed:,} of {live_before:,} "
                    f"published objects ({share:.0%}) are not under {root} (is it mounted? "
                    f"the right directory?); --max-removed {min(1.0, share):.2f} allows it"
                )
        t = time.perf_counter()

        def entry(path: str) -> ExpectedEntry:
            kind, size, mtime = walked[path]
            return ExpectedEntry(path, kind, size, mtime, digest(path) if sha256 else None)

        added = [entry(p) for p in diff.added if p not in gone]
        revived = [entry(p) for p in diff.added if p in gone]
        changed = [entry(p) for p in diff.changed]
        rehashed = [(p, h) for p in diff.rehash if (h := digest(p)) is not None]
        timings["hash"] += time.perf_counter() - t
        t = time.perf_counter()
        try:
            head = store.publish_expected(
                pool,
                version,
                added=added,
                revived=revived,
                changed=changed,
                rehashed=rehashed,
                removed=diff.removed,
                totals=totals,
                source=src,
                on_written=on_written,
            )
        except ExpectedConflict:
            timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t
            continue
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t
        return Published(
            head=head,
            added=len(added) + len(revived),
            changed=len(changed),
            removed=n_removed,
            rehashed=len(rehashed),
            hashed=len(hashes),
            problems=problems,
            seconds=timings,
        )
    raise ManifestError(
        f"could not publish {pool!r}: other publishers of the same pool committed "
        f"{_RETRIES} times while this one compared (run one publisher per pool)"
    )
