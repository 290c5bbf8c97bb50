"""The status page in a real browser: Debian's Chromium, driven by Playwright.

`checker web` runs as a real process over a store filled by real checker
rounds (tests/statusworld.py). Playwright never downloads a browser here: it
launches the system's /usr/bin/chromium (tests/run installs the `chromium`
package). Without it the tests skip, except in CI, where they must run.
Screenshots go to each test's tmp_path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from checker import cli
from checker.web import render
from checker.web.data import snapshot_of
from checker.web.views import Query
from geodns.store import Store

from .pg import in_ci
from .statusworld import XSS_NAME, XSS_REASON, StatusWorld, WebProcess

pytestmark = pytest.mark.timeout(180)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no traffic beyond the page under test
    "--disable-component-update",
    "--disable-sync",
]
# The stylesheet's state colours, as getComputedStyle reports them.
GREEN, RED, YELLOW = "rgb(31, 136, 61)", "rgb(207, 34, 46)", "rgb(245, 197, 24)"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if in_ci():
            pytest.fail("CI without /usr/bin/chromium: tests/run installs Debian's chromium")
        pytest.skip("no /usr/bin/chromium (tests/run installs it as root on Debian)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if in_ci():
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=90_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def web(status_world: StatusWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("web") / "checker-web.log"
    with WebProcess(status_world.url, log) as w:
        yield w.url


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(20_000)
    dialogs: list[str] = []
    p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    p.dialogs = dialogs  # what alert() would have shown, had anything run
    try:
        yield p
    finally:
        context.close()


def rows(page: Any) -> list[dict[str, str]]:
    """Every address row: mirror, address, state, and the badge's computed colours."""
    return list(
        page.eval_on_selector_all(
            "table.status tbody tr",
            """trs => trs.map(tr => {
                const badge = tr.querySelector('span.state');
                const style = getComputedStyle(badge);
                return {
                    pool: tr.closest('section.pool').dataset.pool,
                    mirror: tr.querySelector('td.mirror').innerText,
                    address: tr.querySelector('td.addr').innerText,
                    state: badge.innerText,
                    background: style.backgroundColor,
                    color: style.color,
                    lag: tr.querySelectorAll('td.num')[0].innerText,
                };
            })""",
        )
    )


def test_overview_rows_and_state_colours(page: Any, web: str, tmp_path: Path) -> None:
    page.goto(web)
    got = rows(page)
    assert {(r["pool"], r["mirror"], r["address"], r["state"]) for r in got} == {
        ("distfiles", "ftp-good", "127.0.0.1", "up"),
        ("distfiles", "ftp-soon", "127.0.0.2", "warning"),
        ("distfiles", "ftp-stale", "127.0.0.3", "down"),
        ("distfiles", XSS_NAME, "127.0.0.4", "down"),
        ("isos", "ftp-iso", "127.0.0.1", "up"),
    }
    assert len(got) == 6  # ftp-iso once per region
    colours = {r["state"]: r["background"] for r in got}
    assert colours == {"up": GREEN, "warning": YELLOW, "down": RED}
    # the down rows stand out as a whole
    tint = page.eval_on_selector(
        "tr.row-state-down td", "td => getComputedStyle(td).backgroundColor"
    )
    assert tint == "rgb(255, 245, 245)"
    tiles = page.eval_on_selector_all(
        ".tiles .tile", "ts => ts.map(t => [t.innerText, getComputedStyle(t).backgroundColor])"
    )
    assert ["2 down", RED] in [[t.replace("\n", " "), c] for t, c in tiles]
    assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "30"
    assert page.locator("text=silent").count() == 1  # region us stopped 2 h ago
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    assert (tmp_path / "overview.png").stat().st_size > 10_000


def test_filter_by_state_and_pool_with_links(page: Any, web: str) -> None:
    page.goto(web)
    page.click(".tiles a.tile:has-text('down')")
    assert "state=down" in page.url
    assert {r["state"] for r in rows(page)} == {"down"} and len(rows(page)) == 2
    page.click(".tiles a.tile:has-text('all')")
    page.click("nav.pools a.chip:has-text('isos')")
    assert "pool=isos" in page.url
    assert {r["mirror"] for r in rows(page)} == {"ftp-iso"}
    assert page.locator("section.pool").count() == 1


def test_sort_by_column_headers(page: Any, web: str) -> None:
    page.goto(web + "?pool=distfiles")
    page.click("th.col-lag a")  # numbers sort biggest first
    assert "sort=lag" in page.url and "dir=desc" in page.url and "pool=distfiles" in page.url
    names = [r["mirror"] for r in rows(page)]
    assert names[0] == "ftp-stale" and names[-1] == XSS_NAME  # no lag measured: last
    assert page.get_attribute("th.col-lag", "aria-sort") == "descending"
    page.click("th.col-lag a")
    names = [r["mirror"] for r in rows(page)]
    assert names[-2:] == ["ftp-stale", XSS_NAME]
    page.click("th.col-state a")
    states = [r["state"] for r in rows(page)]
    assert states == ["down", "down", "warning", "up"]  # most urgent first


def test_mirror_page_chart_tls_history(page: Any, web: str, tmp_path: Path) -> None:
    page.goto(web)
    page.click("td.mirror a:text-is('ftp-stale')")
    assert page.url.endswith("/mirror/distfiles/ftp-stale")
    assert page.locator("h1").inner_text().startswith("ftp-stale")
    chart = page.locator("svg.lag")
    assert chart.count() == 1
    box = chart.bounding_box()
    assert box is not None and box["width"] > 400 and box["height"] > 100
    assert page.locator("svg.lag polyline").count() >= 1
    assert page.locator("svg.lag line.threshold").count() == 1
    assert page.locator("svg.lag circle.fail").count() == 2  # both rounds: stale
    assert page.locator("svg.lag text.tlabel").text_content() == "max lag 6h"
    tls = page.locator("dl.tls").inner_text()
    assert "days left" in tls and "geodns demo CA" in tls
    history = page.locator("table.history tbody tr")
    assert history.count() >= 1 and "stale: 9h behind" in history.first.inner_text()
    badge = page.locator("table.history span.state").first
    assert badge.evaluate("b => getComputedStyle(b).backgroundColor") == RED
    page.screenshot(path=str(tmp_path / "mirror.png"), full_page=True)
    page.click(".crumbs a:text-is('Overview')")
    assert len(rows(page)) == 6


def test_hostile_name_and_reason_are_inert_text(page: Any, web: str, tmp_path: Path) -> None:
    """XSS: a `<script>` mirror name (YAML) and HTTP reason phrase (a remote
    server) are shown as text; nothing runs and no element is made of them."""
    for url in (web, web + f"mirror/distfiles/{quote(XSS_NAME, safe='')}"):
        page.goto(url)
        assert page.locator("script").count() == 0
        assert page.locator("img").count() == 0
        assert page.dialogs == []  # alert() never ran
        body = page.locator("body").inner_text()
        assert XSS_NAME in body  # visible, literally
        assert XSS_REASON in body
    assert page.locator("h1").inner_text().startswith(XSS_NAME)
    assert page.dialogs == []
    page.screenshot(path=str(tmp_path / "hostile.png"), full_page=True)
    page.click(".crumbs a:text-is('Overview')")  # the "/" in the name is no path level
    assert page.url == web and len(rows(page)) == 6


def test_static_export_opens_from_a_file(
    page: Any, status_world: StatusWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "status.html"
    assert cli.main(["report", "--store", status_world.url, "--html", str(out)]) == 0
    page.goto(out.as_uri())
    got = rows_static(page)
    assert len(got) == 6 and {r["state"]: r["background"] for r in got}["down"] == RED
    assert page.locator("a").count() == 0  # no pages behind a plain web server
    assert page.dialogs == [] and page.locator("script").count() == 0
    page.screenshot(path=str(tmp_path / "export.png"), full_page=True)


def rows_static(page: Any) -> list[dict[str, str]]:
    return list(
        page.eval_on_selector_all(
            "table.status tbody tr span.state",
            "bs => bs.map(b => ({state: b.innerText,"
            " background: getComputedStyle(b).backgroundColor}))",
        )
    )


def test_states_without_a_colour_rule_get_the_neutral_default(
    page: Any, status_world: StatusWorld
) -> None:
    """A state added elsewhere (`drained`) has its colour; one nobody styled
    yet still gets a readable badge."""
    with Store(status_world.url, create=False) as store:
        snap = snapshot_of(store.states(), config=None, max_age=3600.0)
    snap.doc["addresses"][0]["state"] = "drained"
    snap.doc["addresses"][1]["state"] = "quarantined"
    page.set_content(render.overview_html(snap, Query(), static=True))
    colours = page.eval_on_selector_all(
        "table.status span.state",
        "bs => bs.map(b => [b.innerText, getComputedStyle(b).backgroundColor,"
        " getComputedStyle(b).color])",
    )
    by_state = {s: (bg, fg) for s, bg, fg in colours}
    assert len(colours) == 6
    assert by_state["drained"] == ("rgb(9, 105, 218)", "rgb(255, 255, 255)")
    assert by_state["quarantined"] == ("rgb(230, 234, 239)", "rgb(31, 35, 40)")
