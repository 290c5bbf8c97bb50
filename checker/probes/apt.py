"""Sync-consistency probe for apt-style mirrors (the hash-sum-mismatch case).

For each suite: fetch `dists/<suite>/InRelease` (or `Release`), then HEAD every
index file it lists. A file that exists must have the listed size; of each
group of compression variants (Packages, Packages.gz, Packages.xz) at least one
must exist — Release files list variants a mirror does not carry, and apt
copes with that. With `Acquire-By-Hash: yes` every existing file must also be
served under `by-hash/SHA256/<hash>`. Any mismatch means the mirror is between
two states of the archive (mid-sync): apt clients would fail with "Hash Sum
mismatch", so the address goes down at once and stays down until consistent
for `rise` checks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from checker.http import HTTPClient, HTTPError
from checker.target import Target
from geodns.model import AptCheck
from geodns.store import ProbeRecord

KIND = "apt"
_COMPRESSIONS = (".gz", ".xz", ".bz2", ".lzma", ".zst", ".lz4")
_HASH_FIELDS = ("SHA256", "SHA512", "SHA1", "MD5Sum")
_MAX_RELEASE = 8 << 20


@dataclass
class Release:
    fields: dict[str, str] = field(default_factory=dict)
    # path relative to dists/<suite>/ → (size, sha256 or None)
    files: dict[str, tuple[int, str | None]] = field(default_factory=dict)

    @property
    def by_hash(self) -> bool:
        return self.fields.get("acquire-by-hash", "").lower() == "yes"


def _unsign(text: str) -> str:
    """The signed text of a clearsigned (InRelease) message, dash-unescaped."""
    if "-----BEGIN PGP SIGNED MESSAGE-----" not in text:
        return text
    head, _, rest = text.partition("-----BEGIN PGP SIGNED MESSAGE-----")
    _, _, body = rest.partition("\n\n")  # armor headers ("Hash: SHA512") end at a blank line
    body = body.split("\n-----BEGIN PGP SIGNATURE-----", 1)[0]
    return "\n".join(ln[2:] if ln.startswith("- ") else ln for ln in body.splitlines())


def parse_release(text: str) -> Release:
    """Parse a Release/InRelease (deb822 paragraph with multi-line hash fields)."""
    rel = Release()
    current: str | None = None
    sums: dict[str, dict[str, tuple[int, str]]] = {}
    for line in _unsign(text).splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":
            if current in _HASH_FIELDS:
                parts = line.split()
                if len(parts) == 3 and parts[1].isdigit():
                    sums.setdefault(current, {})[parts[2]] = (int(parts[1]), parts[0])
            continue
        name, _, value = line.partition(":")
        current = name.strip()
        rel.fields[current.lower()] = value.strip()
    best = next((sums[f] for f in _HASH_FIELDS if f in sums), {})
    sha = sums.get("SHA256", {})
    for path, (size, _) in best.items():
        rel.files[path] = (size, sha[path][1] if path in sha else None)
    return rel


def _base(path: str) -> str:
    for ext in _COMPRESSIONS:
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


async def _fetch_release(client: HTTPClient, target: Target, suite: str) -> tuple[str, str]:
    for name in ("InRelease", "Release"):
        path = target.path(f"dists/{suite}/{name}")
        resp = await client.get(path, max_body=_MAX_RELEASE)
        if resp.status == 200:
            return name, resp.body.decode("utf-8", "replace")
        if resp.status not in (404, 410):
            raise ValueError(f"GET {path} answered {resp.status} {resp.reason}".rstrip())
    raise ValueError(f"dists/{suite}/InRelease and Release are both missing")


async def check_suite(
    client: HTTPClient, target: Target, suite: str
) -> tuple[int, list[str], list[str]]:
    """(files checked, inconsistencies in words, index files that answered
    an error other than not-found) for one suite."""
    name, text = await _fetch_release(client, target, suite)
    rel = parse_release(text)
    if not rel.files:
        return 0, [f"dists/{suite}/{name} lists no index files"], []
    # path → (served, its Content-Length if the server gave one, HTTP status)
    served: dict[str, tuple[bool, int | None, int]] = {}

    async def head(rel_path: str) -> tuple[str, bool, int | None, int]:
        resp = await client.head(target.path(f"dists/{suite}/{rel_path}"))
        ok = resp.status == 200
        return rel_path, ok, (resp.content_length if ok else None), resp.status

    answers = await asyncio.gather(*(head(p) for p in rel.files))
    problems: list[str] = []
    groups: dict[str, list[str]] = {}
    odd: list[str] = []  # answers that are neither "here" nor "not found"
    for path, ok, size, status in answers:
        served[path] = (ok, size, status)
        groups.setdefault(_base(path), []).append(path)
        if not ok and status not in (404, 410):
            odd.append(f"{path} ({status})")
    for path, (ok, size, _) in served.items():
        want = rel.files[path][0]
        # no Content-Length (a chunked HEAD answer): present, size unknown
        if ok and size is not None and size != want:
            problems.append(f"dists/{suite}/{name} lists {path} as {want} bytes, mirror has {size}")
    for base, paths in groups.items():
        # every variant not found (a 403/5xx says nothing about the sync: in `odd`)
        if all(served[p][2] in (404, 410) for p in paths):
            problems.append(f"dists/{suite}/{name} lists {base} but no variant of it exists")
    if rel.by_hash:
        wanted = [
            (
                p,
                f"{p.rsplit('/', 1)[0]}/by-hash/SHA256/{sha}"
                if "/" in p
                else f"by-hash/SHA256/{sha}",
            )
            for p, (_, sha) in rel.files.items()
            if sha and served[p][0]
        ]
        got = await asyncio.gather(*(head(bh) for _, bh in wanted))
        for (p, _bh), (_, ok, size, _) in zip(wanted, got, strict=True):
            if not ok:
                problems.append(f"by-hash copy of {p} missing (Acquire-By-Hash: yes)")
            elif size is not None and size != rel.files[p][0]:
                problems.append(f"by-hash copy of {p} {size} bytes (Acquire-By-Hash: yes)")
    return len(answers), problems, odd


async def probe_apt(target: Target, check: AptCheck, client: HTTPClient) -> ProbeRecord:
    t0 = time.perf_counter()
    checked = 0
    problems: list[str] = []
    errors: list[str] = []
    per_suite: dict[str, Any] = {}
    for suite in check.suites:
        try:
            n, probs, errs = await check_suite(client, target, suite)
        except HTTPError as exc:
            return ProbeRecord(
                KIND, False, f"apt: {exc.reason}", None, {}, unrecoverable=exc.refused
            )
        except ValueError as exc:
            return ProbeRecord(KIND, False, f"apt: {exc}", None, {"suite": suite})
        checked += n
        problems += probs
        errors += [f"dists/{suite}/{e}" for e in errs]
        per_suite[suite] = {"checked": n, "inconsistent": len(probs)}
    latency = time.perf_counter() - t0
    data = {
        "checked": checked,
        "inconsistent": len(problems),
        "suites": per_suite,
        "examples": problems[:5],
    }
    if problems:
        more = f" ({len(problems)} problems in {checked} index files)" if len(problems) > 1 else ""
        return ProbeRecord(
            KIND, False, f"mid-sync: {problems[0]}{more}", latency, data, unrecoverable=True
        )
    if errors:  # the mirror misbehaves, but that is not a half-finished sync
        return ProbeRecord(
            KIND, False, f"apt: index files answered errors: {', '.join(errors[:3])}", latency, data
        )
    return ProbeRecord(
        KIND,
        True,
        f"apt indices consistent ({checked} files in {len(check.suites)} "
        f"suite{'s' * (len(check.suites) != 1)})",
        latency,
        data,
    )
