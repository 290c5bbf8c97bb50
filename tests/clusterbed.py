"""The cluster bed: anycast DNS nodes, BGP, PostgreSQL, regional checkers, a resolver.

Real parts only, each in its own network namespace (tests/netns.py); shared
by tests/test_cluster.py (asserts) and bench/cluster (prints the figures).

                 client 10.99.9.2   Unbound on 127.0.0.1:53, stub zone cluster.test
                    │                → 10.99.53.53 (the anycast address)
                 router 10.99.9.1 / 10.99.0.1   BIRD: eBGP AS 65000 with each node,
                    │                 BFD, ECMP ("merge paths") into the kernel,
                    │                 L4 multipath hash (each query's ports pick a node)
    ───────────── LAN 10.99.0.0/24 (a bridge in its own namespace) ─────────────
    n1 .31  n2 .32  n3 .33   geodns serve --service-address 10.99.53.53/32 (put on lo
                             while serving) + BIRD: AS 65001, announces lo's /32, BFD
    db .5                    PostgreSQL, TCP 5432 (the store of every node and checker)
    eu .41  us .42  ap .43   checker run --region eu|us|ap  (servers: --quorum 2)
    m1 .11  m2 .12  m3 .13   HTTPS demo mirrors (demo/mirror.py), 443

How a node's route goes away (the mechanism chosen, in the order they act):
  1. geodns stopping (SIGTERM): it takes 10.99.53.53 off lo first, BIRD's
     `direct` protocol loses the /32 and BGP withdraws it, then geodns keeps
     answering in-flight queries for --service-drain before closing.
  2. geodns dying (SIGKILL, crash): the address would stay on lo, so the
     node's supervisor runs `geodns withdraw` once the process has exited —
     what systemd's `ExecStopPost=` does in the Ansible unit. `Node` here is
     that supervisor.
  3. the node vanishing whole (link, kernel, power): BFD between router and
     node (100 ms × 3) takes the BGP session down, and with it the route; the
     BGP hold timer (3 s) is the backstop where BFD is not running.
A wedged-but-alive geodns is systemd's watchdog's job (README), not shown here.

Every wait is bounded; `Cluster.close()` stops every process it started (by
pid), then the bed removes the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.query
import dns.rcode

from . import pg
from .netns import BedError, Host, MirrorHost, NetnsBed, unavailable_reason

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent

ZONE = "cluster.test"
DL = f"dl.{ZONE}"
ANYCAST = "10.99.53.53"
ROUTER = ("10.99.0.1", "fd00:99::1")
CLIENT = ("10.99.9.2", "fd00:99:9::2")
CLIENT_GW = ("10.99.9.1", "fd00:99:9::1")
DB = ("10.99.0.5", "fd00:99::5")
NODES = {"n1": "10.99.0.31", "n2": "10.99.0.32", "n3": "10.99.0.33"}
REGIONS = {"eu": "10.99.0.41", "us": "10.99.0.42", "ap": "10.99.0.43"}
MIRRORS = {"m1": "10.99.0.11", "m2": "10.99.0.12", "m3": "10.99.0.13"}
ALL = sorted(MIRRORS.values())
POOL = "mirrors"

# Short intervals so the whole bed runs in a few minutes; the bounds below
# are derived from them, not tuned to one machine.
HEALTH_INTERVAL = 0.5  # geodns --health-interval
CHECK_INTERVAL = 1.0  # tls and freshness probe interval
CHECK_TIMEOUT = 1.0
FALL, RISE = 2, 1
QUORUM = 2
REGION_TIMEOUT = 5.0  # geodns --region-timeout
TTL = 2  # dl.cluster.test
JITTER = 0.1  # the checker's default interval jitter
SLACK = 2.5  # a loaded 2-core machine: process wake-ups, Python, commits
# a checker calls a mirror down after `fall` failed probes one interval apart
# (a refused or timed-out connection at the first: it skips `fall`)
CHECK_ROUND = FALL * CHECK_INTERVAL * (1 + JITTER) + CHECK_TIMEOUT
# a region's silence is noticed at the server's next re-read of the vote
REGION_REFRESH = min(60.0, REGION_TIMEOUT / 4)
BFD_MS, BFD_MULT = 100, 3
HOLD, KEEPALIVE = 3, 1
PY = sys.executable


class ScenarioError(AssertionError):
    """A scenario's expectation failed; the text says which and shows the logs."""


def wait_until(
    what: str,
    pred: Callable[[], T],
    timeout: float,
    step: float = 0.02,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll `pred` until it returns something true (bounded); return that."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            break
        time.sleep(step)
    raise ScenarioError(f"{what}: not within {timeout:.1f} s" + (f"\n{detail()}" if detail else ""))


# --------------------------------------------------------------------------- configuration


def zone_yaml() -> str:
    return f"""\
zone: {ZONE}
soa: {{mname: ns1.{ZONE}, rname: hostmaster.{ZONE}, serial: 1, minimum: 1}}
ns: [ns1.{ZONE}]
records:
  ns1: {{A: {ANYCAST}}}
steered:
  dl: {{pool: {POOL}, answers: 3, ttl: {TTL}}}
"""


def pool_yaml() -> str:
    lines = [
        f"pool: {POOL}",
        "checks:",
        f"  tls: {{warn_days: 14, interval: {CHECK_INTERVAL}}}",
        f"  freshness: {{path: /timestamp.txt, max_lag: 1h, interval: {CHECK_INTERVAL}}}",
        f"  fall: {FALL}",
        f"  rise: {RISE}",
        f"  timeout: {CHECK_TIMEOUT}",
        "mirrors:",
    ]
    for role, v4 in MIRRORS.items():
        lines.append(f'  - {{name: {role}, url: "https://{role}.mirrors.test/", ipv4: [{v4}]}}')
    return "\n".join(lines) + "\n"


def bird_node_conf(address: str) -> str:
    """A node announces the anycast /32 while it is on lo, nothing else."""
    return f"""\
log stderr all;
debug protocols {{ states, events }};
router id {address};
protocol device {{ scan time 10; }}
protocol direct anycast {{
    ipv4 {{ import where net = {ANYCAST}/32; }};
    interface "lo";
}}
protocol bfd {{
    interface "eth0" {{ min rx interval {BFD_MS} ms; min tx interval {BFD_MS} ms;
                        multiplier {BFD_MULT}; }};
}}
protocol bgp uplink {{
    local {address} as 65001;
    neighbor {ROUTER[0]} as 65000;
    hold time {HOLD}; keepalive time {KEEPALIVE};
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    bfd on;
    ipv4 {{ import none; export where net = {ANYCAST}/32; }};
}}
"""


def bird_router_conf() -> str:
    peers = "\n".join(
        f"protocol bgp {name} from node {{ neighbor {addr} as 65001; }}"
        for name, addr in NODES.items()
    )
    return f"""\
log stderr all;
debug protocols {{ states, events }};
router id {ROUTER[0]};
protocol device {{ scan time 10; }}
protocol kernel {{
    ipv4 {{ import none; export all; }};
    merge paths on;   # equal BGP routes from several nodes → one ECMP route
}}
protocol bfd {{
    interface "eth0" {{ min rx interval {BFD_MS} ms; min tx interval {BFD_MS} ms;
                        multiplier {BFD_MULT}; }};
}}
template bgp node {{
    local {ROUTER[0]} as 65000;
    hold time {HOLD}; keepalive time {KEEPALIVE};
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    bfd on;
    ipv4 {{ import where net = {ANYCAST}/32; export none; }};
}}
{peers}
"""


def unbound_conf(workdir: Path) -> str:
    return f"""\
server:
    interface: 127.0.0.1
    port: 53
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    qname-minimisation: no
    prefetch: no
    # the anycast address is several servers: forget a lost one's timeouts soon
    infra-host-ttl: 2
    infra-keep-probing: yes
    # .test is one of Unbound's default (RFC 6761) local zones, answered NXDOMAIN
    local-zone: "test." nodefault
stub-zone:
    name: "{ZONE}"
    stub-addr: {ANYCAST}
remote-control:
    control-enable: no
"""


# --------------------------------------------------------------------------- DNS/HTTP clients
# These run on threads inside a namespace (NetnsBed.executor).


def ask(server: str, name: str, timeout: float, port: int = 53) -> tuple[int, list[str]]:
    """(rcode, sorted A addresses); raises dns.exception.Timeout or OSError."""
    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, server, port=port, timeout=timeout)
    addrs = sorted(rr.address for rrset in r.answer for rr in rrset if hasattr(rr, "address"))
    return r.rcode(), addrs


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# --------------------------------------------------------------------------- processes


class Node:
    """One DNS node's geodns, supervised as systemd would: after the process
    exits for any reason, `geodns withdraw` runs (ExecStopPost=)."""

    def __init__(self, cluster: Cluster, name: str, host: Host) -> None:
        self.c = cluster
        self.name = name
        self.host = host
        self.addr = str(host.ipv4)
        self.state = cluster.tmp / name / "state"
        self.state.mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = cluster.tmp / name / "geodns-0.log"
        self.withdrawals: list[tuple[float, float, int]] = []  # (exit seen, done, rc)
        self._lock = threading.Lock()

    def argv(self) -> list[str]:
        return [
            PY,
            "-m",
            "geodns.cli",
            "serve",
            "--config",
            str(self.c.zones),
            "--listen",
            f"{ANYCAST}:53",
            "--listen",
            f"{self.addr}:53",
            "--service-address",
            f"{ANYCAST}/32",
            "--service-drain",
            "0.5",
            "--store",
            self.c.store_url,
            "--quorum",
            str(QUORUM),
            "--region-timeout",
            str(REGION_TIMEOUT),
            "--health-interval",
            str(HEALTH_INTERVAL),
            "--metrics",
            f"{self.addr}:9153",
            "--state-dir",
            str(self.state),
            "--geoip-dir",
            str(self.c.tmp / "no-geoip"),
        ]

    def start(self, timeout: float = 120.0) -> None:
        self.starts += 1
        self.log = self.c.tmp / self.name / f"geodns-{self.starts}.log"
        proc = self.c.bed.popen(self.host, self.argv(), log=self.log, cwd=REPO)
        self.proc = proc
        threading.Thread(
            target=self._supervise, args=(proc,), name=f"supervise-{self.name}", daemon=True
        ).start()
        wait_until(
            f"{self.name}: geodns listening",
            lambda: self._check_started(proc),
            timeout,
            step=0.05,
        )

    def _check_started(self, proc: subprocess.Popen[bytes]) -> bool:
        """Bound, and answering: the loop turns once start-up is over (what
        systemd's READY=1 says; the log line comes as the sockets are bound)."""
        text = self.log_text()
        if proc.poll() is not None:
            raise ScenarioError(f"{self.name}: geodns exited ({proc.returncode}):\n{text}")
        if text.count("listening on") < 2:
            return False
        try:
            self.answer(timeout=0.5)
            self.healthz()
        except Exception:  # noqa: BLE001 — not yet
            return False
        return True

    def _supervise(self, proc: subprocess.Popen[bytes]) -> None:
        while not self.c.closing:  # bounded by the bed's life
            try:
                proc.wait(0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.c.closing:
            return
        seen = time.monotonic()
        argv = [PY, "-m", "geodns.cli", "withdraw", "--service-address", f"{ANYCAST}/32"]
        try:
            rc = self.c.bed.run(self.host, argv, timeout=30, cwd=REPO).returncode
        except Exception:  # noqa: BLE001 — the bed is going away under us
            rc = -1
        with self._lock:
            self.withdrawals.append((seen, time.monotonic(), rc))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL (a crash): returns the monotonic time it was sent."""
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        return t

    def stop(self) -> None:
        if self.proc is not None:
            NetnsBed.stop_process(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def healthz(self) -> dict[str, Any]:
        status, body = self.c.on_lan(http_get, f"http://{self.addr}:9153/healthz")
        out: dict[str, Any] = json.loads(body)
        out["http_status"] = status
        return out

    def metric(self, name: str) -> float:
        """The value of metric `name`, summed over its label sets."""
        _, text = self.c.on_lan(http_get, f"http://{self.addr}:9153/metrics")
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + " ", name + "{"))
        ]
        if not values:
            raise ScenarioError(f"{self.name}: no metric {name}")
        return sum(values)

    def answer(self, timeout: float = 1.0) -> list[str]:
        rcode, addrs = self.c.on_lan(ask, self.addr, DL, timeout)
        if rcode != dns.rcode.NOERROR:
            raise ScenarioError(f"{self.name}: {DL} A → {dns.rcode.to_text(rcode)}")
        return addrs


class RegionalChecker:
    def __init__(self, cluster: Cluster, region: str, host: Host) -> None:
        self.c = cluster
        self.region = region
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = cluster.tmp / f"checker-{region}-0.log"

    def start(self) -> None:
        self.starts += 1
        self.log = self.c.tmp / f"checker-{self.region}-{self.starts}.log"
        argv = [
            PY,
            "-m",
            "checker.cli",
            "run",
            "--config",
            str(self.c.zones),
            "--store",
            self.c.store_url,
            "--region",
            self.region,
            "--ca-bundle",
            str(self.c.ca_bundle),
        ]
        self.proc = self.c.bed.popen(self.host, argv, log=self.log, cwd=REPO)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> float:
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return t


# --------------------------------------------------------------------------- the cluster


def unavailable() -> str | None:
    """Why the bed cannot run here (None: it can)."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    for prog, pkg in (("bird", "bird2"), ("birdc", "bird2"), ("unbound", "unbound")):
        if shutil.which(prog) is None:
            return f"`{prog}` is not installed (apt-get install {pkg})"
    if pg.find_bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    return None


class Cluster:
    """Builds the bed (`with Cluster(tmp) as c:`), knows its parts, and
    offers the probes scenarios need. See the module docstring."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.closing = False
        self.stack = contextlib.ExitStack()
        self.zones = tmp / "zones"
        self.bed: NetnsBed
        self.nodes: dict[str, Node] = {}
        self.checkers: dict[str, RegionalChecker] = {}
        self.mirrors: dict[str, MirrorHost] = {}
        self.cuts: set[tuple[str, str]] = set()  # (region, mirror) with a route cut
        self.pg_down = False
        self.loads: list[Load] = []  # stopped on close, whatever a scenario left running
        self.results: dict[str, Result] = {}  # what the scenarios measured, by key

    # ---------------------------------------------------------------- building

    def __enter__(self) -> Cluster:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closing = True
        for load in self.loads:
            load.halt()
        self.stack.close()

    def _build(self) -> None:
        from demo.mirror import DemoPKI
        from demo.tree import Tree
        from geodns.store import Store

        t0 = time.monotonic()
        self.zones.mkdir()
        (self.zones / f"{ZONE}.yaml").write_text(zone_yaml())
        (self.zones / f"{POOL}.yaml").write_text(pool_yaml())
        (self.tmp / "no-geoip").mkdir()

        self.bed = self.stack.enter_context(NetnsBed(prefix=f"gdns-e2e-{os.getpid()}-c"))
        bed = self.bed
        self.router = bed.add_host("router", *ROUTER)
        self.client = bed.add_peer("client", self.router, *CLIENT, *CLIENT_GW)
        bed.sysctl(
            self.router,
            {
                "net.ipv4.ip_forward": "1",
                # hash on ports too: each query's source port picks a node
                "net.ipv4.fib_multipath_hash_policy": "1",
            },
        )
        self.db = bed.add_host("db", *DB)
        node_hosts = {
            n: bed.add_host(n, a, f"fd00:99::{a.rsplit('.', 1)[1]}") for n, a in NODES.items()
        }
        for h in node_hosts.values():  # answers to the client go back through the router
            bed.route(h, "add", "10.99.9.0/30", gateway=ROUTER[0])
        chk_hosts = {
            r: bed.add_host(r, a, f"fd00:99::{a.rsplit('.', 1)[1]}") for r, a in REGIONS.items()
        }
        mirror_hosts = {
            m: bed.add_host(m, a, f"fd00:99::{a.rsplit('.', 1)[1]}") for m, a in MIRRORS.items()
        }
        # threads inside namespaces: LAN probes from the router, clients in the client
        self.lan_pool = bed.executor(self.router, workers=4)
        self.client_pool = bed.executor(self.client, workers=4)

        # PostgreSQL in its own namespace; the schema made once, as a checker would
        bindir = pg.find_bindir()
        assert bindir is not None
        self.pg = pg.start(bindir, netns=self.db.ns, listen=DB[0], trust=["10.99.0.0/24"])
        self.stack.callback(self._remove_pg)
        dbname = self._create_database()
        self.store_url = self.pg.tcp_url(dbname)
        self.local_store_url = self.pg.url(dbname)  # Unix socket, for the test itself
        Store(self.local_store_url).close()

        pki = DemoPKI()
        self.stack.callback(pki.cleanup)
        self.ca_bundle = pki.ca_bundle
        tree = Tree.generate(10)
        for role, h in mirror_hosts.items():
            m = MirrorHost(bed, h, pki, tree, families=(4,))
            self.stack.callback(m.stop)  # before the bed goes (LIFO)
            m.start()
            self.mirrors[role] = m

        # routing: BIRD on the router and on every node
        self._bird(self.router, bird_router_conf())
        for name, h in node_hosts.items():
            self._bird(h, bird_node_conf(NODES[name]))

        for region, h in chk_hosts.items():
            self.checkers[region] = RegionalChecker(self, region, h)
            self.checkers[region].start()
        for name, h in node_hosts.items():
            self.nodes[name] = Node(self, name, h)
        errors: list[BaseException] = []  # the nodes start side by side
        threads = [threading.Thread(target=_catching(n.start, errors)) for n in self.nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]

        workdir = self.tmp / "unbound"
        workdir.mkdir()
        (workdir / "unbound.conf").write_text(unbound_conf(workdir))
        self.unbound_log = self.tmp / "unbound.log"
        self.unbound = bed.popen(
            self.client,
            ["unbound", "-d", "-c", str(workdir / "unbound.conf")],
            log=self.unbound_log,
        )
        self.build_seconds = time.monotonic() - t0
        self.wait_healthy(timeout=120)
        self.ready_seconds = time.monotonic() - t0

    def _create_database(self) -> str:
        from sqlalchemy.engine import make_url

        return str(make_url(self.pg.create_database()).database)

    def _remove_pg(self) -> None:
        self.pg.stop("immediate")
        shutil.rmtree(self.pg.root, ignore_errors=True)

    def _bird(self, host: Host, conf: str) -> None:
        d = self.tmp / f"bird-{host.role}"
        d.mkdir()
        (d / "bird.conf").write_text(conf)
        argv = ["bird", "-f", "-c", str(d / "bird.conf"), "-s", str(d / "bird.ctl")]
        check = subprocess.run(
            [*argv, "-p"], capture_output=True, text=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise BedError(f"bird config for {host.role}: {check.stderr}{check.stdout}")
        self.bed.popen(host, argv, log=d / "bird.log")

    def birdc(self, role: str, *cmd: str) -> str:
        sock = self.tmp / f"bird-{role}" / "bird.ctl"
        r = subprocess.run(
            ["birdc", "-s", str(sock), *cmd], capture_output=True, text=True, timeout=10
        )
        return r.stdout + r.stderr

    # ---------------------------------------------------------------- probes

    def on_lan(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run fn(*args) on a thread in the router's namespace (it is on the LAN)."""
        return self.lan_pool.submit(fn, *args).result(timeout)

    def on_client(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        return self.client_pool.submit(fn, *args).result(timeout)

    def resolve(self, name: str = DL, timeout: float = 2.0) -> tuple[int, list[str]]:
        """Through Unbound, as the client's applications do."""
        return self.on_client(ask, "127.0.0.1", name, timeout)

    def nexthops(self) -> list[str]:
        """The router's kernel next hops for the anycast /32 (BGP → BIRD → ECMP)."""

        def read(ipr: Any) -> list[str]:
            hops: list[str] = []
            for r in ipr.get_routes(family=socket.AF_INET):
                if r["dst_len"] != 32 or r.get_attr("RTA_DST") != ANYCAST:
                    continue
                multi = r.get_attr("RTA_MULTIPATH")
                if multi:
                    hops += [nh.get_attr("RTA_GATEWAY") for nh in multi]
                elif r.get_attr("RTA_GATEWAY"):
                    hops.append(r.get_attr("RTA_GATEWAY"))
            return sorted(hops)

        return NetnsBed.rtnl(self.router.ns, read)

    def answers(self) -> dict[str, list[str]]:
        """Each running node's answer for dl.cluster.test, asked on its own address."""
        return {n: node.answer() for n, node in self.nodes.items() if node.running()}

    def store_states(self) -> dict[tuple[str, str], bool]:
        """(region, mirror) → up, as the checkers last wrote it."""
        from geodns.store import Store

        with Store(self.local_store_url, create=False) as store:
            return {(s.region, s.mirror): s.up for s in store.states(pool=POOL)}

    def logs(self) -> str:
        parts = []
        for n in self.nodes.values():
            parts.append(f"--- {n.name} ({n.log.name})\n{n.log_text()[-2500:]}")
        for c in self.checkers.values():
            text = c.log.read_text(errors="replace") if c.log.exists() else ""
            parts.append(f"--- checker {c.region}\n{text[-1500:]}")
        parts.append(f"--- unbound\n{self.unbound_log.read_text(errors='replace')[-1500:]}")
        parts.append(f"--- router BIRD\n{self.birdc('router', 'show', 'protocols')}")
        return "\n".join(parts)

    # ---------------------------------------------------------------- faults and repairs

    def cut(self, region: str, mirror: str) -> None:
        """The region's checker can no longer reach the mirror (an unreachable route)."""
        self.bed.route(self.checkers[region].host, "add", f"{MIRRORS[mirror]}/32", type=7)
        self.cuts.add((region, mirror))

    def uncut(self, region: str, mirror: str) -> None:
        self.bed.route(self.checkers[region].host, "del", f"{MIRRORS[mirror]}/32", type=7)
        self.cuts.discard((region, mirror))

    def stop_pg(self) -> float:
        t = time.monotonic()
        self.pg.stop("fast")
        self.pg_down = True
        return t

    def start_pg(self) -> float:
        t = time.monotonic()
        self.pg.start_again()
        self.pg_down = False
        return t

    def repair(self) -> None:
        """Undo every fault: mirrors, cuts, database, nodes, checkers, links."""
        for region, mirror in sorted(self.cuts):
            self.uncut(region, mirror)
        for m in self.mirrors.values():
            m.start()
        if self.pg_down:
            self.start_pg()
        for n in self.nodes.values():
            self.bed.set_link(n.host, True)
            if not n.running():
                n.start()
        for c in self.checkers.values():
            if not c.running():
                c.start()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every region sees every mirror up, every node answers all of
        them, the router has a path to each node, and the resolver answers."""
        self.repair()

        missing = ["not checked yet"]

        def healthy() -> bool:
            missing[:] = []
            states = self.store_states()
            if len(states) != len(REGIONS) * len(MIRRORS) or not all(states.values()):
                missing.append(f"store states {states}")
            hops = self.nexthops()
            if hops != sorted(NODES.values()):
                missing.append(f"router next hops {hops}")
            try:
                answers = self.answers()
                if any(a != ALL for a in answers.values()):
                    missing.append(f"node answers {answers}")
            except Exception as exc:  # noqa: BLE001 — a node busy starting
                missing.append(f"node answers: {exc!r}")
            try:
                rcode, addrs = self.resolve(timeout=1.0)
                if rcode != dns.rcode.NOERROR or addrs != ALL:
                    missing.append(f"resolver: {dns.rcode.to_text(rcode)} {addrs}")
            except Exception as exc:  # noqa: BLE001 — not yet
                missing.append(f"resolver: {exc!r}")
            return not missing

        wait_until(
            "cluster healthy",
            healthy,
            timeout,
            step=0.2,
            detail=lambda: "; ".join(missing) + "\n" + self.logs(),
        )


def _catching(fn: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 — re-raised by the builder
            errors.append(exc)

    return run


# --------------------------------------------------------------------------- watching


@dataclass
class Sample:
    t: float  # monotonic send time
    ok: bool
    addrs: list[str]
    error: str = ""


class Load:
    """Queries in a loop on a thread in the client namespace, every `every`
    seconds, until stopped (bounded by `limit` seconds): through Unbound with
    a fresh name each time (so each goes to the anycast address, never the
    cache), or straight to the anycast address."""

    def __init__(self, c: Cluster, kind: str, every: float = 0.02, limit: float = 120.0) -> None:
        self.c, self.kind, self.every, self.limit = c, kind, every, limit
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        c.loads.append(self)
        self._future = c.client_pool.submit(self._run)

    def _one(self) -> Sample:
        t = time.monotonic()
        try:
            if self.kind == "resolver":
                name = f"q{uuid.uuid4().hex[:12]}.{ZONE}"
                rcode, addrs = ask("127.0.0.1", name, 2.0)
                ok = rcode == dns.rcode.NXDOMAIN  # an authoritative "no such name" came back
            else:
                rcode, addrs = ask(ANYCAST, DL, 1.0)
                ok = rcode == dns.rcode.NOERROR and bool(addrs)
            return Sample(t, ok, addrs, "" if ok else dns.rcode.to_text(rcode))
        except Exception as exc:  # noqa: BLE001 — a lost query is a measurement
            return Sample(t, False, [], type(exc).__name__)

    def _run(self) -> None:
        end = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < end:
            self.samples.append(self._one())
            self._stop.wait(self.every)

    def halt(self) -> None:
        self._stop.set()

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._future.result(10)
        return self.samples


def failed(samples: list[Sample], after: float = -math.inf) -> list[Sample]:
    return [s for s in samples if not s.ok and s.t >= after]


# --------------------------------------------------------------------------- scenarios


@dataclass
class Result:
    name: str
    seconds: float  # the scenario's headline time
    # resolver queries that failed (SERVFAIL or no answer in 2 s): the whole
    # scenario's, or (c) those of the switch; None until run_scenario counts
    lost: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = " ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.figures.items()
        )
        return f"{self.name}: {self.seconds:.3f} s, lost {self.lost}; {extra}"


def check(cond: bool, what: str, c: Cluster) -> None:
    if not cond:
        raise ScenarioError(f"{what}\n{c.logs()}")


def scenario_mirror_stops(c: Cluster, load: Load) -> Result:
    """(a) A mirror stops: every node stops answering it within one checker
    round + one health interval; the resolver's clients never get it once
    that plus the TTL has passed."""
    bound = CHECK_ROUND + HEALTH_INTERVAL + SLACK
    seen: dict[str, float] = {}
    last_resolved_with = -math.inf
    t0 = time.monotonic()
    c.mirrors["m1"].stop()
    deadline = t0 + bound
    for _ in range(int(bound / 0.02) + 2):
        now = time.monotonic()
        for name, addrs in c.answers().items():
            if name not in seen and MIRRORS["m1"] not in addrs:
                seen[name] = time.monotonic() - t0
        _, addrs = c.resolve(timeout=1.0)
        if MIRRORS["m1"] in addrs:
            last_resolved_with = time.monotonic() - t0
        if len(seen) == len(c.nodes) or now > deadline:
            break
        time.sleep(0.02)
    check(
        len(seen) == len(c.nodes),
        f"(a) nodes still answering m1 after {bound:.1f} s: {sorted(set(c.nodes) - set(seen))}",
        c,
    )
    all_nodes = max(seen.values())
    # the resolver may hold the last answer with m1 for one TTL, never longer;
    # Unbound keeps time in whole seconds, so a TTL can last up to 1 s more
    # (fetched at 10.05 s with TTL 2: expires when its clock reads 12, at 12.99 s)
    after_ttl = t0 + all_nodes + TTL + 1.0 + 0.3
    violations = []
    while time.monotonic() < after_ttl + 1.5:
        _, addrs = c.resolve(timeout=1.0)
        now = time.monotonic()
        if MIRRORS["m1"] in addrs:
            last_resolved_with = now - t0
            if now > after_ttl:
                violations.append(round(now - t0, 3))
        time.sleep(0.05)
    check(not violations, f"(a) the resolver still gave m1 after nodes+TTL: {violations}", c)
    for addrs in c.answers().values():  # and it stays out
        check(MIRRORS["m1"] not in addrs, "(a) m1 came back while stopped", c)
    states = c.store_states()
    return Result(
        "a mirror_down",
        all_nodes,
        figures={
            "first_node_s": min(seen.values()),
            "bound_s": bound,
            "resolver_last_m1_s": last_resolved_with,
            "regions_down": sum(1 for r in REGIONS if not states[(r, "m1")]),
        },
    )


def scenario_region_cut(c: Cluster, load: Load) -> Result:
    """(b) One region's path to a mirror is cut: that region calls it down,
    the others do not, and with --quorum 2 every node keeps answering it."""
    t0 = time.monotonic()
    c.cut("eu", "m2")
    wait_until(
        "(b) region eu calls m2 down",
        lambda: not c.store_states()[("eu", "m2")],
        CHECK_ROUND + SLACK,
        step=0.05,
    )
    region_down = time.monotonic() - t0
    # watch for two health intervals plus a checker round: m2 stays in everywhere
    window_end = time.monotonic() + 2 * HEALTH_INTERVAL + CHECK_INTERVAL
    polls = 0
    while time.monotonic() < window_end:
        for name, addrs in c.answers().items():
            check(MIRRORS["m2"] in addrs, f"(b) {name} dropped m2 on one region's word", c)
        polls += 1
        time.sleep(0.05)
    _, addrs = c.resolve(timeout=1.0)
    check(MIRRORS["m2"] in addrs, "(b) the resolver lost m2", c)
    states = c.store_states()
    check(states[("us", "m2")] and states[("ap", "m2")], f"(b) other regions: {states}", c)
    c.uncut("eu", "m2")
    wait_until(
        "(b) region eu sees m2 up again",
        lambda: c.store_states()[("eu", "m2")],
        CHECK_ROUND + SLACK,
        step=0.05,
    )
    return Result("b region_cut", region_down, figures={"node_polls_with_m2": polls})


def scenario_node_killed(c: Cluster, load: Load) -> Result:
    """(c) A DNS node is SIGKILLed: its supervisor withdraws the address, the
    router drops that next hop, and resolver clients keep getting answers.
    Then a node vanishes whole (its link cut): BFD takes the route away."""
    victim = c.nodes["n2"]
    direct = Load(c, "anycast")
    time.sleep(1.0)  # a baseline before the fault
    t0 = victim.kill()
    # `geodns withdraw` is a Python process: its start-up (pyroute2's import
    # above all) is most of this on a busy machine, hence the wide limit; the
    # test compares the switch with the withdraw's own time
    wait_until(
        "(c) router drops n2's next hop",
        lambda: NODES["n2"] not in c.nexthops(),
        30,
        step=0.01,
    )
    switch = time.monotonic() - t0
    # the supervisor's `geodns withdraw` has taken the address off; it may
    # still be exiting when the route is already gone
    withdrawn = wait_until(
        "(c) the supervisor ran geodns withdraw",
        lambda: victim.withdrawals[-1] if victim.withdrawals else None,
        10,
    )
    check(withdrawn[2] == 0, f"(c) geodns withdraw failed: {withdrawn}", c)
    # the route went by a BGP UPDATE: the session to n2's BIRD is still up
    session = c.birdc("router", "show", "protocols", "n2")
    check("Established" in session, f"(c) n2's BGP session went down:\n{session}", c)
    time.sleep(2.0)  # queries after the switch: every one must be answered
    r_samples, d_samples = list(load.samples), direct.stop()
    settle = t0 + switch + 0.3  # queries sent once the route has moved
    check(
        not failed(r_samples, settle),
        f"(c) resolver queries failed after the switch: {failed(r_samples, settle)[:5]}",
        c,
    )
    check(
        not failed(d_samples, settle),
        f"(c) anycast queries failed after the switch: {failed(d_samples, settle)[:5]}",
        c,
    )
    figures: dict[str, Any] = {
        "withdraw_started_s": withdrawn[0] - t0,
        "withdraw_s": withdrawn[1] - t0,
        "switch_resolver_queries": len(r_samples),
        "anycast_queries": len(d_samples),
        "anycast_lost": len(failed(d_samples)),
    }
    lost = len(failed(r_samples))

    # the node is back: the route returns
    t1 = time.monotonic()
    victim.start()
    wait_until("(c) n2's route returns", lambda: NODES["n2"] in c.nexthops(), 40, step=0.05)
    figures["rejoin_s"] = time.monotonic() - t1

    # a node vanishing whole: no withdraw from anyone, BFD notices
    lost_node = c.nodes["n3"]
    direct = Load(c, "anycast")
    time.sleep(0.5)
    t2 = time.monotonic()
    c.bed.set_link(lost_node.host, False)
    wait_until(
        "(c) BFD drops the vanished n3",
        lambda: NODES["n3"] not in c.nexthops(),
        HOLD + SLACK,
        step=0.01,
    )
    figures["bfd_s"] = time.monotonic() - t2
    time.sleep(1.0)
    d_samples = direct.stop()
    settle = t2 + figures["bfd_s"] + 0.3
    check(not failed(d_samples, settle), "(c) anycast queries failed after BFD moved", c)
    figures["bfd_anycast_lost"] = len(failed(d_samples))
    figures["bfd_resolver_lost"] = len(failed([x for x in load.samples if x.t >= t2 - 0.5]))
    c.bed.set_link(lost_node.host, True)
    wait_until("(c) n3's route returns", lambda: NODES["n3"] in c.nexthops(), 30, step=0.05)
    return Result("c node_killed", switch, lost=lost, figures=figures)


def scenario_store_outage(c: Cluster, load: Load) -> Result:
    """(d) PostgreSQL stops: nodes keep serving the last snapshot and say
    degraded; a node restarted meanwhile serves the snapshot it saved, not
    all-up; everything follows the store again once it is back."""
    m3 = MIRRORS["m3"]
    c.mirrors["m3"].stop()
    wait_until(
        "(d) every node drops the stopped m3",
        lambda: all(m3 not in a for a in c.answers().values()),
        CHECK_ROUND + HEALTH_INTERVAL + SLACK,
    )
    t0 = c.stop_pg()
    wait_until(
        "(d) every node says degraded",
        lambda: all(n.healthz()["status"] == "degraded" for n in c.nodes.values()),
        HEALTH_INTERVAL + SLACK,
        step=0.05,
    )
    degraded = time.monotonic() - t0
    for n in c.nodes.values():
        h = n.healthz()
        check(h["health_source"] == "memory" and "unreachable" in h["reason"], f"(d) {h}", c)
    for _ in range(5):
        for name, addrs in c.answers().items():
            check(addrs == [MIRRORS["m1"], MIRRORS["m2"]], f"(d) {name} answers {addrs}", c)
        time.sleep(HEALTH_INTERVAL / 2)

    # a node restarted during the outage
    n1 = c.nodes["n1"]
    t_restart = time.monotonic()
    n1.restart()
    restart_s = time.monotonic() - t_restart
    restarted_answers = [n1.answer() for _ in range(6)]
    h = n1.healthz()
    age = n1.metric("geodns_health_snapshot_age_seconds")
    failstatic = (
        all(m3 not in a and len(a) == 2 for a in restarted_answers)
        and h["status"] == "degraded"
        and h["health_source"] == "file"
        and "serving the health snapshot saved" in (h["reason"] or "")
        and "serving the health snapshot saved" in n1.log_text()
        and age == age
        and age >= 0
    )
    wait_until("(d) n1's route back", lambda: NODES["n1"] in c.nexthops(), 10 + SLACK)
    _, resolved = c.resolve(timeout=2.0)

    # the mirror recovers while the store is down: nobody can know yet
    c.mirrors["m3"].start()
    time.sleep(CHECK_INTERVAL)
    still_out = all(m3 not in a for a in c.answers().values())

    t1 = c.start_pg()
    wait_until(
        "(d) every node follows the store again and answers m3",
        lambda: (
            all(a == ALL for a in c.answers().values())
            and all(n.healthz()["status"] == "ok" for n in c.nodes.values())
        ),
        CHECK_ROUND + HEALTH_INTERVAL + 10 + SLACK,
        step=0.1,
    )
    recovered = time.monotonic() - t1
    check(failstatic, f"(d) restarted n1: answers {restarted_answers}, healthz {h}", c)
    check(still_out, "(d) m3 came back while the store was down", c)
    check(m3 not in resolved, f"(d) resolver got m3 during the outage: {resolved}", c)
    return Result(
        "d store_outage",
        degraded,
        figures={
            "restart_failstatic": "ok" if failstatic else "FAIL",
            "restored_snapshot_age_s": age,
            "n1_restart_s": restart_s,
            "recovered_s": recovered,
        },
    )


def scenario_checker_dies(c: Cluster, load: Load) -> Result:
    """(e) A regional checker dies: its votes age out after --region-timeout
    and the quorum shrinks to the regions still current (geodns/store.py):
    eu and ap call m2 down (2 of 3 ⇒ out); ap's checker dies ⇒ after the
    timeout only eu votes among {eu, us} ⇒ m2 back; us's checker dies too ⇒
    the quorum shrinks to 1 of {eu} ⇒ eu's vote alone takes m2 out."""
    m2 = MIRRORS["m2"]
    c.cut("eu", "m2")
    c.cut("ap", "m2")
    wait_until(
        "(e) two regions take m2 out",
        lambda: all(m2 not in a for a in c.answers().values()),
        CHECK_ROUND + HEALTH_INTERVAL + SLACK,
    )
    late = REGION_TIMEOUT + REGION_REFRESH + HEALTH_INTERVAL + SLACK

    t0 = c.checkers["ap"].kill()
    back = wait_until(
        "(e) ap's vote ages out, m2 back",
        lambda: all(m2 in a for a in c.answers().values()) and time.monotonic(),
        late,
        step=0.05,
    )
    aged_out = back - t0
    # the vote may only lapse once the region has been silent for the timeout;
    # its last write was at most one probe interval before the kill
    check(
        aged_out >= REGION_TIMEOUT - CHECK_INTERVAL * (1 + JITTER) - 0.2,
        f"(e) ap's vote lapsed early: {aged_out:.2f} s",
        c,
    )
    t1 = c.checkers["us"].kill()
    out = wait_until(
        "(e) quorum shrinks to eu alone, m2 out",
        lambda: all(m2 not in a for a in c.answers().values()) and time.monotonic(),
        late,
        step=0.05,
    )
    shrunk = out - t1
    check(
        shrunk >= REGION_TIMEOUT - CHECK_INTERVAL * (1 + JITTER) - 0.2,
        f"(e) us's vote lapsed early: {shrunk:.2f} s",
        c,
    )
    return Result("e checker_dies", aged_out, figures={"quorum_shrunk_s": shrunk})


SCENARIOS: dict[str, Callable[[Cluster, Load], Result]] = {
    "a": scenario_mirror_stops,
    "b": scenario_region_cut,
    "c": scenario_node_killed,
    "d": scenario_store_outage,
    "e": scenario_checker_dies,
}


def run_scenario(c: Cluster, key: str) -> Result:
    """One scenario with resolver clients asking all along (Load): what they
    lost is the scenario's `lost`, unless the scenario counts its own."""
    t0 = time.monotonic()
    load = Load(c, "resolver", every=0.05)
    try:
        r = SCENARIOS[key](c, load)
    finally:
        samples = load.stop()
    if r.lost is None:
        r.lost = len(failed(samples))
    r.figures["resolver_queries"] = len(samples)
    if failed(samples):  # when, into the scenario, and how they failed
        r.figures["resolver_failures"] = ",".join(
            f"{x.t - t0:.2f}s:{x.error}" for x in failed(samples)[:10]
        )
    c.results[key] = r
    return r


def summary_line(results: dict[str, Result]) -> str:
    def fig(key: str) -> str:
        r = results.get(key)
        return f"{r.seconds:.2f}" if r is not None else "nan"

    lost = results["c"].lost if "c" in results else "nan"
    fs = results["d"].figures.get("restart_failstatic", "FAIL") if "d" in results else "FAIL"
    return (
        f"cluster: nodes={len(NODES)} regions={len(REGIONS)} mirror_down_s={fig('a')} "
        f"node_loss_s={fig('c')} lost={lost} restart_failstatic={fs}"
    )
