"""The last health snapshot on disk, so a restart during a store outage is fail-static.

The server keeps serving its in-memory snapshot while the store is down; this
file carries that snapshot across a restart (a crash, an upgrade, a reboot).
Without it a node started while PostgreSQL is unreachable would treat every
enabled mirror as up and send clients to mirrors the checkers took out.

Format (JSON, `<state dir>/health-snapshot.json`):

    {"format": "geodns-health-snapshot", "version": 1,
     "saved_at": "2026-12-01T10:00:00Z", "saved_unix": 1796119200.0,
     "store": "postgresql+psycopg://geodns@db/geodns",   # password hidden
     "state_version": 42, "quorum": 2,
     "down": [["pool", "mirror", "address"], ...],
     "drains": [{"pool", "mirror", "address", "reason", "who", "at", "until"}, ...],
     "slow": [["pool", "mirror", "address", "figures"], ...]}

`drains` (added compatibly; absent = none) are the operator drains in force,
`pool`/`address` "" for all, times ISO 8601 and `until` null for no end: a
node restarted during an outage must not answer a drained mirror either, and a
timed drain still ends at its `until`. `slow` (added compatibly; absent =
none) are the addresses the checkers measured slow, with their figures, so a
restarted node keeps ranking them one group behind.

`down` is the result of the regional vote (quorum and region timeout already
applied by the store), i.e. exactly what the server was answering with; the
votes themselves are not kept: a restored snapshot is a stand-in for the
store, not a second store. `quorum` is recorded so that a restart with a
different --quorum can say the snapshot was decided under another one.

Written only when the down-set changes (and once per start, so the file says
which store it came from): temp file in the same directory, fsync, rename,
fsync of the directory — a crash leaves the old file or the new one, never
half of either. Because it is not rewritten on every poll, `saved_at` is when
the down-set was last *changed*, so the age derived from it is an upper bound
of how stale the snapshot is.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geodns.store import Drain

FILENAME = "health-snapshot.json"
FORMAT = "geodns-health-snapshot"
VERSION = 1
MAX_BYTES = 64 << 20  # a sane bound; 1,000 mirrors × 2 addresses is ~100 kB

Key = tuple[str, str, str]  # (pool, mirror, address text), as geodns.steering.steer.Key


class SnapshotError(Exception):
    """The snapshot file exists but cannot be used; the text says why."""


@dataclass(frozen=True)
class Snapshot:
    down: frozenset[Key]
    saved_unix: float  # wall-clock time it was written
    store: str  # the store URL it was read from (password hidden)
    state_version: int | None = None
    quorum: int = 1
    drains: tuple[Drain, ...] = ()
    slow: tuple[tuple[Key, str], ...] = ()  # (key, figures), sorted

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.saved_unix)

    def saved_text(self) -> str:
        return datetime.fromtimestamp(self.saved_unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def path_in(state_dir: Path) -> Path:
    return state_dir / FILENAME


def dumps(snap: Snapshot) -> str:
    body = {
        "format": FORMAT,
        "version": VERSION,
        "saved_at": snap.saved_text(),
        "saved_unix": snap.saved_unix,
        "store": snap.store,
        "state_version": snap.state_version,
        "quorum": snap.quorum,
        "down": [list(k) for k in sorted(snap.down)],
        "drains": [
            {
                "pool": d.pool,
                "mirror": d.mirror,
                "address": d.address,
                "reason": d.reason,
                "who": d.who,
                "at": d.at.isoformat(),
                "until": d.until.isoformat() if d.until else None,
            }
            for d in snap.drains
        ],
        "slow": [[*k, why] for k, why in snap.slow],
    }
    return json.dumps(body, indent=1) + "\n"


def _drain(item: Any, where: str) -> Drain:
    texts = ("pool", "mirror", "address", "reason", "who")
    if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in texts):
        raise SnapshotError(f"{where}: expected {{{', '.join(texts)}: text, at, until}}")
    try:
        at = datetime.fromisoformat(item["at"])
        until = None if item.get("until") is None else datetime.fromisoformat(item["until"])
    except (TypeError, ValueError):
        raise SnapshotError(f"{where}: at/until: expected ISO 8601 times") from None
    if at.tzinfo is None or (until is not None and until.tzinfo is None):
        raise SnapshotError(f"{where}: at/until: expected times with a UTC offset")
    return Drain(
        item["pool"], item["mirror"], item["address"], item["reason"], item["who"], at, until
    )


def loads(text: str, where: str = "snapshot") -> Snapshot:
    try:
        body = json.loads(text)
    except ValueError as e:
        raise SnapshotError(f"{where}: not JSON ({e})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise SnapshotError(f"{where}: not a geodns health snapshot")
    if body.get("version") != VERSION:
        raise SnapshotError(
            f"{where}: version {body.get('version')!r}, this geodns reads version {VERSION}"
        )
    saved = body.get("saved_unix")
    if isinstance(saved, bool) or not isinstance(saved, int | float) or saved != saved:
        raise SnapshotError(f"{where}: saved_unix: expected a number, got {saved!r}")
    store = body.get("store")
    if not isinstance(store, str):
        raise SnapshotError(f"{where}: store: expected the store URL text")
    sv = body.get("state_version")
    if sv is not None and (isinstance(sv, bool) or not isinstance(sv, int)):
        raise SnapshotError(f"{where}: state_version: expected an integer, got {sv!r}")
    quorum = body.get("quorum", 1)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise SnapshotError(f"{where}: quorum: expected an integer ≥ 1, got {quorum!r}")
    raw = body.get("down")
    if not isinstance(raw, list):
        raise SnapshotError(f"{where}: down: expected a list of [pool, mirror, address]")
    down: set[Key] = set()
    for i, item in enumerate(raw):
        if not (
            isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)
        ):
            raise SnapshotError(f"{where}: down[{i}]: expected [pool, mirror, address]")
        down.add((item[0], item[1], item[2]))
    raw_drains = body.get("drains", [])
    if not isinstance(raw_drains, list):
        raise SnapshotError(f"{where}: drains: expected a list")
    drains = tuple(_drain(d, f"{where}: drains[{i}]") for i, d in enumerate(raw_drains))
    raw_slow = body.get("slow", [])
    if not isinstance(raw_slow, list):
        raise SnapshotError(f"{where}: slow: expected a list")
    slow: list[tuple[Key, str]] = []
    for i, item in enumerate(raw_slow):
        if not (
            isinstance(item, list) and len(item) == 4 and all(isinstance(x, str) for x in item)
        ):
            raise SnapshotError(f"{where}: slow[{i}]: expected [pool, mirror, address, figures]")
        slow.append(((item[0], item[1], item[2]), item[3]))
    return Snapshot(frozenset(down), float(saved), store, sv, quorum, drains, tuple(sorted(slow)))


def load(path: Path) -> Snapshot | None:
    """The snapshot at `path`; None when there is none; SnapshotError when unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SnapshotError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise SnapshotError(f"{path}: larger than {MAX_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise SnapshotError(f"{path}: not UTF-8 text") from None
    return loads(text, str(path))


def save(path: Path, snap: Snapshot) -> None:
    """Replace `path` atomically and durably (temp + fsync + rename + dir fsync)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = dumps(snap).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    # the rename itself is durable only once the directory is on disk
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def make(
    down: Iterable[Key],
    store: str,
    state_version: int | None,
    quorum: int,
    now: float | None = None,
    drains: Iterable[Drain] = (),
    slow: Mapping[Key, str] | None = None,
) -> Snapshot:
    return Snapshot(
        frozenset(down),
        time.time() if now is None else now,
        store,
        state_version,
        quorum,
        tuple(drains),
        tuple(sorted((slow or {}).items())),
    )
