"""Geometry of the lag-over-time chart, drawn server-side as inline SVG.

This module only computes numbers and labels (a `Chart`); the template
`_chart.html` turns them into SVG elements, escaped like any other text. No
JavaScript and no chart library: the page works in any browser, in the
static export, and under a Content-Security-Policy that forbids scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .. import text

WIDTH, HEIGHT = 760.0, 240.0
LEFT, RIGHT, TOP, BOTTOM = 58.0, 14.0, 12.0, 28.0
MAX_POINTS = 600  # per line: about one per pixel column; buckets keep the worst lag
MAX_MARKS = 200  # failed probes drawn per line
MIN_SPAN = 3600.0  # a chart of a few minutes of data still spans an hour
PALETTE = ("#0969da", "#8250df", "#bc4c00", "#1b7c83", "#bf3989", "#4d2d00", "#57606a", "#116329")
_Y_STEPS = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    7 * 86400,
    30 * 86400,
)
_X_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400)


@dataclass(frozen=True, slots=True)
class Point:
    """One freshness result: its time, the lag (None when none was measured)."""

    at: datetime
    value: float | None
    ok: bool
    note: str = ""


@dataclass(frozen=True, slots=True)
class Mark:
    """A failed probe: a red mark, with the probe's words as its tooltip."""

    x: float
    y: float
    title: str


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    colour: str
    segments: list[str]  # SVG polyline `points` values; a gap where no lag was measured
    marks: list[Mark]
    latest: str  # the newest lag in words, for the legend


@dataclass(frozen=True, slots=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: float
    height: float
    left: float
    top: float
    right: float  # x of the plot's right edge
    bottom: float  # y of the plot's bottom edge
    lines: list[Line]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    threshold: Tick | None  # max_lag, when known and inside the plot
    start: str
    end: str
    points: int  # results in the window, all lines together (some may share a pixel)

    @property
    def empty(self) -> bool:
        return not self.lines


def _nice_step(span: float, steps: tuple[int, ...], most: int) -> int:
    for step in steps:
        if span / step <= most:
            return step
    return steps[-1]


def _bucketed(points: list[Point], start: float, span: float) -> list[Point]:
    """At most MAX_POINTS points: per time bucket the worst lag (a spike must
    not vanish in the average) and every failure without a lag."""
    if len(points) <= MAX_POINTS:
        return points
    best: dict[int, Point] = {}
    out: list[Point] = []
    for p in points:
        b = int((p.at.timestamp() - start) / span * MAX_POINTS)
        if p.value is None:
            out.append(p)
            continue
        old = best.get(b)
        if old is None or (old.value is not None and p.value > old.value):
            best[b] = p
    out.extend(best.values())
    out.sort(key=lambda p: p.at)
    return out


def lag_chart(
    series: dict[str, list[Point]],
    *,
    start: datetime,
    end: datetime,
    threshold: float | None = None,
) -> Chart:
    """Lines of lag (seconds) over [start, end]; the time axis starts at the
    oldest point when there is less data than that (never under MIN_SPAN)."""
    all_points = [p for ps in series.values() for p in ps if start <= p.at <= end]
    if all_points:
        oldest = min(p.at for p in all_points)
        start = max(start, min(oldest, end - timedelta(seconds=MIN_SPAN)))
    t0, t1 = start.timestamp(), end.timestamp()
    span = max(t1 - t0, 1.0)
    values = [p.value for p in all_points if p.value is not None]
    top_value = max([*values, threshold or 0.0, 10.0])
    y_step = _nice_step(top_value * 1.1, _Y_STEPS, 5)
    y_max = float(y_step * (int(top_value * 1.1 // y_step) + 1))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    bottom = TOP + plot_h

    def x_of(t: datetime) -> float:
        return round(LEFT + (t.timestamp() - t0) / span * plot_w, 1)

    def y_of(v: float) -> float:
        return round(bottom - min(v, y_max) / y_max * plot_h, 1)

    lines = []
    results = 0
    for i, (label, pts) in enumerate(series.items()):
        pts = sorted((p for p in pts if start <= p.at <= end), key=lambda p: p.at)
        results += len(pts)
        pts = _bucketed(pts, t0, span)
        if not pts:
            continue
        segments: list[str] = []
        current: list[str] = []
        marks: list[Mark] = []
        for p in pts:
            x = x_of(p.at)
            if p.value is None:
                if current:
                    segments.append(" ".join(current))
                    current = []
                if len(marks) < MAX_MARKS:
                    marks.append(Mark(x, bottom, f"{text.stamp(p.at)}: {p.note or 'no lag'}"))
                continue
            y = y_of(p.value)
            current.append(f"{x},{y}")
            if not p.ok and len(marks) < MAX_MARKS:
                marks.append(Mark(x, y, f"{text.stamp(p.at)}: {p.note}"))
        if current:
            segments.append(" ".join(current))
        # a lone point is drawn as a tiny segment, so it is visible
        segments = [s if " " in s else f"{s} {s}" for s in segments]
        newest = next((p.value for p in reversed(pts) if p.value is not None), None)
        lines.append(
            Line(
                label=label,
                colour=PALETTE[i % len(PALETTE)],
                segments=segments,
                marks=marks,
                latest="no lag measured" if newest is None else text.duration(newest),
            )
        )
    y_ticks = [Tick(y_of(v), text.duration(v)) for v in range(0, int(y_max) + 1, y_step)]
    x_step = _nice_step(span, _X_STEPS, 7)
    first = (int(t0) // x_step + 1) * x_step
    x_ticks = []
    for t in range(first, int(t1) + 1, x_step):
        when = datetime.fromtimestamp(t, UTC)
        daily = x_step >= 86400 or (when.hour == 0 and when.minute == 0)
        x_ticks.append(Tick(x_of(when), when.strftime("%d %b" if daily else "%H:%M")))
    mark = None
    if threshold is not None and threshold <= y_max:
        mark = Tick(y_of(threshold), f"max lag {text.duration(threshold)}")
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        top=TOP,
        right=WIDTH - RIGHT,
        bottom=bottom,
        lines=lines,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        threshold=mark,
        start=text.stamp(start),
        end=text.stamp(end),
        points=results,
    )
