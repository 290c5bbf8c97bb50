"""Domain names as text: validation, making names absolute, and wire form.

Names inside geodns are absolute, lower-case, without the trailing dot
("dl.example.org"; the root is ""). Wire form is the RFC 1035 §3.1 label
sequence ending in a zero byte.
"""

from __future__ import annotations

import re

# Host names plus '_' (SRV/TXT owners like _http._tcp) — RFC 2181 §11 allows any
# octet, but operators mean host-like names and typos should be caught.
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def name_problem(name: str, *, allow_wildcard: bool = False) -> str | None:
    """Why `name` (absolute, no trailing dot) is not a valid name, or None."""
    if name == "":
        return None
    if len(name) > 253:
        return f"name is {len(name)} characters long (at most 253)"
    labels = name.split(".")
    for i, label in enumerate(labels):
        if label == "":
            return "empty label (two dots in a row, or a leading dot)"
        if label == "*":
            if not allow_wildcard or i != 0:
                return "'*' is only allowed as the first label of a record name"
            continue
        if len(label) > 63:
            return f"label '{label[:20]}…' is {len(label)} characters long (at most 63)"
        if not _LABEL.match(label):
            return f"label '{label}' has characters other than letters, digits, '-' and '_'"
    return None


def absolute(name: str, origin: str) -> str:
    """`www` → `www.example.org`; `@` → origin; `x.example.org.` stays (minus dot).

    A name that already ends in the zone's name is taken as absolute too
    (`ns1.example.org` in zone example.org), because operators write it that
    way and the zone-file reading (`ns1.example.org.example.org`) is never meant.
    """
    name = name.strip().lower()
    if name == "@":
        return origin
    if name.endswith("."):
        return name[:-1]
    if not origin or name == origin or name.endswith("." + origin):
        return name
    return f"{name}.{origin}"


def in_zone(name: str, zone: str) -> bool:
    return zone == "" or name == zone or name.endswith("." + zone)


def to_wire(name: str) -> bytes:
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def from_wire(wire: bytes) -> str:
    """Text of an uncompressed wire name (for logs and explain)."""
    labels = []
    i = 0
    while i < len(wire) and wire[i]:
        n = wire[i]
        labels.append(wire[i + 1 : i + 1 + n].decode("ascii", "backslashreplace"))
        i += 1 + n
    return ".".join(labels)


def parent(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else ""
