"""The health store: the only thing DNS nodes and checkers share.

SQLAlchemy 2 typed models over SQLite (default, one file, WAL) or any other
SQLAlchemy URL (PostgreSQL for several nodes). The schema is owned by Alembic
(`geodns/store/migrations/`); `Store(url)` upgrades to head on first use, while
`Store(url, create=False)` — the DNS server's read path — never creates or
migrates anything and raises `StoreError` when the schema is missing.

Tables: `schema`. Connections, schema checks and migrations: `engine`. The
expected state a leader publishes for the checkers: `expected` (a base class).
Operator drains: `drains` (`DrainStore`, another base class).

Regions and quorum: several regional checkers write states tagged with their
region. `down_addresses()` reports an address down when at least `quorum`
regions currently say down (default 1, i.e. any region), or when any region
records it as disabled by the operator (`enabled: false` is configuration,
not a measurement, so it needs no quorum). With `region_timeout`, a region
whose newest check is older than that is left out of the vote while at least
one region is current, and the quorum shrinks to the regions still current: a
dead regional checker neither keeps its mirrors down nor blocks the quorum.
When every region is silent, all votes stand (fail-static: a checker outage
must not send users to mirrors last seen broken). `checker report` shows each
region's last check time.

Address text is always `str(ipaddress.ip_address(x))` (compressed IPv6).
Addresses never checked are absent; the server treats absent as up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    case,
    delete,
    func,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, undefer

from geodns.store import slow as slow_query
from geodns.store.drains import DrainStore
from geodns.store.expected import ExpectedState
from geodns.store.records import (
    AddressState,
    ProbeRecord,
    ProbeResult,
    StateChange,
    address_text,
)
from geodns.store.schema import AddressRow, AddressStateRow, MetaRow, ProbeResultRow, StateChangeRow


def _where_address(stmt: Any, pool: str | None, mirror: str | None, address: str | None) -> Any:
    """Narrow a query joined on AddressRow to a pool, mirror and/or address."""
    if pool is not None:
        stmt = stmt.where(AddressRow.pool == pool)
    if mirror is not None:
        stmt = stmt.where(AddressRow.mirror == mirror)
    if address is not None:
        stmt = stmt.where(AddressRow.address == address_text(address))
    return stmt


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# --------------------------------------------------------------------------- the store


class Store(ExpectedState, DrainStore):
    """Read and write mirror health. Thread-safe; one instance per process.

    `create=True` (checker, demo, tests): make the SQLite directory, the file
    and the schema, or upgrade any database to the Alembic head.
    `create=False` (DNS server): touch nothing; raise `StoreError` when the
    database is unreachable or has no schema.
    """

    # True once the schema is seen at slow.SLOW_REVISION: this code may meet a
    # store the checker has not migrated yet (a DNS node upgraded first)
    _slow_columns = False

    def _slow_schema(self, conn: Connection | None = None) -> bool:
        """Whether the slow columns exist (checked until they do, then trusted)."""
        if not self._slow_columns:
            if conn is None:
                try:
                    with self._lock, self._engine.connect() as own:
                        rev = self._current_revision(own)
                except SQLAlchemyError as exc:
                    raise self._error("cannot read the schema revision", exc) from None
            else:
                rev = self._current_revision(conn)
            self._slow_columns = slow_query.has_slow_columns(rev)
        return self._slow_columns

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        quorum: int = 1,
        region_timeout: timedelta | None = None,
    ) -> None:
        if quorum < 1:
            raise ValueError("quorum must be at least 1")
        self.quorum = quorum
        self.region_timeout = region_timeout
        super().__init__(url, create=create)

    # ---------------------------------------------------------------- server read path

    def state_version(self) -> int:
        """One cheap query; strictly increases whenever any address state changes.
        Every DNS node sends it every few seconds: in autocommit, so it is one
        statement, not BEGIN + SELECT + ROLLBACK (three round trips, and
        three times the primary's CPU)."""
        try:
            with self._lock:
                self._follow_file()
                with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    value = conn.execute(
                        select(MetaRow.value).where(MetaRow.key == "state_version")
                    ).scalar()
        except SQLAlchemyError as exc:
            raise self._error("cannot read state version", exc) from None
        return int(value or 0)

    def down_addresses(self) -> frozenset[tuple[str, str, str]]:
        """(pool, mirror, address) that `quorum` regions (or the operator) call down."""
        try:
            with self._lock:
                self._follow_file()
                with self._engine.connect() as conn:
                    regions, quorum = self._voting_regions(conn)
                    disabled = func.max(func.cast(AddressStateRow.disabled, Integer))
                    votes: Any = func.count()  # every row left is a "down" vote
                    if regions is not None:
                        votes = func.sum(case((AddressStateRow.region.in_(regions), 1), else_=0))
                    stmt = (
                        select(AddressRow.pool, AddressRow.mirror, AddressRow.address)
                        .join(AddressStateRow, AddressStateRow.address_id == AddressRow.id)
                        .where(AddressStateRow.up.is_(False))
                        .group_by(AddressRow.pool, AddressRow.mirror, AddressRow.address)
                        .having((votes >= quorum) | (disabled == 1))
                    )
                    rows = conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise self._error("cannot read down addresses", exc) from None
        return frozenset((r[0], r[1], r[2]) for r in rows)

    def slow_addresses(self) -> dict[tuple[str, str, str], str]:
        """(pool, mirror, address) → why it is slow, for addresses that `quorum`
        regions call slow or worse (`slow.slow_addresses`); read beside
        `down_addresses()` in the server's poll, only when the version moved."""
        try:
            with self._lock:
                self._follow_file()
                with self._engine.connect() as conn:
                    if not self._slow_schema(conn):
                        return {}  # a store the checker has not migrated yet
                    regions, quorum = self._voting_regions(conn)
                    return slow_query.slow_addresses(conn, regions, quorum)
        except SQLAlchemyError as exc:
            raise self._error("cannot read slow addresses", exc) from None

    def region_last_checks(self) -> dict[str, datetime]:
        """Each region's newest check time (what `region_timeout` compares)."""
        try:
            with self._lock:
                self._follow_file()
                with self._engine.connect() as conn:
                    return self._region_last_checks(conn)
        except SQLAlchemyError as exc:
            raise self._error("cannot read region check times", exc) from None

    def _region_last_checks(self, conn: Connection) -> dict[str, datetime]:
        rows = conn.execute(
            select(AddressStateRow.region, func.max(AddressStateRow.checked_at)).group_by(
                AddressStateRow.region
            )
        ).all()
        return {r[0]: _utc(r[1]) for r in rows if r[1] is not None}

    def _voting_regions(self, conn: Connection) -> tuple[list[str] | None, int]:
        """(regions whose votes count, or None for all; the quorum among them)."""
        if self.region_timeout is None:
            return None, self.quorum
        last = self._region_last_checks(conn)
        cutoff = _now() - self.region_timeout
        current = sorted(r for r, t in last.items() if t >= cutoff)
        if not current or len(current) == len(last):
            return None, self.quorum
        return current, min(self.quorum, len(current))

    # ---------------------------------------------------------------- writes

    def _address_id(self, session: Session, pool: str, mirror: str, address: str) -> int:
        addr = address_text(address)
        found = session.execute(
            select(AddressRow.id).where(
                AddressRow.pool == pool, AddressRow.mirror == mirror, AddressRow.address == addr
            )
        ).scalar()
        if found is not None:
            return int(found)
        family = ipaddress.ip_address(addr).version
        row = AddressRow(pool=pool, mirror=mirror, address=addr, family=family)
        session.add(row)
        session.flush()
        return row.id

    def _apply_state(
        self,
        session: Session,
        address_id: int,
        region: str,
        *,
        up: bool,
        disabled: bool,
        reason: str,
        detail: str,
        warning: str | None,
        kinds: dict[str, Any] | None,
        at: datetime,
        slow: bool = False,
        slow_reason: str = "",
    ) -> bool:
        slow = slow and up and not disabled  # slow is a state of serving addresses
        has_slow = self._slow_columns  # checked by the caller, before the session
        row = session.get(AddressStateRow, (address_id, region))
        changed = row is None or row.up != up or row.disabled != disabled
        if has_slow and row is not None and not changed:
            changed = bool(row.slow) != slow
        if row is None:
            row = AddressStateRow(address_id=address_id, region=region, kinds={})
        row.up = up
        row.disabled = disabled
        if has_slow:
            row.slow = slow
            row.slow_reason = slow_reason if slow else ""
        row.checked_at = at
        row.detail = detail
        row.warning = warning
        if kinds is not None:
            row.kinds = dict(kinds)  # a new object, so the JSON column is written
        if changed:
            row.reason = reason
            row.since = at
        session.add(row)
        if changed:
            change = StateChangeRow(
                address_id=address_id,
                region=region,
                at=at,
                up=up,
                disabled=disabled,
                reason=reason,
            )
            if has_slow:
                change.slow = slow
            session.add(change)
            self._bump_version(session)
        return changed

    def set_state(
        self,
        pool: str,
        mirror: str,
        address: str,
        up: bool,
        reason: str,
        *,
        region: str = "",
        slow: bool = False,
    ) -> None:
        """Force a state, recorded exactly like a checker-made change (`slow`:
        `reason` is then also its figures)."""
        at = _now()
        self._slow_schema()
        with self._session("cannot write state") as session:
            aid = self._address_id(session, pool, mirror, address)
            self._apply_state(
                session,
                aid,
                region,
                up=up,
                disabled=False,
                reason=reason,
                detail=reason,
                warning=None,
                kinds=None,
                at=at,
                slow=slow,
                slow_reason=reason if slow else "",
            )

    def record(
        self,
        pool: str,
        mirror: str,
        address: str,
        *,
        region: str = "",
        results: Sequence[ProbeRecord] = (),
        up: bool,
        reason: str,
        detail: str = "",
        warning: str | None = None,
        disabled: bool = False,
        kinds: dict[str, Any] | None = None,
        slow: bool = False,
        slow_reason: str = "",
    ) -> bool:
        """Store probe results and the evaluated state in one transaction.

        `reason` is kept only when the state changes (it explains the change);
        `detail` always replaces the latest summary, `slow_reason` (the figures
        while `slow`) likewise. Entering or leaving `slow` is a change. Returns
        True on a change.
        """
        at = _now()
        self._slow_schema()
        with self._session("cannot record results") as session:
            aid = self._address_id(session, pool, mirror, address)
            for r in results:
                session.add(
                    ProbeResultRow(
                        address_id=aid,
                        region=region,
                        at=r.at or at,
                        kind=r.kind,
                        ok=r.ok,
                        unrecoverable=r.unrecoverable,
                        detail=r.detail,
                        latency=r.latency,
                        data=dict(r.data),
                    )
                )
            return self._apply_state(
                session,
                aid,
                region,
                up=up,
                disabled=disabled,
                reason=reason,
                detail=detail or reason,
                warning=warning,
                kinds=kinds,
                at=at,
                slow=slow,
                slow_reason=slow_reason,
            )

    def prune(
        self, keep_results: timedelta, keep_history: timedelta | None = None
    ) -> tuple[int, int]:
        """Delete probe results (and, if given, state changes) older than the limits."""
        now = _now()
        with self._session("cannot prune") as session:
            results = session.execute(
                delete(ProbeResultRow).where(ProbeResultRow.at < now - keep_results)
            ).rowcount  # type: ignore[attr-defined]
            changes = 0
            if self._drains_exist(session.connection()):
                self._expire(session, now)
            if keep_history is not None:
                changes = session.execute(
                    delete(StateChangeRow).where(StateChangeRow.at < now - keep_history)
                ).rowcount  # type: ignore[attr-defined]
                if self._drains_exist(session.connection()):
                    self._prune_drain_events(session, now - keep_history)
        return int(results or 0), int(changes or 0)

    def addresses(self) -> list[tuple[str, str, str]]:
        """Every (pool, mirror, address) the store knows, checked or not."""
        with self._session("cannot list addresses") as session:
            rows = session.execute(
                select(AddressRow.pool, AddressRow.mirror, AddressRow.address).order_by(
                    AddressRow.pool, AddressRow.mirror, AddressRow.address
                )
            ).all()
        return [(r[0], r[1], r[2]) for r in rows]

    def forget(
        self, keys: Iterable[tuple[str, str, str]] = (), *, region: str | None = None
    ) -> int:
        """Delete addresses (their states, results and history go with them), or
        with `region` only that region's rows of everything. Returns the number
        of addresses, or of the region's states, removed."""
        with self._session("cannot forget") as session:
            if region is not None:
                n = session.execute(
                    delete(AddressStateRow).where(AddressStateRow.region == region)
                ).rowcount  # type: ignore[attr-defined]
                for table in (ProbeResultRow, StateChangeRow):
                    session.execute(delete(table).where(table.region == region))
            else:
                n = 0
                for pool, mirror, address in keys:
                    n += session.execute(
                        delete(AddressRow).where(
                            AddressRow.pool == pool,
                            AddressRow.mirror == mirror,
                            AddressRow.address == address_text(address),
                        )
                    ).rowcount  # type: ignore[attr-defined]
            if n:  # the down-set may have changed: servers must re-read it
                self._bump_version(session)
        return int(n)

    # ---------------------------------------------------------------- checker and report reads

    def get_state(
        self, pool: str, mirror: str, address: str, region: str = ""
    ) -> AddressState | None:
        states = self.states(pool=pool, mirror=mirror, address=address, region=region)
        return states[0] if states else None

    def states(
        self,
        *,
        pool: str | None = None,
        mirror: str | None = None,
        address: str | None = None,
        region: str | None = None,
    ) -> list[AddressState]:
        stmt = _where_address(
            select(AddressRow, AddressStateRow).join(
                AddressStateRow, AddressStateRow.address_id == AddressRow.id
            ),
            pool,
            mirror,
            address,
        )
        if region is not None:
            stmt = stmt.where(AddressStateRow.region == region)
        has_slow = self._slow_schema()
        if has_slow:
            stmt = stmt.options(undefer(AddressStateRow.slow), undefer(AddressStateRow.slow_reason))
        stmt = stmt.order_by(
            AddressRow.pool,
            AddressRow.mirror,
            AddressRow.family,
            AddressRow.address,
            AddressStateRow.region,
        )
        with self._session("cannot read states") as session:
            rows = session.execute(stmt).all()
            return [
                AddressState(
                    pool=a.pool,
                    mirror=a.mirror,
                    address=a.address,
                    family=a.family,
                    region=s.region,
                    up=s.up,
                    disabled=s.disabled,
                    reason=s.reason,
                    since=s.since,
                    checked_at=s.checked_at,
                    detail=s.detail,
                    warning=s.warning,
                    kinds=dict(s.kinds or {}),
                    slow=bool(s.slow) if has_slow else False,
                    slow_reason=(s.slow_reason or "") if has_slow else "",
                )
                for a, s in rows
            ]

    def history(
        self,
        mirror: str | None = None,
        *,
        pool: str | None = None,
        address: str | None = None,
        region: str | None = None,
        limit: int = 100,
    ) -> list[StateChange]:
        """State changes, newest first."""
        stmt = _where_address(
            select(AddressRow, StateChangeRow).join(
                StateChangeRow, StateChangeRow.address_id == AddressRow.id
            ),
            pool,
            mirror,
            address,
        )
        if region is not None:
            stmt = stmt.where(StateChangeRow.region == region)
        has_slow = self._slow_schema()
        if has_slow:
            stmt = stmt.options(undefer(StateChangeRow.slow))
        stmt = stmt.order_by(StateChangeRow.at.desc(), StateChangeRow.id.desc()).limit(limit)
        with self._session("cannot read history") as session:
            return [
                StateChange(
                    pool=a.pool,
                    mirror=a.mirror,
                    address=a.address,
                    region=c.region,
                    at=c.at,
                    up=c.up,
                    disabled=c.disabled,
                    reason=c.reason,
                    slow=bool(c.slow) if has_slow else False,
                )
                for a, c in session.execute(stmt).all()
            ]

    def results(
        self,
        *,
        pool: str | None = None,
        mirror: str | None = None,
        address: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[ProbeResult]:
        """Probe results, newest first (only those at or after `since`, if given)."""
        stmt = _where_address(
            select(AddressRow, ProbeResultRow).join(
                ProbeResultRow, ProbeResultRow.address_id == AddressRow.id
            ),
            pool,
            mirror,
            address,
        )
        if kind is not None:
            stmt = stmt.where(ProbeResultRow.kind == kind)
        if since is not None:
            stmt = stmt.where(ProbeResultRow.at >= since)
        stmt = stmt.order_by(ProbeResultRow.at.desc(), ProbeResultRow.id.desc()).limit(limit)
        with self._session("cannot read results") as session:
            return [
                ProbeResult(
                    pool=a.pool,
                    mirror=a.mirror,
                    address=a.address,
                    region=r.region,
                    at=r.at,
                    kind=r.kind,
                    ok=r.ok,
                    unrecoverable=r.unrecoverable,
                    detail=r.detail,
                    latency=r.latency,
                    data=dict(r.data or {}),
                )
                for a, r in session.execute(stmt).all()
            ]

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
