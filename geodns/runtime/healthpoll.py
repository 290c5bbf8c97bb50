"""A DNS node's side of the health store: poll it, keep the last good
snapshot (in memory, and on disk for the next start), fail static.

`HealthPoller.poll` runs in a thread every `--health-interval`: one cheap
read of the state version, and the down-set, drains and slow set only when
that moved (or a region may have fallen silent, or a timed drain ran out).
When the store is unreachable the last snapshot keeps serving; at start-up
without a store, the snapshot file the last run saved does
(runtime.health_snapshot). The server rebuilds its answers when `poll`
says something changed.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from geodns.runtime import health_snapshot
from geodns.settings import ServerSettings
from geodns.steering.eligibility import next_end
from geodns.steering.steer import Key
from geodns.store import Drain, Store, StoreError

log = logging.getLogger("geodns.server")


class HealthState:
    """The last good health snapshot and whether the store is reachable."""

    def __init__(self) -> None:
        self.down: frozenset[Key] = frozenset()
        self.drains: tuple[Drain, ...] = ()  # operator drains in force at the last read
        self.drains_end: datetime | None = None  # when the soonest of them runs out
        # serving but slow → the figures in words (ranked one group behind)
        self.slow: dict[Key, str] = {}
        self.version: int | None = None
        self.updated = 0.0  # monotonic time of the last successful poll
        self.ok = False
        self.errors = 0
        self.have_snapshot = False
        self.read_at = 0.0  # monotonic time the down-set was last read
        # wall-clock time the down-set was last known to match the store: the
        # last successful poll, or the saved time of a snapshot file restored
        self.as_of: float | None = None
        # where `down` comes from: "store" (last poll worked), "memory" (store
        # unreachable, the last poll's result), "file" (store unreachable since
        # start, the snapshot file), "none" (unreachable, no snapshot: all up),
        # "disabled" (no store configured)
        self.source = "none"
        self.problem = ""  # the store's last error, while it is unreachable
        self.restored: health_snapshot.Snapshot | None = None

    def degraded_reason(self) -> str | None:
        """Why answers do not follow the store right now (None: they do)."""
        if self.ok or self.source == "disabled":
            return None
        why = f"health store unreachable ({self.problem or 'not read yet'})"
        n = len(self.down)
        if self.source == "file" and self.restored is not None:
            return (
                f"{why}; serving the health snapshot saved {self.restored.saved_text()} "
                f"before this start ({n} addresses down)"
            )
        if self.source == "memory":
            return f"{why}; serving the last snapshot read from it ({n} addresses down)"
        return f"{why} and no health snapshot: every enabled mirror counts as up"


class HealthPoller:
    """Owns the store connection and the `HealthState` the server reads."""

    def __init__(self, settings: ServerSettings) -> None:
        self.s = settings
        self.state = HealthState()
        self.store: Store | None = None
        self._error_said = False  # the store's failure is logged once per outage
        # what the snapshot file holds: the down-set, the drains and the slow set
        self._saved: (
            tuple[frozenset[Key], tuple[Drain, ...], tuple[tuple[Key, str], ...]] | None
        ) = None
        self._snapshot_error_said = False

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def start(self) -> None:
        """Open the store and read it once; if it is unreachable, serve the
        snapshot the last run saved (fail-static across restarts), and only
        without one count every enabled mirror as up."""
        h = self.state
        url = self.s.resolved_store_url()
        if not url:
            h.source = "disabled"
            log.info("no health store configured: every enabled mirror counts as up")
            return
        try:
            self.store = self._make_store(url)
        except StoreError as e:
            self.store = None
            h.problem = str(e)
        if self.store is not None:
            self.poll(quiet=True)
        if h.ok:
            return
        self._error_said = True  # polling stays quiet until the store comes back
        path = health_snapshot.path_in(self.s.resolved_state_dir())
        try:
            snap = health_snapshot.load(path)
        except health_snapshot.SnapshotError as e:
            log.warning("health snapshot not usable: %s", e)
            snap = None
        if snap is None:
            h.source = "none"
            log.warning(
                "health store not available (%s) and no health snapshot in %s: "
                "every enabled mirror counts as up until the store is reachable",
                h.problem,
                path,
            )
            return
        h.down, h.as_of, h.restored, h.source = snap.down, snap.saved_unix, snap, "file"
        h.drains, h.drains_end = snap.drains, next_end(snap.drains)
        h.slow = dict(snap.slow)
        h.have_snapshot = True
        log.warning(
            "health store not available (%s): serving the health snapshot saved %s "
            "(%d addresses down, read from %s%s) until the store is reachable",
            h.problem,
            snap.saved_text(),
            len(snap.down),
            snap.store,
            "" if snap.quorum == self.s.quorum else f", decided with quorum {snap.quorum}",
        )

    def _save_snapshot(
        self,
        down: frozenset[Key],
        version: int | None,
        drains: tuple[Drain, ...] = (),
        slow: dict[Key, str] | None = None,
    ) -> None:
        """Keep the down-set, drains and slow set on disk when they changed
        (poll thread; one fsync)."""
        saved = (down, drains, tuple(sorted((slow or {}).items())))
        if not self.s.persist_health or self.s.worker != 0 or saved == self._saved:
            return
        assert self.store is not None
        snap = health_snapshot.make(
            down, self.store.url_text, version, self.s.quorum, drains=drains, slow=slow or {}
        )
        path = health_snapshot.path_in(self.s.resolved_state_dir())
        try:
            health_snapshot.save(path, snap)
        except OSError as e:
            if not self._snapshot_error_said:
                log.warning("cannot save the health snapshot to %s: %s", path, e)
            self._snapshot_error_said = True
            return
        if self._snapshot_error_said:
            log.info("health snapshot saved to %s again", path)
        self._snapshot_error_said = False
        self._saved = saved

    def _make_store(self, url: str) -> Store:
        timeout = self.s.region_timeout
        return Store(
            url,
            create=False,
            quorum=self.s.quorum,
            region_timeout=timedelta(seconds=timeout) if timeout > 0 else None,
        )

    def poll(self, *, quiet: bool = False) -> bool:
        """One poll; returns True when the down-set, the drains or the slow set
        changed. `quiet`: the caller reports a failure itself (start-up)."""
        url = self.s.resolved_store_url()
        if not url:
            return False
        h = self.state
        try:
            if self.store is None:
                self.store = self._make_store(url)
            version = self.store.state_version()
            changed = False
            now = time.monotonic()
            # a region falling silent changes the vote without a state change,
            # so with a timeout the down-set is also re-read now and then
            refresh = self.s.region_timeout > 0 and now - h.read_at >= min(
                60.0, self.s.region_timeout / 4
            )
            # likewise a timed drain runs out with nobody writing to the store
            ended = h.drains_end is not None and datetime.now(UTC) >= h.drains_end
            if version != h.version or refresh or ended:
                down = self.store.down_addresses()
                drains = tuple(self.store.drains())
                slow = self.store.slow_addresses()
                changed = down != h.down or drains != h.drains or slow != h.slow
                h.down, h.slow, h.version, h.read_at = down, slow, version, now
                h.drains, h.drains_end = drains, next_end(drains)
                h.have_snapshot = True
                self._save_snapshot(down, version, drains, slow)
            h.updated, h.as_of = now, time.time()
            if not h.ok:
                log.info("health store reachable: %d addresses down", len(h.down))
            h.ok, h.source, h.problem, h.restored = True, "store", "", None
            self._error_said = False
            return changed
        except Exception as e:  # noqa: BLE001 — StoreError or anything else: fail static
            h.ok = False  # first: a reader that sees the error count sees the outage
            h.errors += 1
            h.problem = " ".join(str(e).split()) or type(e).__name__
            if h.source == "store":
                h.source = "memory"
            if not self._error_said and not quiet:
                log.error(
                    "health store unreachable, keeping the last snapshot (%s addresses down): %s",
                    len(h.down),
                    e,
                )
            self._error_said = True
            # a timed drain still ends on time while the store is away
            if h.drains_end is not None and datetime.now(UTC) >= h.drains_end:
                now_utc = datetime.now(UTC)
                h.drains = tuple(d for d in h.drains if d.active(now_utc))
                h.drains_end = next_end(h.drains)
                return True
            return False
