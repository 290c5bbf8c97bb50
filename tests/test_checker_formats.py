"""Parsers and planners of the checker: timestamps, Release files, manifests, HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from checker import manifest as mf
from checker.cli import main
from checker.errors import ManifestError
from checker.http import HTTPClient, HTTPError
from checker.probes.apt import parse_release
from checker.probes.freshness import parse_timestamp
from checker.text import duration
from demo.tree import Tree
from geodns.config.fields import duration_arg

WHEN = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "fmt"),
    [
        ("1795168800\n", "auto"),  # Arch lastsync, Void timestamp
        ("1795168800", "epoch"),
        ("2026-11-20T10:00:00Z\n", "auto"),
        ("2026-11-20T11:00:00+01:00", "rfc3339"),
        ("Thu Nov 20 10:00:00 UTC 2026\n", "auto"),  # `date -u > timestamp`
        ("Date: Thu Nov 20 10:00:00 UTC 2026\n", "debian-trace"),
        ("Date: Thu, 20 Nov 2026 05:00:00 EST\n", "debian-trace"),
        ("Date: Thu, 20 Nov 2026 10:00:00 -0000\n", "debian-trace"),
        (
            "Date: Thu, 20 Nov 2026 10:00:00 +0000\n"
            "Date-Started: Thu, 20 Nov 2026 09:40:00 +0000\n"
            "Archive serial: 2026112001\nCreator: ftpsync 20180513\n",
            "debian-trace",
        ),
        (
            "Date-Started: Thu, 20 Nov 2026 09:40:00 +0000\n"
            "Date: Thu, 20 Nov 2026 10:00:00 +0000\n",
            "auto",
        ),
    ],
)
def test_timestamp_formats(body: str, fmt: str) -> None:
    assert parse_timestamp(body, fmt) == WHEN


@pytest.mark.parametrize(
    ("body", "fmt", "error"),
    [
        ("", "auto", "the file is empty"),
        ("<html>not found</html>", "auto", "unrecognised timestamp"),
        ("Archive serial: 1\n", "debian-trace", "no 'Date:' line"),
        ("yesterday", "rfc3339", "not an RFC 3339 timestamp"),
        # read as UTC this would be an hour off: refused instead
        ("Date: Thu, 20 Nov 2026 11:00:00 CET\n", "debian-trace", "unknown time zone 'CET'"),
    ],
)
def test_timestamp_errors_say_why(body: str, fmt: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_timestamp(body, fmt)


def test_release_parsing_clearsigned_with_dash_escapes() -> None:
    text = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
        "Origin: Debian\nSuite: stable\nAcquire-By-Hash: yes\n"
        "Description: - dash-escaped line\n"
        "MD5Sum:\n 0123 100 main/binary-amd64/Packages.xz\n"
        "SHA256:\n abcd 100 main/binary-amd64/Packages.xz\n efef 2000 main/Contents-amd64.gz\n"
        "-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n"
    )
    rel = parse_release(text)
    assert rel.by_hash
    assert rel.fields["suite"] == "stable"
    assert rel.files == {
        "main/binary-amd64/Packages.xz": (100, "abcd"),
        "main/Contents-amd64.gz": (2000, "efef"),
    }


def test_release_without_sha256_uses_other_sums() -> None:
    rel = parse_release("Suite: old\nMD5Sum:\n 0123 42 main/binary-i386/Packages\n")
    assert not rel.by_hash
    assert rel.files == {"main/binary-i386/Packages": (42, None)}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "0.2s"),
        (2, "2s"),
        (59, "59s"),
        (90, "1m30s"),
        (600, "10m"),
        (3600, "1h"),
        (33120, "9h12m"),
        (21600, "6h"),
        (183600, "2d3h"),
        (86400 * 3, "3d"),
    ],
)
def test_durations_read_naturally(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_duration_arg() -> None:
    assert duration_arg("90") == 90
    assert duration_arg("7d") == 7 * 86400
    assert duration_arg("1h30m") == 5400
    with pytest.raises(Exception, match="not a duration"):
        duration_arg("soon")


# --------------------------------------------------------------------------- manifests


def test_plan_checks_critical_and_newest_every_round_and_covers_all() -> None:
    tree = Tree.generate(100, critical=("releases/latest.iso",))
    m = mf.from_dict(tree.manifest())
    newest = {o.path for o in m.objects[:5]}  # sample 20 // 4
    seen: set[str] = set()
    cursor = 0
    rounds = 0
    while len(seen) < len(m) and rounds < 20:
        p = mf.plan(m, 20, ["releases/latest.iso"], cursor)
        paths = [o.path for o in p.objects]
        assert len(paths) == len(set(paths)) == 20
        assert paths[0] == "releases/latest.iso"
        assert newest <= set(paths)
        seen.update(paths)
        cursor = p.cursor
        rounds += 1
    assert seen == set(m.by_path)
    assert rounds == 7  # ceil((101 - 1 - 5) / 14)


def test_plan_covers_everything_even_when_critical_objects_fill_the_sample() -> None:
    tree = Tree.generate(20, critical=("a.iso", "b.iso", "c.iso"))
    m = mf.from_dict(tree.manifest())
    seen: set[str] = set()
    cursor = 0
    for _ in range(40):
        p = mf.plan(m, 4, ["a.iso", "b.iso", "c.iso"], cursor)
        assert len(p.objects) == 5  # 3 critical + 1 newest + 1 rotating slot
        seen.update(o.path for o in p.objects)
        cursor = p.cursor
    assert seen == set(m.by_path)


def test_plan_small_manifest_checks_everything_and_unknown_critical() -> None:
    m = mf.from_dict(Tree.generate(5).manifest())
    p = mf.plan(m, 200, ["not/in/manifest.iso"], 0)
    assert len(p.objects) == 6
    assert p.objects[0].path == "not/in/manifest.iso" and p.objects[0].size == -1


def test_manifest_build_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "origin"
    (root / "releases").mkdir(parents=True)
    (root / "releases" / "latest.iso").write_bytes(b"x" * 1000)
    (root / "a file with spaces.txt").write_text("hello")
    (root / ".~tmp~").mkdir()
    (root / ".~tmp~" / "partial").write_text("rsync temp")
    os.symlink("releases/latest.iso", root / "link.iso")
    os.utime(root / "releases" / "latest.iso", (1_700_000_000, 1_700_000_000))
    out = tmp_path / "manifest.json"
    assert main(["manifest", "build", str(root), "--sha256", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["version"] == 1
    assert doc["objects"] == [
        {
            "path": "a file with spaces.txt",
            "size": 5,
            "mtime": doc["objects"][0]["mtime"],
            "sha256": hashlib.sha256(b"hello").hexdigest(),
        },
        {
            "path": "releases/latest.iso",
            "size": 1000,
            "mtime": 1_700_000_000,
            "sha256": hashlib.sha256(b"x" * 1000).hexdigest(),
        },
    ]
    assert main(["manifest", "build", str(root)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [o["path"] for o in printed["objects"]] == [
        "a file with spaces.txt",
        "releases/latest.iso",
    ]
    assert "sha256" not in printed["objects"][0]
    loaded = mf.load(out)
    assert loaded.objects[0].path == "a file with spaces.txt"  # newest first
    assert loaded.objects[0].target_suffix == "a%20file%20with%20spaces.txt"


def test_manifest_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"objects": [{"path": "x"}]}')
    with pytest.raises(ManifestError, match=r"bad\.json: object #0: needs 'path' and integer"):
        mf.load(bad)
    with pytest.raises(ManifestError, match=r"missing\.json: cannot read manifest"):
        mf.load(tmp_path / "missing.json")
    assert main(["manifest", "build", str(tmp_path / "nope")]) == 2


# --------------------------------------------------------------------------- HTTP client


async def test_http_client_bodies_keepalive_and_pipelining() -> None:
    """Chunked, Content-Length and close-delimited bodies against a real server."""

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"abc", b"", b"defgh" * 1000):
            if part:
                await resp.write(part)
        await resp.write_eof()
        return resp

    async def fixed(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["n"]))

    app = web.Application()
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/fixed/{n}", fixed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with HTTPClient(
            "127.0.0.1", port, host="t.test", max_connections=2, pipeline=4, timeout=2
        ) as c:
            r = await c.get("/chunked")
            assert r.status == 200 and r.body == b"abc" + b"defgh" * 1000
            got = await asyncio.gather(*(c.head(f"/fixed/{n}") for n in range(1, 41)))
            assert [g.content_length for g in got] == list(range(1, 41))
            assert len(c._conns) <= 2  # keep-alive: reused, never more than the bound
            with pytest.raises(HTTPError, match="larger than 10 bytes"):
                await c.get("/fixed/100", max_body=10)
            r = await c.get("/fixed/5")
            assert r.body == b"xxxxx"
            h = hashlib.sha256()
            r = await c.get("/fixed/70000", sink=h.update)
            assert h.hexdigest() == hashlib.sha256(b"x" * 70000).hexdigest() and r.body == b""
    finally:
        await runner.cleanup()


async def test_http_client_close_delimited_body() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HTTPClient("127.0.0.1", port, host="t.test", timeout=2) as c:
            r = await c.get("/")
            assert r.body == b"until close" and r.version == "1.0"
    finally:
        server.close()
        await server.wait_closed()


async def test_http_client_resends_requests_lost_to_a_closing_keepalive_connection() -> None:
    """A server that closes after 3 answers (as nginx does at keepalive_requests),
    with pipelined requests already sent: they are resent on a new connection."""
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        for _ in range(3):
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n")
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HTTPClient(
            "127.0.0.1", port, host="t.test", max_connections=1, pipeline=4, timeout=2
        ) as c:
            got = await asyncio.gather(*(c.head(f"/{i}") for i in range(10)))
            assert [g.status for g in got] == [200] * 10
            assert served == 10
    finally:
        server.close()
        await server.wait_closed()


async def test_http_client_timeouts_do_not_use_up_the_connection_slots() -> None:
    """Each timed-out request aborts its connection; the pool must forget it at
    once, or after max_connections timeouts every later request waits forever."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.split(b" ", 2)[1].startswith(b"/slow"):
                    await asyncio.sleep(30)  # never answers in time
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HTTPClient(
            "127.0.0.1", port, host="t.test", max_connections=2, timeout=0.3
        ) as c:
            async with asyncio.timeout(5):  # the old pool waited here forever
                for path in ("/slow1", "/slow2", "/slow3"):
                    with pytest.raises(HTTPError, match="no answer within 0.3s"):
                        await c.head(path)
                got = await asyncio.gather(*(c.head(f"/ok{i}") for i in range(10)))
            assert [g.status for g in got] == [200] * 10
            assert len(c._conns) <= 2
    finally:
        server.close()
        await server.wait_closed()
