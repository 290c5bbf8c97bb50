"""Start, probe and stop the DNS servers the benchmarks compare.

Every server runs on 127.0.0.1 on a free port, pinned to one CPU with taskset,
in its own process group, with its stderr in a log file. `Servers` is a context
manager that stops (TERM, then KILL after a grace period) every process it
started, whatever happens — exceptions, Ctrl-C, SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

REPO = Path(__file__).resolve().parent.parent
APT_PACKAGES = {
    "gdnsd": "gdnsd",
    "knotd": "knot",
    "dnsperf": "dnsperf",
    "kdig": "knot-dnsutils",
    # bench/cluster
    "bird": "bird2",
    "birdc": "bird2",
    "unbound": "unbound",
    "pg_ctlcluster": "postgresql",
}
KNOT_GEOIP_SO = "knot/modules-3.2/geoip.so"


class BenchError(RuntimeError):
    pass


NICE = 0  # set by --nice: applied to the servers and to dnsperf alike
# set by --rt: the servers run SCHED_FIFO at this priority, so the other
# processes of a shared machine cannot preempt them (the kernel's RT throttling,
# sched_rt_runtime_us, still leaves 5% of the CPU to everything else). dnsperf
# stays SCHED_OTHER (niced by RT_DNSPERF_NICE): twenty FIFO processes on one CPU
# starve each other, which an open-loop run reads as loss.
RT_PRIORITY = 0
RT_DNSPERF_NICE = -15


def prefix(cpu: int | None, server: bool = True) -> list[str]:
    """taskset (pinning) and nice (priority over other work on a shared machine) for argv."""
    out = ["taskset", "-c", str(cpu)] if cpu is not None else []
    if RT_PRIORITY and server:
        out += ["chrt", "-f", str(RT_PRIORITY)]
    nice = NICE or (RT_DNSPERF_NICE if RT_PRIORITY and not server else 0)
    if nice:
        out += ["nice", "-n", str(nice)]
    return out


# --------------------------------------------------------------------------- packages


def ensure_packages(
    *, install: bool = True, need: tuple[str, ...] = ("gdnsd", "knotd", "dnsperf")
) -> None:
    """Install the Debian packages (idempotent): gdnsd, knot + knot-module-geoip, dnsperf;
    or whatever provides the programs in `need` (APT_PACKAGES)."""
    missing = list(dict.fromkeys(APT_PACKAGES[b] for b in need if shutil.which(b) is None))
    if "knotd" in need and not _knot_geoip_present():
        missing.append("knot-module-geoip")
    if not missing:
        return
    if not install:
        raise BenchError(
            f"missing packages: {' '.join(missing)} (run without --no-install, as root)"
        )
    if os.geteuid() != 0:
        raise BenchError(
            f"missing packages {' '.join(missing)}: "
            f"run as root or `apt-get install {' '.join(missing)}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"[bench] installing {' '.join(missing)} with apt-get", file=sys.stderr)
    # The packages' maintainer scripts would start knot/gdnsd as system services on port 53;
    # the benchmark starts its own. A policy-rc.d that says "no" (exit 101) stops that, and
    # is removed again if we created it.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# temporary, written by geodns bench/servers.py\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    still = [b for b in need if shutil.which(b) is None]
    if still:
        raise BenchError(f"still missing after apt-get: {still}")


def _knot_geoip_present() -> bool:
    return any(
        Path(d, KNOT_GEOIP_SO).exists()
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")
    )


def geodns_cmd() -> list[str] | None:
    """argv prefix that runs the geodns CLI: .venv/bin/geodns, else `python -m geodns.cli`
    from this checkout (same code, for a tree whose package is not installed yet)."""
    b = REPO / ".venv" / "bin" / "geodns"
    if b.exists():
        return [str(b)]
    w = shutil.which("geodns")
    if w:
        return [w]
    py = REPO / ".venv" / "bin" / "python"
    if (REPO / "geodns" / "cli.py").exists():
        return [str(py if py.exists() else Path(sys.executable)), "-m", "geodns.cli"]
    return None


def _geodns_env() -> dict[str, str]:
    pp = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{pp}" if pp else str(REPO)}


_SERVE_HELP: str | None = None


def geodns_can_serve() -> tuple[bool, str]:
    global _SERVE_HELP
    cmd = geodns_cmd()
    if cmd is None:
        return False, "no geodns executable (.venv/bin/geodns) and no geodns/cli.py"
    try:
        r = subprocess.run(
            [*cmd, "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_geodns_env(),
            cwd=REPO,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"geodns serve --help failed: {e}"
    if r.returncode != 0:
        return (
            False,
            f"geodns serve --help exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}",
        )
    _SERVE_HELP = r.stdout
    return True, " ".join(cmd)


def geodns_serve_argv(
    confdir: Path,
    port: int,
    asn_db: Path,
    city_db: Path,
    state: Path,
    log_level: str,
    extra: tuple[str, ...] = (),
    workers: int = 1,
) -> list[str]:
    cmd = geodns_cmd()
    if cmd is None:
        raise BenchError("geodns is not available")
    if _SERVE_HELP is None:
        geodns_can_serve()
    help_text = _SERVE_HELP or ""
    pre = [] if "--log-level" in help_text else ["--log-level", log_level]
    post = ["--log-level", log_level] if "--log-level" in help_text else []
    if "--state-dir" in help_text:
        post += ["--state-dir", str(state)]
    if "--rrl-rate" in help_text and "--rrl-rate" not in extra:
        # every bench client is 127.0.0.1: response rate limiting would cut the
        # load to 50 answers a second; dns_qps measures it separately (geodns-rrl)
        post += ["--rrl-rate", "0"]
    if "--store" in help_text:
        post += [
            "--store",
            "none",
        ]  # no health store: every mirror up (the C servers have none either)
    return [
        *cmd,
        *pre,
        "serve",
        "--config",
        str(confdir),
        "--listen",
        f"127.0.0.1:{port}",
        "--geoip-asn",
        str(asn_db),
        "--geoip-city",
        str(city_db),
        "--workers",
        str(workers),
        *post,
        *extra,
    ]


# --------------------------------------------------------------------------- ports / probing


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (bounded retries)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise BenchError("no free port")


def query(port: int, qname: str, qtype: str, ecs: str | None = None, timeout: float = 1.0):  # type: ignore[no-untyped-def]
    import dns.edns
    import dns.message
    import dns.query

    opts = []
    if ecs:
        addr, plen = ecs.split("/")
        opts.append(dns.edns.ECSOption(addr, int(plen)))
    q = dns.message.make_query(qname, qtype, use_edns=0, options=opts, payload=1232)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def wait_ready(proc: Proc, qname: str, deadline_s: float = 60.0) -> float:
    """Poll with a real DNS query until the server answers; returns seconds waited."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < deadline_s:
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.name} exited with {proc.popen.returncode} during startup:\n"
                f"{proc.log_tail()}"
            )
        try:
            r = query(proc.port, qname, "A", timeout=0.5)
            if r.rcode() == 0:
                return time.monotonic() - t0
            last = f"rcode {r.rcode()}"
        except Exception as e:  # noqa: BLE001 - not up yet
            last = repr(e)
        time.sleep(0.1)
    raise BenchError(
        f"{proc.name} did not answer {qname} within {deadline_s}s ({last}):\n{proc.log_tail()}"
    )


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path
    cpu: int | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """utime+stime of the whole process (all threads) and of its live
        descendants (geodns --workers N forks the workers)."""
        total = 0
        found = False
        for pid in descendants(self.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
            found = True
        return total / os.sysconf("SC_CLK_TCK") if found else float("nan")

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def descendants(pid: int) -> list[int]:
    """pid and every live process below it (bounded)."""
    todo = [pid]
    seen: list[int] = []
    while todo and len(seen) < 1000:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            pass
    return seen


def tree_rss_kib(pid: int) -> int:
    """RSS of pid plus all its descendants (geodns may fork workers)."""
    return sum(max(0, status_kib(p, "VmRSS")) for p in descendants(pid))


@dataclass
class Servers:
    """Context manager owning every process the benchmark starts."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    _old: dict[int, object] = field(default_factory=dict)

    def __enter__(self) -> Servers:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    def spawn(
        self,
        name: str,
        argv: list[str],
        port: int,
        cpu: int | None,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        cmd = prefix(cpu) + argv
        fh = open(log, "wb")  # noqa: SIM115 - handed to the child
        try:
            p = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.workdir,
                env=env,
                start_new_session=True,
            )
        finally:
            fh.close()
        proc = Proc(name, p, port, log, cpu)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 10.0) -> int | None:
        if proc not in self.procs:
            return proc.popen.returncode
        self.procs.remove(proc)
        if proc.popen.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # its own group (start_new_session)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait(5)
        return proc.popen.returncode

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            try:
                self.stop(proc)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"[bench] failed to stop {proc.name} pid {proc.pid}: {e}", file=sys.stderr)

    # ------------------------------------------------------------------ the three servers

    def start_gdnsd(self, confdir: Path, port: int, cpu: int | None) -> Proc:
        return self.spawn("gdnsd", ["gdnsd", "-c", str(confdir), "start"], port, cpu)

    def start_knot(self, conf: Path, port: int, cpu: int | None) -> Proc:
        return self.spawn("knot", ["knotd", "-c", str(conf)], port, cpu)

    def start_geodns(
        self,
        confdir: Path,
        port: int,
        cpu: int | None,
        asn_db: Path,
        city_db: Path,
        *,
        name: str = "geodns",
        log_level: str = "warning",
        extra: tuple[str, ...] = (),
        workers: int = 1,
        udp: str | None = None,
    ) -> Proc:
        """udp: the UDP path (GEODNS_UDP_BATCH: auto/native/python/off); None = as set."""
        state = self.workdir / f"{name}-state"
        state.mkdir(exist_ok=True)
        env = {**_geodns_env(), "STATE_DIRECTORY": str(state), "PYTHONUNBUFFERED": "1"}
        if udp is not None:
            env["GEODNS_UDP_BATCH"] = udp
        argv = geodns_serve_argv(confdir, port, asn_db, city_db, state, log_level, extra, workers)
        return self.spawn(name, argv, port, cpu, cwd=state, env=env)


def udp_rcvbuf_errors() -> int:
    """System-wide count of UDP datagrams the kernel dropped for a full receive buffer."""
    try:
        lines = [
            ln.split()
            for ln in Path("/proc/net/snmp").read_text().splitlines()
            if ln.startswith("Udp:")
        ]
        head, vals = lines[0], lines[1]
        return int(vals[head.index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return -1
