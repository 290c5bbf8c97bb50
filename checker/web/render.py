"""Pages as HTML text: one Jinja2 environment, autoescaping everything.

Used by the web app and by `checker report --html` (the same overview as one
self-contained file: inline CSS, no links to pages that do not exist there).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import jinja2

from geodns.model import Config

from .. import report, text
from .data import CHART_DAYS, MirrorDetail, Outage, Snapshot
from .views import Query, mirror_page, overview, regions_of, row_views

REFRESH = 30  # seconds between the pages' own reloads


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    # autoescape=True for every template, whatever its name: mirror names,
    # URLs and reasons come from YAML and from remote servers.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("checker.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # package data: no stat() per include per page
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_on = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off while a page is built. Thousands of rows allocate
    enough to trigger collections that walk the whole heap: a third of the
    overview's time for 2,000 addresses (bench/status_page). A page makes no
    reference cycles; reference counting frees it. Pages are built in several
    threads at once: the last one out turns the GC back on."""
    global _gc_pauses, _gc_was_on
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_on = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_on:
                gc.enable()


def _outage(
    outage: Outage | None, snap_at: datetime | None, now: datetime
) -> dict[str, str] | None:
    if outage is None:
        return None
    return {
        "since": text.stamp(outage.since),
        "ago": text.ago(outage.since, now),
        "last": text.stamp(snap_at) if snap_at else "",
        "last_ago": text.ago(snap_at, now) if snap_at else "",
    }


def _base(page: str, root: str, now: datetime, static: bool = False) -> dict[str, Any]:
    return {
        "page": page,
        "root": root,
        "static": static,
        "refresh": REFRESH,
        "generated": None,
        "outage": None,
        "exported": text.stamp(now),
        "days": CHART_DAYS,
    }


def overview_html(
    snap: Snapshot | None,
    query: Query,
    *,
    outage: Outage | None = None,
    config: Config | None = None,
    max_age: float | None = 3600.0,
    static: bool = False,
    now: datetime | None = None,
) -> str:
    now = now or datetime.now(UTC)
    ctx = _base("overview", "", now, static)
    with gc_paused():
        ov = overview(snap, query, config=config, max_age=max_age, now=now) if snap else None
        ctx.update(
            snapshot=snap is not None,
            ov=ov,
            generated=ov.generated if ov else None,
            outage=_outage(outage, snap.read_at if snap else None, now),
        )
        return render("overview.html", **ctx)


def export_html(
    rows: list[report.Row],
    *,
    expected: list[report.Expected] | None = None,
    config: Config | None = None,
    max_age: float | None = 3600.0,
    now: datetime | None = None,
) -> str:
    """`checker report --html`: the overview of these rows as one file."""
    now = now or datetime.now(UTC)
    expected = expected or []
    doc = report.document(rows, now=now, expected=expected)
    snap = Snapshot(rows=rows, doc=doc, read_at=now, expected=expected)
    return overview_html(snap, Query(), config=config, max_age=max_age, static=True, now=now)


def mirror_html(
    detail: MirrorDetail,
    *,
    outage: Outage | None = None,
    config: Config | None = None,
    max_age: float | None = 3600.0,
    root: str = "../../",
    now: datetime | None = None,
) -> str:
    now = now or datetime.now(UTC)
    ctx = _base("mirror", root, now)
    with gc_paused():  # a week of results per address
        m = mirror_page(detail, config=config, max_age=max_age, now=now)
    ctx.update(m=m, generated=m.generated, outage=_outage(outage, detail.read_at, now))
    return render("mirror.html", **ctx)


def regions_html(
    snap: Snapshot | None,
    *,
    outage: Outage | None = None,
    config: Config | None = None,
    max_age: float | None = 3600.0,
    now: datetime | None = None,
) -> str:
    now = now or datetime.now(UTC)
    ctx = _base("regions", "", now)
    regions = []
    if snap is not None:
        with gc_paused():
            rows = row_views(snap, config=config, now=now)
            regions = regions_of(rows, snap.doc, now=now, max_age=max_age)
    ctx.update(
        regions=regions,
        max_age=text.duration(max_age) if max_age else "the report's max age",
        generated=None,
        outage=_outage(outage, snap.read_at if snap else None, now),
    )
    return render("regions.html", **ctx)


def error_html(status: int, title: str, message: str, *, root: str = "") -> str:
    now = datetime.now(UTC)
    ctx = _base("error", root, now)
    ctx.update(status=status, title=title, message=message, refresh=None)
    return render("error.html", **ctx)
