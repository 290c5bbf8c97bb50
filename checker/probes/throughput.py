"""Throughput probe: how fast one mirror address delivers a real object.

Each round (`ThroughputCheck.interval`), one GET of a manifest object with
`Range: bytes=0-(N-1)` (N = `sample_bytes`). The object is chosen for size:
the smallest one of at least N bytes (a mirror that ignores Range then sends
as little beyond the sample as possible), else the largest there is. The body
is read by the shared HTTP client with a hard limit (`stop_after`), so a round
never reads more than `budget` body bytes from an address, whatever it sends:

  206 Partial Content  the N bytes asked for;
  200 OK               the mirror ignored Range: N bytes are read, the
                       connection is closed on the rest, and the address is
                       remembered as one that ignores Range (`ranges: false`).
                       Its next rounds fetch the largest object of at most
                       `budget` bytes whole (still asking for the Range, so a
                       mirror that learns ranges is noticed).

Measured: the time to the first body byte (TTFB, from before the connect, as
curl's time_starttransfer) and the rate from the first body byte to the last
— the bytes after the first read over the time they took, so one TLS record
arriving with the head does not count as instant. A transfer still running at
the pool's `timeout` is judged on what arrived by then (0 bytes: 0 MB/s).

Verdict: a moving median over the last `rounds` samples, kept with the
address's state (`kinds["throughput"]["data"]["samples"]`), so cron-driven
`--once` runs keep it too. No verdict until `rounds` samples exist; the rate
is the upper median and the TTFB the lower one, so with an even count a
single bad sample cannot tip it either. Median below `min_mbps`, or above
`max_ttfb`, is a "slow" verdict; `checker.state` turns `fall` consecutive
slow verdicts into the `slow` state and `rise` fast ones back (the same
hysteresis as up/down). A failed request (refused, 404, TLS) is no sample and
no verdict: availability is the other probes' business.
"""

from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import dataclass
from typing import Any

from checker import text
from checker.http import HTTPError
from checker.manifest import Manifest, ManifestObject
from checker.target import Target
from geodns.config.fields import show_size
from geodns.model import ThroughputCheck
from geodns.store import ProbeRecord

KIND = "throughput"
MB = 1_000_000  # MB/s as network people mean it: 10^6 bytes per second
_MIN_SPAN = 0.001  # below this the first-to-last-byte time is noise


@dataclass
class Meter:
    """Counts body bytes as the client reads them, and when they came."""

    start: float
    read: int = 0  # body bytes
    first_at: float | None = None
    first_bytes: int = 0  # how many came with the first read

    def feed(self, data: bytes) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
            self.first_bytes = len(data)
        self.read += len(data)

    def one_read(self, end: float) -> bool:
        """All of it in one read: the rate is a floor, not a measurement."""
        return self.first_at is not None and (
            self.read == self.first_bytes or end - self.first_at < _MIN_SPAN
        )

    @property
    def ttfb(self) -> float | None:
        return None if self.first_at is None else self.first_at - self.start

    def rate(self, end: float) -> float:
        """Bytes per second from the first body byte to `end` (completion or
        timeout). The whole sample in one read (a small one on a fast path)
        came faster than can be timed: it counts as arriving within
        `_MIN_SPAN` — waiting for it is latency, which `max_ttfb` judges."""
        if self.first_at is None:
            return 0.0
        span = end - self.first_at
        if span >= _MIN_SPAN and self.read > self.first_bytes:
            return (self.read - self.first_bytes) / span
        return self.read / max(span, _MIN_SPAN)


# per (manifest, sample, budget, whole): a weak reference guards against a
# reused id() and lets a replaced manifest (a new expected state) be freed
_choices: dict[tuple[int, int, int, bool], tuple[weakref.ref[Manifest], ManifestObject | None]] = {}


def choose(manifest: Manifest, sample: int, budget: int, whole: bool) -> ManifestObject | None:
    """The object to sample: see the module doc. `whole`: the address ignores
    Range, so prefer one it can send whole within the budget. Cached per
    loaded manifest (a large one is a million objects)."""
    key = (id(manifest), sample, budget, whole)
    hit = _choices.get(key)
    if hit is not None and hit[0]() is manifest:
        return hit[1]
    best: ManifestObject | None = None
    objs = [o for o in manifest.objects if o.size > 0]
    fit = [o for o in objs if o.size <= budget] if whole else []
    big = [o for o in objs if o.size >= sample]
    if fit:
        best = max(fit, key=lambda o: (o.size, o.path))
    elif big:
        best = min(big, key=lambda o: (o.size, o.path))
    elif objs:
        best = max(objs, key=lambda o: (o.size, o.path))
    if len(_choices) > 64:
        _choices.clear()
    _choices[key] = (weakref.ref(manifest), best)
    return best


def mbps_text(mbps: float) -> str:
    """0.4, 2, 12.3, 940: enough digits to compare with `min_mbps`."""
    return f"{mbps:.0f}" if mbps >= 100 else f"{mbps:.3g}"


def _ms(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds * 1000:.0f} ms"


@dataclass(frozen=True, slots=True)
class Verdict:
    slow: bool | None  # None: fewer samples than `rounds`
    median_mbps: float | None
    median_ttfb: float | None  # None: no sample had a first byte
    summary: str  # "0.4 MB/s median over 3 rounds (min 2)"


def judge(samples: list[list[Any]], check: ThroughputCheck) -> Verdict:
    """The moving median of `samples` ([mbps, ttfb or None], oldest first)."""
    if not samples:
        return Verdict(None, None, None, "no sample yet")
    n = len(samples)
    rates = [float(s[0]) for s in samples]
    # no first byte before the timeout counts as the longest possible wait
    waits = [float("inf") if s[1] is None else float(s[1]) for s in samples]
    rate = statistics.median_high(rates)
    wait = statistics.median_low(waits)
    median_ttfb = None if wait == float("inf") else wait
    over = f"over {n} round{'s' * (n != 1)}"
    slow_rate = rate < check.min_mbps
    slow_ttfb = check.max_ttfb is not None and wait > check.max_ttfb
    parts = []
    if slow_rate or not slow_ttfb:
        parts.append(f"{mbps_text(rate)} MB/s median {over} (min {check.min_mbps:g})")
    if slow_ttfb:
        assert check.max_ttfb is not None
        first = "no first byte" if median_ttfb is None else f"first byte after {_ms(median_ttfb)}"
        parts.append(f"{first} median {over} (max {text.duration(check.max_ttfb)})")
    summary = "; ".join(parts)
    if n < check.rounds:
        return Verdict(None, rate, median_ttfb, f"measuring, {n} of {check.rounds} samples")
    return Verdict(slow_rate or slow_ttfb, rate, median_ttfb, summary)


async def probe_throughput(
    target: Target, check: ThroughputCheck, manifest: Manifest, prev: dict[str, Any]
) -> ProbeRecord:
    """One sample on one address; `prev` is the last round's data (samples, ranges)."""
    samples: list[list[Any]] = [list(s) for s in prev.get("samples") or []][-check.rounds :]
    ranges = prev.get("ranges")
    whole = ranges is False
    obj = choose(manifest, check.sample_bytes, check.budget, whole)

    def error(reason: str) -> ProbeRecord:
        # no sample, no verdict: the samples so far carry on unchanged
        v = judge(samples, check)
        data = {
            "samples": samples,
            "ranges": ranges,
            "slow": None,
            "median_mbps": v.median_mbps,
            "median_ttfb": v.median_ttfb,
            "min_mbps": check.min_mbps,
            "summary": v.summary,
        }
        return ProbeRecord(KIND, False, f"throughput: {reason}", None, data)

    if obj is None:
        return error(f"the manifest {manifest.source or ''} lists no object with content")
    # the hard limit: the sample, or (ignored Range) a whole object within the budget
    limit = check.budget if whole else min(check.sample_bytes, check.budget)
    client = target.client(max_connections=1)
    meter = Meter(time.perf_counter())
    status: int | None = None
    timed_out = False
    try:
        resp = await client.get(
            target.path(obj.path),
            sink=meter.feed,
            headers={"Range": f"bytes=0-{check.sample_bytes - 1}"},
            stop_after=limit,
        )
        status = resp.status
    except HTTPError as exc:
        if not exc.timeout or exc.connect:
            return error(exc.reason)
        # connected, then too slow: judged on what arrived (maybe nothing)
        timed_out = True
        if exc.response is not None:
            status = exc.response.status
    finally:
        end = time.perf_counter()
        await client.close()
    if status is not None and status not in (200, 206):
        return error(f"{obj.path} answered {status}")
    if status == 206:
        ranges = True
    elif status == 200:
        ranges = False  # Range ignored: next rounds fetch an object that fits the budget
    mbps = meter.rate(end) / MB
    ttfb = meter.ttfb
    samples = [*samples, [round(mbps, 4), None if ttfb is None else round(ttfb, 4)]]
    samples = samples[-check.rounds :]
    v = judge(samples, check)
    how = f"{show_size(meter.read)} of {obj.path}"
    if status == 200 and not whole:
        how += " (Range ignored: read up to the sample, then closed)"
    elif timed_out:
        how += f" (stopped at the {text.duration(target.checks.timeout)} timeout)"
    floor = "at least " if meter.one_read(end) else ""
    detail = f"{floor}{mbps_text(mbps)} MB/s, first byte after {_ms(ttfb)}: {how}; {v.summary}"
    data: dict[str, Any] = {
        "samples": samples,
        "ranges": ranges,
        "object": obj.path,
        "status": status,
        "bytes": meter.read,
        "mbps": round(mbps, 4),
        "ttfb": None if ttfb is None else round(ttfb, 4),
        "median_mbps": v.median_mbps,
        "median_ttfb": v.median_ttfb,
        "min_mbps": check.min_mbps,
        "slow": v.slow,
        "summary": v.summary,
    }
    return ProbeRecord(KIND, v.slow is not True, detail, ttfb, data)
