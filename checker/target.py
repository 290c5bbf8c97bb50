"""One mirror address to probe: where to connect and what name to present."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import quote, urlsplit

from checker.http import HTTPClient
from geodns.model import Checks, Mirror, Pool

# RFC 3986 pchar minus "%" (a literal % in a file name must be encoded) plus "/".
_SAFE = "/-._~!$&'()*+,;=:@"


def quote_path(path: str) -> str:
    return quote(path, safe=_SAFE)


@dataclass(frozen=True)
class Target:
    """A (pool, mirror, address) the DNS server may hand out."""

    pool: str
    mirror: Mirror
    address: str  # canonical text: str(ipaddress.ip_address(x))
    checks: Checks

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.pool, self.mirror.name, self.address)

    @property
    def label(self) -> str:
        return f"{self.mirror.name} {self.address}"

    @cached_property
    def _url(self) -> tuple[str, str, int, str]:
        u = urlsplit(self.mirror.url)
        scheme = (u.scheme or "https").lower()
        host = (u.hostname or "").lower()
        port = u.port or (443 if scheme == "https" else 80)
        path = u.path or "/"
        if not path.endswith("/"):
            path += "/"
        return scheme, host, port, path

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version

    @property
    def tls(self) -> bool:
        return self._url[0] == "https"

    @property
    def host(self) -> str:
        return self._url[1]

    @property
    def port(self) -> int:
        return self._url[2]

    @property
    def base_path(self) -> str:
        return self._url[3]

    @property
    def sni(self) -> str:
        """The name sent as SNI and checked in the certificate."""
        tls = self.checks.tls
        return (tls.sni if tls and tls.sni else self.host).lower()

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def where(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{addr}:{self.port}"

    def path(self, rel: str) -> str:
        """Request target for `rel` (relative to the mirror URL), percent-encoded."""
        return quote_path(self.base_path + rel.lstrip("/"))

    def client(
        self,
        *,
        timeout: float | None = None,
        max_connections: int = 4,
        pipeline: int = 1,
    ) -> HTTPClient:
        """A client for content probes.

        It sends the right SNI and Host but does not verify the certificate:
        certificates are the TLS probe's job, and one broken certificate should
        give one reason, not one per probe.
        """
        ctx: ssl.SSLContext | None = None
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return HTTPClient(
            self.address,
            self.port,
            host=self.host_header,
            ssl_context=ctx,
            server_hostname=self.sni if self.tls else None,
            timeout=timeout if timeout is not None else self.checks.timeout,
            max_connections=max_connections,
            pipeline=pipeline,
        )


def targets_of(pool: Pool) -> list[Target]:
    out = []
    for m in pool.mirrors:
        for a in m.addresses():
            out.append(Target(pool.name, m, str(ipaddress.ip_address(a)), pool.checks))
    return out


def ca_file(explicit: Path | str | None, checks: Checks) -> str | None:
    if explicit:
        return str(explicit)
    if checks.tls and checks.tls.ca_bundle:
        return str(checks.tls.ca_bundle)
    return None
