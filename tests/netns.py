"""A network-namespace test bed built with pyroute2: hosts on one private LAN.

    with NetnsBed() as bed:                       # the switch: a bridge in its own netns
        m1 = bed.add_host("m1", "10.99.0.11", "fd00:99::11")
        dns = bed.add_host("dns", "10.99.0.53", "fd00:99::53")
        bed.popen(dns, [sys.executable, "-m", "geodns.cli", "serve", ...])
        with bed.executor(m1) as pool: pool.submit(fn)   # fn runs inside m1's netns
        loop = bed.loop(m1)                            # an asyncio loop inside m1's netns

Topology: one namespace `<prefix>-sw` holds the bridge `br0`; every host is
its own namespace with `lo` up and `eth0` — a veth whose peer is a port of
`br0` in the switch namespace. No device, address or route is ever added to
the namespace the tests run in, so the host's firewall (Docker's FORWARD DROP
with br_netfilter, for one) cannot interfere and nothing can leak: the only
addresses used are 10.99.0.0/24 and fd00:99::/64, which exist only here.

IPv6: the hosts' namespaces get `accept_dad=0` (all and default) before their
veth arrives, and addresses are added with IFA_F_NODAD as well, so nothing is
ever "tentative" (a tentative address cannot be bound: EADDRNOTAVAIL).
`add_host()` still checks that no address is tentative before returning.
Multicast snooping is off on the bridge so neighbour discovery never depends
on which MLD reports the bridge happened to see.

Two ways in, both explained where they are defined:
  * processes: `ip netns exec NAME argv...` (`popen`, `run`) — not a
    preexec_fn, which is unsafe in this multi-threaded process;
  * threads: `enter_netns(name)` — setns(2) for CLONE_NEWNET changes only the
    calling thread, so a thread can live in a namespace and every socket it
    opens belongs there (`executor`, `loop`, `in_netns`). The in-process demo
    mirrors and the DNS client use this: the test keeps direct control of them
    (certificate swaps, stopping one listener) and times answers to the
    millisecond. pyroute2's netlink sockets (`rtnl`) and the per-namespace
    sysctls are opened the same way; only `netns.create` forks (while building).

Teardown (`close()`, also on any error while building) kills the processes
we started (by pid), stops our threads, deletes the veths and the bridge and
removes every namespace, collecting errors instead of stopping at the first.
Namespaces left by a crashed earlier run (a dead pid in the name) are removed
on start. Every wait is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

NAME_PREFIX = "gdns-e2e"  # namespaces: gdns-e2e-<pid>-<role>
NET4 = ipaddress.ip_network("10.99.0.0/24")
NET6 = ipaddress.ip_network("fd00:99::/64")
IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
NETNS_RUN_DIR = Path("/var/run/netns")


class BedError(RuntimeError):
    """The bed could not be built or torn down; the text says which step."""


# --------------------------------------------------------------------------- availability


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    if not Path("/proc/sys/net/ipv6").is_dir():
        return "the kernel has IPv6 disabled"
    try:
        from pyroute2 import netns
    except ImportError as exc:
        return f"pyroute2 is not importable: {exc}"
    probe = f"{NAME_PREFIX}-{os.getpid()}-probe"
    try:
        netns.create(probe)
    except Exception as exc:  # noqa: BLE001 — any failure means "not here"
        with contextlib.suppress(OSError):  # a mount point file may be left
            (NETNS_RUN_DIR / probe).unlink()
        return f"cannot create a network namespace: {exc}"
    try:
        netns.remove(probe)
    except Exception as exc:  # noqa: BLE001
        return f"cannot remove a network namespace: {exc}"
    return None


def require_netns() -> None:
    """Skip (or, when $CI is set, fail) unless namespaces work here."""
    import pytest

    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the network-namespace tests, but: {reason}", pytrace=False)
    pytest.skip(f"needs root and network namespaces: {reason}")


# What the e2e and cluster tests start with `ip netns exec`; only these are ever
# killed in a stale namespace (a test run that was SIGKILLed cannot clean up
# after itself). PostgreSQL's postmaster daemonizes inside the namespace.
OUR_PROGRAMS = (b"geodns.cli", b"checker.cli", b"bird", b"unbound", b"postgres")


def remove_stale() -> list[str]:
    """Remove namespaces of earlier runs whose pytest process is gone.

    Our servers left running inside them (matched by pid and command line)
    are killed first, or they would keep the nameless namespace alive.
    """
    from pyroute2 import netns

    stale = []
    for name in sorted(netns.listnetns())[:1000]:
        parts = name.split("-")
        if not name.startswith(NAME_PREFIX + "-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            stale.append(name)
    if not stale:
        return []
    pids = netns.ns_pids()
    for name in stale:
        for pid in pids.get(name, [])[:100]:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if any(p in cmdline for p in OUR_PROGRAMS):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            netns.remove(name)
    return stale


# --------------------------------------------------------------------------- threads in a netns


def enter_netns(name: str) -> None:
    """Move the *calling thread* into namespace `name` (setns(2), CLONE_NEWNET).

    Linux keeps the network namespace per thread, so this affects no other
    thread of the process; threads this thread starts later inherit it.
    """
    from pyroute2 import netns

    netns.setns(name, flags=0)  # flags=0: never create; fail if it is gone


def in_netns(name: str, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run `fn` on a fresh thread inside `name`; return its result or raise its error."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_netns(name)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 — re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=body, name=f"in-netns-{name}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise BedError(f"{getattr(fn, '__name__', fn)} in {name} did not finish in {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


class NsLoop:
    """An asyncio event loop on a daemon thread that lives in a network namespace."""

    def __init__(self, ns: str, label: str) -> None:
        self.ns = ns
        self.label = label
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=f"nsloop-{label}", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> NsLoop:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BedError(f"event loop in {self.ns} did not start in {timeout} s")
        if self._error is not None:
            raise BedError(f"event loop in {self.ns}: {self._error}") from self._error
        return self

    def _main(self) -> None:
        try:
            enter_netns(self.ns)
            self.loop = asyncio.new_event_loop()
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=5))
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run `coro` on the namespace's loop and wait (bounded) for its result."""
        if self.loop is None or self.loop.is_closed():
            coro.close()
            raise BedError(f"event loop in {self.ns} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 20.0) -> T:
        """Run a plain callable on the loop's thread (for non-thread-safe objects)."""

        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper(), timeout)

    def stop(self, timeout: float = 15.0) -> None:
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed in between
                self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread.is_alive():
            self._thread.join(timeout)


# --------------------------------------------------------------------------- the bed


@dataclass(frozen=True)
class Host:
    role: str  # short: m1, dns, client (it names the switch port too)
    ns: str  # the namespace's name
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    ifname: str = "eth0"


class NetnsBed:
    """A bridge and host namespaces; see the module docstring."""

    def __init__(self, *, prefix: str | None = None) -> None:
        self.prefix = prefix or f"{NAME_PREFIX}-{os.getpid()}"
        self.switch = f"{self.prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._procs: list[tuple[subprocess.Popen[bytes], IO[bytes] | None]] = []
        self._loops: list[NsLoop] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._ports: list[str] = []
        self.closed = False

    # ---------------------------------------------------------------- building

    def __enter__(self) -> NetnsBed:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def rtnl(ns: str, fn: Callable[[Any], T]) -> T:
        """`fn(ipr)` with a pyroute2 IPRoute whose netlink socket is in `ns`.

        The socket is opened on a thread inside the namespace (`in_netns`), not
        through `NetNS(ns)`, which forks a helper process for every socket —
        forking while the mirrors' threads run is best avoided.
        """
        from pyroute2 import IPRoute

        def body() -> T:
            with IPRoute(groups=0) as ipr:  # groups=0: no multicast, nothing queues up
                return fn(ipr)

        return in_netns(ns, body)

    def _create_ns(self, name: str, sysctls: dict[str, str]) -> None:
        from pyroute2 import netns

        if name in netns.listnetns():
            raise BedError(f"namespace {name} exists already (another run with this pid?)")
        netns.create(name)
        self._namespaces.append(name)

        def write() -> None:
            for key, value in sysctls.items():
                Path("/proc/sys", key.replace(".", "/")).write_text(value)

        # /proc/sys/net shows the namespace of the thread that opens it
        in_netns(name, write)

        def lo_up(ipr: Any) -> None:
            (lo,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=lo, state="up")

        self.rtnl(name, lo_up)

    def start(self) -> None:
        remove_stale()
        # The switch's ports carry no addresses: no IPv6 there at all.
        self._create_ns(
            self.switch,
            {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"},
        )

        def bridge(sw: Any) -> None:
            sw.link("add", ifname="br0", kind="bridge", br_mcast_snooping=0)
            (br,) = sw.link_lookup(ifname="br0")
            sw.link("set", index=br, state="up")

        self.rtnl(self.switch, bridge)

    def add_host(self, role: str, ipv4: str, ipv6: str) -> Host:
        """A namespace on the LAN with `ipv4`/24 and `ipv6`/64 on eth0, lo up."""
        a4, a6 = ipaddress.IPv4Address(ipv4), ipaddress.IPv6Address(ipv6)
        if a4 not in NET4 or a6 not in NET6:
            raise BedError(f"{role}: {a4} / {a6} are outside {NET4} / {NET6}")
        port = f"v-{role}"
        if len(port) > 15 or role in self.hosts:
            raise BedError(f"host role {role!r} is too long or used twice")
        host = Host(role, f"{self.prefix}-{role}", a4, a6)
        self._create_ns(
            host.ns,
            {
                "net.ipv6.conf.all.disable_ipv6": "0",
                "net.ipv6.conf.default.disable_ipv6": "0",
                "net.ipv6.conf.all.accept_dad": "0",
                "net.ipv6.conf.default.accept_dad": "0",
                "net.ipv6.conf.default.accept_ra": "0",
            },
        )

        def plug(sw: Any) -> None:
            # The peer is created directly in the host's namespace, as eth0.
            sw.link(
                "add", ifname=port, kind="veth", peer={"ifname": host.ifname, "net_ns_fd": host.ns}
            )
            self._ports.append(port)
            (idx,) = sw.link_lookup(ifname=port)
            (br,) = sw.link_lookup(ifname="br0")
            sw.link("set", index=idx, master=br, state="up")

        def configure(ipr: Any) -> None:
            (eth,) = ipr.link_lookup(ifname=host.ifname)
            ipr.addr("add", index=eth, address=str(a4), prefixlen=NET4.prefixlen)
            ipr.addr("add", index=eth, address=str(a6), prefixlen=NET6.prefixlen, flags=IFA_F_NODAD)
            ipr.link("set", index=eth, state="up")

        self.rtnl(self.switch, plug)
        self.rtnl(host.ns, configure)
        self.hosts[role] = host
        self.wait_addresses(host, [str(a4), str(a6)])
        return host

    def addresses(self, host: Host) -> dict[str, int]:
        """Address text → IFA flags, on the host's eth0."""

        def read(ipr: Any) -> dict[str, int]:
            (eth,) = ipr.link_lookup(ifname=host.ifname)
            out = {}
            for msg in ipr.get_addr(index=eth):
                flags = msg.get_attr("IFA_FLAGS")  # 32 bits; the header's field has 8
                out[str(msg.get_attr("IFA_ADDRESS"))] = int(
                    flags if flags is not None else msg["flags"]
                )
            return out

        return self.rtnl(host.ns, read)

    def wait_addresses(self, host: Host, wanted: Sequence[str], timeout: float = 5.0) -> None:
        """Until every address in `wanted` is present and not tentative (bounded)."""
        deadline = time.monotonic() + timeout
        have: dict[str, int] = {}
        for _ in range(int(timeout / 0.05) + 1):
            have = self.addresses(host)
            if any(have.get(a, 0) & IFA_F_DADFAILED for a in wanted):
                raise BedError(f"{host.ns}: duplicate address detected: {have}")
            if all(a in have and not have[a] & IFA_F_TENTATIVE for a in wanted):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise BedError(f"{host.ns}: addresses {list(wanted)} not ready in {timeout} s: {have}")

    def add_peer(
        self, role: str, via: Host, ipv4: str, ipv6: str, via_ipv4: str, via_ipv6: str
    ) -> Host:
        """A namespace off the LAN, on a point-to-point veth to `via` (a router):
        `ipv4`/30 and `ipv6`/64 on its eth0, `via_*` on `via`'s `p-<role>`, and
        default routes through `via`. Addresses outside 10.99.0.0/24 and
        fd00:99::/64 are fine here: they too exist only in our namespaces."""
        if role in self.hosts or len(f"p-{role}") > 15:
            raise BedError(f"host role {role!r} is too long or used twice")
        a4, a6 = ipaddress.IPv4Address(ipv4), ipaddress.IPv6Address(ipv6)
        host = Host(role, f"{self.prefix}-{role}", a4, a6)
        self._create_ns(
            host.ns,
            {
                "net.ipv6.conf.all.accept_dad": "0",
                "net.ipv6.conf.default.accept_dad": "0",
                "net.ipv6.conf.default.accept_ra": "0",
            },
        )
        port = f"p-{role}"

        def plug(ipr: Any) -> None:
            ipr.link(
                "add", ifname=port, kind="veth", peer={"ifname": host.ifname, "net_ns_fd": host.ns}
            )
            (idx,) = ipr.link_lookup(ifname=port)
            ipr.addr("add", index=idx, address=via_ipv4, prefixlen=30)
            ipr.addr("add", index=idx, address=via_ipv6, prefixlen=64, flags=IFA_F_NODAD)
            ipr.link("set", index=idx, state="up")

        def configure(ipr: Any) -> None:
            (eth,) = ipr.link_lookup(ifname=host.ifname)
            ipr.addr("add", index=eth, address=ipv4, prefixlen=30)
            ipr.addr("add", index=eth, address=ipv6, prefixlen=64, flags=IFA_F_NODAD)
            ipr.link("set", index=eth, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=via_ipv4)
            ipr.route("add", dst="::/0", gateway=via_ipv6, family=socket.AF_INET6)

        self.rtnl(via.ns, plug)
        self.rtnl(host.ns, configure)
        self.hosts[role] = host
        self.wait_addresses(host, [ipv4, ipv6])
        return host

    def sysctl(self, host: Host, values: dict[str, str]) -> None:
        """Set sysctls inside `host`'s namespace (net.* are per namespace)."""

        def write() -> None:
            for key, value in values.items():
                Path("/proc/sys", key.replace(".", "/")).write_text(value)

        in_netns(host.ns, write)

    def route(self, host: Host, op: str, dst: str, **kw: Any) -> None:
        """`ip route add|del` in `host` (kw: gateway=..., type="unreachable", ...)."""
        self.rtnl(host.ns, lambda ipr: ipr.route(op, dst=dst, **kw))

    def set_link(self, host: Host, up: bool) -> None:
        """Bring `host`'s eth0 up or down: the host drops off the network whole."""

        def change(ipr: Any) -> None:
            (eth,) = ipr.link_lookup(ifname=host.ifname)
            ipr.link("set", index=eth, state="up" if up else "down")

        self.rtnl(host.ns, change)

    # ---------------------------------------------------------------- faults

    def del_address(self, host: Host, family: int) -> None:
        """Remove the host's IPv4 (4) or IPv6 (6) address: that family is cut off."""
        addr, plen = (host.ipv4, NET4.prefixlen) if family == 4 else (host.ipv6, NET6.prefixlen)

        def delete(ipr: Any) -> None:
            (eth,) = ipr.link_lookup(ifname=host.ifname)
            ipr.addr("del", index=eth, address=str(addr), prefixlen=plen)

        self.rtnl(host.ns, delete)

    def add_address(self, host: Host, family: int) -> None:
        """Put the address back (no DAD) and wait until it is usable."""
        addr, plen = (host.ipv4, NET4.prefixlen) if family == 4 else (host.ipv6, NET6.prefixlen)

        def add(ipr: Any) -> None:
            (eth,) = ipr.link_lookup(ifname=host.ifname)
            kw = {"flags": IFA_F_NODAD} if family == 6 else {}
            ipr.addr("add", index=eth, address=str(addr), prefixlen=plen, **kw)

        self.rtnl(host.ns, add)
        self.wait_addresses(host, [str(addr)])

    # ---------------------------------------------------------------- running things

    def argv(self, host: Host, argv: Sequence[str]) -> list[str]:
        # `ip netns exec` enters the namespace in a fresh process and then execs
        # argv, so the pid we get is the program's own. A preexec_fn calling
        # setns would run between fork and exec in a process with live threads
        # (the in-namespace mirrors), which Python documents as deadlock-prone.
        return ["ip", "netns", "exec", host.ns, *argv]

    def popen(
        self, host: Host, argv: Sequence[str], *, log: Path | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in `host`; `close()` stops it."""
        out: IO[bytes] | None = open(log, "wb") if log is not None else None  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                self.argv(host, argv),
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                **kw,
            )
        except BaseException:
            if out is not None:
                out.close()
            raise
        self._procs.append((proc, out))
        return proc

    def run(
        self, host: Host, argv: Sequence[str], *, timeout: float = 60.0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in `host` to completion (bounded), capturing its output."""
        return subprocess.run(
            self.argv(host, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
            **kw,
        )

    def executor(self, host: Host, workers: int = 2) -> ThreadPoolExecutor:
        """A thread pool whose every worker lives in `host`'s namespace."""
        ex = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"ns-{host.role}",
            initializer=enter_netns,
            initargs=(host.ns,),
        )
        self._executors.append(ex)
        return ex

    def loop(self, host: Host, label: str | None = None) -> NsLoop:
        lp = NsLoop(host.ns, label or host.role).start()
        self._loops.append(lp)
        return lp

    @staticmethod
    def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    # ---------------------------------------------------------------- teardown

    def close(self) -> None:
        """Tear everything down; every step is attempted, errors raised at the end."""
        if self.closed:
            return
        self.closed = True
        errors: list[str] = []
        for proc, out in reversed(self._procs):
            try:
                self.stop_process(proc)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"stopping pid {proc.pid}: {exc}")
            if out is not None:
                out.close()
        for lp in reversed(self._loops):
            try:
                lp.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"stopping loop in {lp.ns}: {exc}")
        for ex in self._executors:
            ex.shutdown(wait=True, cancel_futures=True)
        from pyroute2 import netns

        def unplug(sw: Any) -> None:
            for port in [*self._ports, "br0"]:  # a veth goes with its peer
                for idx in sw.link_lookup(ifname=port):
                    sw.link("del", index=idx)

        if self.switch in self._namespaces:
            try:
                self.rtnl(self.switch, unplug)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"deleting links in {self.switch}: {exc}")
        for name in reversed(self._namespaces):
            try:
                netns.remove(name)
            except FileNotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001
                errors.append(f"removing namespace {name}: {exc}")
        left = [n for n in netns.listnetns() if n.startswith(self.prefix + "-")]
        if left:
            errors.append(f"namespaces left behind: {left}")
        if errors:
            raise BedError("teardown problems: " + "; ".join(errors))


@contextlib.contextmanager
def bed() -> Iterator[NetnsBed]:
    with NetnsBed() as b:
        yield b


class MirrorHost:
    """One mirror host: a DemoMirror per address (HTTPS on 443), on an asyncio
    loop whose thread lives in the host's namespace, so a test stops a
    listener or swaps a certificate directly."""

    def __init__(
        self, bed: NetnsBed, host: Host, pki: Any, tree: Any, families: tuple[int, ...] = (4, 6)
    ) -> None:
        from demo.mirror import DemoMirror

        self.host = host
        self.name = host.role
        self.loop = bed.loop(host, f"mirror-{host.role}")
        addrs = {4: host.ipv4, 6: host.ipv6}
        self.servers = {
            fam: DemoMirror(
                host=str(addrs[fam]),
                port=443,
                hostname=f"{host.role}.mirrors.test",
                pki=pki,
                tree=tree,
            )
            for fam in families
        }
        self.running: set[int] = set()

    def start(self, families: tuple[int, ...] | None = None) -> None:
        for fam in self.servers if families is None else families:
            if fam not in self.running:
                self.loop.run(self.servers[fam].start())
                self.running.add(fam)

    def stop(self, families: tuple[int, ...] | None = None) -> None:
        for fam in tuple(self.servers) if families is None else families:
            if fam in self.running:
                self.loop.run(self.servers[fam].stop())
                self.running.discard(fam)

    def set_cert(self, kind: str) -> None:
        for m in self.servers.values():
            if m.cert != kind:
                self.loop.call(m.set_cert, kind)
