"""What a demo mirror serves: an in-memory tree of objects (content derived
from the path, so 100,000 objects cost no memory), optional apt suites with
consistent InRelease/Release indices, and the manifest a checker reads."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class TreeFile:
    size: int
    mtime: float
    data: bytes | None = None  # None: generated from the path (see Tree.content)


def generated(path: str, size: int, salt: bytes = b"") -> bytes:
    seed = hashlib.sha256(salt + path.encode()).digest()
    reps = size // len(seed) + 1
    return (seed * reps)[:size]


@dataclass
class Tree:
    """An in-memory mirror tree: path (no leading slash) → file."""

    files: dict[str, TreeFile] = field(default_factory=dict)
    critical: tuple[str, ...] = ()

    def add(
        self, path: str, data: bytes | None = None, *, size: int = 0, mtime: float | None = None
    ) -> None:
        path = path.lstrip("/")
        when = datetime.now(UTC).timestamp() if mtime is None else mtime
        if data is not None:
            self.files[path] = TreeFile(len(data), when, data)
        else:
            self.files[path] = TreeFile(size, when, None)

    def content(self, path: str) -> bytes:
        f = self.files[path]
        return f.data if f.data is not None else generated(path, f.size)

    @classmethod
    def generate(
        cls,
        n: int,
        *,
        seed: int = 1,
        max_size: int = 4096,
        critical: Iterable[str] = (),
        start: float | None = None,
    ) -> Tree:
        """`n` objects in a distfiles-like layout with sizes up to `max_size`.

        mtimes rise with the index, so the last ones are "new"; `critical`
        paths are added too (size 1 KiB, oldest mtime).
        """
        rng = random.Random(seed)
        base = (start if start is not None else datetime.now(UTC).timestamp()) - n - 86400
        tree = cls(critical=tuple(c.lstrip("/") for c in critical))
        for i in range(n):
            path = f"distfiles/{i % 256:02x}/{i // 256:04x}/obj-{i:06d}.tar.xz"
            tree.files[path] = TreeFile(rng.randint(0, max_size), base + i)
        for c in tree.critical:
            tree.files[c] = TreeFile(1024, base - 1)
        return tree

    @classmethod
    def from_dir(cls, root: Path) -> Tree:
        tree = cls()
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                p = Path(dirpath, name)
                st = p.stat()
                rel = p.relative_to(root).as_posix()
                tree.files[rel] = TreeFile(st.st_size, st.st_mtime, p.read_bytes())
        return tree

    def add_apt_suite(
        self,
        suite: str,
        *,
        components: Iterable[str] = ("main",),
        architectures: Iterable[str] = ("amd64",),
        by_hash: bool = True,
    ) -> None:
        """Index files and an InRelease/Release listing them, like Debian's dists/."""
        comps, archs = list(components), list(architectures)
        listed: list[tuple[str, bytes | None, int]] = []  # (relpath, data or None if absent)
        for comp in comps:
            for arch in archs:
                base = f"{comp}/binary-{arch}/Packages"
                body = generated(f"{suite}/{base}", 3000, b"packages")
                # The uncompressed index is listed but not served, as on Debian mirrors.
                listed.append((base, None, len(body)))
                listed.append((base + ".gz", generated(base + ".gz", 1100), 1100))
                listed.append((base + ".xz", generated(base + ".xz", 900), 900))
            tr = f"{comp}/i18n/Translation-en.xz"
            listed.append((tr, generated(f"{suite}/{tr}", 700), 700))
            src = f"{comp}/source/Sources.xz"
            listed.append((src, generated(f"{suite}/{src}", 1500), 1500))
        lines_md5, lines_sha = [], []
        stamp = datetime.now(UTC)
        for rel, data, size in listed:
            content = data if data is not None else generated(f"{suite}/{rel}", size, b"packages")
            md5 = hashlib.md5(content).hexdigest()
            sha = hashlib.sha256(content).hexdigest()
            lines_md5.append(f" {md5} {size:>16} {rel}")
            lines_sha.append(f" {sha} {size:>16} {rel}")
            if data is not None:
                self.add(f"dists/{suite}/{rel}", data)
                if by_hash:
                    d = rel.rsplit("/", 1)[0]
                    self.add(f"dists/{suite}/{d}/by-hash/SHA256/{sha}", data)
        release = "\n".join(
            [
                "Origin: geodns demo",
                "Label: geodns demo",
                f"Suite: {suite}",
                f"Codename: {suite}",
                f"Date: {format_datetime(stamp, usegmt=True)}",
                *(["Acquire-By-Hash: yes"] if by_hash else []),
                f"Architectures: {' '.join(archs)}",
                f"Components: {' '.join(comps)}",
                "MD5Sum:",
                *lines_md5,
                "SHA256:",
                *lines_sha,
                "",
            ]
        )
        self.add(f"dists/{suite}/Release", release.encode())
        inrelease = (
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
            + release
            + "-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCgAdFiEEdemo\n=demo\n"
            "-----END PGP SIGNATURE-----\n"
        )
        self.add(f"dists/{suite}/InRelease", inrelease.encode())

    def manifest(self, *, sha256: bool = False, include_dists: bool = False) -> dict[str, Any]:
        """The JSON `checker manifest build` would write for this tree."""
        objects = []
        for path in sorted(self.files):
            if path.startswith(("dists/", "project/")) and not include_dists:
                continue
            f = self.files[path]
            obj: dict[str, Any] = {"path": path, "size": f.size, "mtime": int(f.mtime)}
            if sha256:
                obj["sha256"] = hashlib.sha256(self.content(path)).hexdigest()
            objects.append(obj)
        return {
            "version": 1,
            "generated": datetime.now(UTC).isoformat(timespec="seconds"),
            "root": "demo",
            "objects": objects,
        }
