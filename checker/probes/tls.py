"""TLS probe: handshake with the mirror address, SNI = the mirror's name.

Verifies the chain (system store or a given CA bundle), the host name and the
validity dates. Any failure — invalid chain, wrong name, expired or not yet
valid, handshake failure, refused or timed-out connection — is unrecoverable:
the address goes down at once (Pakfire does the same). A certificate that
expires within `warn_days` passes with a warning.

When verification fails on dates or name, a second handshake with those checks
relaxed (but the chain still verified) reads the certificate, so the reason can
say "expired 3 days ago (notAfter 2026-11-20)" rather than just "expired".
"""

from __future__ import annotations

import asyncio
import ssl
import time
from datetime import UTC, datetime
from typing import Any

from checker import text
from checker.target import Target
from geodns.store import ProbeRecord

KIND = "tls"

# OpenSSL X509_V_ERR_* codes we turn into words
_NOT_YET_VALID = 9
_EXPIRED = 10
_SELF_SIGNED_LEAF = 18
_SELF_SIGNED_IN_CHAIN = 19
_NO_LOCAL_ISSUER = 20
_NO_ISSUER_LEAF = 21
_HOSTNAME_MISMATCH = 62
_NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME; Python exposes no name for it


def _context(
    cafile: str | None, *, check_time: bool = True, check_name: bool = True
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = check_name
    if not check_time:
        ctx.verify_flags = ssl.VerifyFlags(int(ctx.verify_flags) | _NO_CHECK_TIME)
    return ctx


class ConnectTimeout(TimeoutError):
    """The TCP connection itself did not come up in time (before any TLS)."""


async def _handshake(
    target: Target, ctx: ssl.SSLContext, timeout: float
) -> tuple[dict[str, Any], str | None, float]:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    deadline = loop.time() + timeout
    # TCP first, TLS second: a route that drops packets must not read as a TLS fault.
    try:
        async with asyncio.timeout_at(deadline):
            plain, protocol = await loop.create_connection(
                asyncio.Protocol, target.address, target.port
            )
    except TimeoutError:
        raise ConnectTimeout from None
    try:
        async with asyncio.timeout_at(deadline):
            transport = await loop.start_tls(
                plain,
                protocol,
                ctx,
                server_hostname=target.sni,
                ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
            )
    except BaseException:
        plain.abort()
        raise
    latency = time.perf_counter() - t0
    if transport is None:  # start_tls returns None only if the transport closed under it
        plain.abort()
        raise ConnectionResetError("connection closed during the TLS handshake")
    try:
        sslobj = transport.get_extra_info("ssl_object")
        cert = sslobj.getpeercert() if sslobj else {}
        version = sslobj.version() if sslobj else None
    finally:
        transport.abort()
    return cert or {}, version, latency


def _when(cert: dict[str, Any], field: str) -> datetime | None:
    value = cert.get(field)
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(value), UTC) if value else None


def _names(cert: dict[str, Any]) -> list[str]:
    names = [v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    if not names:
        for rdn in cert.get("subject", ()):
            names += [v for k, v in rdn if k == "commonName"]
    return names


def _issuer(cert: dict[str, Any]) -> str:
    for rdn in cert.get("issuer", ()):
        for k, v in rdn:
            if k in ("organizationName", "commonName"):
                return str(v)
    return ""


async def _relaxed(target: Target, cafile: str | None, timeout: float) -> dict[str, Any] | None:
    """The certificate as seen with date and name checks off (chain still checked)."""
    try:
        cert, _, _ = await _handshake(
            target, _context(cafile, check_time=False, check_name=False), timeout
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    return cert


async def probe_tls(target: Target, *, cafile: str | None = None) -> ProbeRecord:
    checks = target.checks
    warn_days = checks.tls.warn_days if checks.tls else 14
    timeout = checks.timeout
    where = target.where
    now = datetime.now(UTC)

    def fail(reason: str, data: dict[str, Any] | None = None) -> ProbeRecord:
        return ProbeRecord(KIND, False, reason, None, data or {}, unrecoverable=True)

    try:
        cert, version, latency = await _handshake(target, _context(cafile), timeout)
    except ssl.SSLCertVerificationError as exc:
        code = exc.verify_code
        relaxed = None
        if code in (_EXPIRED, _NOT_YET_VALID, _HOSTNAME_MISMATCH):
            relaxed = await _relaxed(target, cafile, timeout)
        if code == _EXPIRED:
            after = _when(relaxed, "notAfter") if relaxed else None
            if after:
                ago = (now - after).total_seconds() / 86400
                return fail(
                    f"TLS certificate expired {text.days(ago)} ago (notAfter {text.date(after)})",
                    {
                        "expires": after.isoformat(),
                        "expires_days": (after - now).total_seconds() / 86400,
                    },
                )
            return fail("TLS certificate expired")
        if code == _NOT_YET_VALID:
            before = _when(relaxed, "notBefore") if relaxed else None
            if before:
                return fail(
                    f"TLS certificate not valid before {text.stamp(before)} "
                    f"({text.ago(before, now)})"
                )
            return fail("TLS certificate not yet valid")
        if code == _HOSTNAME_MISMATCH:
            names = ", ".join(_names(relaxed)[:4]) if relaxed else ""
            them = f" (it names {names})" if names else ""
            return fail(f"TLS certificate does not match {target.sni}{them}")
        if code == _SELF_SIGNED_LEAF:
            return fail("TLS certificate is self-signed, not issued by a trusted CA")
        if code == _SELF_SIGNED_IN_CHAIN:
            return fail("TLS certificate chain ends in an untrusted self-signed CA")
        if code in (_NO_LOCAL_ISSUER, _NO_ISSUER_LEAF):
            return fail("TLS certificate not trusted: issued by an unknown CA")
        return fail(f"TLS certificate not valid: {exc.verify_message}")
    except ssl.SSLError as exc:
        return fail(f"TLS handshake with {where} failed: {exc.reason or exc}")
    except ConnectionRefusedError:
        return fail(f"connection to {where} refused (nothing listening)")
    except ConnectTimeout:
        return fail(f"connect to {where} timed out after {text.duration(timeout)}")
    except TimeoutError:
        return fail(f"TLS handshake with {where} timed out after {text.duration(timeout)}")
    except ConnectionError as exc:
        return fail(f"TLS handshake with {where} failed: connection closed ({exc.strerror or exc})")
    except OSError as exc:
        return fail(f"connect to {where} failed: {exc.strerror or exc}")

    after = _when(cert, "notAfter")
    data: dict[str, Any] = {"protocol": version, "issuer": _issuer(cert)}
    detail = f"TLS ok ({version})"
    warning = None
    if after is not None:
        left = (after - now).total_seconds() / 86400
        data.update(expires=after.isoformat(), expires_days=round(left, 2))
        detail = f"TLS ok ({version}), certificate expires in {text.days(left)}"
        if left < warn_days:
            warning = f"TLS certificate expires in {text.days(left)} (notAfter {text.date(after)})"
            data["warning"] = warning
    return ProbeRecord(KIND, True, detail, latency, data)
