"""A validating Unbound on loopback, for DNSSEC tests with a real validator.

It runs in the foreground from a config of its own (no system files, no root
trust anchor), resolves the zones it is told about as stub zones on our test
servers (`do-not-query-localhost: no`), trusts the DS/DNSKEY records it is
given, and passes EDNS Client Subnet through (`subnetcache` module). Every
other name — the root included — is a stub pointing at a loopback port where
nothing listens, so no query can leave the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query

from .util import free_port

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"


def have_unbound() -> bool:
    return os.access(UNBOUND, os.X_OK)


class Unbound:
    def __init__(
        self,
        tmp: Path,
        stubs: dict[str, tuple[str, int]],
        anchors: list[str],
        *,
        cache_max_ttl: int = 86400,
    ) -> None:
        self.dir = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            f"  port: {self.port}",
            "  do-ip6: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{tmp}"',
            f'  pidfile: "{tmp}/unbound.pid"',
            "  use-syslog: no",
            '  logfile: ""',
            "  do-daemonize: no",
            "  num-threads: 1",
            "  so-reuseport: no",
            "  outgoing-range: 64",
            "  access-control: 127.0.0.0/8 allow",
            "  do-not-query-localhost: no",
            '  module-config: "subnetcache validator iterator"',
            "  send-client-subnet: 127.0.0.1",
            "  val-log-level: 2",
            "  verbosity: 1",
            f"  cache-max-ttl: {cache_max_ttl}",
            f"  cache-max-negative-ttl: {cache_max_ttl}",
            "  infra-host-ttl: 1",  # a server that timed out is tried again soon
            '  local-zone: "test." nodefault',  # RFC 6761 `test.` is Unbound-local otherwise
        ]
        lines += [f'  trust-anchor: "{a}"' for a in anchors]
        lines += ["remote-control:", "  control-enable: no"]
        # the root (and so everything not below): a loopback port nobody serves
        for zone, (host, port) in {**stubs, ".": ("127.0.0.1", free_port())}.items():
            lines += ["stub-zone:", f'  name: "{zone}"', f"  stub-addr: {host}@{port}"]
        self.conf = tmp / "unbound.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = tmp / "unbound.log"

    def __enter__(self) -> Unbound:
        self._logf = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [UNBOUND, "-d", "-c", str(self.conf)],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited: {self.log.read_text()}")
            try:
                dns.query.udp(
                    dns.message.make_query("localhost.", "A"),
                    "127.0.0.1",
                    port=self.port,
                    timeout=0.5,
                )
                return self
            except (OSError, dns.exception.Timeout):
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"unbound did not answer: {self.log.read_text()}")

    def ask(
        self, name: str, rdtype: str = "A", *, ecs: str | None = None, timeout: float = 5
    ) -> dns.message.Message:
        import dns.edns

        opts = []
        if ecs is not None:
            addr, _, plen = ecs.partition("/")
            opts.append(dns.edns.ECSOption(addr, int(plen)))
        q = dns.message.make_query(name, rdtype, want_dnssec=True, options=opts or None)
        return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=timeout)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()


def secure(msg: dns.message.Message) -> bool:
    return bool(msg.flags & dns.flags.AD)
