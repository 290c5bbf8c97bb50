"""The store's tables (SQLAlchemy 2 typed ORM). The schema itself is owned by
Alembic (`migrations/` beside this file); a test asserts the two agree.

Tables
  mirror_addresses  one row per (pool, mirror, address text)
  probe_results     every probe: time, region, kind, ok, detail, latency, data;
                    pruned after a configurable time (`Store.prune()`)
  address_states    current state per (address, region): up/down, slow (serving
                    but ranked one group behind) with its figures in words, the
                    reason and time of the last change, the latest summary,
                    warnings and the checker's per-probe hysteresis counters
                    (JSON `kinds`)
  state_changes     every change with its reason (`checker history`); entering
                    and leaving `slow` are changes too
  store_meta        a counter row `state_version`, bumped in the same transaction
                    as every state change (and drain), so the server polls with ONE
                    cheap query
  drains            operator drains (`checker drain`): a mirror, or one address of
                    it, taken out of DNS answers with who/when/why and an optional end
  drain_events      every drain, undrain and expiry (`checker history`)
  expected_pools, expected_objects
                    the expected state a leader publishes (defined in `expected`)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# The newest Alembic revision this code knows. A test asserts it equals the
# migrations' head, so the fast path (no Alembic import) stays honest.
SCHEMA_HEAD = "0004_slow"


# --------------------------------------------------------------------------- models


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes everywhere; SQLite stores them naive."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT primary keys autoincrement on PostgreSQL; SQLite only does so for INTEGER.
_BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class AddressRow(Base):
    __tablename__ = "mirror_addresses"
    __table_args__ = (UniqueConstraint("pool", "mirror", "address", name="uq_mirror_address"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool: Mapped[str] = mapped_column(String(200))
    mirror: Mapped[str] = mapped_column(String(200), index=True)
    address: Mapped[str] = mapped_column(String(64))
    family: Mapped[int] = mapped_column(Integer)  # 4 or 6


class ProbeResultRow(Base):
    __tablename__ = "probe_results"
    __table_args__ = (
        Index("ix_probe_results_addr_kind", "address_id", "region", "kind", "at"),
        Index("ix_probe_results_at", "at"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    address_id: Mapped[int] = mapped_column(ForeignKey("mirror_addresses.id", ondelete="CASCADE"))
    region: Mapped[str] = mapped_column(String(64), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16))  # tls, freshness, objects, apt, admin
    ok: Mapped[bool] = mapped_column(Boolean)
    unrecoverable: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[str] = mapped_column(Text, default="")
    latency: Mapped[float | None] = mapped_column(Float, nullable=True)  # seconds
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AddressStateRow(Base):
    __tablename__ = "address_states"
    __table_args__ = (Index("ix_address_states_up", "up"),)
    # no INSERT ... RETURNING of server defaults: it would name the slow
    # columns, which a store not yet at 0004_slow lacks
    __mapper_args__ = {"eager_defaults": False}

    address_id: Mapped[int] = mapped_column(
        ForeignKey("mirror_addresses.id", ondelete="CASCADE"), primary_key=True
    )
    region: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    up: Mapped[bool] = mapped_column(Boolean)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")  # reason of the last change
    since: Mapped[datetime] = mapped_column(UTCDateTime)  # time of the last change
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[str] = mapped_column(Text, default="")  # latest evaluation, in words
    warning: Mapped[str | None] = mapped_column(Text, nullable=True)
    kinds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # serving but slow (only ever with up): ranked one group behind; the
    # figures in words for `geodns explain` ("0.4 MB/s median over 3 rounds (min 2)").
    # Deferred and without Python defaults: loaded and written only where the
    # schema has them (revision 0004_slow), so this code still reads and writes
    # a store the checker has not migrated yet.
    slow: Mapped[bool] = mapped_column(Boolean, server_default=false(), deferred=True)
    slow_reason: Mapped[str] = mapped_column(Text, server_default="", deferred=True)


class StateChangeRow(Base):
    __tablename__ = "state_changes"
    __table_args__ = (
        Index("ix_state_changes_addr_at", "address_id", "at"),
        Index("ix_state_changes_at", "at"),
    )
    __mapper_args__ = {"eager_defaults": False}  # as AddressStateRow's

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    address_id: Mapped[int] = mapped_column(ForeignKey("mirror_addresses.id", ondelete="CASCADE"))
    region: Mapped[str] = mapped_column(String(64), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    up: Mapped[bool] = mapped_column(Boolean)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    slow: Mapped[bool] = mapped_column(Boolean, server_default=false(), deferred=True)


class MetaRow(Base):
    __tablename__ = "store_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class DrainRow(Base):
    """One drain. `pool` "" = every pool the mirror is in; `address` "" = every
    address of the mirror (also ones added to the YAML later)."""

    __tablename__ = "drains"
    __table_args__ = (UniqueConstraint("pool", "mirror", "address", name="uq_drain"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool: Mapped[str] = mapped_column(String(200), default="")
    mirror: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text)
    who: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    # None: until `checker undrain`
    until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DrainEventRow(Base):
    __tablename__ = "drain_events"
    __table_args__ = (
        Index("ix_drain_events_mirror_at", "mirror", "at"),
        Index("ix_drain_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(16))  # drain | undrain | expired
    pool: Mapped[str] = mapped_column(String(200), default="")
    mirror: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    who: Mapped[str] = mapped_column(String(200), default="")
    # None: until `checker undrain`
    until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
