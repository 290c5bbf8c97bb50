"""Expected state: what the origin holds, published by a leader for the checkers.

`checker manifest publish` (the leader, on the origin) walks the tree and hands
the differences to `publish_expected()`; checkers read the state back with
`expected_changes()` and keep it in memory. The store's side is persistence
only: the walk, the comparison and the hashing live in `checker/publish.py`.

Tables
  expected_pools    one row per published name: the head version, when it was
                    published, totals, and the last publish's counts. Every
                    publish bumps `version`, changes or not, so the age of the
                    head says whether the leader is still running.
  expected_objects  one row per (pool, path) ever published: type (file, link,
                    dir), size, mtime, optional sha256, `first_seen` (when this
                    content appeared), `version` (the publish that last changed
                    the row) and `gone_at` (removed from the origin; rows are
                    never deleted, so mirrors that keep deleted files stay
                    visible). "Changes since version V" is one range scan of the
                    (pool, version) index.

A publish is one transaction: a checker sees the old version or the new one,
never half, and a publisher killed mid-way leaves the old version intact.
Concurrent publishers of one pool are serialised by the head row (a row lock
on PostgreSQL, the database lock on SQLite) and the loser of a race gets
`ExpectedConflict`, so it can compare again against the new state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    func,
    insert,
    null,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from geodns.store.engine import Database
from geodns.store.records import StoreError
from geodns.store.schema import Base, UTCDateTime

_BATCH = 5000  # rows per executemany: bounds the parameter lists' memory


class ExpectedPoolRow(Base):
    __tablename__ = "expected_pools"

    pool: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)  # last version with changes
    objects: Mapped[int] = mapped_column(BigInteger)  # live files and links
    dirs: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)  # sum of the live objects' sizes
    gone: Mapped[int] = mapped_column(BigInteger)  # removed rows kept
    added: Mapped[int] = mapped_column(Integer)  # counts of the head version
    changed: Mapped[int] = mapped_column(Integer)
    removed: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)  # host:root of the last publish


class ExpectedObjectRow(Base):
    __tablename__ = "expected_objects"
    __table_args__ = (
        Index("ix_expected_objects_version", "pool", "version"),
        # SQLite: the (pool, path) key is the table itself, not a second B-tree
        {"sqlite_with_rowid": False},
    )

    pool: Mapped[str] = mapped_column(String(200), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(String(8))  # file, link (to a file), dir
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[int] = mapped_column(BigInteger)  # Unix seconds
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(BigInteger)
    gone_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# --------------------------------------------------------------------------- records


class ExpectedConflict(StoreError):
    """Another publish of the pool committed since the state was read."""


@dataclass(frozen=True, slots=True)
class ExpectedHead:
    pool: str
    version: int
    published_at: datetime
    changed_at: datetime
    objects: int
    dirs: int
    bytes: int
    gone: int
    added: int
    changed: int
    removed: int
    source: str


class ExpectedEntry(NamedTuple):
    """One object as the publisher found it on the origin (a tuple: a first
    publish makes 150,000 of them)."""

    path: str
    type: str  # file, link, dir
    size: int
    mtime: int
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class ExpectedTotals:
    """The live tree after a publish, counted by the publisher."""

    objects: int
    dirs: int
    bytes: int


@dataclass(frozen=True, slots=True)
class StoredIndex:
    """A pool's rows as the publisher compares them (plain, hashable values, so
    the comparison can run on dict views in C)."""

    version: int
    live: dict[str, tuple[str, int, int]]  # path → (type, size, mtime)
    unhashed: set[str]  # live files and links stored without a sha256
    gone: set[str]
    head: ExpectedHead | None = None


# What a checker reads: (path, type, size, mtime, sha256, first_seen, version,
# gone_at), the times as integer microseconds since the epoch (UTC).
ExpectedRow = tuple[str, str, int, int, str | None, int, int, int | None]


@dataclass(frozen=True, slots=True)
class ExpectedDelta:
    """Rows changed in (since, head.version]; all rows when since is 0."""

    head: ExpectedHead | None
    since: int
    rows: list[ExpectedRow]


_HEAD_FIELDS = tuple(ExpectedHead.__dataclass_fields__)


def _head_of(row: Any) -> ExpectedHead:
    """An ExpectedHead from an ORM row or a Core row of `expected_pools`."""
    get = row._mapping.__getitem__ if hasattr(row, "_mapping") else row.__getattribute__
    return ExpectedHead(*(get(f) for f in _HEAD_FIELDS))


def _fetchall(conn: Connection, stmt: Any) -> list[Any]:
    """All rows as the driver returns them (tuples of plain values, datetimes
    as SQLite's text or PostgreSQL's datetime): SQLAlchemy's Row objects and
    result processing cost ~3x the driver's fetch at 150,000 rows."""
    result = conn.execute(stmt)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class _Micros:
    """Driver datetimes → integer microseconds since the epoch, memoised: the
    objects of one publish share one `first_seen`, so a full load converts a
    handful of distinct values, not 150,000."""

    def __init__(self) -> None:
        self._seen: dict[Any, int] = {}

    def __call__(self, value: Any) -> int:
        hit = self._seen.get(value)
        if hit is None:
            when = datetime.fromisoformat(value) if isinstance(value, str) else value
            if when.tzinfo is None:  # SQLite keeps UTC without an offset
                when = when.replace(tzinfo=UTC)
            hit = self._seen[value] = (when - _EPOCH) // _US
        return hit


def _bind(conn: Connection, when: datetime) -> Any:
    """A datetime as the driver takes it for a UTCDateTime column."""
    process = UTCDateTime().dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return process(when) if process is not None else when


def _executemany(
    conn: Connection, stmt: Any, names: tuple[str, ...], rows: Iterable[tuple[Any, ...]]
) -> None:
    """Run `stmt` once per row (values for the bind parameters `names`) with
    the driver's executemany, in the connection's transaction.

    SQLAlchemy's own executemany processes every row's parameters in Python,
    which costs more than the database's insert at 150,000 rows (measured: 2x
    the CPU of the whole publish); here the statement is compiled once and the
    values go to the driver as they are, so they must already be in the
    driver's form (see `_bind`)."""
    compiled = stmt.compile(dialect=conn.dialect)
    sql = str(compiled)
    shape: Callable[[tuple[Any, ...]], Any]
    if conn.dialect.positional:
        order = tuple(names.index(k) for k in compiled.positiontup or ())
        if order == tuple(range(len(names))):
            shape = tuple
        else:
            shape = lambda r: tuple(r[i] for i in order)  # noqa: E731
    else:
        shape = lambda r: dict(zip(names, r, strict=True))  # noqa: E731
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        batch: list[Any] = []
        for row in rows:
            batch.append(shape(row))
            if len(batch) >= _BATCH:
                cursor.executemany(sql, batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)
    finally:
        cursor.close()


class ExpectedState(Database):
    """The expected-state half of `Store` (a base class of it)."""

    # ---------------------------------------------------------------- reads

    def expected_heads(self) -> list[ExpectedHead]:
        """Every published pool's head, by name."""
        with self._session("cannot read expected state") as session:
            rows = session.scalars(select(ExpectedPoolRow).order_by(ExpectedPoolRow.pool)).all()
            return [_head_of(r) for r in rows]

    def expected_head(self, pool: str) -> ExpectedHead | None:
        with self._session("cannot read expected state") as session:
            row = session.get(ExpectedPoolRow, pool)
            return None if row is None else _head_of(row)

    def expected_index(
        self,
        pool: str,
        *,
        paths: Collection[str] | None = None,
        under: Collection[str] | None = None,
    ) -> StoredIndex:
        """The pool's head and its rows, for the publisher's comparison: every
        row, or with `paths`/`under` only those paths and the rows below those
        directories (a publish of what a sync changed)."""
        o = ExpectedObjectRow
        live: dict[str, tuple[str, int, int]] = {}
        unhashed: set[str] = set()
        gone: set[str] = set()
        cols = (o.path, o.type, o.size, o.mtime, o.sha256.is_(None), o.gone_at.is_(None))
        selects: list[Any] = []
        if paths is None and under is None:
            selects.append(select(*cols).where(o.pool == pool))
        else:
            listed = sorted(paths or ())
            for i in range(0, len(listed), 500):
                selects.append(select(*cols).where(o.pool == pool, o.path.in_(listed[i : i + 500])))
            for d in sorted(under or ()):
                # "d/" ≤ path < "d0" ('0' follows '/'): a range scan of the key
                selects.append(
                    select(*cols).where(o.pool == pool, o.path >= d + "/", o.path < d + "0")
                )
        with self._snapshot("cannot read expected state") as conn:
            head_row = conn.execute(
                select(ExpectedPoolRow.__table__).where(ExpectedPoolRow.pool == pool)
            ).first()
            rows = [r for stmt in selects for r in _fetchall(conn, stmt)]
        for path, kind, size, mtime, no_hash, alive in rows:
            if alive:
                live[path] = (kind, size, mtime)
                if no_hash and kind != "dir":
                    unhashed.add(path)
            else:
                gone.add(path)
        head = None if head_row is None else _head_of(head_row)
        return StoredIndex(head.version if head else 0, live, unhashed, gone, head)

    def expected_changes(
        self,
        pool: str,
        since: int = 0,
        *,
        gone_since: datetime | None = None,
    ) -> ExpectedDelta:
        """What a checker needs to move its copy from version `since` to the head.

        `since=0` is a full load: live files and links, and objects removed
        after `gone_since` (all removed ones when None). Later calls return
        every row changed after `since`, of any type (a file that became a
        directory must leave the checker's copy). Head and rows come from one
        snapshot, so they agree even while a publish commits."""
        o = ExpectedObjectRow
        cols = (o.path, o.type, o.size, o.mtime, o.sha256, o.first_seen, o.version, o.gone_at)
        with self._snapshot("cannot read expected state") as conn:
            head_row = conn.execute(
                select(ExpectedPoolRow.__table__).where(ExpectedPoolRow.pool == pool)
            ).first()
            if head_row is None:
                return ExpectedDelta(None, since, [])
            head = _head_of(head_row)
            if since > head.version:
                since = 0  # the pool was dropped and published again: start over
            if since == head.version:
                return ExpectedDelta(head, since, [])
            stmt = select(*cols).where(o.pool == pool, o.version <= head.version)
            if since:
                stmt = stmt.where(o.version > since)
            else:
                stmt = stmt.where(o.type != "dir")
                if gone_since is not None:
                    stmt = stmt.where(o.gone_at.is_(None) | (o.gone_at >= gone_since))
            raw = _fetchall(conn, stmt)
        micros = _Micros()
        rows: list[ExpectedRow] = [
            (
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                micros(r[5]),
                r[6],
                None if r[7] is None else micros(r[7]),
            )
            for r in raw
        ]
        return ExpectedDelta(head, since, rows)

    # ---------------------------------------------------------------- writes

    def publish_expected(
        self,
        pool: str,
        base_version: int,
        *,
        added: Sequence[ExpectedEntry] = (),
        revived: Sequence[ExpectedEntry] = (),
        changed: Sequence[ExpectedEntry] = (),
        rehashed: Sequence[tuple[str, str]] = (),
        removed: Sequence[str] = (),
        totals: ExpectedTotals,
        source: str = "",
        at: datetime | None = None,
        on_written: Callable[[], None] | None = None,
    ) -> ExpectedHead:
        """Make version base_version + 1 of `pool` in one transaction.

        `added` are paths the pool never had (inserted: COPY on PostgreSQL),
        `revived` paths removed so far and back, `changed` live paths whose
        content changed: all get `first_seen` now. `rehashed` (path, sha256)
        only learn their hash (the object itself is not new). `removed` get
        `gone_at`. Raises `ExpectedConflict` when the head is no longer
        `base_version`. `on_written` runs after the writes, before the commit
        (tests use it to kill a publisher half-way).
        """
        now = at or datetime.now(UTC)
        o = ExpectedObjectRow
        head = ExpectedPoolRow
        try:
            with self._session("cannot publish expected state") as session:
                conn = session.connection()
                # Take the pool's lock first: the row lock (PostgreSQL) or the
                # write lock (SQLite), so a concurrent publisher waits here and
                # then finds the version moved.
                prev = conn.execute(
                    update(head)
                    .where(head.pool == pool)
                    .values(version=head.version)
                    .returning(head.version, head.published_at)
                ).first()
                current = 0 if prev is None else int(prev[0])
                if current != base_version:
                    raise ExpectedConflict(
                        f"store {self.url_text}: pool {pool!r} is at version {current}, "
                        f"not {base_version}: another publish ran meanwhile"
                    )
                if prev is not None and now <= prev[1]:
                    # first_seen strictly increases per pool even when the clock
                    # steps back: the checkers' "new since" cursors rely on it.
                    now = prev[1] + timedelta(microseconds=1)
                version = current + 1
                self._insert(conn, pool, version, now, added)
                self._upsert(conn, pool, version, now, [*revived, *changed])
                by_path = (o.pool == bindparam("b_pool"), o.path == bindparam("b_path"))
                _executemany(
                    conn,
                    update(o)
                    .where(*by_path)
                    .values(sha256=bindparam("b_sha"), version=bindparam("b_version")),
                    ("b_pool", "b_path", "b_sha", "b_version"),
                    ((pool, p, h, version) for p, h in sorted(rehashed)),
                )
                gone_at = _bind(conn, now)
                _executemany(
                    conn,
                    update(o)
                    .where(*by_path)
                    .values(gone_at=bindparam("b_gone"), version=bindparam("b_version")),
                    ("b_pool", "b_path", "b_gone", "b_version"),
                    ((pool, p, gone_at, version) for p in sorted(removed)),
                )
                gone = conn.execute(
                    select(func.count()).where(o.pool == pool, o.gone_at.is_not(None))
                ).scalar()
                values: dict[str, Any] = {
                    "pool": pool,
                    "version": version,
                    "published_at": now,
                    "objects": totals.objects,
                    "dirs": totals.dirs,
                    "bytes": totals.bytes,
                    "gone": int(gone or 0),
                    "added": len(added) + len(revived),
                    "changed": len(changed),
                    "removed": len(removed),
                    "source": source,
                }
                if added or revived or changed or removed or rehashed or prev is None:
                    values["changed_at"] = now
                if prev is None:
                    conn.execute(insert(head).values(**values))
                else:
                    conn.execute(update(head).where(head.pool == pool).values(**values))
                if on_written is not None:
                    on_written()
                result = _head_of(
                    conn.execute(select(head.__table__).where(head.pool == pool)).one()
                )
        except IntegrityError as exc:  # two first publishes of one pool at once, or a stale view
            raise ExpectedConflict(
                f"store {self.url_text}: pool {pool!r} was published concurrently: "
                f"{' '.join(str(exc.orig).split())}"
            ) from None
        return result

    def _insert(
        self,
        conn: Connection,
        pool: str,
        version: int,
        now: datetime,
        entries: Sequence[ExpectedEntry],
    ) -> None:
        """Rows the pool never had: COPY on PostgreSQL (~5x the rows per second of
        INSERT … ON CONFLICT, which a first publish of 150,000 objects feels),
        a plain INSERT elsewhere. A row that exists after all (the caller's view
        was stale) fails the transaction, and the caller compares again."""
        if not entries:
            return
        names = ("pool", "path", "type", "size", "mtime", "sha256", "first_seen", "version")
        first_seen = _bind(conn, now)
        rows = (
            (pool, e.path, e.type, e.size, e.mtime, e.sha256, first_seen, version)
            for e in sorted(entries, key=lambda e: e.path)
        )
        if conn.dialect.name == "postgresql":
            raw: Any = conn.connection.dbapi_connection
            with raw.cursor() as cursor:
                columns = ", ".join(names)
                with cursor.copy(f"COPY expected_objects ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            return
        stmt = insert(ExpectedObjectRow).values({n: bindparam(n) for n in names})
        _executemany(conn, stmt, names, rows)

    def _upsert(
        self,
        conn: Connection,
        pool: str,
        version: int,
        now: datetime,
        entries: Sequence[ExpectedEntry],
    ) -> None:
        """INSERT … ON CONFLICT DO UPDATE (the dialect's own), many rows per call."""
        if not entries:
            return
        table = ExpectedObjectRow.__table__
        # the dialects' own INSERT … ON CONFLICT (imported here: the PostgreSQL
        # dialect costs ~50 ms of start-up to every command otherwise)
        dialect_insert: Any
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        stmt = dialect_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.pool, table.c.path],
            set_={
                "type": stmt.excluded.type,
                "size": stmt.excluded.size,
                "mtime": stmt.excluded.mtime,
                "sha256": stmt.excluded.sha256,
                "first_seen": stmt.excluded.first_seen,
                "version": stmt.excluded.version,
                "gone_at": null(),
            },
        )
        first_seen = _bind(conn, now)
        # Path order: B-tree inserts in key order touch each page once.
        ordered = sorted(entries, key=lambda e: e.path)
        _executemany(
            conn,
            stmt,
            ("pool", "path", "type", "size", "mtime", "sha256", "first_seen", "version", "gone_at"),
            (
                (pool, e.path, e.type, e.size, e.mtime, e.sha256, first_seen, version, None)
                for e in ordered
            ),
        )

    @contextmanager
    def _snapshot(self, what: str) -> Iterator[Connection]:
        """A read-only connection whose statements all see one snapshot.

        PostgreSQL: a REPEATABLE READ transaction. SQLite: an explicit BEGIN
        (the driver only begins transactions before writes, so two SELECTs
        would otherwise see two states)."""
        try:
            with self._lock:
                self._follow_file()
                with self._engine.connect() as conn:
                    if conn.dialect.name == "postgresql":
                        conn = conn.execution_options(isolation_level="REPEATABLE READ")
                    elif conn.dialect.name == "sqlite":
                        raw = conn.connection.dbapi_connection
                        if not getattr(raw, "in_transaction", True):
                            conn.exec_driver_sql("BEGIN")
                    try:
                        yield conn
                    finally:
                        conn.rollback()
        except StoreError:
            raise
        except SQLAlchemyError as exc:
            raise self._error(what, exc) from None

    def drop_expected(self, pool: str) -> int:
        """Forget a pool's expected state entirely (a decommissioned pool).
        Returns the number of object rows removed."""
        with self._session("cannot drop expected state") as session:
            n = session.execute(
                delete(ExpectedObjectRow).where(ExpectedObjectRow.pool == pool)
            ).rowcount  # type: ignore[attr-defined]
            session.execute(delete(ExpectedPoolRow).where(ExpectedPoolRow.pool == pool))
        return int(n or 0)
