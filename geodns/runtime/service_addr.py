"""Service (anycast) addresses that exist only while this server answers.

On an anycast node a routing daemon (BIRD, FRR, ExaBGP) announces the
service addresses found on a device such as `lo` or a dummy interface.
geodns adds them (with pyroute2, over netlink) once it is ready to answer —
its sockets are bound to them before, with IP_FREEBIND — and removes them
first thing when it stops, so a route never points at a node that is still
starting, and is withdrawn before the sockets close: resolvers move to
another node instead of timing out.
`geodns withdraw` does the removal for systemd's ExecStopPost=, which runs
even after a crash. Needs CAP_NET_ADMIN.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable

log = logging.getLogger("geodns.service")

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IFA_F_NODAD = 0x02  # an IPv6 service address must be usable at once, not "tentative"


class ServiceAddressError(Exception):
    pass


def _index(ipr: object, dev: str) -> int:
    found = ipr.link_lookup(ifname=dev)  # type: ignore[attr-defined]
    if not found:
        raise ServiceAddressError(f"no network device named {dev!r}")
    return int(found[0])


def add(addresses: Iterable[Interface], dev: str = "lo") -> None:
    """Put the addresses on `dev` (already present is fine)."""
    _change("add", addresses, dev, ok=(errno.EEXIST,), done="announced")


def remove(addresses: Iterable[Interface], dev: str = "lo") -> None:
    """Take the addresses off `dev` (already absent is fine)."""
    _change(
        "del", addresses, dev, ok=(errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH), done="withdrawn"
    )


def _change(
    op: str, addresses: Iterable[Interface], dev: str, *, ok: tuple[int, ...], done: str
) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = _index(ipr, dev)
        for a in addresses:
            extra = {"flags": IFA_F_NODAD} if op == "add" and a.version == 6 else {}
            try:
                ipr.addr(
                    op,
                    index=idx,
                    family=socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                    address=str(a.ip),
                    prefixlen=a.network.prefixlen,
                    **extra,
                )
            except NetlinkError as e:
                if e.code not in ok:
                    verb = "add" if op == "add" else "remove"
                    raise ServiceAddressError(f"cannot {verb} {a} on {dev}: {e}") from e
            log.info("service address %s on %s: %s", a, dev, done)


def present(addresses: Iterable[Interface], dev: str = "lo") -> set[str]:
    """Which of the addresses are on `dev` now (for tests and `explain`-style checks)."""
    from pyroute2 import IPRoute

    wanted = {str(a.ip) for a in addresses}
    with IPRoute() as ipr:
        idx = _index(ipr, dev)
        have = {m.get_attr("IFA_ADDRESS") for m in ipr.get_addr(index=idx)}
    return {a for a in wanted if a in have}
