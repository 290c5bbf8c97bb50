"""Hysteresis: from probe results to an address's up/down state.

Each probe kind keeps its own streak: `fall` consecutive failures of a kind
take the address down, `rise` consecutive successes of that kind clear it;
an unrecoverable failure (bad certificate, refused/timed-out connection,
mid-sync indices, a missing critical object) skips `fall`. The address is up
while no kind is down. Per-kind streaks keep probes with different intervals
from diluting each other (a TLS check every 5 minutes does not reset the count
of an objects check that runs every 15). A mirror with `enabled: false` is
down regardless, and comes back as soon as it is enabled and no kind is down.

Throughput is judged apart (`SLOW_KINDS`): its verdicts never take an
address down; `fall` consecutive slow verdicts make it `slow` and `rise`
fast ones clear that. Slow is a state of a serving address only: a down or
disabled address is not also slow (the per-kind record keeps the streak, so
an address that comes back slow is slow again at once).

The per-kind record lives in the store (`address_states.kinds`), so cron-run
`checker run --once` keeps its streaks between runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from geodns.store import ProbeRecord

DISABLED_REASON = "disabled in configuration (enabled: false)"
# kinds whose verdict is speed: they make an address slow, never down
SLOW_KINDS = ("throughput",)


@dataclass(frozen=True, slots=True)
class Evaluation:
    up: bool
    disabled: bool
    reason: str  # why the state is what it is (kept by the store on a change)
    detail: str  # the latest picture in words
    warning: str | None
    kinds: dict[str, Any]
    slow: bool = False  # serving, but ranked one group behind (only ever with up)


def _join_reasons(items: list[tuple[str, str]]) -> str:
    """Join reasons, dropping repeats: a refused connection fails every probe alike."""
    seen: set[str] = set()
    out = []
    for kind, reason in items:
        core = reason.removeprefix(f"{kind}: ")
        if core in seen:
            continue
        seen.add(core)
        out.append(reason)
    return "; ".join(out)


def _kind_entry(prev: dict[str, Any] | None) -> dict[str, Any]:
    base = {"down": False, "fails": 0, "oks": 0, "reason": ""}
    if prev:
        base.update(prev)
    return base


def _fold_slow(e: dict[str, Any], r: ProbeRecord, fall: int, rise: int) -> None:
    """Count a speed verdict into the kind's streaks, as `advance` does failures."""
    verdict = r.data.get("slow")
    if verdict is True:
        e["fails"] = int(e["fails"]) + 1
        e["oks"] = 0
        if e["fails"] >= fall:
            e["slow"] = True
    elif verdict is False:
        e["oks"] = int(e["oks"]) + 1
        e["fails"] = 0
        if e.get("slow") and e["oks"] >= rise:
            e["slow"] = False
    # None (measuring, or no sample this round): the streaks stand


def _summary(e: dict[str, Any]) -> str:
    return str((e.get("data") or {}).get("summary") or e.get("detail") or "")


def advance(
    prev_kinds: dict[str, Any] | None,
    prev_up: bool | None,
    results: Sequence[ProbeRecord],
    *,
    prev_disabled: bool = False,
    prev_slow: bool = False,
    fall: int,
    rise: int,
    configured: Iterable[str] | None = None,
    enabled: bool = True,
    now: datetime | None = None,
) -> Evaluation:
    """Fold `results` into the previous per-kind record; return the new state."""
    now = now or datetime.now(UTC)
    kinds: dict[str, Any] = {k: dict(v) for k, v in (prev_kinds or {}).items()}
    if configured is not None:
        keep = set(configured)
        kinds = {k: v for k, v in kinds.items() if k in keep}
    recovered: list[str] = []
    for r in results:
        e = _kind_entry(kinds.get(r.kind))
        was_down = bool(e["down"])
        if r.kind in SLOW_KINDS:
            _fold_slow(e, r, fall, rise)
        elif r.ok:
            e["oks"] = int(e["oks"]) + 1
            e["fails"] = 0
            if was_down and e["oks"] >= rise:
                e["down"] = False
                recovered.append(r.kind)
        else:
            e["fails"] = int(e["fails"]) + 1
            e["oks"] = 0
            if r.unrecoverable or e["fails"] >= fall:
                e["down"] = True
            e["reason"] = r.detail
        e.update(
            ok=r.ok,
            detail=r.detail,
            unrecoverable=r.unrecoverable,
            at=(r.at or now).isoformat(),
            latency=r.latency,
            data=dict(r.data),
        )
        kinds[r.kind] = e

    down = [k for k, e in kinds.items() if e.get("down")]
    failing = [
        k
        for k, e in kinds.items()
        if not e.get("down") and not e.get("ok", True) and k not in SLOW_KINDS
    ]
    speed = [(k, e) for k, e in kinds.items() if k in SLOW_KINDS]
    slow = any(e.get("slow") for _, e in speed)
    slow_text = "; ".join(f"slow: {_summary(e)}" for _, e in speed if e.get("slow"))
    notes = []  # speed verdicts on their way, and samples that could not be taken
    for k, e in speed:
        if e.get("slow") and int(e["oks"]):
            notes.append(f"recovering: {k} {e['oks']}/{rise}")
        elif not e.get("slow") and int(e["fails"]):
            notes.append(f"{k} slow {e['fails']}/{fall}: {_summary(e)}")
        if not e.get("ok", True) and (e.get("data") or {}).get("slow") is None:
            notes.append(str(e.get("detail", "")))
    warnings = [
        str(e["data"]["warning"]) for e in kinds.values() if e.get("data", {}).get("warning")
    ]
    warning = "; ".join(warnings) or None

    if not enabled:
        return Evaluation(False, True, DISABLED_REASON, DISABLED_REASON, warning, kinds)

    if down:
        reason = _join_reasons([(k, str(kinds[k]["reason"])) for k in down])
        detail = reason
        recovering = [k for k in down if kinds[k].get("ok") and kinds[k]["oks"] > 0]
        if recovering:
            detail += (
                " (recovering: "
                + ", ".join(f"{k} {kinds[k]['oks']}/{rise}" for k in recovering)
                + ")"
            )
        return Evaluation(False, False, reason, detail, warning, kinds)

    parts = [slow_text] if slow else []
    if failing:
        parts.append(
            "; ".join(
                f"{k} failing {kinds[k]['fails']}/{fall}: {kinds[k]['reason']}" for k in failing
            )
        )
    parts += notes
    if parts:
        detail = "; ".join(parts)
    else:
        detail = "ok" if not warning else f"ok, {warning}"
    if prev_up is None:
        reason = "first check: " + ("passed" if not (failing or slow) else detail)
    elif prev_disabled:
        reason = "enabled again in configuration; no check is failing"
    elif prev_up is False:
        if recovered:
            plural = "s" * (rise != 1)
            reason = f"recovered: {', '.join(recovered)} passed {rise} consecutive check{plural}"
        else:
            reason = "checks pass again"
        if slow:
            reason += f"; {slow_text}"
    elif slow and not prev_slow:
        reason = slow_text
    elif prev_slow and not slow:
        reason = "; ".join(f"fast again: {_summary(e)}" for _, e in speed) or "fast again"
    else:
        reason = detail
    return Evaluation(True, False, reason, detail, warning, kinds, slow=slow)
