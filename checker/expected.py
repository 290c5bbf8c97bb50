"""A checker's copy of the expected state an origin publishes (`objects: {manifest: store}`).

The leader (`checker manifest publish`, checker/publish.py) writes versions of
a pool's objects into the store; every checker keeps the live objects of the
versions it uses in memory (`ExpectedCache`) and moves forward by asking only
for the rows changed since its version — one indexed range query, a few
milliseconds for a publish of a few hundred objects. Each refresh builds a new
immutable `Snapshot` and drops the old one, so memory follows the size of the
tree, not the number of versions seen.

Sampling with first_seen: a publish stamps new and changed objects with
`first_seen` (strictly increasing per pool). An address's objects probe keeps a
cursor (`new_after`: the (first_seen, path) of the last new object it checked);
objects beyond it are new to that address and are checked first, oldest first,
before the newest quarter and the rotating window of `manifest.plan()`. A new
address starts at the newest object: the first round samples as usual.

Removed objects (`gone`): with `gone_sample: N`, each round HEADs N objects
removed from the origin more than `gone_after` ago (and less than
`gone_within`), expecting 404/410. A mirror still serving them gets a warning,
never a failure: deleting late is a mirror's right (rsync --delete-after).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from checker.manifest import Manifest, ManifestObject
from geodns.model import ObjectsCheck
from geodns.store import ExpectedHead, ExpectedRow, Store, StoreError

# probe data keys that carry an address's place from round to round
CURSOR_KEYS = ("cursor", "new_after", "gone_cursor")


def _order(o: ManifestObject) -> tuple[int, int, str]:
    """Newest first: first_seen, then mtime (a first publish stamps everything
    alike), then path for a stable order."""
    return (-o.first_seen, -o.mtime, o.path)


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Snapshot:
    """One version of a pool's expected state: never changed once built."""

    name: str
    head: ExpectedHead
    manifest: Manifest  # live files and links, newest first (`_order`)
    gone: tuple[tuple[str, int], ...]  # (path, gone_at µs), most recently removed first

    @property
    def version(self) -> int:
        return self.head.version

    def newest_cursor(self) -> list[Any]:
        """A cursor before which everything counts as seen (a new address)."""
        objs = self.manifest.objects
        return [objs[0].first_seen if objs else 0, None]

    def new_since(self, cursor: Sequence[Any]) -> list[ManifestObject]:
        """Live objects after `cursor` = [first_seen, path or None], oldest first."""
        t, last = int(cursor[0]), cursor[1]
        out: list[ManifestObject] = []
        for o in self.manifest.objects:  # newest first: stop at the cursor's time
            if o.first_seen < t:
                break
            if o.first_seen > t or (last is not None and o.path > last):
                out.append(o)
        out.sort(key=lambda o: (o.first_seen, o.path))
        return out

    def gone_due(self, after: float, within: float, now_us: int | None = None) -> list[str]:
        """Paths removed between `within` and `after` seconds ago, most recent first."""
        now_us = _now_us() if now_us is None else now_us
        newest = now_us - int(after * 1e6)
        oldest = now_us - int(within * 1e6)
        return [p for p, at in self.gone if oldest <= at <= newest]


def _build(
    name: str,
    head: ExpectedHead,
    rows: list[ExpectedRow],
    old: Snapshot | None,
    gone_oldest_us: int,
) -> Snapshot:
    """The snapshot after applying `rows` (all of them when `old` is None)."""
    by_path: dict[str, ManifestObject] = dict(old.manifest.by_path) if old else {}
    gone: dict[str, int] = dict(old.gone) if old else {}
    fresh: list[ManifestObject] = []
    touched: set[str] = set()
    for path, kind, size, mtime, sha, first_seen, _version, gone_at in rows:
        touched.add(path)
        if gone_at is None and kind != "dir":
            o = ManifestObject(path, size, mtime, sha, first_seen)
            by_path[path] = o
            gone.pop(path, None)
            fresh.append(o)
            continue
        by_path.pop(path, None)  # removed, or a directory now
        if gone_at is not None and kind != "dir":
            gone[path] = gone_at
        else:
            gone.pop(path, None)
    fresh.sort(key=_order)
    if old is None:
        objects = fresh
    else:
        kept = [o for o in old.manifest.objects if o.path not in touched]
        if not fresh or not kept or _order(fresh[-1]) <= _order(kept[0]):
            objects = fresh + kept  # the usual case: what changed is the newest
        else:
            objects = sorted(fresh + kept, key=_order)  # two sorted runs: a linear merge
    gone_list = sorted(
        ((p, at) for p, at in gone.items() if at >= gone_oldest_us), key=lambda g: (-g[1], g[0])
    )
    manifest = Manifest(tuple(objects), by_path, f"store:{name} version {head.version}")
    return Snapshot(name, head, manifest, tuple(gone_list))


class ExpectedCache:
    """The newest known Snapshot of one published pool, refreshed from the store.

    `refresh()` blocks on the store: call it from a worker thread. It is safe
    to call from several threads; readers take `snapshot` (one reference) and
    keep using what they took.
    """

    def __init__(self, store: Store, name: str, *, gone_within: float = 30 * 86400) -> None:
        self.store = store
        self.name = name
        self.gone_within = gone_within
        self.snapshot: Snapshot | None = None
        self.error: str | None = None  # the last refresh's failure, while it lasts
        self.checked_at = 0.0  # monotonic time of the last refresh attempt
        self.full_loads = 0
        self.deltas = 0
        self.rows_read = 0
        self._lock = threading.Lock()

    def refresh(self) -> Snapshot | None:
        """Catch up with the store's head; on a store error keep the old snapshot
        (fail-static, like the DNS server's health) and remember the error."""
        with self._lock:
            self.checked_at = time.monotonic()
            old = self.snapshot
            since = old.version if old else 0
            gone_since = datetime.now(UTC) - timedelta(seconds=self.gone_within)
            try:
                delta = self.store.expected_changes(self.name, since, gone_since=gone_since)
            except StoreError as exc:
                self.error = str(exc)
                return old
            self.error = None
            if delta.head is None:
                self.snapshot = None  # never published, or dropped
                return None
            base = old if delta.since else None  # since 0: the store sent everything
            if base is not None and delta.head.version == base.version:
                return base  # nothing published since
            if base is not None and not delta.rows:  # a publish without changes
                self.snapshot = Snapshot(self.name, delta.head, base.manifest, base.gone)
                return self.snapshot
            if base is None:
                self.full_loads += 1
            else:
                self.deltas += 1
            self.rows_read += len(delta.rows)
            gone_oldest = (time.time_ns() // 1000) - int(self.gone_within * 1e6)
            self.snapshot = _build(self.name, delta.head, delta.rows, base, gone_oldest)
            return self.snapshot


@dataclass(frozen=True)
class Sampling:
    """What one objects round of one address gets from the expected state."""

    new: list[ManifestObject]  # new since the address's cursor, oldest first
    new_after: list[Any]  # the cursor as it stands before this round
    gone: list[str]  # removed paths to HEAD this round
    gone_cursor: int  # the rotation position for the next round


def sampling(snap: Snapshot, check: ObjectsCheck, prev: dict[str, Any]) -> Sampling:
    """New objects and removed ones to check, from the address's previous probe data."""
    cursor = prev.get("new_after")
    if not (isinstance(cursor, list) and len(cursor) == 2 and isinstance(cursor[0], int)):
        cursor = snap.newest_cursor()  # a new address, or one checked from a file so far
    elif int(prev.get("version", 0) or 0) > snap.version:
        # the pool was dropped and published anew (or the store restored): its
        # whole tree would look new; start from its newest object instead
        cursor = snap.newest_cursor()
    new = snap.new_since(cursor)
    gone: list[str] = []
    gone_cursor = int(prev.get("gone_cursor", 0) or 0)
    if check.gone_sample:
        due = snap.gone_due(check.gone_after, check.gone_within)
        if due:
            start = gone_cursor % len(due)
            n = min(check.gone_sample, len(due))
            gone = [due[(start + i) % len(due)] for i in range(n)]
            gone_cursor = (start + n) % len(due)
    return Sampling(new, cursor, gone, gone_cursor)
