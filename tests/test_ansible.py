"""The Ansible roles in ansible/: lint, syntax and a real deployment.

The deployment applies ansible/site.yml to this machine (`ansible_connection:
local`) with the example inventory plus ansible/tests/inventory.yml and
ansible/tests/vars.yml, which point every path of the roles into a throw-away
prefix and replace systemd calls with plain commands:

1. first run: creates a system account, installs the wheel built from this
   repository into a venv, copies GeoIP files made here, lays down and
   validates the zones, renders the units, and creates a PostgreSQL role and
   database in a cluster the test started with initdb;
2. second run: must report changed=0 (idempotence, read from the recap);
3. the rendered units pass `systemd-analyze verify`;
4. the server is started from the rendered unit's ExecStartPre/ExecStart
   lines, as the unit's User=/Group=, and answers dnspython on a loopback port;
5. one checker round from its unit writes the shared SQLite store (the test's
   copy of the example pool has its mirrors on loopback addresses);
6. a zone edit pushed by the playbook reaches the running server by SIGHUP
   (same process);
7. a broken zone pushed by the playbook fails at `geodns validate` and leaves
   the installed zones and the running server untouched.

Needs root (useradd, su to postgres, file ownership), ansible-core and
ansible-lint (ansible/ci-requirements.txt), systemd-analyze (Debian: systemd)
and the PostgreSQL server binaries (Debian: postgresql).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from .geodata import make_databases
from .util import free_port

# The module's first test pays for the whole deployment (two playbook runs);
# on a busy machine that alone can pass the suite's 300 s default.
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "ansible"
EXAMPLE_INVENTORY = ANSIBLE_DIR / "inventories" / "example"
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
    r"\s+ignored=(?P<ignored>\d+)",
    re.M,
)
LOOPBACK_MIRRORS = {
    "198.51.100.80": "127.0.0.80",
    '"2001:db8:2::80"': '"::1"',
    "203.0.113.80": "127.0.0.81",
    "192.0.2.10]": "127.0.0.82]",
}
# The role creates this system account (and group) for the run; teardown removes it.
SERVICE_USER = f"geodns-ci-{os.getpid()}"
PG_PASSWORD = "ci-p'ss\\w\"rd $HOME %n"  # quotes, backslash, $ and %: the escaping is tested too
COOKIE_SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # geodns_cookie_secret of the deployment


# ----------------------------------------------------------------------------- helpers


def _tool(name: str) -> str:
    """An executable from this interpreter's venv (where ci-requirements go), else PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found: pip install -r ansible/ci-requirements.txt "
            "(and apt-get install systemd postgresql for the deployment test)"
        )
    return found


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_LINT_SKIP_SCHEMA_UPDATE="1",
        PY_COLORS="0",
        NO_COLOR="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def _ansible(cmd: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """An ansible command in ansible/ with the test environment, output captured."""
    return subprocess.run(
        cmd,
        cwd=ANSIBLE_DIR,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Run:
    rc: int
    output: str
    recap: dict[str, int] = field(default_factory=dict)

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def _parse_recap(output: str) -> dict[str, int]:
    found = [m for m in RECAP.finditer(output) if m["host"] == "localhost"]
    if not found:
        return {}
    m = found[-1]
    return {k: int(v) for k, v in m.groupdict().items() if k != "host"}


def _unit_lines(path: Path) -> list[tuple[str, str]]:
    """(key, value) pairs of a unit file, continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line[0] in "#;["):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line, buf = buf + line, ""
        key, _, value = line.partition("=")
        out.append((key.strip(), value.strip()))
    return out


def _unit_argv(value: str) -> list[str]:
    """An Exec*= line as argv: systemd's quoting is close enough to the shell's
    for what the template writes; %% and $$ are systemd's escapes."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(value)]


def _env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key] = shlex.split(value)[0] if value else ""
    return env


def _query(port: int, name: str, rdtype: str, timeout: float = 2.0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def _a_records(resp: dns.message.Message) -> list[str]:
    return sorted(rd.address for rr in resp.answer if rr.rdtype == dns.rdatatype.A for rd in rr)


# ----------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    bindir: Path
    root: Path
    data: Path
    sockets: Path
    port: int

    def ctl(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop(self) -> None:
        try:
            self.ctl("stop", f"--pgdata={self.data}", "--mode=immediate", "--wait")
        except subprocess.CalledProcessError:
            pass


def _start_postgres() -> Postgres:
    bindirs = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    if not bindirs:
        pytest.fail("PostgreSQL server binaries not found: apt-get install postgresql")
    bindir = bindirs[-1].parent
    # Not below pytest's tmp_path: postgres must be able to traverse it.
    root = Path(tempfile.mkdtemp(prefix="geodns-ansible-pg-"))
    os.chmod(root, 0o755)
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    for p in (root, sockets):
        shutil.chown(p, "postgres", "postgres")
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(bindir / "initdb"),
            f"--pgdata={data}",
            "--username=postgres",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    (data / "conf.d").mkdir()
    shutil.chown(data / "conf.d", "postgres", "postgres")
    with (data / "postgresql.conf").open("a") as f:
        # No TCP until the role sets listen_addresses (and restarts the server).
        f.write(
            f"\nport = {port}\nunix_socket_directories = '{sockets}'\n"
            "listen_addresses = ''\nfsync = off\ninclude_dir = 'conf.d'\n"
        )
    pg = Postgres(bindir, root, data, sockets, port)
    pg.ctl("start", f"--pgdata={data}", f"--log={root}/postgresql.log", "--wait")
    return pg


# ----------------------------------------------------------------------------- deployment


@dataclass
class Deployment:
    root: Path
    prefix: Path
    zones_src: Path
    extra: Path
    port: int
    pg: Postgres
    runs: list[Run] = field(default_factory=list)

    @property
    def live_zones(self) -> Path:
        return self.prefix / "etc" / "geodns" / "zones"

    @property
    def unit_dir(self) -> Path:
        return self.prefix / "etc" / "systemd" / "system"

    def playbook(self, **extra_vars: str) -> Run:
        extra = json.loads(self.extra.read_text())
        extra.update(extra_vars)
        self.extra.write_text(json.dumps(extra, indent=1))
        cmd = [
            _tool("ansible-playbook"),
            "-i",
            "inventories/example/hosts.yml",
            "-i",
            "tests/inventory.yml",
            "--limit",
            "localhost",
            "-e",
            "@tests/vars.yml",
            "-e",
            f"@{self.extra}",
            "site.yml",
        ]
        proc = subprocess.run(
            cmd,
            cwd=ANSIBLE_DIR,
            env=_env(ANSIBLE_LOCAL_TEMP=str(self.root / "ansible-tmp")),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=420,
        )
        run = Run(proc.returncode, proc.stdout, _parse_recap(proc.stdout))
        self.runs.append(run)
        return run


def _mirrors_on_loopback(pool: Path) -> None:
    """The example's mirror addresses → loopback, so that the checker run by the
    test probes nothing but this machine (connection refused: mirrors down)."""
    text = pool.read_text()
    for doc, local in LOOPBACK_MIRRORS.items():
        assert doc in text, doc
        text = text.replace(doc, local)
    pool.write_text(text)


def _build_wheel(dest: Path) -> Path:
    """Build the wheel from a copy of the sources (no build/ in the work tree)."""
    src = dest / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*cache",
            "tests",
            "ansible",
            "bench",
            "zones",
            ".geodns-state",
            "demo-state",
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            str(src),
            "-w",
            str(dest / "dist"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (dest / "dist").glob("geodns-*.whl")
    return wheel


def _write_geoip(dest: Path) -> None:
    """Small GeoLite2-ASN/-City files in MaxMind format (the demo writer's code path)."""
    dest.mkdir(parents=True)
    make_databases(
        dest,
        [
            {
                "network": "127.0.0.0/8",
                "asn": 64500,
                "org": "Loopback test AS",
                "country": "DE",
                "continent": "EU",
                "location": [50.11, 8.68],
            }
        ],
    )


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    if os.geteuid() != 0:
        pytest.skip("the deployment test runs as root (su to postgres, file ownership)")
    root = Path(tempfile.mkdtemp(prefix="geodns-ansible-"))
    # The prefix stands for a root file system: its top directories are 0755
    # like the real ones, so the unprivileged account can reach what it needs.
    for top in ("", "root", "root/etc", "root/etc/systemd", "root/opt", "root/var", "root/var/lib"):
        (root / top).mkdir(exist_ok=True)
        os.chmod(root / top, 0o755)
    pg = _start_postgres()
    try:
        zones_src = root / "zones"
        shutil.copytree(EXAMPLE_INVENTORY / "files" / "zones", zones_src)
        _mirrors_on_loopback(zones_src / "pools" / "distfiles.yaml")
        _write_geoip(root / "geoip")
        wheel = _build_wheel(root / "build")
        port = free_port()
        extra = root / "test.json"
        extra.write_text(
            json.dumps(
                {
                    "geodns_test_root": str(root),
                    # a system account made by the role runs the server, as in production
                    "geodns_test_create_user": True,
                    "geodns_test_user": SERVICE_USER,
                    "geodns_test_group": SERVICE_USER,
                    "geodns_test_wheel": str(wheel),
                    "geodns_test_port": port,
                    "geodns_test_metrics_port": free_port(),
                    "geodns_test_pg_ctl": str(pg.bindir / "pg_ctl"),
                    "geodns_test_pg_data": str(pg.data),
                    "geodns_test_pg_socket_dir": str(pg.sockets),
                    "geodns_test_pg_port": pg.port,
                    "geodns_test_pg_password": PG_PASSWORD,
                    "geodns_test_cookie_secret": COOKIE_SECRET,
                },
                indent=1,
            )
        )
        d = Deployment(root, root / "root", zones_src, extra, port, pg)
        d.playbook()  # first run
        d.playbook()  # second run: idempotence
        yield d
    finally:
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["userdel", SERVICE_USER], capture_output=True, check=False)
        subprocess.run(["groupdel", SERVICE_USER], capture_output=True, check=False)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def _as_systemd_would(deployment: Deployment, unit: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The unit's settings, and Popen arguments that run its commands as systemd
    would here: User=/Group= without supplementary groups, EnvironmentFile=,
    STATE_DIRECTORY, UMask=, working directory /."""
    values = dict(_unit_lines(deployment.unit_dir / unit))
    env = dict(os.environ)
    env.update(_env_file(Path(values["EnvironmentFile"].lstrip("-"))))
    env["STATE_DIRECTORY"] = str(deployment.prefix / "var" / "lib" / values["StateDirectory"])
    popen: dict[str, Any] = {
        "env": env,
        "cwd": "/",
        "user": values["User"],
        "group": values["Group"],
        "extra_groups": [],
        "umask": int(values["UMask"], 8),
    }
    return values, popen


@pytest.fixture(scope="module")
def deployed_server(deployment: Deployment) -> Iterator[Server]:
    """The installed server, started the way systemd would from the rendered unit."""
    first = deployment.runs[0]
    assert first.rc == 0, f"first playbook run failed:\n{first.tail()}"
    values, popen = _as_systemd_would(deployment, "geodns.service")
    pre = subprocess.run(
        _unit_argv(values["ExecStartPre"]), capture_output=True, text=True, timeout=60, **popen
    )
    assert pre.returncode == 0, f"ExecStartPre failed: {pre.stderr}"
    log = deployment.root / "geodns-serve.log"
    argv = _unit_argv(values["ExecStart"])
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **popen)
    srv = Server(proc, log, deployment.port)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"geodns serve exited with {proc.returncode}; command: {shlex.join(argv)}\n"
                    f"{srv.log_tail()}"
                )
            try:
                _query(srv.port, "example.org.", "SOA", timeout=0.5)
                break
            except (dns.exception.Timeout, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"geodns serve did not answer on 127.0.0.1:{srv.port} within 30 s; "
                        f"command: {shlex.join(argv)}\n{srv.log_tail()}"
                    )
                time.sleep(0.3)
        yield srv
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- lint and syntax


def test_ansible_lint_production_profile_is_clean() -> None:
    proc = _ansible(
        [_tool("ansible-lint"), "--offline", "--profile", "production", "--nocolor"], timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "inventories",
    [["inventories/example/hosts.yml"], ["inventories/example/hosts.yml", "tests/inventory.yml"]],
    ids=["example", "example+local"],
)
def test_site_playbook_syntax_check(inventories: list[str]) -> None:
    cmd = [_tool("ansible-playbook"), "--syntax-check"]
    for inv in inventories:
        cmd += ["-i", inv]
    proc = _ansible(cmd + ["site.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr


def test_example_inventory_places_two_dns_nodes_and_a_checker() -> None:
    proc = _ansible([_tool("ansible-inventory"), "-i", "inventories/example/hosts.yml", "--list"])
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert sorted(inv["geodns_servers"]["hosts"]) == ["ns1.example.org", "ns2.example.org"]
    assert inv["geodns_checkers"]["hosts"] == ["checker1.example.org"]
    assert inv["geodns_database"]["hosts"] == ["checker1.example.org"]


# ----------------------------------------------------------------------------- deployment


@pytest.mark.slow
def test_first_run_deploys_and_second_run_changes_nothing(deployment: Deployment) -> None:
    first, second = deployment.runs[:2]
    assert first.rc == 0, f"first run failed:\n{first.tail()}"
    assert first.recap.get("failed") == 0 and first.recap.get("changed", 0) > 0, first.recap
    assert second.rc == 0, f"second run failed:\n{second.tail()}"
    assert second.recap, f"no recap for localhost in:\n{second.tail()}"
    changed = [line for line in second.output.splitlines() if line.startswith("changed:")]
    assert second.recap["changed"] == 0, f"second run changed {changed}:\n{second.tail()}"
    assert second.recap["failed"] == 0

    prefix = deployment.prefix
    venv = prefix / "opt" / "geodns" / "venv"
    assert (venv / "bin" / "geodns").exists() and (venv / "bin" / "checker").exists()
    # the inventory's files, validated and switched in
    src = sorted(
        p.relative_to(deployment.zones_src) for p in deployment.zones_src.rglob("*") if p.is_file()
    )
    live = sorted(
        p.relative_to(deployment.live_zones)
        for p in deployment.live_zones.rglob("*")
        if p.is_file()
    )
    assert live == src
    for rel in src:
        assert (deployment.live_zones / rel).read_bytes() == (
            deployment.zones_src / rel
        ).read_bytes()
    # readable by the service's group only, and reachable: dirs 0750, files 0640
    account = pwd.getpwnam(SERVICE_USER)
    assert account.pw_uid < 1000 and account.pw_shell == "/usr/sbin/nologin"  # a system user
    group = grp.getgrgid(account.pw_gid).gr_name
    assert group == SERVICE_USER
    for p in [deployment.live_zones, *deployment.live_zones.rglob("*")]:
        st = p.stat()
        assert (grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o777) == (
            group,
            0o750 if p.is_dir() else 0o640,
        ), p
    # operator-provided GeoIP databases
    geoip = prefix / "var" / "lib" / "GeoIP"
    for name in ("GeoLite2-ASN.mmdb", "GeoLite2-City.mmdb"):
        assert (geoip / name).read_bytes() == (deployment.root / "geoip" / name).read_bytes()
    # the store URL lives in a 0640 environment file, not in the world-readable unit
    env_file = prefix / "etc" / "geodns" / "geodns.env"
    assert env_file.stat().st_mode & 0o777 == 0o640
    state = prefix / "var" / "lib" / "geodns"
    assert _env_file(env_file)["GEODNS_STORE"] == f"sqlite:///{state}/health.sqlite"
    assert "GEODNS_STORE" not in (deployment.unit_dir / "geodns.service").read_text()


@pytest.mark.slow
def test_rendered_units_follow_the_hardening_conventions(deployment: Deployment) -> None:
    server = dict(_unit_lines(deployment.unit_dir / "geodns.service"))
    expected = {
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "geodns",
        "SystemCallFilter": "@system-service",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",  # AF_UNIX: sd_notify
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30s",
    }
    assert {k: server.get(k) for k in expected} == expected
    checker = dict(_unit_lines(deployment.unit_dir / "geodns-checker.service"))
    # same account and state directory: the checker writes the SQLite store the server reads
    for key in ("User", "Group", "StateDirectory", "EnvironmentFile"):
        assert checker[key] == server[key], key
    assert checker["Type"] == "oneshot" and "--once" in _unit_argv(checker["ExecStart"])
    timer = dict(_unit_lines(deployment.unit_dir / "geodns-checker.timer"))
    assert timer["OnUnitInactiveSec"] == "2min"


@pytest.mark.slow
def test_rendered_units_pass_systemd_analyze_verify(deployment: Deployment) -> None:
    units = sorted(deployment.unit_dir.glob("geodns*"))
    assert [u.name for u in units] == [
        "geodns-checker.service",
        "geodns-checker.timer",
        "geodns.service",
    ]
    proc = subprocess.run(
        [
            shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze",
            "verify",
            "--man=no",
            *map(str, units),
        ],
        env=_env(SYSTEMD_UNIT_PATH=f"{deployment.unit_dir}:", SYSTEMD_LOG_COLOR="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # warnings (unknown keys, bad values) do not change the exit code: read them
    ours = [line for line in out.splitlines() if "geodns" in line]
    assert ours == [], out


@pytest.mark.slow
def test_server_started_from_the_unit_answers_on_loopback(deployed_server: Server) -> None:
    resp = _query(deployed_server.port, "mail.example.org.", "A")
    assert resp.rcode() == dns.rcode.NOERROR
    assert resp.flags & dns.flags.AA
    assert not resp.flags & dns.flags.RA
    assert [rr.to_text() for rr in resp.answer] == ["mail.example.org. 3600 IN A 192.0.2.25"]
    soa = _query(deployed_server.port, "example.org.", "SOA")
    assert soa.rcode() == dns.rcode.NOERROR
    assert soa.answer[0][0].mname.to_text() == "ns1.example.org."
    ns = _query(deployed_server.port, "example.org.", "NS")
    assert sorted(rd.target.to_text() for rd in ns.answer[0]) == [
        "ns1.example.org.",
        "ns2.example.org.",
    ]


@pytest.mark.slow
def test_cookie_secret_is_deployed_unseen_and_used(
    deployment: Deployment, deployed_server: Server
) -> None:
    """geodns_cookie_secret: one file for every node (0640, root:group), never
    printed by the playbook, named in the unit, and the running server's
    cookies verify with it (RFC 9018: any node with the secret accepts them)."""
    import struct

    import dns.edns

    from geodns.dns.cookies import server_cookie

    path = deployment.prefix / "etc" / "geodns" / "cookie-secret"
    assert path.read_text() == COOKIE_SECRET + "\n"
    st = path.stat()
    assert (st.st_uid, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o777) == (
        0,
        SERVICE_USER,
        0o640,
    )
    for run in deployment.runs:
        assert COOKIE_SECRET not in run.output
    unit = dict(_unit_lines(deployment.unit_dir / "geodns.service"))
    assert f"--cookie-secret-file {path}" in unit["ExecStart"]
    client = bytes(range(8))
    q = dns.message.make_query("mail.example.org.", "A", use_edns=0)
    q.use_edns(0, options=[dns.edns.CookieOption(client, b"")])
    resp = dns.query.udp(q, "127.0.0.1", port=deployed_server.port, timeout=2)
    (cookie,) = [o for o in resp.options if isinstance(o, dns.edns.CookieOption)]
    ts = struct.unpack("!I", cookie.server[4:8])[0]
    ip = bytes((127, 0, 0, 1))
    assert cookie.server == server_cookie(bytes.fromhex(COOKIE_SECRET), client, ip, ts)


@pytest.mark.slow
def test_checker_from_the_unit_writes_the_store_the_server_shares(
    deployment: Deployment, deployed_server: Server
) -> None:
    """One timer round (ExecStart of the oneshot unit) as the service account:
    the SQLite store lands in the shared state directory, private to the group."""
    values, popen = _as_systemd_would(deployment, "geodns-checker.service")
    argv = _unit_argv(values["ExecStart"])
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, **popen)
    assert run.returncode == 0, f"{shlex.join(argv)}\n{run.stdout}\n{run.stderr}"
    store = deployment.prefix / "var" / "lib" / "geodns" / "health.sqlite"
    st = store.stat()
    assert pwd.getpwuid(st.st_uid).pw_name == SERVICE_USER
    assert st.st_mode & 0o007 == 0, oct(st.st_mode)
    venv_bin = Path(argv[0]).parent
    report = subprocess.run(
        [str(venv_bin / "checker"), "report", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        **popen,
    )
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)["addresses"]
    assert sorted((r["mirror"], r["address"], r["state"]) for r in rows) == [
        ("mirror-eu", "127.0.0.80", "down"),
        ("mirror-eu", "::1", "down"),
        ("mirror-us", "127.0.0.81", "down"),
        ("origin", "127.0.0.82", "down"),
    ]
    # the server, same account, keeps answering beside the store
    assert _query(deployed_server.port, "example.org.", "SOA").rcode() == dns.rcode.NOERROR
    assert deployed_server.proc.poll() is None


def _set_mail_address(zones: Path, address: str) -> None:
    zone = zones / "example.org.yaml"
    text, n = re.subn(r"mail: \{A: [^}]*\}", f"mail: {{A: {address}}}", zone.read_text())
    assert n == 1
    zone.write_text(text)


def _wait_for_mail(deployed_server: Server, address: str) -> list[str]:
    deadline = time.monotonic() + 15
    got: list[str] = []
    while time.monotonic() < deadline:
        got = _a_records(_query(deployed_server.port, "mail.example.org.", "A"))
        if got == [address]:
            break
        time.sleep(0.2)
    return got


@pytest.mark.slow
def test_zone_edit_reaches_the_running_server_by_sighup(
    deployment: Deployment, deployed_server: Server
) -> None:
    _set_mail_address(deployment.zones_src, "192.0.2.26")
    run = deployment.playbook(
        geodns_test_reload_command=f"/usr/bin/kill -HUP {deployed_server.proc.pid}"
    )
    assert run.rc == 0, run.tail()
    assert run.recap["changed"] > 0
    assert "RUNNING HANDLER [geodns : Reload geodns without systemd]" in run.output
    assert "Restart geodns" not in run.output.split("PLAY RECAP")[0].split("RUNNING HANDLER")[-1]
    assert _wait_for_mail(deployed_server, "192.0.2.26") == ["192.0.2.26"], (
        deployed_server.log_tail()
    )
    assert deployed_server.proc.poll() is None, "the server was restarted or died, not reloaded"


@pytest.mark.slow
def test_broken_zone_fails_validation_and_leaves_the_server_alone(
    deployment: Deployment, deployed_server: Server
) -> None:
    live_zone = deployment.live_zones / "example.org.yaml"
    before = live_zone.read_bytes()
    serving = _a_records(_query(deployed_server.port, "mail.example.org.", "A"))
    assert len(serving) == 1
    _set_mail_address(deployment.zones_src, "300.1.2.3")
    run = deployment.playbook(
        geodns_test_reload_command=f"/usr/bin/kill -HUP {deployed_server.proc.pid}"
    )
    try:
        assert run.rc != 0, run.tail()
        assert run.recap["failed"] == 1, run.recap
        assert "geodns validate rejected the zones" in run.output, run.tail()
        assert "300.1.2.3" in run.output, run.tail()  # geodns validate's own file:line message
        assert "RUNNING HANDLER" not in run.output
        # the bad file got as far as staging and no further
        staged = deployment.prefix / "etc" / "geodns" / "zones.staging" / "example.org.yaml"
        assert "300.1.2.3" in staged.read_text()
        assert live_zone.read_bytes() == before
        time.sleep(0.5)
        assert _a_records(_query(deployed_server.port, "mail.example.org.", "A")) == serving
        assert deployed_server.proc.poll() is None
    finally:
        _set_mail_address(deployment.zones_src, serving[0])


@pytest.mark.slow
def test_postgresql_role_created_the_store_database(deployment: Deployment) -> None:
    pg = deployment.pg
    env = dict(os.environ, PGPASSWORD=PG_PASSWORD, PGCONNECT_TIMEOUT="5")
    proc = subprocess.run(
        [
            "psql",
            "--no-psqlrc",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            "geodns",
            "-d",
            "geodns",
            "-c",
            "SELECT current_user, current_database(), "
            "(SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'geodns')",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "geodns|geodns|geodns"
    hba = (pg.data / "pg_hba.conf").read_text()
    assert "host geodns geodns 127.0.0.0/8 scram-sha-256" in hba
    assert (pg.data / "conf.d" / "geodns.conf").read_text().count(
        "listen_addresses = '127.0.0.1'"
    ) == 1
    # what the role provides is enough for geodns: a checker round creates the
    # schema (Alembic) and writes its results as the geodns role, over TCP
    url = f"postgresql+psycopg://geodns:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{pg.port}/geodns"
    checker = Path(sys.executable).parent / "checker"  # this venv has the postgresql extra
    run = subprocess.run(
        [str(checker), "run", "--once", "--config", str(deployment.live_zones), "--store", url],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, GEODNS_STORE=""),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run(
        [str(checker), "report", "--json", "--store", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert len(json.loads(report.stdout)["addresses"]) == len(LOOPBACK_MIRRORS)


def _local_play(
    tmp_path: Path,
    name: str,
    task: dict[str, Any],
    extra: dict[str, Any],
    vars_files: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one task on localhost with --connection local and extra variables."""
    play: dict[str, Any] = {"name": name, "hosts": "localhost", "gather_facts": False}
    if vars_files:
        play["vars_files"] = vars_files
    play["tasks"] = [task]
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([play]))
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    return _ansible(
        [
            _tool("ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-e",
            f"@{tmp_path / 'extra.json'}",
            str(playbook),
        ]
    )


def test_geoipupdate_branch_renders_its_configuration(tmp_path: Path) -> None:
    """With a MaxMind account: GeoIP.conf (0600) and a timer for geoipupdate.

    The package (Debian contrib) and the download are switched off here."""
    if os.geteuid() != 0:
        pytest.skip("renders files owned by root")
    proc = _local_play(
        tmp_path,
        "GeoIP branch of the geodns role",
        {
            "name": "Run the GeoIP tasks",
            "ansible.builtin.include_role": {"name": "geodns", "tasks_from": "geoip.yml"},
        },
        {
            "geodns_prefix": str(tmp_path / "root"),
            "geodns_geoipupdate_account_id": 123456,
            "geodns_geoipupdate_license_key": "not-a-real-key",
            "geodns_geoipupdate_install": False,
            "geodns_geoipupdate_run_now": False,
            "geodns_manage_systemd": False,
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    conf = tmp_path / "root" / "etc" / "GeoIP.conf"
    assert conf.stat().st_mode & 0o777 == 0o600
    lines = [line for line in conf.read_text().splitlines() if not line.startswith("#")]
    assert lines == [
        "AccountID 123456",
        "LicenseKey not-a-real-key",
        "EditionIDs GeoLite2-ASN GeoLite2-City",
        f"DatabaseDirectory {tmp_path / 'root' / 'var' / 'lib' / 'GeoIP'}",
    ]
    units = tmp_path / "root" / "etc" / "systemd" / "system"
    service = dict(_unit_lines(units / "geodns-geoipupdate.service"))
    assert service["ReadWritePaths"] == str(tmp_path / "root" / "var" / "lib" / "GeoIP")
    assert (units / "geodns-geoipupdate.timer").exists()


def test_anycast_service_addresses_render_into_the_unit(tmp_path: Path) -> None:
    """geodns_service_addresses: the flags, CAP_NET_ADMIN, AF_NETLINK and an
    ExecStopPost= that withdraws the addresses even after a crash."""
    role = ANSIBLE_DIR / "roles" / "geodns"
    unit = tmp_path / "geodns.service"
    proc = _local_play(
        tmp_path,
        "Render the geodns unit",
        {
            "name": "Template the unit",
            "ansible.builtin.template": {
                "src": str(role / "templates" / "geodns.service.j2"),
                "dest": str(unit),
                "mode": "0644",
            },
        },
        {
            "geodns_prefix": str(tmp_path / "root"),
            "geodns_service_addresses": ["192.0.2.53/32", "2001:db8::53/128"],
        },
        vars_files=[str(role / "defaults" / "main.yml"), str(role / "vars" / "main.yml")],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = unit.read_text()
    assert (
        "--service-address 192.0.2.53/32" in text and "--service-address 2001:db8::53/128" in text
    )
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN" in text
    assert "AF_NETLINK" in text.split("RestrictAddressFamilies=")[1].splitlines()[0]
    post = next(line for line in text.splitlines() if line.startswith("ExecStopPost="))
    assert post.endswith(
        "withdraw --service-dev lo --service-address 192.0.2.53/32"
        " --service-address 2001:db8::53/128"
    )


def test_abuse_settings_render_into_the_unit(tmp_path: Path) -> None:
    """geodns_cookie_secret set: the unit names the shared secret file; the
    RRL and TCP slot variables become their flags; geodns_cookies: false adds
    --no-cookies instead (and a secret is then not passed)."""
    role = ANSIBLE_DIR / "roles" / "geodns"

    def render(extra: dict[str, Any]) -> str:
        unit = tmp_path / "geodns.service"
        proc = _local_play(
            tmp_path,
            "Render the geodns unit",
            {
                "name": "Template the unit",
                "ansible.builtin.template": {
                    "src": str(role / "templates" / "geodns.service.j2"),
                    "dest": str(unit),
                    "mode": "0644",
                },
            },
            {"geodns_prefix": str(tmp_path / "root"), **extra},
            vars_files=[str(role / "defaults" / "main.yml"), str(role / "vars" / "main.yml")],
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return dict(_unit_lines(unit))["ExecStart"]

    start = render(
        {
            "geodns_cookie_secret": COOKIE_SECRET,
            "geodns_rrl_rate": 20,
            "geodns_rrl_slip": 1,
            "geodns_rrl_exempt": ["192.0.2.0/24", "2001:db8::/32"],
            "geodns_tcp_max_per_source": 8,
        }
    )
    argv = _unit_argv(start)
    secret_file = str(tmp_path / "root" / "etc" / "geodns" / "cookie-secret")
    assert argv[argv.index("--cookie-secret-file") + 1] == secret_file
    assert argv[argv.index("--rrl-rate") + 1] == "20"
    assert argv[argv.index("--rrl-slip") + 1] == "1"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--rrl-exempt"] == [
        "192.0.2.0/24",
        "2001:db8::/32",
    ]
    assert argv[argv.index("--tcp-max-per-source") + 1] == "8"
    assert COOKIE_SECRET not in start  # the unit names the file, never the secret
    start = render({"geodns_cookie_secret": COOKIE_SECRET, "geodns_cookies": False})
    assert "--no-cookies" in start and "--cookie-secret-file" not in start
    start = render({})  # no shared secret: each node makes its own in its state dir
    assert "--cookie-secret-file" not in start and "--no-cookies" not in start
    argv = _unit_argv(start)
    assert argv[argv.index("--rrl-rate") + 1] == "50"


def test_a_malformed_cookie_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    role = ANSIBLE_DIR / "roles" / "geodns"
    secret = "not-hex-but-a-secret-all-the-same"
    proc = _local_play(
        tmp_path,
        "Check the geodns role variables",
        {
            "name": "Run the role's checks",
            "ansible.builtin.include_role": {"name": "geodns", "tasks_from": "assert.yml"},
        },
        {"geodns_cookie_secret": secret, "geodns_package_spec": "geodns"},
        vars_files=[str(role / "defaults" / "main.yml")],
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "TASK [geodns : Check the DNS cookie secret]" in out
    assert "fatal:" in out.split("TASK [geodns : Check the DNS cookie secret]")[1]
    assert secret not in out
