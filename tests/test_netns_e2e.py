"""End to end on a namespace LAN: real mirrors, the real checker, the real server.

The bed (tests/netns.py): a bridge and one namespace per host, all on
10.99.0.0/24 and fd00:99::/64, which exist only inside these namespaces.

    m1  10.99.0.11  fd00:99::11   DE Frankfurt   HTTPS mirror m1.mirrors.test:443
    m2  10.99.0.12  fd00:99::12   FR Paris       HTTPS mirror m2.mirrors.test:443
    m3  10.99.0.13  fd00:99::13   US Ashburn     HTTPS mirror m3.mirrors.test:443
    dns 10.99.0.53  fd00:99::53                  `geodns serve` (process)
    chk 10.99.0.5   fd00:99::5                   `checker run --once` (process, per round)
    client 10.99.0.100 fd00:99::100  DE Berlin   dnspython (threads inside the namespace)

The mirrors are `demo.mirror.DemoMirror`s (one per address, sharing a
tree and one DemoPKI CA whose bundle the checker gets with --ca-bundle) on
asyncio loops whose threads live in the mirror's namespace, so the test swaps
certificates and stops listeners directly. The store is a SQLite file in the
test's temporary directory: namespaces share the filesystem.

Names: `dl.e2e.test` answers up to 3 addresses (every healthy mirror: the
best group padded to `min_answers: 3`);
`near.e2e.test` answers 1, so it shows the ranking the client's real source
address gets: m1 (same country) before m2 (same continent) before m3.

Each change is timed: a watcher thread in the client namespace queries every
10 ms while the checker runs; the delay from the store commit of the state
change (its `since`) to the first changed DNS answer is the poll-to-answer
delay (health interval 0.5 s), asserted to stay within one interval + 1 s and
printed as a table at the end of the module.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from geodns.store import Store

from .geodata import ASHBURN, BERLIN, FRANKFURT, PARIS, make_databases
from .netns import Host, MirrorHost, NetnsBed, require_netns
from .util import REPO

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

POOL = "mirrors"
ZONE = "e2e.test"
DL, NEAR = f"dl.{ZONE}", f"near.{ZONE}"
DNS4, DNS6 = "10.99.0.53", "fd00:99::53"
HEALTH_INTERVAL = 0.5
MIRRORS = {  # role → (IPv4, IPv6, country, location, ASN)
    "m1": ("10.99.0.11", "fd00:99::11", "DE", FRANKFURT, 64511),
    "m2": ("10.99.0.12", "fd00:99::12", "FR", PARIS, 64512),
    "m3": ("10.99.0.13", "fd00:99::13", "US", ASHBURN, 64513),
}
V4 = {m: v[0] for m, v in MIRRORS.items()}
V6 = {m: v[1] for m, v in MIRRORS.items()}
CLIENT = ("10.99.0.100", "fd00:99::100")

ZONE_YAML = f"""\
zone: {ZONE}
soa: {{mname: ns1.{ZONE}, rname: hostmaster.{ZONE}, serial: 1, minimum: 60}}
ns: [ns1.{ZONE}]
records:
  ns1: {{A: {DNS4}, AAAA: "{DNS6}"}}
steered:
  dl: {{pool: {POOL}, answers: 3, min_answers: 3, ttl: 5}}
  near: {{pool: {POOL}, answers: 1, ttl: 5}}
"""


def pool_yaml() -> str:
    lines = [
        f"pool: {POOL}",
        "checks:",
        "  tls: {warn_days: 14}",
        "  freshness: {path: /timestamp.txt, max_lag: 1h}",
        "  objects: {manifest: manifest.json, sample: 20, concurrency: 4,",
        "            critical: [releases/latest.iso]}",
        "  fall: 1",
        "  rise: 1",
        "  timeout: 2s",
        "mirrors:",
    ]
    for role, (v4, v6, *_rest) in MIRRORS.items():
        lines.append(
            f'  - {{name: {role}, url: "https://{role}.mirrors.test/", '
            f'ipv4: [{v4}], ipv6: ["{v6}"]}}'
        )
    return "\n".join(lines) + "\n"


def geo_networks() -> list[dict[str, Any]]:
    nets: list[dict[str, Any]] = []
    for v4, v6, country, loc, asn in MIRRORS.values():
        for net in (f"{v4}/32", f"{v6}/128"):
            nets.append({"network": net, "asn": asn, "country": country, "location": list(loc)})
    for addr, plen in ((CLIENT[0], 32), (CLIENT[1], 128)):
        nets.append(
            {
                "network": f"{addr}/{plen}",
                "asn": 64600,
                "country": "DE",
                "city": "Berlin",
                "location": list(BERLIN),
            }
        )
    return nets


# --------------------------------------------------------------------------- DNS client
# These run on threads inside the client's namespace (NetnsBed.executor), so the
# server sees the client's own source address, 10.99.0.100 or fd00:99::100.


def _addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rr.address for rrset in msg.answer for rr in rrset if hasattr(rr, "address"))


def _query(name: str, qtype: str, server: str) -> list[str]:
    r = dns.query.udp(dns.message.make_query(name, qtype), server, port=53, timeout=2)
    if r.rcode() != dns.rcode.NOERROR or not r.flags & dns.flags.AA:
        raise AssertionError(
            f"{name} {qtype} @{server}: {dns.rcode.to_text(r.rcode())} "
            f"flags {dns.flags.to_text(r.flags)}"
        )
    return _addresses(r)


def _watch(
    name: str,
    qtype: str,
    server: str,
    pred: Callable[[list[str]], bool],
    timeout: float,
    stop: threading.Event,
) -> tuple[list[str], float, int]:
    """Query every 10 ms until pred(answer); (answer, wall time seen, queries)."""
    deadline = time.monotonic() + timeout
    got: list[str] = []
    for n in range(1, int(timeout / 0.01) + 2):
        if stop.is_set():
            raise AssertionError(f"watching {name} {qtype} cancelled")
        got = _query(name, qtype, server)
        if pred(got):
            return got, time.time(), n
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    raise AssertionError(f"{name} {qtype} @{server}: still {got} after {timeout} s")


# A separate process in the client namespace, printing JSON (UDP and TCP).
CLIENT_SCRIPT = r"""
import json, sys
import dns.flags, dns.message, dns.query
out = []
for proto, server, name, qtype in json.loads(sys.argv[1]):
    q = dns.message.make_query(name, qtype)
    send = dns.query.udp if proto == "udp" else dns.query.tcp
    r = send(q, server, port=53, timeout=3)
    out.append({"proto": proto, "server": server, "name": name, "type": qtype,
                "rcode": r.rcode(), "aa": bool(r.flags & dns.flags.AA),
                "ttl": min((s.ttl for s in r.answer), default=None),
                "addresses": sorted(rr.address for s in r.answer for rr in s
                                    if hasattr(rr, "address"))})
print(json.dumps(out))
"""


# --------------------------------------------------------------------------- the world


@dataclass
class Round:
    stdout: str
    stderr: str
    seconds: float
    exit_wall: float  # time.time() when the checker process had exited


@dataclass
class World:
    bed: NetnsBed
    tmp: Path
    config: Path
    store_url: str
    ca_bundle: Path
    server_log: Path
    mirrors: dict[str, MirrorHost]
    chk: Host
    client: Host
    client_pool: ThreadPoolExecutor
    cut_v6: set[str] = field(default_factory=set)
    measured: list[tuple[str, float, float, float]] = field(default_factory=list)

    # ---------------------------------------------------------------- checker

    def checker_round(self) -> Round:
        argv = [
            sys.executable,
            "-m",
            "checker.cli",
            "run",
            "--once",
            "--config",
            str(self.config),
            "--store",
            self.store_url,
            "--ca-bundle",
            str(self.ca_bundle),
        ]
        t0 = time.monotonic()
        r = self.bed.run(self.chk, argv, timeout=60, cwd=REPO)
        exit_wall = time.time()
        assert r.returncode == 0, f"checker failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return Round(r.stdout, r.stderr, time.monotonic() - t0, exit_wall)

    def states(self) -> dict[str, Any]:
        with Store(self.store_url, create=False) as store:
            return {s.address: s for s in store.states(pool=POOL)}

    # ---------------------------------------------------------------- DNS

    def ask(self, name: str, qtype: str = "A", server: str = DNS4) -> list[str]:
        return self.client_pool.submit(_query, name, qtype, server).result(10)

    def watch(
        self,
        name: str,
        qtype: str,
        pred: Callable[[list[str]], bool],
        stop: threading.Event,
        timeout: float = 30.0,
    ) -> Future[tuple[list[str], float, int]]:
        return self.client_pool.submit(_watch, name, qtype, DNS4, pred, timeout, stop)

    def server_log_text(self) -> str:
        return self.server_log.read_text(errors="replace")[-4000:]

    def change(
        self,
        what: str,
        addresses: list[str],
        name: str,
        qtype: str,
        pred: Callable[[list[str]], bool],
    ) -> Round:
        """Run a checker round while watching `name` until pred(answer).

        Poll-to-answer delay: from the store commit of the last of `addresses`
        to change state (its `since`) to the first answer that shows it.
        """
        stop = threading.Event()
        watcher = self.watch(name, qtype, pred, stop)
        try:
            rnd = self.checker_round()
        except BaseException:
            stop.set()  # free the client thread at once
            raise
        try:
            _, seen, _ = watcher.result(30)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nchecker:\n{rnd.stdout}\nserver log:\n{self.server_log_text()}"
            ) from None
        states = self.states()
        committed = max(states[a].since.timestamp() for a in addresses)
        delay = seen - committed
        self.measured.append((what, delay, seen - rnd.exit_wall, rnd.seconds))
        # `since` is taken before the commit, so the answer cannot change earlier;
        # and it must change within one poll interval (+ rebuild, query cadence).
        assert 0 <= delay < HEALTH_INTERVAL + 1.0, (what, delay, rnd.stdout)
        return rnd

    def expect(
        self, name: str, qtype: str, want: list[str], server: str = DNS4, times: int = 5
    ) -> None:
        for _ in range(times):  # several queries: round-robin must not hide anything
            assert self.ask(name, qtype, server) == sorted(want), (name, qtype, server)

    # ---------------------------------------------------------------- faults

    def restore_all(self) -> None:
        for role in sorted(self.cut_v6):
            self.bed.add_address(self.mirrors[role].host, 6)
            self.cut_v6.discard(role)
        for m in self.mirrors.values():
            m.set_cert("good")
            m.start()

    def all_up(self) -> bool:
        states = self.states()
        return len(states) == 6 and all(s.up for s in states.values())


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    require_netns()
    from demo.mirror import DemoPKI
    from demo.tree import Tree

    tmp = tmp_path_factory.mktemp("netns")
    with ExitStack() as stack:
        bed = stack.enter_context(NetnsBed())
        mirror_hosts = {role: bed.add_host(role, v[0], v[1]) for role, v in MIRRORS.items()}
        dns_host = bed.add_host("dns", DNS4, DNS6)
        chk = bed.add_host("chk", "10.99.0.5", "fd00:99::5")
        client = bed.add_host("client", *CLIENT)

        pki = DemoPKI()
        stack.callback(pki.cleanup)
        tree = Tree.generate(40, critical=("releases/latest.iso",))
        config = tmp / "zones"
        config.mkdir()
        (config / "e2e.test.yaml").write_text(ZONE_YAML)
        (config / "mirrors.yaml").write_text(pool_yaml())
        (config / "manifest.json").write_text(json.dumps(tree.manifest()))
        asn_db, city_db = make_databases(tmp / "geoip", geo_networks())
        store_url = f"sqlite:///{tmp / 'health.sqlite'}"
        Store(store_url).close()  # the schema, as a checker would create it

        mirrors = {role: MirrorHost(bed, h, pki, tree) for role, h in mirror_hosts.items()}
        for m in mirrors.values():
            stack.callback(m.stop)  # before the bed goes (LIFO)
            m.start()

        log = tmp / "geodns.log"
        proc = bed.popen(
            dns_host,
            [
                sys.executable,
                "-m",
                "geodns.cli",
                "serve",
                "--config",
                str(config),
                "--listen",
                f"{DNS4}:53",
                "--listen",
                f"[{DNS6}]:53",
                "--store",
                store_url,
                "--health-interval",
                str(HEALTH_INTERVAL),
                "--geoip-asn",
                str(asn_db),
                "--geoip-city",
                str(city_db),
                "--state-dir",
                str(tmp / "state"),
                # the test client polls one name every 10 ms, over the default
                # rate limit: exempt it, as an operator would a monitoring host
                "--rrl-exempt",
                f"{CLIENT[0]}/32",
                "--rrl-exempt",
                f"{CLIENT[1]}/128",
            ],
            log=log,
            cwd=REPO,
        )
        deadline = time.monotonic() + 20
        for _ in range(400):
            if log.read_text(errors="replace").count("listening on") >= 2:
                break
            assert proc.poll() is None, f"geodns exited: {log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"geodns not up: {log.read_text()}"
            time.sleep(0.05)
        else:
            raise AssertionError(f"geodns not up: {log.read_text(errors='replace')}")

        w = World(
            bed,
            tmp,
            config,
            store_url,
            pki.ca_bundle,
            log,
            mirrors,
            chk,
            client,
            bed.executor(client, workers=2),
        )
        yield w
        if w.measured:
            report = [
                "",
                f"poll-to-answer delay, health interval {HEALTH_INTERVAL} s "
                "(store commit → first changed answer | checker exit → answer | round):",
            ]
            report += [
                f"  {what:<32} {commit * 1000:5.0f} ms | {exit_ * 1000:5.0f} ms | {rnd:4.1f} s"
                for what, commit, exit_, rnd in w.measured
            ]
            capman = request.config.pluginmanager.getplugin("capturemanager")
            with capman.global_and_fixture_disabled() if capman else nullcontext():
                print("\n".join(report), flush=True)


@pytest.fixture
def healthy(world: World) -> Iterator[World]:
    """Every fault undone and every address up in the store and in the answers."""
    world.restore_all()
    if not world.all_up():
        world.checker_round()
        assert world.all_up(), world.states()
    deadline = time.monotonic() + 10
    for _ in range(200):
        if world.ask(DL, "A") == sorted(V4.values()) and world.ask(DL, "AAAA") == sorted(
            V6.values()
        ):
            break
        assert time.monotonic() < deadline, world.server_log_text()
        time.sleep(0.05)
    else:
        raise AssertionError(f"not every mirror answered: {world.server_log_text()}")
    yield world
    world.restore_all()  # also when the test failed half-way


# --------------------------------------------------------------------------- tests


def test_checker_fills_store_and_every_mirror_is_answered(world: World) -> None:
    rnd = world.checker_round()
    assert "6 addresses" in rnd.stdout and "0 down" in rnd.stdout, rnd.stdout
    states = world.states()
    assert sorted(states) == sorted([*V4.values(), *V6.values()])
    for addr, s in states.items():
        assert s.up, (addr, s.reason, s.detail)
        assert set(s.kinds) == {"tls", "freshness", "objects"}, s.kinds
        assert all(k["ok"] for k in s.kinds.values()), s.kinds

    # Over IPv4 and IPv6 transport; the answer depends on the client, not the transport.
    for server in (DNS4, DNS6):
        world.expect(DL, "A", list(V4.values()), server)
        world.expect(DL, "AAAA", list(V6.values()), server)
    # near: 1 answer, the client (DE) gets the German mirror — for its v4 and v6 source.
    world.expect(NEAR, "A", [V4["m1"]], DNS4)
    world.expect(NEAR, "AAAA", [V6["m1"]], DNS6)

    # The same from a separate process in the client namespace, over UDP and TCP.
    asks = [
        [proto, server, DL, qtype]
        for proto in ("udp", "tcp")
        for server in (DNS4, DNS6)
        for qtype in ("A", "AAAA")
    ]
    r = world.bed.run(
        world.client, [sys.executable, "-c", CLIENT_SCRIPT, json.dumps(asks)], timeout=30, cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    for ans in json.loads(r.stdout):
        want = V4 if ans["type"] == "A" else V6
        assert ans["rcode"] == 0 and ans["aa"] and ans["ttl"] == 5, ans
        assert ans["addresses"] == sorted(want.values()), ans


def test_stopped_mirror_and_expired_certificate_drop_out_then_return(healthy: World) -> None:
    w = healthy
    w.mirrors["m1"].stop()  # nothing listens on 10.99.0.11:443 nor [fd00:99::11]:443
    w.mirrors["m3"].set_cert("expired")
    rnd = w.change(
        "down: m1 stopped + m3 expired", [V4["m1"], V4["m3"]], DL, "A", lambda a: a == [V4["m2"]]
    )
    states = w.states()
    for addr in (V4["m1"], V6["m1"]):
        assert not states[addr].up and "refused" in states[addr].reason, states[addr].reason
    for addr in (V4["m3"], V6["m3"]):
        assert not states[addr].up and "expired" in states[addr].reason, states[addr].reason
    assert states[V4["m2"]].up and states[V6["m2"]].up
    assert "4 down" in rnd.stdout, rnd.stdout
    # Gone for both families; near now falls to the same-continent mirror.
    w.expect(DL, "A", [V4["m2"]])
    w.expect(DL, "AAAA", [V6["m2"]])
    w.expect(NEAR, "A", [V4["m2"]])
    w.expect(NEAR, "AAAA", [V6["m2"]], DNS6)

    w.mirrors["m1"].start()
    w.mirrors["m3"].set_cert("good")
    w.change(
        "up: m1 + m3 restored (rise 1)",
        [V4["m1"], V4["m3"]],
        DL,
        "A",
        lambda a: a == sorted(V4.values()),
    )
    assert w.all_up(), w.states()
    w.expect(DL, "A", list(V4.values()))
    w.expect(DL, "AAAA", list(V6.values()))
    w.expect(NEAR, "A", [V4["m1"]])
    w.expect(NEAR, "AAAA", [V6["m1"]])


def test_broken_ipv6_only_removes_aaaa(healthy: World) -> None:
    w = healthy
    m1 = w.mirrors["m1"]
    w.bed.del_address(m1.host, 6)  # its IPv6 is gone from the LAN; IPv4 untouched
    w.cut_v6.add("m1")
    w.change(
        "down: m1 IPv6 address removed",
        [V6["m1"]],
        DL,
        "AAAA",
        lambda a: a == sorted([V6["m2"], V6["m3"]]),
    )
    states = w.states()
    assert not states[V6["m1"]].up, states[V6["m1"]]
    assert "timed out" in states[V6["m1"]].reason, states[V6["m1"]].reason
    assert [a for a, s in states.items() if not s.up] == [V6["m1"]]
    w.expect(DL, "AAAA", [V6["m2"], V6["m3"]])
    w.expect(DL, "A", list(V4.values()))  # A still has m1
    w.expect(NEAR, "A", [V4["m1"]])
    w.expect(NEAR, "AAAA", [V6["m2"]])  # next nearest with working IPv6

    w.bed.add_address(m1.host, 6)
    w.cut_v6.discard("m1")
    w.change(
        "up: m1 IPv6 address restored", [V6["m1"]], DL, "AAAA", lambda a: a == sorted(V6.values())
    )
    assert w.all_up(), w.states()
    w.expect(DL, "AAAA", list(V6.values()))
    w.expect(NEAR, "AAAA", [V6["m1"]])
