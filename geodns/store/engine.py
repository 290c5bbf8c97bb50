"""The store's connection layer: one engine per process, schema checks and
Alembic upgrades, SQLite files followed across replacement, and sessions that
turn every database error into a `StoreError` naming the URL (never the password).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    create_engine,
    event,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from geodns.store.records import StoreError
from geodns.store.schema import SCHEMA_HEAD, MetaRow

# PostgreSQL advisory lock key serialising concurrent first-time migrations.
_MIGRATION_LOCK = 0x67656F646E73  # "geodns"


class Database:
    """An engine and its sessions. `create=True` (checker, demo, tests): make the
    SQLite directory, the file and the schema, or upgrade any database to the
    Alembic head. `create=False` (DNS server): touch nothing; raise `StoreError`
    when the database is unreachable or has no schema.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
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

    @staticmethod
    def _bump_version(session: Session) -> None:
        """Tell every server to re-read: in the transaction of each change."""
        # Atomic increment: the row lock (PostgreSQL) or the file lock (SQLite)
        # serialises concurrent writers, so the version never goes backwards.
        bumped = session.execute(
            update(MetaRow).where(MetaRow.key == "state_version").values(value=MetaRow.value + 1)
        )
        if bumped.rowcount == 0:  # type: ignore[attr-defined]
            session.add(MetaRow(key="state_version", value=1))

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
