"""A validating Unbound on loopback, for DNSSEC tests with a real validator.

It runs in the foreground from a config of its own (no system files, no root
trust anchor), resolves the zones it is told about as stub zones on our test
servers (`do-not-query-localhost: no`), trusts the DS/DNSKEY records it is
given, and passes EDNS Client Subnet through (`subnetcache` module). Every
other name — the root included — is a stub pointing at a loopback port where
nothing listens, so no query can leave the machine.
"""

from __future__ import annotations

from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query

from .resolver import UnboundProcess, unbound_binary
from .util import free_port


def have_unbound() -> bool:
    return unbound_binary() is not None


class Unbound(UnboundProcess):
    def __init__(
        self,
        tmp: Path,
        stubs: dict[str, tuple[str, int]],
        anchors: list[str],
        *,
        cache_max_ttl: int = 86400,
    ) -> None:
        port = free_port()
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            f"  port: {port}",
            "  do-ip6: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{tmp}"',
            '  pidfile: ""',
            "  use-syslog: no",
            '  logfile: ""',
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
        for zone, (host, sport) in {**stubs, ".": ("127.0.0.1", free_port())}.items():
            lines += ["stub-zone:", f'  name: "{zone}"', f"  stub-addr: {host}@{sport}"]
        super().__init__(tmp, port, "\n".join(lines) + "\n")

    def ask(
        self, name: str, rdtype: str = "A", *, ecs: str | None = None, timeout: float = 5
    ) -> dns.message.Message:
        opts = []
        if ecs is not None:
            addr, _, plen = ecs.partition("/")
            opts.append(dns.edns.ECSOption(addr, int(plen)))
        q = dns.message.make_query(name, rdtype, want_dnssec=True, options=opts or None)
        return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=timeout)


def secure(msg: dns.message.Message) -> bool:
    return bool(msg.flags & dns.flags.AD)
