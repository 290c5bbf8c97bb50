"""Operator drains: `checker drain` takes a mirror (or one of its addresses)
out of DNS answers through the store, so every DNS node sees it within one
health poll, without a YAML edit or a reload.

A drain is operator state, not a measurement: it needs no quorum, and the
checker goes on probing a drained address (the report shows its health), so
undraining a mirror that went down meanwhile does not bring it back before
`rise` passing checks. Every write bumps `state_version` in its transaction;
a timed drain ends at `until` by itself (readers compare with their clock:
`Store.drains()` returns only drains in force, and the server re-reads when
the soonest one ends). Expired rows are turned into `expired` history events
by the next writer (`drain`, `undrain`, `prune`); until then history shows
them all the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from geodns.store.engine import Database
from geodns.store.records import Drain, DrainEvent, address_text
from geodns.store.schema import AddressRow, DrainEventRow, DrainRow

# The revision that created the drain tables (migrations/versions/0003_drains.py);
# revisions are numbered: "0003_drains" and anything after it has them.
DRAINS_REVISION = 3


def _now() -> datetime:
    return datetime.now(UTC)


_COLUMNS = (
    DrainRow.pool,
    DrainRow.mirror,
    DrainRow.address,
    DrainRow.reason,
    DrainRow.who,
    DrainRow.at,
    DrainRow.until,
)


def _drain(r: DrainRow) -> Drain:
    return Drain(r.pool, r.mirror, r.address, r.reason, r.who, r.at, r.until)


class DrainStore(Database):
    """The drain half of `Store` (which inherits it)."""

    # False until the schema is seen at DRAINS_REVISION or later: a DNS node
    # upgraded before the checker reads a 0001 store as "nothing drained"
    # instead of failing every poll.
    _drain_tables = False

    # ---------------------------------------------------------------- reads

    def _drains_exist(self, conn: Connection) -> bool:
        if not self._drain_tables:
            rev = self._current_revision(conn) or ""
            number = rev.split("_", 1)[0]
            self._drain_tables = number.isdigit() and int(number) >= DRAINS_REVISION
        return self._drain_tables

    def drains(self, *, now: datetime | None = None) -> list[Drain]:
        """Drains in force at `now`, by mirror, pool, address. The server's read path."""
        now = now or _now()
        try:
            with self._lock:
                self._follow_file()
                with self._engine.connect() as conn:
                    if not self._drains_exist(conn):
                        return []
                    rows = conn.execute(
                        select(*_COLUMNS)
                        .where(or_(DrainRow.until.is_(None), DrainRow.until > now))
                        .order_by(DrainRow.mirror, DrainRow.pool, DrainRow.address)
                    ).all()
        except SQLAlchemyError as exc:
            raise self._error("cannot read drains", exc) from None
        return [Drain(*row) for row in rows]

    def drain_events(
        self, mirror: str | None = None, *, address: str | None = None, limit: int = 100
    ) -> list[DrainEvent]:
        """Drain history, newest first, of `mirror`; with `address`, the events
        naming that address or the whole of a mirror it belongs to."""
        now = _now()
        stmt = select(DrainEventRow)
        ended = select(DrainRow).where(DrainRow.until.is_not(None), DrainRow.until <= now)
        if mirror is not None:
            stmt = stmt.where(DrainEventRow.mirror == mirror)
            ended = ended.where(DrainRow.mirror == mirror)
        if address is not None:
            addr = address_text(address)
            owners = select(AddressRow.mirror).where(AddressRow.address == addr)
            stmt = stmt.where(
                (DrainEventRow.address == addr)
                | ((DrainEventRow.address == "") & DrainEventRow.mirror.in_(owners))
            )
            ended = ended.where(
                (DrainRow.address == addr)
                | ((DrainRow.address == "") & DrainRow.mirror.in_(owners))
            )
        stmt = stmt.order_by(DrainEventRow.at.desc(), DrainEventRow.id.desc()).limit(limit)
        with self._session("cannot read drain history") as session:
            events = [
                DrainEvent(e.at, e.action, e.pool, e.mirror, e.address, e.reason, e.who, e.until)
                for e in session.scalars(stmt)
            ]
            # ended, not yet turned into events by a writer: shown the same way
            events += [_expired(_drain(r)) for r in session.scalars(ended)]
        events.sort(key=lambda e: e.at, reverse=True)
        return events[:limit]

    # ---------------------------------------------------------------- writes

    def drain(
        self,
        mirror: str,
        *,
        reason: str,
        who: str,
        pool: str = "",
        address: str = "",
        until: datetime | None = None,
    ) -> Drain:
        """Drain (or re-drain, replacing reason and end) a mirror or one address."""
        at = _now()
        addr = address_text(address) if address else ""
        with self._session("cannot write drain") as session:
            self._expire(session, at)
            row = session.execute(
                select(DrainRow).where(
                    DrainRow.pool == pool, DrainRow.mirror == mirror, DrainRow.address == addr
                )
            ).scalar()
            if row is None:
                row = DrainRow(pool=pool, mirror=mirror, address=addr)
            row.reason, row.who, row.at, row.until = reason, who, at, until
            session.add(row)
            session.add(
                DrainEventRow(
                    at=at,
                    action="drain",
                    pool=pool,
                    mirror=mirror,
                    address=addr,
                    reason=reason,
                    who=who,
                    until=until,
                )
            )
            self._bump_version(session)
            return _drain(row)

    def undrain(
        self, mirror: str, *, who: str, pool: str | None = None, address: str | None = None
    ) -> list[Drain]:
        """End the drains of `mirror` (only those of `pool` / on `address`, when
        given). Returns the drains ended; nothing written when there were none."""
        at = _now()
        with self._session("cannot write drain") as session:
            self._expire(session, at)
            stmt = select(DrainRow).where(DrainRow.mirror == mirror)
            if pool is not None:
                stmt = stmt.where(DrainRow.pool == pool)
            if address is not None:
                stmt = stmt.where(DrainRow.address == address_text(address))
            rows = list(session.scalars(stmt))
            for r in rows:
                session.add(
                    DrainEventRow(
                        at=at,
                        action="undrain",
                        pool=r.pool,
                        mirror=r.mirror,
                        address=r.address,
                        reason=r.reason,
                        who=who,
                        until=r.until,
                    )
                )
                session.delete(r)
            if rows:
                self._bump_version(session)
            return [_drain(r) for r in rows]

    def expire_drains(self) -> int:
        """Turn drains past their end into history events; returns how many."""
        with self._session("cannot expire drains") as session:
            return self._expire(session, _now())

    def _expire(self, session: Session, now: datetime) -> int:
        rows = list(
            session.scalars(
                select(DrainRow).where(DrainRow.until.is_not(None), DrainRow.until <= now)
            )
        )
        for r in rows:
            e = _expired(_drain(r))
            session.add(
                DrainEventRow(
                    at=e.at,
                    action=e.action,
                    pool=e.pool,
                    mirror=e.mirror,
                    address=e.address,
                    reason=e.reason,
                    who=e.who,
                    until=e.until,
                )
            )
            session.delete(r)
        # no version bump: every reader already stopped honouring them at `until`
        return len(rows)

    def _prune_drain_events(self, session: Session, before: datetime) -> Any:
        return session.execute(delete(DrainEventRow).where(DrainEventRow.at < before))


def _expired(d: Drain) -> DrainEvent:
    assert d.until is not None
    return DrainEvent(d.until, "expired", d.pool, d.mirror, d.address, d.reason, d.who, d.until)
