"""The health store: the only thing DNS nodes and checkers share.

SQLAlchemy 2 typed models over SQLite (default, one file, WAL) or any other
SQLAlchemy URL (PostgreSQL for several nodes). The schema is owned by Alembic
(`geodns/migrations/`); `Store(url)` upgrades to head on first use, while
`Store(url, create=False)` — the DNS server's read path — never creates or
migrates anything and raises `StoreError` when the schema is missing.

Tables
  mirror_addresses  one row per (pool, mirror, address text)
  probe_results     every probe: time, region, kind, ok, detail, latency, data;
                    pruned after a configurable time (`prune()`)
  address_states    current state per (address, region): up/down, the reason and
                    time of the last change, the latest summary, warnings and the
                    checker's per-probe hysteresis counters (JSON `kinds`)
  state_changes     every change with its reason (`checker history`)
  store_meta        a counter row `state_version`, bumped in the same transaction
                    as every state change, so the server polls with ONE cheap query

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
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

# The newest Alembic revision this code knows. A test asserts it equals the
# migrations' head, so the fast path (no Alembic import) stays honest.
SCHEMA_HEAD = "0001"

# PostgreSQL advisory lock key serialising concurrent first-time migrations.
_MIGRATION_LOCK = 0x67656F646E73  # "geodns"


class StoreError(Exception):
    """The store cannot be used: unreachable, missing schema, or a failed write.

    The text names the URL (without password) and the cause, so an operator
    can act on it without reading a traceback.
    """


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


class StateChangeRow(Base):
    __tablename__ = "state_changes"
    __table_args__ = (
        Index("ix_state_changes_addr_at", "address_id", "at"),
        Index("ix_state_changes_at", "at"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    address_id: Mapped[int] = mapped_column(ForeignKey("mirror_addresses.id", ondelete="CASCADE"))
    region: Mapped[str] = mapped_column(String(64), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    up: Mapped[bool] = mapped_column(Boolean)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")


class MetaRow(Base):
    __tablename__ = "store_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


# --------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One probe outcome as the checker hands it to `Store.record()`."""

    kind: str
    ok: bool
    detail: str
    latency: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    unrecoverable: bool = False
    at: datetime | None = None  # default: the time of recording


@dataclass(frozen=True, slots=True)
class AddressState:
    pool: str
    mirror: str
    address: str
    family: int
    region: str
    up: bool
    disabled: bool
    reason: str
    since: datetime
    checked_at: datetime
    detail: str
    warning: str | None
    kinds: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StateChange:
    pool: str
    mirror: str
    address: str
    region: str
    at: datetime
    up: bool
    disabled: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    pool: str
    mirror: str
    address: str
    region: str
    at: datetime
    kind: str
    ok: bool
    unrecoverable: bool
    detail: str
    latency: float | None
    data: dict[str, Any]


def address_text(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical address text: `str(ipaddress.ip_address(x))`."""
    return str(ipaddress.ip_address(address))


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


class Store:
    """Read and write mirror health. Thread-safe; one instance per process.

    `create=True` (checker, demo, tests): make the SQLite directory, the file
    and the schema, or upgrade any database to the Alembic head.
    `create=False` (DNS server): touch nothing; raise `StoreError` when the
    database is unreachable or has no schema.
    """

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
        try:
            self._url = make_url(url)
        except Exception as exc:  # ArgumentError or ValueError, depending on the text
            raise StoreError(f"store URL {url!r} is not a SQLAlchemy URL: {exc}") from None
        self.url_text = self._url.render_as_string(hide_password=True)
        # One thread at a time: in-memory SQLite shares a single connection.
        self._lock = threading.RLock()
        self._create = create
        self._file: Path | None = None  # a SQLite file we follow by identity
        self._file_id: tuple[int, int] | None = None
        self._engine = self._make_engine(create)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        try:
            if create:
                self._migrate()
            else:
                self._check_schema()
            self._file_id = self._identity()
        except BaseException:
            self._engine.dispose()
            raise

    # ---------------------------------------------------------------- setup

    def _make_engine(self, create: bool) -> Engine:
        url = self._url
        kwargs: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            db = url.database or ""
            memory = db in ("", ":memory:") or db.startswith("file::memory:")
            if memory:
                # One shared connection, or every session would see its own empty DB.
                kwargs["poolclass"] = StaticPool
            else:
                path = Path(db)
                self._file = path
                if create:
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                    except OSError as exc:
                        raise StoreError(
                            f"store {self.url_text}: cannot create directory "
                            f"{path.parent}: {exc.strerror}"
                        ) from None
                elif not path.exists():
                    # sqlite3 would create an empty file; the read path must not.
                    raise StoreError(
                        f"store {self.url_text}: database file {path} does not exist "
                        "(run the checker once, or point --store at the right file)"
                    )
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif url.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 5}
            # No pool_pre_ping: it would double the server's one-query poll. A
            # connection broken by a PostgreSQL restart fails one call (StoreError,
            # the server keeps its snapshot) and is replaced on the next.
        try:
            engine = create_engine(url, **kwargs)
        except Exception as exc:  # missing driver, bad option
            raise StoreError(f"store {self.url_text}: {exc}") from None
        if url.get_backend_name() == "sqlite":
            wal = create and not memory

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                if wal:
                    # WAL lets the DNS server read while the checker writes; the
                    # mode is stored in the file, so readers need not set it.
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

        return engine

    def _error(self, what: str, exc: BaseException) -> StoreError:
        cause = getattr(exc, "orig", None) or exc
        text = " ".join(str(cause).split())
        return StoreError(f"store {self.url_text}: {what}: {text}")

    def _current_revision(self, conn: Connection) -> str | None:
        try:
            with conn.begin_nested():
                row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except SQLAlchemyError:
            return None
        return None if row is None else str(row[0])

    def _check_schema(self) -> None:
        try:
            with self._engine.connect() as conn:
                rev = self._current_revision(conn)
                if rev is None:
                    raise StoreError(
                        f"store {self.url_text}: no geodns schema (run `checker run --once` "
                        "or anything that opens the store with create=True to create it)"
                    )
                conn.execute(select(MetaRow.value).where(MetaRow.key == "state_version")).first()
        except StoreError:
            raise
        except SQLAlchemyError as exc:
            raise self._error("cannot read", exc) from None

    def _migrate(self) -> None:
        try:
            with self._engine.connect() as conn:
                if self._current_revision(conn) == SCHEMA_HEAD:
                    return
        except SQLAlchemyError as exc:
            raise self._error("cannot connect", exc) from None
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
        try:
            with self._engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # Two processes creating the store at once: the second waits,
                    # then finds the schema at head and does nothing.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            # SQLite has no advisory lock: a concurrent creator may have won the race.
            with self._engine.connect() as conn:
                if self._current_revision(conn) == SCHEMA_HEAD:
                    return
            raise self._error("cannot create or upgrade the schema", exc) from None

    def _identity(self) -> tuple[int, int] | None:
        if self._file is None:
            return None
        try:
            st = self._file.stat()
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def _follow_file(self) -> None:
        """Notice a SQLite file that was deleted or replaced (state directory wiped,
        file restored from a backup): pooled connections would go on reading the
        old, unlinked inode forever. Costs one stat() per call."""
        if self._file is None:
            return
        now = self._identity()
        if now == self._file_id:
            return
        self._engine.dispose()  # the next connection opens whatever is there now
        if now is None and not self._create:
            self._file_id = None
            raise StoreError(f"store {self.url_text}: database file {self._file} has disappeared")
        if self._create:
            self._migrate()  # recreate the schema in a new file
        self._file_id = self._identity()

    @contextmanager
    def _session(self, what: str) -> Iterator[Session]:
        try:
            with self._lock:
                self._follow_file()
                with self._sessions.begin() as session:
                    yield session
        except StoreError:
            raise
        except SQLAlchemyError as exc:
            raise self._error(what, exc) from None

    # ---------------------------------------------------------------- server read path

    def state_version(self) -> int:
        """One cheap query; strictly increases whenever any address state changes."""
        try:
            with self._lock:
                self._follow_file()
                with self._engine.connect() as conn:
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
    ) -> bool:
        row = session.get(AddressStateRow, (address_id, region))
        changed = row is None or row.up != up or row.disabled != disabled
        if row is None:
            row = AddressStateRow(address_id=address_id, region=region, kinds={})
        row.up = up
        row.disabled = disabled
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
            session.add(
                StateChangeRow(
                    address_id=address_id,
                    region=region,
                    at=at,
                    up=up,
                    disabled=disabled,
                    reason=reason,
                )
            )
            self._bump_version(session)
        return changed

    @staticmethod
    def _bump_version(session: Session) -> None:
        # Atomic increment: the row lock (PostgreSQL) or the file lock (SQLite)
        # serialises concurrent writers, so the version never goes backwards.
        bumped = session.execute(
            update(MetaRow).where(MetaRow.key == "state_version").values(value=MetaRow.value + 1)
        )
        if bumped.rowcount == 0:  # type: ignore[attr-defined]
            session.add(MetaRow(key="state_version", value=1))

    def set_state(
        self, pool: str, mirror: str, address: str, up: bool, reason: str, *, region: str = ""
    ) -> None:
        """Force a state, recorded exactly like a checker-made change."""
        at = _now()
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
    ) -> bool:
        """Store probe results and the evaluated state in one transaction.

        `reason` is kept only when the state changes (it explains the change);
        `detail` always replaces the latest summary. Returns True on a change.
        """
        at = _now()
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
            if keep_history is not None:
                changes = session.execute(
                    delete(StateChangeRow).where(StateChangeRow.at < now - keep_history)
                ).rowcount  # type: ignore[attr-defined]
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
        stmt = select(AddressRow, AddressStateRow).join(
            AddressStateRow, AddressStateRow.address_id == AddressRow.id
        )
        if pool is not None:
            stmt = stmt.where(AddressRow.pool == pool)
        if mirror is not None:
            stmt = stmt.where(AddressRow.mirror == mirror)
        if address is not None:
            stmt = stmt.where(AddressRow.address == address_text(address))
        if region is not None:
            stmt = stmt.where(AddressStateRow.region == region)
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
        limit: int = 100,
    ) -> list[ProbeResult]:
        """Probe results, newest first."""
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
