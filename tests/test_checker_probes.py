"""Probes against real HTTPS mirrors on loopback, one fault per test.

Every case asserts the state, the reason text and the fall/rise behaviour.
The mirrors are `demo.mirror.DemoMirror` servers with trustme
certificates; nothing is mocked and nothing leaves 127.0.0.0/8 and ::1.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from checker.scheduler import Checker, RoundResult
from demo.mirror import DemoMirror, DemoPKI, Faults, demo_config, mirror_entry
from demo.tree import Tree
from geodns.model import AptCheck, Checks, FreshnessCheck, ObjectsCheck, Pool, TLSCheck
from geodns.store import Store

from .util import free_port

CRITICAL = "releases/latest.iso"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tree() -> Tree:
    t = Tree.generate(60, critical=(CRITICAL,))
    t.add_apt_suite("bookworm")
    return t


@pytest.fixture
def manifest(tmp_path: Path, tree: Tree) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(tree.manifest(sha256=True)))
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/health.sqlite")
    yield s
    s.close()


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as st:
        yield st


def checks(manifest: Path | None = None, **kw: object) -> Checks:
    base = Checks(
        tls=TLSCheck(warn_days=14),
        freshness=FreshnessCheck(path="/timestamp.txt", max_lag=6 * 3600),
        objects=ObjectsCheck(manifest=manifest, critical=(CRITICAL,), sample=40)
        if manifest
        else None,
        fall=3,
        rise=2,
        timeout=0.5,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


async def mirror(
    stack: AsyncExitStack, pki: DemoPKI, tree: Tree, host: str = "127.0.0.1", **kw: object
) -> DemoMirror:
    kw.setdefault("hostname", "mirror-a.test")
    m = DemoMirror(host=host, pki=pki, tree=tree, **kw)  # type: ignore[arg-type]
    return await stack.enter_async_context(m)


class Rig:
    """A pool of demo mirrors, a Checker and a store; `round()` runs one round."""

    def __init__(self, store: Store, pki: DemoPKI, pool: Pool, tmp: Path) -> None:
        self.store = store
        self.checker = Checker(demo_config([pool], tmp), store, ca_bundle=pki.ca_bundle)

    async def round(self) -> RoundResult:
        return await self.checker.round()

    def state(self, mirror: str = "a", address: str = "127.0.0.1") -> tuple[bool, str, str]:
        s = self.store.get_state("p", mirror, address)
        assert s is not None
        return s.up, s.reason, s.detail

    def close(self) -> None:
        self.checker.close()


@pytest.fixture
def rigs(store: Store, pki: DemoPKI, tmp_path: Path) -> Iterator[object]:
    made: list[Rig] = []

    def make(*mirrors: object, **kw: object) -> Rig:
        pool = Pool("p", tuple(mirrors), checks=checks(**kw))  # type: ignore[arg-type]
        r = Rig(store, pki, pool, tmp_path)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- TLS


async def test_good_mirror_is_up_with_details(stack, pki, tree, manifest, rigs) -> None:
    a = await mirror(stack, pki, tree)
    rig = rigs(mirror_entry("a", a), manifest=manifest)
    result = await rig.round()
    assert result.down == [] and result.failed == 0
    up, reason, detail = rig.state()
    assert up and reason == "first check: passed" and detail == "ok"
    kinds = rig.store.get_state("p", "a", "127.0.0.1").kinds  # type: ignore[union-attr]
    assert 88 < kinds["tls"]["data"]["expires_days"] < 91
    assert kinds["tls"]["latency"] > 0
    assert kinds["freshness"]["data"]["lag"] < 5
    assert kinds["objects"]["data"]["checked"] == 40
    assert kinds["objects"]["data"]["missing"] == 0


@pytest.mark.parametrize(
    ("cert", "pattern"),
    [
        ("expired", r"^TLS certificate expired 3 days ago \(notAfter \d{4}-\d\d-\d\d\)$"),
        ("not-yet-valid", r"^TLS certificate not valid before \S+ \S+Z \(in (2d|1d23h)\)$"),
        (
            "wrong-host",
            r"^TLS certificate does not match mirror-a\.test "
            r"\(it names wrong-host\.invalid\)$",
        ),
        ("self-signed", r"^TLS certificate is self-signed, not issued by a trusted CA$"),
        ("untrusted", r"^TLS certificate not trusted: issued by an unknown CA$"),
    ],
)
async def test_bad_certificate_is_down_at_once_and_rises_after_rise(
    stack, pki, tree, rigs, cert: str, pattern: str
) -> None:
    a = await mirror(stack, pki, tree, cert=cert)
    rig = rigs(mirror_entry("a", a), fall=3, rise=2)
    await rig.round()
    up, reason, _ = rig.state()
    assert not up, "a bad certificate is unrecoverable: down without waiting for fall=3"
    assert re.match(pattern, reason), reason
    assert rig.store.down_addresses() == frozenset({("p", "a", "127.0.0.1")})

    a.set_cert("good")
    await rig.round()
    up, reason, detail = rig.state()
    assert not up and detail.endswith("(recovering: tls 1/2)")
    await rig.round()
    up, reason, _ = rig.state()
    assert up and reason == "recovered: tls passed 2 consecutive checks"
    assert rig.store.down_addresses() == frozenset()
    assert [c.up for c in rig.store.history("a")] == [True, False]


async def test_certificate_expiring_soon_is_a_warning(stack, pki, tree, rigs) -> None:
    a = await mirror(stack, pki, tree, cert="expiring")
    rig = rigs(mirror_entry("a", a))
    await rig.round()
    s = rig.store.get_state("p", "a", "127.0.0.1")
    assert s is not None and s.up
    assert s.warning is not None
    assert re.fullmatch(r"TLS certificate expires in [45] days \(notAfter \S+\)", s.warning)


async def test_sni_from_checks_is_sent_and_verified(stack, pki, tree, rigs) -> None:
    # The certificate names the download host, not the mirror's own name.
    a = await mirror(stack, pki, tree, cert_names=("dl.example.org",))
    rig = rigs(mirror_entry("a", a), tls=TLSCheck(sni="dl.example.org"))
    await rig.round()
    assert rig.state()[0]
    rig2 = rigs(mirror_entry("a", a))  # default SNI: the URL host, which the cert lacks
    await rig2.round()
    up, reason, _ = rig2.state()
    assert not up and reason.startswith("TLS certificate does not match mirror-a.test")


async def test_no_listener_is_down_at_once(pki, rigs) -> None:
    port = free_port()
    dead = DemoMirror(port=port, pki=pki, hostname="mirror-a.test")  # never started
    rig = rigs(mirror_entry("a", dead), fall=3)
    await rig.round()
    up, reason, _ = rig.state()
    assert not up
    assert reason == f"connection to 127.0.0.1:{port} refused (nothing listening)"


async def test_handshake_that_never_completes_times_out_and_is_down(stack, pki, tree, rigs) -> None:
    a = await mirror(stack, pki, tree, faults=Faults(hang=True))
    rig = rigs(mirror_entry("a", a), fall=3)
    result = await rig.round()
    assert result.duration < 5
    up, reason, _ = rig.state()
    assert not up
    assert reason.startswith(f"TLS handshake with 127.0.0.1:{a.port} timed out after 0.5s")


# --------------------------------------------------------------------------- HTTP


async def test_slow_responses_count_towards_fall(stack, pki, tree, rigs) -> None:
    a = await mirror(stack, pki, tree, faults=Faults(delay=2.0))
    rig = rigs(mirror_entry("a", a), tls=None, fall=2, rise=1)
    await rig.round()
    up, _, detail = rig.state()
    assert up, "one timeout is not enough with fall=2"
    assert re.fullmatch(
        r"freshness failing 1/2: freshness: GET /timestamp\.txt on 127\.0\.0\.1:\d+: "
        r"no answer within 0\.5s",
        detail,
    ), detail
    await rig.round()
    up, reason, _ = rig.state()
    assert not up and "no answer within 0.5s" in reason
    a.faults.delay = 0
    await rig.round()
    assert rig.state()[0]


async def test_stale_mirror_goes_down_after_fall_and_back_after_rise(
    stack, pki, tree, rigs
) -> None:
    origin = await mirror(stack, pki, tree, host="127.0.0.2", hostname="origin.test")
    a = await mirror(stack, pki, tree, faults=Faults(stale=9 * 3600 + 12 * 60 + 30))
    fresh = FreshnessCheck(
        path="/timestamp.txt", max_lag=6 * 3600, origin=origin.url + "timestamp.txt"
    )
    rig = rigs(
        mirror_entry("a", a), mirror_entry("origin", origin), freshness=fresh, fall=2, rise=2
    )
    await rig.round()
    up, _, detail = rig.state()
    assert up and detail == "freshness failing 1/2: stale: 9h12m behind origin (max 6h)"
    await rig.round()
    up, reason, _ = rig.state()
    assert not up and reason == "stale: 9h12m behind origin (max 6h)"
    assert rig.state("origin", "127.0.0.2")[0]
    lag = rig.store.get_state("p", "a", "127.0.0.1").kinds["freshness"]["data"]["lag"]  # type: ignore[union-attr]
    assert abs(lag - (9 * 3600 + 12 * 60 + 30)) <= 5

    a.faults.stale = 60
    await rig.round()
    assert not rig.state()[0]
    await rig.round()
    up, reason, _ = rig.state()
    assert up and reason == "recovered: freshness passed 2 consecutive checks"


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("/lastsync", "epoch"),
        ("/timestamp-rfc3339.txt", "rfc3339"),
        ("/project/trace/master", "debian-trace"),
        ("/project/trace/master", "auto"),
        ("/timestamp-rfc3339.txt", "auto"),
    ],
)
async def test_timestamp_formats_against_checker_clock(stack, pki, tree, rigs, path, fmt) -> None:
    a = await mirror(stack, pki, tree, faults=Faults(stale=7 * 3600))
    fresh = FreshnessCheck(path=path, max_lag=6 * 3600, format=fmt)  # type: ignore[arg-type]
    rig = rigs(mirror_entry("a", a), freshness=fresh, fall=1)
    await rig.round()
    up, reason, _ = rig.state()
    assert not up and reason == "stale: 7h behind the checker's clock (max 6h)"


async def test_unreadable_origin_warns_instead_of_failing_every_mirror(
    stack, pki, tree, rigs
) -> None:
    a = await mirror(stack, pki, tree, faults=Faults(stale=9 * 3600))
    port = free_port("127.0.0.3")
    fresh = FreshnessCheck(
        path="/timestamp.txt", max_lag=3600, origin=f"http://127.0.0.3:{port}/timestamp.txt"
    )
    rig = rigs(mirror_entry("a", a), freshness=fresh, fall=1)
    await rig.round()
    s = rig.store.get_state("p", "a", "127.0.0.1")
    assert s is not None and s.up
    assert s.warning == (
        f"origin timestamp unavailable (connection to 127.0.0.3:{port} refused "
        "(nothing listening)); lag unknown"
    )


# --------------------------------------------------------------------------- objects


async def test_missing_object_counts_against_the_mirror(stack, pki, tree, manifest, rigs) -> None:
    victim = next(p for p in tree.files if p.startswith("distfiles/"))
    a = await mirror(stack, pki, tree, faults=Faults(missing={victim}))
    obj = ObjectsCheck(manifest=manifest, critical=(CRITICAL,), sample=0, max_missing=0)
    rig = rigs(mirror_entry("a", a), objects=obj, fall=2, rise=1)
    await rig.round()
    up, _, detail = rig.state()
    assert up and detail.startswith("objects failing 1/2: 1 of 61 objects missing (e.g. ")
    await rig.round()
    up, reason, _ = rig.state()
    assert not up and reason == f"1 of 61 objects missing (e.g. {victim})"
    obj_data = rig.store.get_state("p", "a", "127.0.0.1").kinds["objects"]["data"]  # type: ignore[union-attr]
    assert obj_data["missing"] == 1 and obj_data["checked"] == 61

    # Tolerated with max_missing, but still shown as a warning.
    rig2 = rigs(mirror_entry("a", a), objects=replace(obj, max_missing=1), fall=1, rise=1)
    await rig2.round()
    s = rig2.store.get_state("p", "a", "127.0.0.1")
    assert s is not None and s.up and s.warning is not None
    assert s.warning.endswith("(tolerated: max_missing 1)")


async def test_missing_critical_object_is_down_at_once(stack, pki, tree, manifest, rigs) -> None:
    a = await mirror(stack, pki, tree, faults=Faults(missing={CRITICAL}))
    rig = rigs(mirror_entry("a", a), manifest=manifest, fall=3)
    await rig.round()
    up, reason, _ = rig.state()
    assert not up
    assert reason == f"1 of 40 objects missing, critical {CRITICAL} missing"


async def test_wrong_size_and_corrupt_objects(stack, pki, tree, manifest, rigs) -> None:
    paths = sorted(p for p in tree.files if p.startswith("distfiles/") and tree.files[p].size > 40)
    short, bad = paths[0], paths[1]
    a = await mirror(stack, pki, tree, faults=Faults(short={short}, corrupt={bad}))
    obj = ObjectsCheck(manifest=manifest, sample=0, verify_sha256=100)
    rig = rigs(mirror_entry("a", a), objects=obj, fall=1)
    await rig.round()
    up, reason, _ = rig.state()
    size = tree.files[short].size
    assert not up
    assert reason.startswith("1 of 61 wrong size, 1 of ")
    assert f"hashed corrupt (e.g. {short}: {size // 2} bytes, manifest says {size}" in reason
    data = rig.store.get_state("p", "a", "127.0.0.1").kinds["objects"]["data"]  # type: ignore[union-attr]
    assert data["wrong_size"] == 1 and data["corrupt"] == 1 and data["hashed"] >= 50


async def test_large_manifests_are_covered_over_successive_rounds(
    stack, pki, tree, manifest, rigs
) -> None:
    a = await mirror(stack, pki, tree)
    obj = ObjectsCheck(manifest=manifest, critical=(CRITICAL,), sample=12)
    rig = rigs(mirror_entry("a", a), objects=obj, tls=None, freshness=None)
    before = a.requests
    cursors = []
    for _ in range(6):
        await rig.round()
        cursors.append(
            rig.store.get_state("p", "a", "127.0.0.1").kinds["objects"]["data"]["cursor"]  # type: ignore[union-attr]
        )
    # sample 12 = 1 critical + 3 newest + a window of 8 over the other 57 objects
    assert cursors == [8, 16, 24, 32, 40, 48]
    assert a.requests - before == 6 * 12


async def test_an_objects_probe_cut_short_keeps_its_place_in_the_rotation(
    stack, pki, tree, manifest, rigs
) -> None:
    a = await mirror(stack, pki, tree)
    obj = ObjectsCheck(
        manifest=manifest, critical=(CRITICAL,), sample=12, concurrency=1, interval=2
    )
    rig = rigs(mirror_entry("a", a), objects=obj, tls=None, freshness=None)

    def cursor() -> object:
        return rig.store.get_state("p", "a", "127.0.0.1").kinds["objects"]["data"].get("cursor")  # type: ignore[union-attr]

    await rig.round()
    assert cursor() == 8
    a.faults.delay = 0.4  # 12 HEADs one at a time: past the 1.5 s deadline
    await rig.round()
    assert "objects check did not finish within" in rig.state()[2]
    assert cursor() == 8  # not back to the start of the manifest
    a.faults.delay = 0
    await rig.round()
    assert cursor() == 16


# --------------------------------------------------------------------------- apt


async def test_mid_sync_inrelease_is_down_until_consistent(stack, pki, tree, rigs) -> None:
    a = await mirror(stack, pki, tree, faults=Faults(mid_sync=True))
    rig = rigs(mirror_entry("a", a), apt=AptCheck(suites=("bookworm",)), fall=3, rise=2)
    await rig.round()
    up, reason, _ = rig.state()
    assert not up
    assert re.fullmatch(
        r"mid-sync: dists/bookworm/InRelease lists main/binary-amd64/Packages\.gz as 1100 bytes, "
        r"mirror has 1104 \(\d+ problems in 5 index files\)",
        reason,
    ), reason
    a.faults.mid_sync = False
    await rig.round()
    assert not rig.state()[0]
    await rig.round()
    up, reason, _ = rig.state()
    assert up and reason == "recovered: apt passed 2 consecutive checks"


async def test_apt_heads_without_length_and_server_errors_are_not_mid_sync(
    stack, pki, tree, rigs
) -> None:
    """A HEAD answered without Content-Length is a present file of unknown size;
    a 503 is the mirror misbehaving (counts toward fall), not a half-done sync."""
    a = await mirror(stack, pki, tree, faults=Faults(no_length=True))
    rig = rigs(mirror_entry("a", a), apt=AptCheck(suites=("bookworm",)), fall=2, rise=1)
    await rig.round()
    up, reason, _ = rig.state()
    assert up, reason
    a.faults.no_length = False
    index = next(
        p for p in tree.files if p.startswith("dists/bookworm/main/") and "by-hash" not in p
    )
    a.faults.errors = {index}
    await rig.round()
    up, _, detail = rig.state()
    assert up  # one failure of fall 2: not taken out at once
    assert detail.startswith("apt failing 1/2: apt: index files answered errors: "), detail
    assert f"dists/bookworm/{index.removeprefix('dists/bookworm/')} (503)" in detail
    assert "mid-sync" not in detail


async def test_missing_by_hash_copy_is_inconsistent(stack, pki, tree, rigs) -> None:
    by_hash = next(p for p in tree.files if "/by-hash/SHA256/" in p)
    a = await mirror(stack, pki, tree, faults=Faults(missing={by_hash}))
    rig = rigs(mirror_entry("a", a), apt=AptCheck(suites=("bookworm",)))
    await rig.round()
    up, reason, _ = rig.state()
    assert not up and "(Acquire-By-Hash: yes)" in reason and "missing" in reason


async def test_release_fallback_and_missing_suite(stack, pki, tree, rigs) -> None:
    a = await mirror(stack, pki, tree, faults=Faults(missing={"dists/bookworm/InRelease"}))
    rig = rigs(mirror_entry("a", a), apt=AptCheck(suites=("bookworm",)))
    await rig.round()
    assert rig.state()[0], "Release is used when InRelease is absent"
    rig2 = rigs(mirror_entry("a", a), apt=AptCheck(suites=("trixie",)), fall=1)
    await rig2.round()
    up, reason, _ = rig2.state()
    assert not up and reason == "apt: dists/trixie/InRelease and Release are both missing"


# --------------------------------------------------------------------------- addresses


@pytest.mark.skipif(not ipv6_loopback(), reason="::1 is not available on this machine")
async def test_ipv6_failure_leaves_ipv4_up(stack, pki, tree, rigs) -> None:
    v4 = await mirror(stack, pki, tree)
    # The same name and port on ::1, but that listener serves an expired certificate.
    v6 = await mirror(stack, pki, tree, host="::1", port=v4.port, cert="expired")
    rig = rigs(mirror_entry("a", v4, also=[v6]))
    await rig.round()
    assert rig.state("a", "127.0.0.1")[0]
    up, reason, _ = rig.state("a", "::1")
    assert not up and reason.startswith("TLS certificate expired")
    assert rig.store.down_addresses() == frozenset({("p", "a", "::1")})


async def test_disabled_mirror_stays_down_without_probes(stack, pki, tree, rigs) -> None:
    a = await mirror(stack, pki, tree)
    rig = rigs(mirror_entry("a", a, enabled=False))
    result = await rig.round()
    assert result.probes == 0 and a.requests == 0
    s = rig.store.get_state("p", "a", "127.0.0.1")
    assert s is not None and not s.up and s.disabled
    assert s.reason == "disabled in configuration (enabled: false)"
    assert ("p", "a", "127.0.0.1") in rig.store.down_addresses()
    rig2 = rigs(mirror_entry("a", a))
    await rig2.round()
    up, reason, _ = rig2.state()
    assert up and reason == "enabled again in configuration; no check is failing"


async def test_one_hanging_mirror_does_not_stall_the_round(
    stack, pki, tree, manifest, rigs
) -> None:
    good = await mirror(stack, pki, tree, host="127.0.0.2", hostname="mirror-b.test")
    hung = await mirror(stack, pki, tree, faults=Faults(hang=True))
    rig = rigs(mirror_entry("a", hung), mirror_entry("b", good), manifest=manifest)
    result = await rig.round()
    assert result.duration < 4, result.summary()
    assert rig.state("b", "127.0.0.2")[0]
    assert not rig.state("a", "127.0.0.1")[0]
