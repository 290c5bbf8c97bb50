"""`checker web` over HTTP (aiohttp's test server on 127.0.0.1), `checker report --html`,
and the page's building blocks. The browser tests are in test_status_browser.py."""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from checker import cli
from checker.web import render, svg
from checker.web.app import PageCache, make_app
from checker.web.data import StatusSource, snapshot_of
from checker.web.views import Query, RowView, row_view, sort_rows, state_class
from geodns.store import Store, StoreError

from .statusworld import XSS_NAME, XSS_REASON, StatusWorld, WebProcess
from .util import REPO, free_port

pytestmark = pytest.mark.timeout(120)


async def _client(source: StatusSource) -> TestClient:
    client = TestClient(TestServer(make_app(source), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def site(status_world: StatusWorld) -> AsyncIterator[TestClient]:
    source = StatusSource(status_world.url, cache_seconds=0)
    client = await _client(source)
    yield client
    await client.close()
    source.close()


def _rows(body: str) -> list[tuple[str, str]]:
    """(state class, mirror text) of each address row of a page."""
    return re.findall(
        r'<tr class="row-(state-[a-z0-9-]+)[^"]*">\s*<td class="mirror"><a [^>]*>([^<]*)</a>', body
    )


async def test_overview_lists_every_address_by_pool(site: TestClient) -> None:
    resp = await site.get("/")
    body = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "script-src" not in resp.headers["Content-Security-Policy"]  # none allowed at all
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    rows = _rows(body)
    assert sorted(rows) == sorted(
        [
            ("state-up", "ftp-good"),
            ("state-warning", "ftp-soon"),
            ("state-down", "ftp-stale"),
            ("state-down", "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;"),
            ("state-up", "ftp-iso"),  # region eu
            ("state-up", "ftp-iso"),  # region us (silent)
        ]
    )
    assert '<meta http-equiv="refresh" content="30">' in body
    for column in ("Mirror", "Address", "Region", "State", "Since", "Reason", "Lag", "TLS"):
        assert f">{column}</a>" in body
    assert "TLS certificate expires in 5 days" in body
    assert "stale: 9h behind" in body
    assert re.search(
        r"<b>us</b> last checked <time[^>]*>2h(\d+m)? ago</time> — <strong>silent", body
    )
    assert "<script" not in body.lower()  # the names and reasons are text, and we ship no JS


async def test_filters_and_sorting_by_query(site: TestClient) -> None:
    down = await (await site.get("/?state=down")).text()
    assert {s for s, _ in _rows(down)} == {"state-down"} and len(_rows(down)) == 2
    isos = await (await site.get("/?pool=isos")).text()
    assert [m for _, m in _rows(isos)] == ["ftp-iso", "ftp-iso"]
    assert 'data-pool="distfiles"' not in isos
    by_lag = await (await site.get("/?sort=lag&dir=desc&pool=distfiles")).text()
    names = [m for _, m in _rows(by_lag)]
    assert names[0] == "ftp-stale"  # 9 hours behind; the 503 mirror has no lag: last
    assert names[-1].startswith("&lt;script")
    # the header link turns the sort around and keeps the filter
    assert 'href="?pool=distfiles&amp;sort=lag"' in by_lag
    nothing = await site.get("/?state=nonsense&sort=bogus&dir=sideways")
    assert nothing.status == 200 and "No address matches this filter" in await nothing.text()


async def test_json_is_the_report_json(
    site: TestClient, status_world: StatusWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    resp = await site.get("/api/v1/status.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    served = json.loads(await resp.text())
    assert cli.main(["report", "--store", status_world.url, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert served.pop("generated") and printed.pop("generated")
    assert served == printed
    assert served["summary"]["down"] == 2 and served["summary"]["total"] == 6


async def test_healthz_404_405_and_no_tracebacks(site: TestClient) -> None:
    health = await site.get("/healthz")
    doc = await health.json()
    assert health.status == 200 and doc["status"] == "ok" and doc["addresses"] == 6
    for path in ("/nope", "/mirror/distfiles/no-such-mirror", "/mirror/distfiles", "/api/v2/x"):
        resp = await site.get(path)
        body = await resp.text()
        assert resp.status == 404, path
        assert "There is no page at this address." in body and "Traceback" not in body
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    post = await site.post("/", data=b"x")
    assert post.status == 405 and "read-only" in await post.text()
    assert "GET" in post.headers["Allow"]


async def test_mirror_page_history_chart_and_tls(site: TestClient) -> None:
    resp = await site.get("/mirror/distfiles/ftp-stale")
    body = await resp.text()
    assert resp.status == 200
    assert "<svg" in body and "<polyline" in body and "max lag 6h" in body
    assert "2 results" in body  # two rounds of freshness results
    assert re.search(r"<dt>days left</dt><dd>(89|90)\.\d</dd>", body)
    assert "<dt>issuer</dt><dd>geodns demo CA</dd>" in body
    history = body[body.index("State history") :]
    assert "stale: 9h behind" in history and "state-down" in history
    assert 'href="../.././"' in body  # relative links: the site works below a sub-path
    # the mirror name travels in the path, quoted; on the page it is text
    hostile = await site.get(f"/mirror/distfiles/{quote(XSS_NAME, safe='')}")
    text = await hostile.text()
    assert hostile.status == 200
    assert "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;" in text
    assert "&lt;script&gt;alert(&#39;reason&#39;)&lt;/script&gt;&lt;img src=x" in text
    assert "<script" not in text.lower() and "<img" not in text.lower()
    assert XSS_REASON not in text
    assert 'href="../.././"' in text  # the quoted "/" in the name is not a path level


async def test_regions_page_flags_a_silent_checker(site: TestClient) -> None:
    body = await (await site.get("/regions")).text()
    rows = dict(re.findall(r"<td><b>([^<]+)</b></td>.*?<span class=\"state [^\"]+\">(\w+)", body))
    assert rows == {"eu": "checking", "us": "silent"}


async def test_store_outage_shows_last_data_under_a_banner(
    status_world: StatusWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "copy.sqlite"
    shutil.copy(status_world.path, db)
    source = StatusSource(f"sqlite:///{db}", cache_seconds=0)
    client = await _client(source)
    try:
        before = await (await client.get("/")).text()
        assert "cannot be read" not in before and len(_rows(before)) == 6
        await client.get("/mirror/distfiles/ftp-good")  # read once: remembered
        good = db.read_bytes()
        db.unlink()
        db.write_bytes(b"this is not a database" * 100)  # a new file where the store was
        with caplog.at_level(logging.ERROR, logger="checker.web"):
            resp = await client.get("/")
            body = await resp.text()
        assert resp.status == 200
        assert "The health store cannot be read" in body and "Showing the last data read" in body
        assert len(_rows(body)) == 6  # the last data, still on the page
        assert "Traceback" not in body and str(db) not in body and "sqlite" not in body
        assert "cannot read the store" in caplog.text  # the log says why
        health = await client.get("/healthz")
        assert health.status == 503 and (await health.json())["store"] == "unreachable"
        api = await client.get("/api/v1/status.json")
        assert api.status == 200 and api.headers["X-Geodns-Store"].startswith("unreachable")
        mirror = await client.get("/mirror/distfiles/ftp-good")
        assert mirror.status == 200 and "Showing the last data read" in await mirror.text()
        unread = await client.get("/mirror/distfiles/ftp-soon")  # known, never read
        assert unread.status == 503 and "cannot be read" in await unread.text()
        db.unlink()
        db.write_bytes(good)
        after = await (await client.get("/")).text()
        assert "cannot be read" not in after and len(_rows(after)) == 6
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()
        source.close()


async def test_no_store_url_or_password_on_any_page(caplog: pytest.LogCaptureFixture) -> None:
    secret = "Pa55-w0rd-17"
    port = free_port()  # nothing listens: connection refused
    url = f"postgresql+psycopg://geodns:{secret}@127.0.0.1:{port}/geodns"
    source = StatusSource(url, cache_seconds=0)
    client = await _client(source)
    try:
        with caplog.at_level(logging.INFO, logger="checker.web"):
            answers = {
                path: (resp.status, await resp.text())
                for path in (
                    "/",
                    "/regions",
                    "/mirror/p/m",
                    "/api/v1/status.json",
                    "/healthz",
                    "/nope",
                )
                for resp in [await client.get(path)]
            }
    finally:
        await client.close()
        source.close()
    assert answers["/"][0] == 200 and "No data has been read yet" in answers["/"][1]
    assert answers["/api/v1/status.json"][0] == 503
    assert answers["/healthz"][0] == 503
    assert answers["/mirror/p/m"][0] == 503
    assert answers["/nope"][0] == 404
    for path, (_, body) in answers.items():
        for leak in (secret, "geodns:", f":{port}", "postgresql", "psycopg"):
            assert leak not in body, (path, leak)
    assert "cannot read the store" in caplog.text
    assert secret not in caplog.text


def test_html_export_is_one_self_contained_file(
    status_world: StatusWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "status.html"
    assert cli.main(["report", "--store", status_world.url, "--html", str(out)]) == 0
    assert capsys.readouterr().out == ""
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert len(re.findall(r'<tr class="row-state-', page)) == 6
    assert "ftp-stale" in page and "&lt;script&gt;alert(&#34;name&#34;)" in page
    # nothing to fetch and no links to pages a plain web server does not have
    for absent in ("<script", "<link", "<img", 'src="', 'href="mirror/', 'href="?', "api/v1"):
        assert absent not in page, absent
    assert not list(tmp_path.glob("*.tmp"))


def test_new_states_and_fields_render_without_template_changes(
    status_world: StatusWorld,
) -> None:
    """What other parts of the checker add (a `drained` state with its reason,
    a per-pool expected-state version) shows up generically."""
    with Store(status_world.url, create=False) as store:
        snap = snapshot_of(store.states(), config=None, max_age=3600.0)
    first = snap.doc["addresses"][0]
    first.update(
        state="drained",
        drain_reason="kernel <b>upgrade</b>",
        drained_until="2026-12-01T10:00:00+00:00",
    )
    snap.doc["addresses"][1]["state"] = "Weird State!"
    snap.doc["pools"] = {"distfiles": {"expected_version": 7}}
    snap.doc["checker_build"] = "1.2.3"
    html = render.overview_html(snap, Query())
    assert '<span class="state state-drained">drained</span>' in html
    assert '<span class="state state-weird-state">Weird State!</span>' in html
    assert '<span class="k">drain reason</span> kernel &lt;b&gt;upgrade&lt;/b&gt;' in html
    assert '<span class="k">drained until</span> 2026-12-01 10:00:00Z' in html
    assert "<dt>expected version</dt><dd>7</dd>" in html
    assert "<dt>checker build</dt><dd>1.2.3</dd>" in html
    assert "state-drained" in html.split('<section class="tiles"')[1].split("</section>")[0]


def test_sorting_puts_blanks_last_both_ways() -> None:
    def row(mirror: str, lag: float | None) -> RowView:
        fields = {"pool": "p", "mirror": mirror, "address": "192.0.2.1", "lag_seconds": lag}
        return row_view(fields, None, now=datetime.now(UTC), warn_days=14)

    rows = [row("a", 5.0), row("b", None), row("c", 50.0), row("d", 0.0)]
    assert [r.mirror for r in sort_rows(rows, "lag", False)] == ["d", "a", "c", "b"]
    assert [r.mirror for r in sort_rows(rows, "lag", True)] == ["c", "a", "d", "b"]
    assert [r.mirror for r in sort_rows(rows, "mirror", True)] == ["d", "c", "b", "a"]
    assert state_class("up") == "state-up" and state_class("<x>") == "state-x"
    assert Query.parse({"sort": "nope", "dir": "desc"}) == Query(sort="mirror", desc=True)
    assert Query(state="down").href(pool="a b&c") == "?state=down&pool=a+b%26c"


def test_lag_chart_geometry() -> None:
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    start = now - timedelta(days=7)
    assert svg.lag_chart({}, start=start, end=now).empty
    many = [
        svg.Point(start + timedelta(minutes=5 * i), float(i % 100) * 60, True) for i in range(2016)
    ]
    many[1000] = svg.Point(many[1000].at, None, False, "GET /timestamp.txt answered 503")
    many[1500] = svg.Point(many[1500].at, 30000.0, False, "stale: 8h20m behind")
    chart = svg.lag_chart({"192.0.2.1": many}, start=start, end=now, threshold=6 * 3600)
    (line,) = chart.lines
    assert chart.points == 2016
    assert sum(len(s.split(" ")) for s in line.segments) <= svg.MAX_POINTS
    assert len(line.segments) == 2  # the lag-less failure breaks the line
    assert {m.title.split(": ", 1)[1] for m in line.marks} == {
        "GET /timestamp.txt answered 503",
        "stale: 8h20m behind",
    }
    assert chart.threshold is not None and chart.threshold.label == "max lag 6h"
    assert chart.top < chart.threshold.pos < chart.bottom
    assert [t.label for t in chart.x_ticks][:2] == ["24 Nov", "25 Nov"]
    assert chart.y_ticks[0].label == "0s" and chart.y_ticks[0].pos == chart.bottom


def test_checker_web_lists_configured_mirrors_and_reloads_on_sighup(
    status_world: StatusWorld, tmp_path: Path
) -> None:
    """`--config`: addresses never checked are listed as unknown; SIGHUP re-reads it."""
    zones = tmp_path / "zones"
    shutil.copytree(REPO / "zones", zones)

    def page(url: str) -> str:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback
            return str(r.read().decode())

    with WebProcess(status_world.url, tmp_path / "web.log", "--config", str(zones)) as web:
        body = page(web.url)
        unknown = [m for s, m in _rows(body) if s == "state-unknown"]
        assert "mirror-jp" in unknown and "mirror-de" in unknown, body
        pools = zones / "pools" / "distfiles.yaml"
        jp = "  - name: mirror-jp\n    url: https://mirror-jp.example.net:8443/distfiles/\n"
        text = pools.read_text()
        assert jp in text
        pools.write_text(text.replace(jp + "    ipv4: [127.3.0.1]\n", ""))
        assert web.proc is not None
        os.kill(web.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "mirror-jp" in body and time.monotonic() < deadline:
            time.sleep(0.2)
            body = page(web.url)
        assert "mirror-jp" not in body and "mirror-de" in body
        assert "configuration reloaded" in web.log()


def test_a_failing_store_is_retried_at_most_once_per_cache_period() -> None:
    """A store that hangs or fails on connect costs one attempt per period,
    not one per page view."""
    attempts: list[str] = []

    def broken(url: str) -> Store:
        attempts.append(url)
        raise StoreError("store sqlite:///x: cannot connect")

    source = StatusSource("sqlite:///x", cache_seconds=60, store_factory=broken)
    snap, outage = source.snapshot()
    assert snap is None and outage is not None
    assert source.snapshot() == (None, outage) and source.mirror("p", "m") == (None, outage)
    assert len(attempts) == 1
    source._last_try -= 61  # a period later
    source.snapshot()
    assert len(attempts) == 2


def test_gc_pause_nests_and_restores() -> None:
    assert gc.isenabled()
    with render.gc_paused():
        with render.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer page is still being built
    assert gc.isenabled()
    gc.disable()
    try:
        with render.gc_paused():
            pass
        assert not gc.isenabled()  # someone else's pause is left alone
    finally:
        gc.enable()


def test_page_cache_shares_a_render_per_read_and_query() -> None:
    cache = PageCache(seconds=3600)
    made: list[str] = []

    def make(text: str) -> Callable[[], str]:
        return lambda: made.append(text) or text

    snap, other = object(), object()
    assert cache.get(snap, None, Query(), make("a")) == "a"
    assert cache.get(snap, None, Query(), make("b")) == "a"  # the same read: shared
    assert cache.get(snap, None, Query(state="down"), make("c")) == "c"
    assert cache.get(other, None, Query(), make("d")) == "d"  # a new read: made again
    assert cache.get(other, object(), Query(), make("e")) == "e"  # an outage began
    assert made == ["a", "c", "d", "e"]


async def test_expected_state_shows_in_its_pool_header(
    status_world: StatusWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool's published object list (`checker manifest publish`) is worded as
    `checker report` words it, in the header of the pool that reads it."""
    db = tmp_path / "copy.sqlite"
    shutil.copy(status_world.path, db)
    url = f"sqlite:///{db}"
    origin = tmp_path / "origin"
    (origin / "releases").mkdir(parents=True)
    (origin / "releases" / "latest.iso").write_bytes(b"x" * 4096)
    (origin / "timestamp.txt").write_text("1\n")
    assert (
        cli.main(["manifest", "publish", str(origin), "--pool", "distfiles", "--store", url]) == 0
    )
    capsys.readouterr()
    source = StatusSource(url, cache_seconds=0)
    client = await _client(source)
    try:
        body = await (await client.get("/?pool=distfiles")).text()
        served = json.loads(await (await client.get("/api/v1/status.json")).text())
    finally:
        await client.close()
        source.close()
    header = body[body.index('data-pool="distfiles"') :].split("<table")[0]
    assert re.search(
        r"<dt>expected state</dt><dd>expected state distfiles: version 1, 2 objects "
        r"\([^)]*\), 0 removed kept; published [^<]* ago from [^<]+</dd>",
        header,
    ), header
    assert served["expected"]["distfiles"]["version"] == 1
    assert cli.main(["report", "--store", url, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert served.pop("generated") and printed.pop("generated")
    for doc in (served, printed):  # the age grows between the two reads
        doc["expected"]["distfiles"].pop("age_seconds")
    assert served == printed


async def test_a_drained_mirror_says_who_why_and_until(
    status_world: StatusWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Drains (issue 13) come through report.build_rows, as `checker report` shows them."""
    db = tmp_path / "copy.sqlite"
    shutil.copy(status_world.path, db)
    url = f"sqlite:///{db}"
    with Store(url) as store:
        store.drain(
            "ftp-good",
            reason="kernel <b>upgrade</b>",
            who="alice",
            until=datetime.now(UTC) + timedelta(hours=2),
        )
    source = StatusSource(url, cache_seconds=0)
    client = await _client(source)
    try:
        body = await (await client.get("/")).text()
        served = json.loads(await (await client.get("/api/v1/status.json")).text())
        mirror = await (await client.get("/mirror/distfiles/ftp-good")).text()
    finally:
        await client.close()
        source.close()
    assert ("state-drained", "ftp-good") in _rows(body)
    assert ("state-up", "ftp-iso") in _rows(body)  # another mirror on the same server
    assert re.search(
        r"by alice until [-0-9 :]+Z \(in (2h|1h59m)\): "
        r"kernel &lt;b&gt;upgrade&lt;/b&gt;; health: up",
        body,
    ), body
    assert '<span class="k">drain</span>' not in body and '<span class="k">health' not in body
    assert re.search(r'class="tile state-drained[^"]*"[^>]*><b>1</b> drained', body)
    history = mirror[mirror.index("State history") :]
    assert re.search(r'<span class="state state-drained">drained</span></td><td class="reason">'
                     r"by alice until", history), history  # fmt: skip
    assert cli.main(["report", "--store", url, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert served.pop("generated") and printed.pop("generated")
    assert served == printed and served["summary"]["drained"] == 1
