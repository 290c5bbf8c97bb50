"""BIND key files: `K<zone>.+013+<tag>.key` (the DNSKEY record) and `.private`
(Private-key-format v1.3), the format `dnssec-keygen` writes and Knot's
`keymgr import-bind` reads.

Key generation and the public key of a private scalar come from the
`cryptography` package through dnspython's `dns.dnssecalgs`; nothing here does
arithmetic of its own. Every way a key pair can be broken or mixed up —
a DNSKEY for another zone or algorithm, a private key that does not belong to
the public one, a file name whose tag does not match the key — is a `KeyFileError`
with a sentence an operator can act on.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from cryptography.hazmat.primitives.asymmetric import ec
from dns.dnssecalgs.ecdsa import PrivateECDSAP256SHA256
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from geodns.dnssec.model import ALGORITHM, REVOKE, SEP, ZONE_KEY, ZoneKey

_TIMES = ("Publish", "Activate", "Inactive", "Delete")
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class KeyFileError(Exception):
    pass


def base_name(zone: str, tag: int) -> str:
    """`Kexample.org.+013+12345` — BIND's name for a key of `zone`."""
    return f"K{zone}.+{ALGORITHM:03d}+{tag:05d}"


def split_path(path: str) -> str:
    """The base path of a key given with or without its .key/.private suffix."""
    for suffix in (".key", ".private"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


# ----------------------------------------------------------------------------- reading


# Keys already checked, by the exact bytes of both files: a reload reads the
# files again (so a replaced key is seen) but does not parse and check them again.
_CHECKED: dict[tuple[str, str, bool, bytes, bytes], ZoneKey] = {}
_CHECKED_MAX = 4096


def read_key(base: Path, zone: str, *, sign: bool = True) -> ZoneKey:
    """Read and cross-check `base`.key and `base`.private for `zone`."""
    pub_path = Path(str(base) + ".key")
    priv_path = Path(str(base) + ".private")
    pub_raw = _read(pub_path, "no such file (make keys with `geodns dnssec keygen`)")
    priv_raw = _read(priv_path, "no such file (the private half of the key)")
    cache_key = (str(base), zone, sign, pub_raw, priv_raw)
    found = _CHECKED.get(cache_key)
    if found is None:
        found = _check(
            base,
            zone,
            sign,
            pub_path,
            _text(pub_path, pub_raw),
            priv_path,
            _text(priv_path, priv_raw),
        )
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[cache_key] = found
    return found


def _read(path: Path, missing: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: {missing}") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read it: {e}") from None


def _text(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a key file (not ASCII text)") from None


def _check(
    base: Path, zone: str, sign: bool, pub_path: Path, pub: str, priv_path: Path, priv: str
) -> ZoneKey:
    flags, public = _read_public(pub_path, pub, zone)
    scalar, times = _read_private(priv_path, priv)
    try:
        pk = PrivateECDSAP256SHA256(key=ec.derive_private_key(scalar, ec.SECP256R1()))
    except ValueError as e:
        raise KeyFileError(f"{priv_path}: PrivateKey is not a P-256 private key ({e})") from None
    if pk.public_key().encode_key_bytes() != public:
        raise KeyFileError(
            f"{priv_path}: the private key does not belong to the public key in {pub_path.name} "
            "(a tampered or mixed-up key file)"
        )
    dnskey = _dnskey(flags, public)
    tag = dns.dnssec.key_id(dnskey)
    name = base.name
    if name.startswith("K") and "+" in name:
        try:
            file_tag = int(name.rsplit("+", 1)[1])
        except ValueError:
            file_tag = None
        if file_tag is not None and file_tag != tag:
            raise KeyFileError(
                f"{pub_path}: the file name says key tag {file_tag}, the key's tag is {tag} "
                "(the DNSKEY was changed after the file was written?)"
            )
    return ZoneKey(
        path=str(base),
        flags=flags,
        tag=tag,
        public=public,
        private=scalar.to_bytes(32, "big"),
        sign=sign,
        publish=times.get("Publish"),
        activate=times.get("Activate"),
        inactive=times.get("Inactive"),
        delete=times.get("Delete"),
    )


def _read_public(path: Path, text: str, zone: str) -> tuple[int, bytes]:
    lines = [ln.split(";", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) != 1:
        raise KeyFileError(f"{path}: expected one DNSKEY record, found {len(lines)} lines of data")
    tokens = lines[0].split()
    upper = [t.upper() for t in tokens]
    if "DNSKEY" not in upper:
        raise KeyFileError(f"{path}: not a DNSKEY record")
    i = upper.index("DNSKEY")
    owner = tokens[0].lower().rstrip(".")
    if owner != zone:
        raise KeyFileError(f"{path}: the key is for '{owner}', not for zone '{zone}'")
    try:
        rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, " ".join(tokens[i + 1 :]))
    except (dns.exception.DNSException, ValueError) as e:
        raise KeyFileError(f"{path}: not a valid DNSKEY record: {e}") from None
    assert isinstance(rd, DNSKEY)
    if rd.algorithm != ALGORITHM:
        raise KeyFileError(
            f"{path}: algorithm {int(rd.algorithm)}; geodns signs with 13 (ECDSAP256SHA256)"
        )
    if rd.protocol != 3:
        raise KeyFileError(f"{path}: protocol {rd.protocol} (RFC 4034 §2.1.2: must be 3)")
    if not rd.flags & ZONE_KEY or rd.flags & REVOKE or rd.flags & ~(ZONE_KEY | SEP | REVOKE):
        raise KeyFileError(f"{path}: flags {rd.flags}; expected 256 (ZSK) or 257 (KSK/CSK)")
    if len(rd.key) != 64:
        raise KeyFileError(f"{path}: the public key is {len(rd.key)} octets, P-256 needs 64")
    return int(rd.flags), bytes(rd.key)


def _read_private(path: Path, text: str) -> tuple[int, dict[str, int]]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise KeyFileError(f"{path}: '{line.strip()[:40]}' is not a 'Field: value' line")
        fields[key.strip()] = value.strip()
    fmt = fields.get("Private-key-format", "")
    if not fmt.startswith("v1."):
        raise KeyFileError(f"{path}: not a BIND private key file (Private-key-format v1.x)")
    alg = fields.get("Algorithm", "").split(" ", 1)[0]
    if alg != str(ALGORITHM):
        raise KeyFileError(f"{path}: algorithm {alg or '?'}; expected 13 (ECDSAP256SHA256)")
    try:
        raw = base64.b64decode(fields.get("PrivateKey", ""), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path}: PrivateKey is not base64") from None
    if len(raw) != 32:
        raise KeyFileError(f"{path}: PrivateKey is {len(raw)} octets, P-256 needs 32")
    scalar = int.from_bytes(raw, "big")
    if not 0 < scalar < _P256_ORDER:
        raise KeyFileError(f"{path}: PrivateKey is out of range for P-256")
    times: dict[str, int] = {}
    for t in _TIMES:
        if t in fields:
            try:
                times[t] = _parse_time(fields[t])
            except ValueError:
                raise KeyFileError(
                    f"{path}: {t}: '{fields[t]}' is not a YYYYMMDDHHMMSS time"
                ) from None
    return scalar, times


def _parse_time(text: str) -> int:
    when = dt.datetime.strptime(text.split()[0], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    return int(when.timestamp())


def _dnskey(flags: int, public: bytes) -> DNSKEY:
    return DNSKEY(  # type: ignore[no-untyped-call]
        dns.rdataclass.IN, dns.rdatatype.DNSKEY, flags, 3, ALGORITHM, public
    )


def dnskey_of(key: ZoneKey) -> DNSKEY:
    return _dnskey(key.flags, key.public)


def signer_of(key: ZoneKey) -> PrivateECDSAP256SHA256:
    """The `dns.dnssecalgs` private key object (made where it is used; never pickled)."""
    scalar = int.from_bytes(key.private, "big")
    return PrivateECDSAP256SHA256(key=ec.derive_private_key(scalar, ec.SECP256R1()))


# ----------------------------------------------------------------------------- writing


def generate(zone: str, directory: Path, *, sep: bool, now: float | None = None) -> Path:
    """Make a new key pair for `zone` in `directory`; returns its base path.
    The private file is created 0600 and never overwritten."""
    flags = ZONE_KEY | (SEP if sep else 0)
    for _ in range(16):  # a key tag already used in this directory: try another key
        pk = PrivateECDSAP256SHA256.generate()
        public = pk.public_key().encode_key_bytes()
        tag = dns.dnssec.key_id(_dnskey(flags, public))
        base = directory / base_name(zone, tag)
        if not Path(str(base) + ".key").exists() and not Path(str(base) + ".private").exists():
            break
    else:
        raise KeyFileError(f"{directory}: could not find an unused key tag")
    created = _stamp(now)
    role = "key-signing key (KSK/CSK)" if sep else "zone-signing key (ZSK)"
    dnskey = _dnskey(flags, public)
    scalar = pk.key.private_numbers().private_value.to_bytes(32, "big")
    pub_text = (
        f"; This is a {role}, keyid {tag}, for {zone}.\n"
        f"; Created: {created}\n"
        f"{zone}. IN DNSKEY {dnskey.to_text(chunksize=0)}\n"
    )
    priv_text = (
        "Private-key-format: v1.3\n"
        "Algorithm: 13 (ECDSAP256SHA256)\n"
        f"PrivateKey: {base64.b64encode(scalar).decode()}\n"
        f"Created: {created}\n"
        # as dnssec-keygen writes them: published and signing from now on
        f"Publish: {created}\n"
        f"Activate: {created}\n"
    )
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(base) + ".private", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(priv_text)
    fd = os.open(str(base) + ".key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(pub_text)
    return base


def _stamp(now: float | None) -> str:
    when = dt.datetime.fromtimestamp(now, dt.UTC) if now is not None else dt.datetime.now(dt.UTC)
    return when.strftime("%Y%m%d%H%M%S")


def ds_text(zone: str, key: ZoneKey, digest: str = "SHA256") -> str:
    """The DS record for the parent zone, in presentation form."""
    origin = dns.name.from_text(zone + ".")
    ds = dns.dnssec.make_ds(origin, dnskey_of(key), digest)
    return f"{zone}. IN DS {ds.to_text()}"
