"""Hysteresis: from probe results to an address's up/down state.

Each probe kind keeps its own streak: `fall` consecutive failures of a kind
take the address down, `rise` consecutive successes of that kind clear it;
an unrecoverable failure (bad certificate, refused/timed-out connection,
mid-sync indices, a missing critical object) skips `fall`. The address is up
while no kind is down. Per-kind streaks keep probes with different intervals
from diluting each other (a TLS check every 5 minutes does not reset the count
of an objects check that runs every 15). A mirror with `enabled: false` is
down regardless, and comes back as soon as it is enabled and no kind is down.

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


@dataclass(frozen=True, slots=True)
class Evaluation:
    up: bool
    disabled: bool
    reason: str  # why the state is what it is (kept by the store on a change)
    detail: str  # the latest picture in words
    warning: str | None
    kinds: dict[str, Any]


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


def advance(
    prev_kinds: dict[str, Any] | None,
    prev_up: bool | None,
    results: Sequence[ProbeRecord],
    *,
    prev_disabled: bool = False,
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
        if r.ok:
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
    failing = [k for k, e in kinds.items() if not e.get("down") and not e.get("ok", True)]
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

    if failing:
        detail = "; ".join(
            f"{k} failing {kinds[k]['fails']}/{fall}: {kinds[k]['reason']}" for k in failing
        )
    else:
        detail = "ok" if not warning else f"ok, {warning}"
    if prev_up is None:
        reason = "first check: " + ("passed" if not failing else detail)
    elif prev_disabled:
        reason = "enabled again in configuration; no check is failing"
    elif prev_up is False:
        if recovered:
            plural = "s" * (rise != 1)
            reason = f"recovered: {', '.join(recovered)} passed {rise} consecutive check{plural}"
        else:
            reason = "checks pass again"
    else:
        reason = detail
    return Evaluation(True, False, reason, detail, warning, kinds)
