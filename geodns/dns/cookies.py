"""DNS Cookies (RFC 7873) with interoperable server cookies (RFC 9018).

A client cookie (8 bytes) comes with every query of a cookie-aware resolver;
we answer with it and our server cookie (16 bytes):

    Version (1) | Reserved (3, zero) | Timestamp (4, seconds, serial arithmetic)
    | Hash (8) = SipHash-2-4(client cookie | version | reserved | timestamp
                             | client IP (4 or 16 bytes), server secret)

so any server of an anycast set that holds the same 128-bit secret (geodns,
BIND, Knot, NSD, PowerDNS...) accepts what another one issued. A query that
brings back a server cookie that verifies has proved its source address:
geodns.dns.rrl exempts it.

SipHash comes from the `siphash24` package (a maintained C implementation,
hashlib-style API); Python's own siphash is not public. Verification results
are cached per (option, source), so the per-query cost for a resolver that
keeps its cookie is one dict look-up.

The secret file holds one or more secrets as 32 hex digits, one per line
(`#` comments allowed): the first makes new cookies, all are accepted. A
reload that finds a different file keeps the previous generating secret
accepted too, so replacing a one-line file rotates without a failed query
(RFC 9018 §5 describes the three-step rollover an anycast set can do with a
two-line file).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from time import time
from typing import cast

from siphash24 import siphash24

log = logging.getLogger("geodns.cookies")

CODE = 10  # EDNS option code (RFC 7873 §4)
BADCOOKIE = 23  # extended RCODE (RFC 7873 §8)
SECRET_BYTES = 16  # RFC 9018 §4.2: a 128-bit SipHash key
VERSION = 1

# RFC 9018 §4.3: accept a timestamp up to an hour old and five minutes ahead
# (clock skew inside an anycast set); hand out a fresh one once it is half an
# hour old, so a client that keeps querying never holds one about to expire.
MAX_AGE = 3600
MAX_AHEAD = 300
RENEW_AFTER = 1800
REUSE_FRESH = 300  # a fresh cookie made for an unproven client is reused this long
CACHE_MAX = 100_000  # (option, source) entries; cleared when full

# verdicts
VALID, CLIENT_ONLY, INVALID = 0, 1, 2

FILE_NAME = "cookie-secret"


class CookieSecretError(Exception):
    """The secret file is missing, unreadable or malformed (the text says which)."""


def well_formed(length: int) -> bool:
    """RFC 7873 §5.2.2: 8 (client only) or 16..40 bytes; anything else is FORMERR."""
    return length == 8 or 16 <= length <= 40


def server_cookie(secret: bytes, client: bytes, ip: bytes, ts: int, head: bytes = b"") -> bytes:
    """The 16-byte server cookie for `client` at `ip` made at `ts` (RFC 9018
    §4.2). `head` replaces version+reserved when verifying one received (its
    reserved bytes are hashed as sent, §4.2)."""
    first = (head or bytes((VERSION, 0, 0, 0))) + struct.pack("!I", ts & 0xFFFFFFFF)
    return first + cast(bytes, siphash24(client + first + ip, key=secret).digest())


def _age(now: int, ts: int) -> int:
    """Seconds since `ts` in 32-bit serial arithmetic (RFC 1982): negative when ahead."""
    d = (now - ts) & 0xFFFFFFFF
    return d - (1 << 32) if d & 0x80000000 else d


def _packed(src: str) -> bytes:
    addr = src.partition("%")[0]
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


class Cookies:
    """The secrets and the verdict cache. One per server; survives generations."""

    __slots__ = ("secrets", "file_secrets", "cache", "clock")

    def __init__(self, file_secrets: list[bytes], clock: Callable[[], float] = time) -> None:
        if not file_secrets:
            raise ValueError("at least one secret")
        self.file_secrets = list(file_secrets)
        self.secrets = list(file_secrets)  # [0] generates; all verify
        self.cache: dict[tuple[bytes, str], tuple[int, bytes, float]] = {}
        self.clock = clock

    def rotate(self, file_secrets: list[bytes]) -> bool:
        """New secrets from a re-read file; True when they changed. The old
        generating secret stays accepted until the next change (RFC 9018 §5)."""
        if file_secrets == self.file_secrets:
            return False
        keep = list(file_secrets)
        old = self.file_secrets[0]
        if old not in keep:
            keep.append(old)
        self.file_secrets = list(file_secrets)
        self.secrets = keep
        self.cache.clear()
        return True

    def check(self, body: bytes, src: str) -> tuple[int, bytes]:
        """(verdict, the COOKIE option to answer with) for the data of a
        well-formed COOKIE option from `src`. VALID means the server cookie is
        one we (or a server sharing the secret) made for this address, within
        its lifetime."""
        key = (body, src)
        now = self.clock()
        hit = self.cache.get(key)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        verdict, option, until = self._compute(body, src, int(now))
        cache = self.cache
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[key] = (verdict, option, until)
        return verdict, option

    def _compute(self, body: bytes, src: str, now: int) -> tuple[int, bytes, float]:
        client, server = body[:8], body[8:]
        ip = _packed(src)
        gen = self.secrets[0]
        if len(server) == 16 and server[0] == VERSION:
            ts = struct.unpack_from("!I", server, 4)[0]
            age = _age(now, ts)
            if -MAX_AHEAD <= age <= MAX_AGE:
                for i, secret in enumerate(self.secrets):
                    mac = server_cookie(secret, client, ip, ts, server[:4])[8:]
                    if hmac.compare_digest(mac, server[8:]):
                        if i == 0 and age < RENEW_AFTER:
                            # still young and made with the current secret: echo it
                            return VALID, _option(body), now + min(RENEW_AFTER - age, MAX_AGE)
                        fresh = server_cookie(gen, client, ip, now)
                        # valid for as long as the received cookie is
                        return VALID, _option(client + fresh), now + max(1, MAX_AGE - age)
        verdict = CLIENT_ONLY if not server else INVALID
        fresh = server_cookie(gen, client, ip, now)
        return verdict, _option(client + fresh), now + REUSE_FRESH


def _option(data: bytes) -> bytes:
    return struct.pack("!HH", CODE, len(data)) + data


# ----------------------------------------------------------------------------- secret file


def parse_secrets(text: str, path: Path) -> list[bytes]:
    out: list[bytes] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            b = bytes.fromhex(line)
        except ValueError:
            raise CookieSecretError(
                f"{path}:{n}: cookie secret: not hexadecimal (expected 32 hex digits)"
            ) from None
        if len(b) != SECRET_BYTES:
            raise CookieSecretError(
                f"{path}:{n}: cookie secret: {len(b) * 8} bits, expected 128 (32 hex digits)"
            )
        out.append(b)
    if not out:
        raise CookieSecretError(f"{path}: cookie secret: the file holds no secret")
    return out


def read_secrets(path: Path) -> list[bytes]:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise CookieSecretError(f"{path}: cookie secret file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CookieSecretError(f"{path}: cookie secret file unreadable: {e}") from None
    return parse_secrets(text, path)


def ensure_secret_file(path: Path) -> Path:
    """Create `path` with a new random secret if there is none. Race-free
    between several processes starting at once (--workers): the file appears
    whole or not at all, and the first one written wins."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{secrets.token_hex(SECRET_BYTES)}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        log.info("generated a new DNS cookie secret in %s", path)
    except FileExistsError:
        pass  # another worker was first: use theirs
    finally:
        os.unlink(tmp)
    return path
