"""A throw-away PostgreSQL server for tests, from Debian's `postgresql` package.

    from pg import pg_server  # noqa: F401  (a session-scoped pytest fixture)

    def test_x(pg_server):
        url = pg_server.create_database()   # fresh database, dropped at session end

The server runs from /usr/lib/postgresql/*/bin in a temporary directory, on a
Unix socket only (no TCP listener at all), with fsync off; as root it runs as
the `postgres` system user (or `nobody`), since PostgreSQL refuses root. It is
stopped and its directory removed at the end, even when tests fail.

The cluster bed starts one inside a network namespace instead
(`start(bindir, netns=..., listen="10.99.0.5", trust=["10.99.0.0/24"])`): it
then also listens on TCP there, for the namespaces' nodes and checkers, while
the test itself still reaches it through the Unix socket (a path, not a
network address). `stop()` and `start_again()` make outages.

Without the binaries the tests are skipped, unless CI is set (CI=true): then
a missing PostgreSQL FAILS, so CI cannot go green without testing it
(`apt-get install -y postgresql` provides it).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

USER = "geodns"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with initdb and pg_ctl."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists():
            try:
                found.append((int(bindir.parent.name.split(".")[0]), bindir))
            except ValueError:
                continue
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _run_as() -> tuple[list[str], str | None]:
    """Command prefix to drop root, and the account's name."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], name
    raise RuntimeError("running as root but neither 'postgres' nor 'nobody' exists")


@dataclass
class PgServer:
    bindir: Path
    root: Path
    prefix: list[str]
    databases: list[str] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    opts: str = ""  # postgres options pg_ctl passes (-o), kept for start_again()
    listen: str = ""  # TCP address inside the namespace, if any

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@/{database}?host={self.socket_dir}"

    def tcp_url(self, database: str) -> str:
        """The URL for clients in the namespaces (TCP to `listen`, port 5432)."""
        assert self.listen, "started without a TCP listener"
        return f"postgresql+psycopg://{USER}@{self.listen}:5432/{database}"

    def _admin(self) -> object:
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir), user=USER, dbname="postgres", autocommit=True
        )

    def create_database(self) -> str:
        name = f"geodns_test_{os.getpid()}_{next(self._names)}"
        with self._admin() as conn:  # type: ignore[attr-defined]
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("/")[-1].split("?")[0]
        with self._admin() as conn:  # type: ignore[attr-defined]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(
            [
                *self.prefix,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                mode,
                "-w",
                "-t",
                "30",
                "stop",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )

    def start_again(self) -> None:
        """Start the stopped server with the same data and options."""
        self._pg_ctl_start()

    def _pg_ctl_start(self) -> None:
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log")]
        self._run(*cmd, "-w", "-t", "60", "-o", self.opts, "start")

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        proc = subprocess.run(
            [*self.prefix, *cmd], capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            log = self.root / "log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{tail}"
            )


def start(
    bindir: Path, *, netns: str | None = None, listen: str = "", trust: Sequence[str] = ()
) -> PgServer:
    """initdb and start; `netns`: inside that namespace (via `ip netns exec`),
    `listen`: a TCP address there, `trust`: networks allowed in without a password."""
    prefix, account = _run_as()
    if netns is not None:
        prefix = ["ip", "netns", "exec", netns, *prefix]
    root = Path(tempfile.mkdtemp(prefix="geodns-pg-"))  # short: socket paths max ~107 bytes
    if account:
        shutil.chown(root, user=account)
    server = PgServer(bindir, root, prefix, listen=listen)
    run = server._run

    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(server.data),
            "-A",
            "trust",
            "-U",
            USER,
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        )
        if trust:
            with open(server.data / "pg_hba.conf", "a") as hba:
                for net in trust:
                    hba.write(f"host all all {net} trust\n")
        server.opts = (
            f"-k {root} -c listen_addresses='{listen}' -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=50"
        )
        server._pg_ctl_start()
    except BaseException:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def start_standby(primary: PgServer) -> PgServer:
    """A hot standby streaming from `primary` (pg_basebackup -R over its Unix
    socket; initdb -A trust lets the replication connection in). Its own
    directory and socket; `stop()` it and remove its root when done."""
    root = Path(tempfile.mkdtemp(prefix="geodns-pg-"))
    _, account = _run_as()
    if account:
        shutil.chown(root, user=account)
    server = PgServer(primary.bindir, root, primary.prefix)
    try:
        server._run(
            str(primary.bindir / "pg_basebackup"),
            "-D",
            str(server.data),
            "-h",
            str(primary.socket_dir),
            "-U",
            USER,
            "-R",  # standby.signal + primary_conninfo: a streaming standby
            "-X",
            "stream",
            "--checkpoint=fast",  # not a spread checkpoint: minutes on an idle server
            "--no-sync",
        )
        server.opts = (
            f"-k {root} -c listen_addresses='' -c fsync=off -c hot_standby=on -c max_connections=50"
        )
        server._pg_ctl_start()
    except BaseException:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL binaries not found (apt-get install -y postgresql)"
        if in_ci():
            pytest.fail(f"{reason}; CI must test the store on PostgreSQL", pytrace=False)
        pytest.skip(reason)
    server = start(bindir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
