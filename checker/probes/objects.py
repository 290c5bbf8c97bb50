"""Objects probe: HEAD manifest objects on one mirror address.

Keep-alive connections (`ObjectsCheck.concurrency` of them, one worker each)
walk the round's plan (see `manifest.plan`). An object counts against the
mirror when it is missing (404/410, or any non-200 answer) or its
Content-Length differs from the manifest; with `verify_sha256: N` the first N
planned objects that have a hash (newest first, at most 32 MiB) are fetched
whole and hashed. A missing or wrong *critical* object is unrecoverable (down
at once); otherwise more than `max_missing` bad objects is a failure that
counts towards `fall`, and fewer give a warning.

With the expected state from the store (checker/expected.py) the round also
checks the objects new since the address's last round first, and HEADs a few
objects removed from the origin: one still served is a warning, never down.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from checker import manifest as mf
from checker.http import HTTPClient, HTTPError
from checker.target import Target, quote_path
from geodns.model import ObjectsCheck
from geodns.store import ProbeRecord

KIND = "objects"
_SHA_MAX = 32 << 20
_EXAMPLES = 5


@dataclass
class Tally:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    wrong_size: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bad_paths: dict[str, str] = field(default_factory=dict)  # path → "missing" | ...
    hashed: int = 0
    latency_sum: float = 0.0

    @property
    def bad(self) -> int:
        return len(self.missing) + len(self.wrong_size) + len(self.corrupt)


async def check_objects(
    client: HTTPClient,
    base_path: str,
    objects: list[mf.ManifestObject],
    *,
    concurrency: int,
    verify_sha256: int = 0,
    progress: Any = None,
) -> Tally:
    """HEAD (and optionally hash) `objects`; never raises for one object's failure.

    Connection failures propagate (HTTPError) only when no request could be made.
    """
    tally = Tally()
    queue = iter(objects)
    hash_left = verify_sha256
    hash_set: set[str] = set()
    for o in objects:
        if hash_left <= 0:
            break
        if o.sha256 and 0 <= o.size <= _SHA_MAX:
            hash_set.add(o.path)
            hash_left -= 1
    prefix = quote_path(base_path)
    first_error: list[HTTPError] = []
    # Consecutive failed connects: when the mirror stops accepting connections,
    # give up instead of timing out once per remaining object.
    connect_fails = 0
    abort = False

    async def one(o: mf.ManifestObject) -> None:
        target = prefix + o.target_suffix
        t0 = time.perf_counter()
        try:
            resp = await client.head(target)
        except HTTPError as exc:
            nonlocal connect_fails, abort
            if not first_error:
                first_error.append(exc)
            tally.errors.append(f"{o.path}: {exc.reason}")
            if exc.connect:
                connect_fails += 1
                if tally.checked == 0 or connect_fails >= 3:
                    abort = True
            return
        connect_fails = 0
        tally.latency_sum += time.perf_counter() - t0
        tally.checked += 1
        if resp.status != 200:
            note = "" if resp.status in (404, 410) else f" ({resp.status})"
            tally.missing.append(o.path + note)
            tally.bad_paths[o.path] = "missing"
            return
        length = resp.content_length
        if o.size >= 0 and length is not None and length != o.size:
            tally.wrong_size.append(f"{o.path}: {length} bytes, manifest says {o.size}")
            tally.bad_paths[o.path] = "wrong size"
            return
        if o.path in hash_set:
            h = hashlib.sha256()
            try:
                got = await client.get(target, sink=h.update)
            except HTTPError as exc:
                tally.errors.append(f"{o.path}: {exc.reason}")
                return
            tally.hashed += 1
            if got.status == 200 and h.hexdigest() != o.sha256:
                tally.corrupt.append(f"{o.path}: sha256 mismatch")
                tally.bad_paths[o.path] = "corrupt"

    async def worker() -> None:
        for o in queue:
            if abort:
                break
            await one(o)
            if progress is not None:
                progress(1)

    workers = max(1, min(concurrency, len(objects)))
    await asyncio.gather(*(worker() for _ in range(workers)))
    if first_error and (tally.checked == 0 or abort):
        raise first_error[0]
    return tally


async def check_gone(
    client: HTTPClient, base_path: str, paths: Sequence[str], *, concurrency: int
) -> tuple[int, list[str]]:
    """HEAD objects removed from the origin: (answered, paths still served).

    Only a 200 counts as served; errors and other statuses say nothing about
    whether the mirror deleted the file, so they are left out."""
    prefix = quote_path(base_path)
    queue = iter(paths)
    answered = 0
    served: list[str] = []

    async def worker() -> None:
        nonlocal answered
        for path in queue:
            try:
                resp = await client.head(prefix + quote_path(path))
            except HTTPError:
                continue
            answered += 1
            if resp.status == 200:
                served.append(path)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(paths))))))
    return answered, served


def _summary(t: Tally, total: int, crit_bad: list[str]) -> str:
    parts = []
    n = t.checked
    if t.missing:
        parts.append(f"{len(t.missing)} of {n} objects missing")
    if t.wrong_size:
        parts.append(f"{len(t.wrong_size)} of {n} wrong size")
    if t.corrupt:
        parts.append(f"{len(t.corrupt)} of {t.hashed} hashed corrupt")
    parts += [f"critical {c}" for c in crit_bad[:3]]
    examples = (t.missing + t.wrong_size + t.corrupt)[:_EXAMPLES]
    text = ", ".join(parts)
    if examples and not crit_bad:
        text += " (e.g. " + "; ".join(examples[:2]) + ")"
    return text


async def probe_objects(
    target: Target,
    check: ObjectsCheck,
    manifest: mf.Manifest,
    *,
    cursor: int = 0,
    pipeline: int = 1,
    new: Sequence[mf.ManifestObject] = (),
    gone: Sequence[str] = (),
    carry: dict[str, Any] | None = None,
    note: str | None = None,
) -> ProbeRecord:
    """`new`, `gone`, `carry` (data kept in the record: the expected state's
    version and cursors) and `note` (a warning about the expected state) come
    from checker/expected.py; a manifest file uses none of them."""
    p = mf.plan(manifest, check.sample, check.critical, cursor, new)
    kept = dict(carry or {})
    t0 = time.perf_counter()
    client = target.client(max_connections=check.concurrency, pipeline=pipeline)
    gone_answered, gone_served = 0, list[str]()
    try:
        tally = await check_objects(
            client,
            target.base_path,
            p.objects,
            concurrency=check.concurrency,
            verify_sha256=check.verify_sha256,
        )
        if gone:
            gone_answered, gone_served = await check_gone(
                client, target.base_path, gone, concurrency=check.concurrency
            )
    except HTTPError as exc:
        return ProbeRecord(
            KIND,
            False,
            f"objects: {exc.reason}",
            None,
            {"cursor": cursor, **kept},
            unrecoverable=exc.refused or exc.timeout,
        )
    finally:
        await client.close()
    elapsed = time.perf_counter() - t0
    if p.new_taken:
        last = new[p.new_taken - 1]
        kept["new_after"] = [last.first_seen, last.path]
    crit_bad = [f"{c} {tally.bad_paths[c]}" for c in p.critical if c in tally.bad_paths]
    data: dict[str, Any] = {
        "checked": tally.checked,
        "missing": len(tally.missing),
        "wrong_size": len(tally.wrong_size),
        "corrupt": len(tally.corrupt),
        "hashed": tally.hashed,
        "errors": len(tally.errors),
        "total": len(manifest),
        "cursor": p.cursor,
        "seconds": round(elapsed, 3),
        "examples": (tally.missing + tally.wrong_size + tally.corrupt + tally.errors)[:_EXAMPLES],
        **kept,
    }
    if carry is not None:  # the expected state: say what was new
        data["new"] = p.new_taken
        data["new_pending"] = len(new) - p.new_taken
    if gone:
        data["gone_checked"] = gone_answered
        data["gone_served"] = len(gone_served)
    latency = tally.latency_sum / tally.checked if tally.checked else None
    if crit_bad:
        return ProbeRecord(
            KIND, False, _summary(tally, len(manifest), crit_bad), latency, data, unrecoverable=True
        )
    if tally.bad > check.max_missing:
        return ProbeRecord(KIND, False, _summary(tally, len(manifest), []), latency, data)
    detail = f"{tally.checked} of {len(manifest)} objects checked, all present"
    if tally.bad:
        detail = f"{tally.checked} of {len(manifest)} objects checked"
    warnings = []
    if tally.bad:
        warnings.append(
            _summary(tally, len(manifest), []) + f" (tolerated: max_missing {check.max_missing})"
        )
    elif tally.errors:
        warnings.append(f"{len(tally.errors)} object requests failed (e.g. {tally.errors[0]})")
    if gone_served:
        warnings.append(
            f"{len(gone_served)} of {gone_answered} objects removed from the origin "
            f"still served (e.g. {gone_served[0]})"
        )
    if note:
        warnings.append(note)
    if warnings:
        data["warning"] = "; ".join(warnings)
    return ProbeRecord(KIND, True, detail, latency, data)
