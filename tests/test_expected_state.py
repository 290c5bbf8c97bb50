"""Expected state (issue 17): `checker manifest publish` on real trees in temporary
directories, on SQLite and a real PostgreSQL (tests/pg.py); the checkers' cache;
the report's version and age; the pool YAML's `manifest: store`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from checker import cli
from checker.errors import ManifestError
from checker.expected import ExpectedCache
from checker.publish import publish, walk
from geodns.config import load_config
from geodns.errors import ConfigError
from geodns.store import ExpectedConflict, ExpectedTotals, Store
from geodns.store.expected import ExpectedObjectRow, ExpectedPoolRow

from .util import REPO

try:
    from pg import pg_server  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover - tests/ became a package
    from tests.pg import pg_server  # noqa: F401


pytestmark = pytest.mark.timeout(120)

OLD = 1_700_000_000  # a fixed mtime, so that "unchanged" is exact


def put(root: Path, rel: str, data: bytes, mtime: int = OLD) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, (mtime, mtime))
    return p


def settle(root: Path) -> Path:
    """Directories back to the fixed mtime: an entry added or removed within
    the same second would change a directory's mtime, or not."""
    for d, _dirs, _files in os.walk(root):
        os.utime(d, (OLD, OLD))
    return root


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A small distfiles-like tree: files, a symlink to a file inside, one
    leaving the tree, a symlink to a directory, and rsync's leftovers."""
    root = tmp_path / "origin"
    put(root, "releases/latest.iso", b"iso" * 100)
    for i in range(20):
        put(root, f"distfiles/{i % 4:02x}/obj-{i:03d}.tar.xz", bytes([i]) * (i * 10))
    os.symlink("releases/latest.iso", root / "current.iso")
    (tmp_path / "outside.txt").write_text("not ours")
    os.symlink(tmp_path / "outside.txt", root / "leaves-the-tree")
    os.symlink("distfiles", root / "dirlink")
    put(root, "distfiles/00/.obj-000.tar.xz.Ab12Cd", b"partial")  # rsync temp name
    put(root, "distfiles/00/upload.tmp", b"partial")
    return settle(root)


def rows(store: Store, pool: str) -> dict[str, ExpectedObjectRow]:
    with store._session("test") as s:
        found = s.query(ExpectedObjectRow).filter_by(pool=pool).all()
        for r in found:
            s.expunge(r)
    return {r.path: r for r in found}


# --------------------------------------------------------------------------- publish


def test_walk_records_files_links_to_files_inside_and_directories(origin: Path) -> None:
    w = walk(origin)
    assert w["current.iso"] == ("link", 300, OLD)  # the target's size: what a server sends
    assert w["releases/latest.iso"] == ("file", 300, OLD)
    assert w["releases"][0] == "dir" and w["distfiles/03"][0] == "dir"
    assert "leaves-the-tree" not in w  # rsync --safe-links mirrors do not copy it
    assert "dirlink" not in w and not any(p.startswith("dirlink/") for p in w)
    assert not any(p.endswith((".tmp", ".Ab12Cd")) for p in w)
    assert sum(1 for v in w.values() if v[0] != "dir") == 22
    w2 = walk(origin, exclude=("distfiles/01/*", "*.iso"))
    assert not any(p.startswith("distfiles/01/") for p in w2) and "distfiles/01" in w2
    assert "releases/latest.iso" not in w2 and "current.iso" not in w2


def test_publish_change_and_removal(store: Store, origin: Path) -> None:
    t0 = datetime.now(UTC)
    first = publish(store, "dist", origin, sha256=True)
    h = first.head
    assert (h.version, h.objects, h.dirs, h.gone) == (1, 22, 6, 0)
    assert (first.added, first.changed, first.removed) == (28, 0, 0)
    assert h.bytes == 300 + 300 + sum(i * 10 for i in range(20))
    assert h.source.endswith(f":{origin}")
    v1 = rows(store, "dist")
    iso = v1["releases/latest.iso"]
    assert iso.sha256 == hashlib.sha256(b"iso" * 100).hexdigest()
    assert v1["current.iso"].type == "link" and v1["current.iso"].sha256 == iso.sha256
    assert v1["releases"].type == "dir" and v1["releases"].sha256 is None
    assert all(r.version == 1 and r.gone_at is None for r in v1.values())
    assert all(r.first_seen >= t0 - timedelta(seconds=1) for r in v1.values())

    # Nothing changed: a new version (the leader is alive), no row rewritten.
    second = publish(store, "dist", origin, sha256=True)
    assert second.head.version == 2 and (second.added, second.changed, second.removed) == (0, 0, 0)
    assert second.hashed == 0, "unchanged files are not read again"
    assert second.head.changed_at == h.changed_at < second.head.published_at
    assert {p: (r.version, r.first_seen) for p, r in rows(store, "dist").items()} == {
        p: (r.version, r.first_seen) for p, r in v1.items()
    }

    # One new, one changed (size), one removed.
    put(origin, "distfiles/new/fresh.tar.xz", b"new!")
    put(origin, "distfiles/01/obj-001.tar.xz", b"longer than before")
    (origin / "distfiles/02/obj-002.tar.xz").unlink()
    third = publish(store, "dist", settle(origin), sha256=True)
    assert third.head.version == 3
    assert (third.added, third.changed, third.removed) == (2, 1, 1)  # the file and its dir new/
    assert third.hashed == 2
    v3 = rows(store, "dist")
    fresh, changed, gone = (
        v3["distfiles/new/fresh.tar.xz"],
        v3["distfiles/01/obj-001.tar.xz"],
        v3["distfiles/02/obj-002.tar.xz"],
    )
    assert fresh.version == changed.version == gone.version == 3
    assert fresh.first_seen == changed.first_seen == third.head.published_at
    assert (
        changed.size == 18 and changed.sha256 == hashlib.sha256(b"longer than before").hexdigest()
    )
    assert gone.gone_at == third.head.published_at
    assert gone.first_seen == v1["distfiles/02/obj-002.tar.xz"].first_seen  # kept as it was
    assert v3["releases/latest.iso"].version == 1
    assert third.head.gone == 1 and third.head.objects == 22

    # "Changes since version 2" is exactly what version 3 touched.
    delta = store.expected_changes("dist", 2)
    assert delta.head is not None and delta.head.version == 3
    assert sorted(r[0] for r in delta.rows) == sorted(p for p, r in v3.items() if r.version == 3)

    # A removed object that comes back is live again, and new.
    put(origin, "distfiles/02/obj-002.tar.xz", b"\x02" * 20)
    fourth = publish(store, "dist", settle(origin))
    back = rows(store, "dist")["distfiles/02/obj-002.tar.xz"]
    assert back.gone_at is None and back.version == 4 and fourth.head.gone == 0
    assert back.first_seen == fourth.head.published_at


def test_publishing_what_a_sync_changed_equals_a_full_walk(
    store: Store, store_url: str, origin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(store, "dist", origin)
    put(origin, "distfiles/new/x.tar.xz", b"x" * 7)
    put(origin, "distfiles/00/obj-new.tar.xz", b"y" * 9)
    put(origin, "distfiles/01/obj-001.tar.xz", b"longer than before")
    (origin / "distfiles/02/obj-002.tar.xz").unlink()
    shutil.rmtree(origin / "distfiles/03")
    settle(origin)
    listing = tmp_path / "rsync.log"  # as `rsync -a --delete --out-format=%n` prints it
    listing.write_text(
        "distfiles/new/\n"
        "distfiles/new/x.tar.xz\n"
        "distfiles/00/obj-new.tar.xz\n"
        "distfiles/01/obj-001.tar.xz\n"
        "deleting distfiles/02/obj-002.tar.xz\n"
        "*deleting   distfiles/03/\n"
        "\n"
    )
    argv = ["manifest", "publish", str(origin), "--pool", "dist", "--store", store_url]
    assert cli.main([*argv, "--paths-from", str(listing)]) == 0
    out = capsys.readouterr().out
    # added: new/, new/x, 00/obj-new; removed: 02/obj-002, 03/ and its five files
    assert out.startswith("dist: version 2: 3 added, 1 changed, 7 removed; 18 objects ("), out
    scoped = store.expected_head("dist")
    assert scoped is not None and (scoped.objects, scoped.dirs, scoped.gone) == (18, 6, 7)
    full = publish(store, "dist", origin)
    assert (full.added, full.changed, full.removed) == (0, 0, 0), "the list missed nothing"
    assert (full.head.objects, full.head.dirs, full.head.bytes) == (
        scoped.objects,
        scoped.dirs,
        scoped.bytes,
    )
    listing.write_text("../etc/passwd\n")
    assert cli.main([*argv, "--paths-from", str(listing)]) == 2
    assert "a path leaving ROOT" in capsys.readouterr().err


def test_names_that_are_not_utf8_are_left_out_and_named(store: Store, origin: Path) -> None:
    bad = os.fsencode(origin / "distfiles") + b"/caf\xe9.tar.xz"
    with open(bad, "wb") as f:
        f.write(b"x")
    done = publish(store, "dist", origin)
    assert done.head.objects == 22
    assert done.problems == ["distfiles/'caf\\udce9.tar.xz': not a UTF-8 name, left out"]


def test_sha256_is_added_later_without_making_objects_new(store: Store, origin: Path) -> None:
    publish(store, "dist", origin)
    before = rows(store, "dist")
    assert all(r.sha256 is None for r in before.values())
    again = publish(store, "dist", origin, sha256=True)
    assert (again.added, again.changed, again.rehashed) == (0, 0, 22)
    after = rows(store, "dist")
    for path, r in after.items():
        assert r.first_seen == before[path].first_seen  # the objects are not new
        if r.type != "dir":
            assert r.sha256 and r.version == 2
    # Same size and mtime: trusted, as rsync trusts them (not hashed again).
    p = put(origin, "releases/latest.iso", b"ISO" * 100)
    assert publish(store, "dist", origin, sha256=True).hashed == 0
    assert (
        rows(store, "dist")["releases/latest.iso"].sha256
        == hashlib.sha256(b"iso" * 100).hexdigest()
    )
    os.utime(p, (OLD + 60, OLD + 60))
    third = publish(store, "dist", origin, sha256=True)
    assert third.changed == 2 and third.hashed == 2  # the file, and the link to it
    assert (
        rows(store, "dist")["releases/latest.iso"].sha256
        == hashlib.sha256(b"ISO" * 100).hexdigest()
    )


def test_an_empty_or_unmounted_tree_is_not_published_as_removals(
    store: Store, tmp_path: Path
) -> None:
    root = tmp_path / "big"
    for i in range(150):
        put(root, f"f/{i:03d}", b"x")
    publish(store, "dist", settle(root))
    for p in (root / "f").iterdir():
        p.unlink()
    settle(root)
    with pytest.raises(ManifestError, match=r"150 of 151 published objects \(99%\)"):
        publish(store, "dist", root)
    head = store.expected_head("dist")
    assert head is not None and head.version == 1 and head.objects == 150
    done = publish(store, "dist", root, max_removed=1.0)
    assert done.removed == 150 and done.head.gone == 150 and done.head.objects == 0


def test_a_stale_base_version_is_a_conflict(store: Store, origin: Path) -> None:
    publish(store, "dist", origin)
    with pytest.raises(ExpectedConflict, match="is at version 1, not 0"):
        store.publish_expected("dist", 0, totals=ExpectedTotals(0, 0, 0))
    assert store.expected_head("dist").version == 1  # type: ignore[union-attr]


_KILLED = """
import sys, time
from pathlib import Path
from checker.publish import publish
from geodns.store import Store

def stall() -> None:
    print("in transaction", flush=True)
    time.sleep(120)

publish(Store(sys.argv[1]), "dist", Path(sys.argv[2]), on_written=stall)
"""


def test_a_publisher_killed_mid_transaction_leaves_the_old_version(
    store: Store, store_url: str, origin: Path
) -> None:
    publish(store, "dist", origin)
    before = rows(store, "dist")
    for i in range(50):
        put(origin, f"distfiles/late/{i:02d}", b"late")
    (origin / "releases/latest.iso").unlink()
    settle(origin)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, store_url, str(origin)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in transaction"  # rows written, not committed
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    head = store.expected_head("dist")
    assert head is not None and head.version == 1 and head.objects == 22
    assert {p: (r.version, r.gone_at, r.size) for p, r in rows(store, "dist").items()} == {
        p: (r.version, r.gone_at, r.size) for p, r in before.items()
    }
    assert store.expected_changes("dist", 1).rows == []
    # The lock died with the process: the next publish goes through.
    done = publish(store, "dist", origin)
    assert done.head.version == 2 and done.added == 51 and done.removed == 2  # and the link


# --------------------------------------------------------------------------- the checkers' copy


def test_cache_loads_once_then_reads_only_changes(store: Store, origin: Path) -> None:
    publish(store, "dist", origin)
    cache = ExpectedCache(store, "dist")
    snap = cache.refresh()
    assert snap is not None and snap.version == 1 and len(snap.manifest) == 22
    assert (cache.full_loads, cache.deltas, cache.rows_read) == (1, 0, 22)
    cursor = snap.newest_cursor()
    assert snap.new_since(cursor) == []

    put(origin, "distfiles/new/a", b"a", mtime=OLD - 86400)  # old mtime, new on the origin
    put(origin, "distfiles/new/b", b"b")
    (origin / "distfiles/03/obj-003.tar.xz").unlink()
    publish(store, "dist", settle(origin))
    snap2 = cache.refresh()
    assert snap2 is not None and snap2.version == 2 and snap is not snap2
    assert (cache.full_loads, cache.deltas) == (1, 1)
    assert cache.rows_read == 22 + 4  # 2 new, the directory new/, 1 removed
    assert [o.path for o in snap2.manifest.objects[:2]] == ["distfiles/new/b", "distfiles/new/a"]
    assert "distfiles/03/obj-003.tar.xz" not in snap2.manifest.by_path
    assert [p for p, _ in snap2.gone] == ["distfiles/03/obj-003.tar.xz"]
    new = snap2.new_since(cursor)
    assert [o.path for o in new] == ["distfiles/new/a", "distfiles/new/b"]  # oldest first
    assert snap2.new_since([new[0].first_seen, new[0].path]) == [new[1]]
    assert snap2.gone_due(after=0, within=3600) == ["distfiles/03/obj-003.tar.xz"]
    assert snap2.gone_due(after=3600, within=7200) == []
    assert len(snap.manifest) == 22, "an old snapshot never changes under its readers"

    publish(store, "dist", origin)  # nothing changed: a newer head, the same objects
    snap3 = cache.refresh()
    assert snap3 is not None and snap3.version == 3 and snap3.manifest is snap2.manifest
    assert cache.rows_read == 26


def test_cache_keeps_its_snapshot_when_the_store_fails(tmp_path: Path, origin: Path) -> None:
    path = tmp_path / "h.sqlite"
    with Store(f"sqlite:///{path}") as writer:
        publish(writer, "dist", origin)
    reader = Store(f"sqlite:///{path}", create=False)  # a checker that cannot create it
    try:
        cache = ExpectedCache(reader, "dist")
        snap = cache.refresh()
        assert snap is not None and cache.error is None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        assert cache.refresh() is snap  # fail-static: the last version stays in use
        assert cache.error is not None and "has disappeared" in cache.error
    finally:
        reader.close()


# --------------------------------------------------------------------------- CLI and report


def test_cli_publish_and_drop(
    store_url: str, origin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["manifest", "publish", str(origin), "--pool", "dist", "--store", store_url]
    assert cli.main([*argv, "--sha256"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dist: version 1: 28 added, 0 changed, 0 removed; 22 objects ("), out
    assert "6 directories, 0 removed kept;" in out
    (origin / "releases/latest.iso").unlink()
    settle(origin)
    assert cli.main(argv) == 0
    assert "dist: version 2: 0 added, 0 changed, 2 removed;" in capsys.readouterr().out
    assert (
        cli.main(
            ["manifest", "publish", str(origin / "nope"), "--pool", "dist", "--store", store_url]
        )
        == 2
    )
    assert "not a directory" in capsys.readouterr().err
    assert (
        cli.main(["manifest", "publish", str(origin), "--pool", "no good", "--store", store_url])
        == 2
    )
    assert "is not a valid pool name" in capsys.readouterr().err
    assert cli.main(["manifest", "drop", "dist", "--store", store_url]) == 0
    assert "dropped the expected state of 'dist': version 2" in capsys.readouterr().out
    assert cli.main(["manifest", "drop", "dist", "--store", store_url]) == 1


def _age(store: Store, pool: str, hours: float) -> None:
    """Make the head look `hours` old (as if the leader stopped then)."""
    when = datetime.now(UTC) - timedelta(hours=hours)
    with store._session("test") as s:
        s.execute(
            update(ExpectedPoolRow).where(ExpectedPoolRow.pool == pool).values(published_at=when)
        )


def test_report_shows_version_and_age_and_warns_when_the_leader_stops(
    store: Store,
    store_url: str,
    origin: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "220")
    publish(store, "dist", origin)
    store.set_state("dist", "m1", "192.0.2.10", True, "fine")
    assert cli.main(["report", "--store", store_url]) == 0
    out = capsys.readouterr().out
    assert "expected state dist: version 1, 22 objects (" in out and "STALE" not in out
    assert cli.main(["nagios", "--store", store_url]) == 0
    status = capsys.readouterr().out.splitlines()[0]
    assert status.startswith("GEODNS MIRRORS OK - 1 of 1 up | ")
    assert "'expected_age_dist'=" in status and "s;10800;;0" in status

    _age(store, "dist", 5)
    assert cli.main(["report", "--store", store_url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    e = doc["expected"]["dist"]
    assert (
        e["version"] == 1 and e["stale"] is True and 5 * 3600 - 5 < e["age_seconds"] < 5 * 3600 + 60
    )
    assert e["problem"].startswith(
        "expected state 'dist' last published 5h ago (version 1, max 3h)"
    )
    assert cli.main(["nagios", "--store", store_url]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("GEODNS MIRRORS WARNING - 1 of 1 up; expected state dist 5h old | ")
    assert out[1].startswith("WARNING: expected state 'dist' last published 5h ago")
    assert cli.main(["nagios", "--store", store_url, "--expected-max-age", "6h"]) == 0
    capsys.readouterr()


def test_report_with_config_names_a_state_nobody_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zones = tmp_path / "zones"
    (zones / "pools").mkdir(parents=True)
    (zones / "pools/p.yaml").write_text(
        textwrap.dedent(
            """\
            pool: p
            checks:
              objects: {manifest: store}
            mirrors:
              - {name: m1, url: "https://m1.example.net/", ipv4: [192.0.2.10]}
            """
        )
    )
    url = f"sqlite:///{tmp_path}/h.sqlite"
    with Store(url) as s:
        s.set_state("p", "m1", "192.0.2.10", True, "fine")
    assert cli.main(["nagios", "--store", url, "--config", str(zones)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("GEODNS MIRRORS WARNING - 1 of 1 up; expected state p missing |")
    assert out[1] == (
        "WARNING: no expected state published for 'p' (read by pool p): "
        "run `checker manifest publish ROOT --pool p` on the origin"
    )


# --------------------------------------------------------------------------- pool YAML


def _pool(tmp_path: Path, objects: str) -> Path:
    zones = tmp_path / "zones"
    zones.mkdir(exist_ok=True)
    (zones / "p.yaml").write_text(
        "pool: p\n"
        "checks:\n"
        f"  objects: {objects}\n"
        "mirrors:\n"
        "  - {name: m1, url: 'https://m1.example.net/', ipv4: [192.0.2.10]}\n"
    )
    (zones / "m.json").write_text('{"objects": []}')
    return zones


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        ("{manifest: store}", "p"),
        (
            "{manifest: 'store:distfiles', gone_sample: 5, gone_after: 2h, gone_within: 7d}",
            "distfiles",
        ),
    ],
)
def test_manifest_store_in_pool_yaml(tmp_path: Path, objects: str, expected: str) -> None:
    check = load_config(_pool(tmp_path, objects)).pools["p"].checks.objects
    assert check is not None and check.expected == expected and check.manifest is None
    if "gone_sample" in objects:
        assert (check.gone_sample, check.gone_after, check.gone_within) == (5, 7200, 7 * 86400)


@pytest.mark.parametrize(
    ("objects", "problem"),
    [
        (
            "{manifest: 'store:no good'}",
            "p.yaml:3: pool 'p' checks objects: manifest: 'store:no good': 'no good' is not a "
            "valid pool name (letters, digits, '.', '_', '-')",
        ),
        (
            "{manifest: m.json, gone_sample: 5}",
            "p.yaml:3: pool 'p' checks objects: gone_sample: needs `manifest: store` "
            "(a manifest file does not list removed objects)",
        ),
        (
            "{manifest: store, gone_after: 2d, gone_within: 1d}",
            "p.yaml:3: pool 'p' checks objects: gone_within: gone_within must be longer than "
            "gone_after (checks happen in between)",
        ),
        (
            "{manifest: store, gone_sample: many}",
            "p.yaml:3: pool 'p' checks objects: gone_sample: expected a whole number, got 'many'",
        ),
    ],
)
def test_manifest_store_errors_name_file_line_and_field(
    tmp_path: Path, objects: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(_pool(tmp_path, objects))
    assert [p.split("/")[-1] for p in ei.value.problems] == [problem]


def test_first_seen_increases_even_when_the_clock_steps_back(store: Store) -> None:
    late = datetime.now(UTC) + timedelta(hours=1)
    store.publish_expected("p", 0, totals=ExpectedTotals(0, 0, 0), at=late)
    head = store.publish_expected("p", 1, totals=ExpectedTotals(0, 0, 0))
    assert head.published_at > late
