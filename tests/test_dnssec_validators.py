"""DNSSEC through real validators: a validating Unbound (with EDNS Client
Subnet) and BIND's delv resolve every kind of answer from geodns as secure,
and a ZSK rollover on a running server stays secure throughout."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from geodns.dnssec.keyfiles import ds_text, read_key

from .dnssec_util import dnssec_yaml, keygen, signed_test_zones
from .util import ServerThread, ecs_of, settings_for
from .validator import Unbound, have_unbound, secure

pytestmark = pytest.mark.skipif(not have_unbound(), reason="unbound is not installed")

SOA = "soa: {mname: ns1.example.org., rname: hostmaster.example.org., serial: 1, minimum: 60}\n"


def _ds(root: Path, key: str, zone: str) -> str:
    return ds_text(zone, read_key(root / key, zone)).split(" DS ", 1)[1]


class World:
    def __init__(self, unbound: Unbound, parent: ServerThread, root: Path, anchors: list[str]):
        self.unbound = unbound
        self.parent = parent
        self.root = root
        self.anchors = anchors


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, demo_geoip: tuple[Path, Path]
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("validators")
    root = tmp / "zones"
    keys = signed_test_zones(root)
    # children on a second server: one signed (its DS in the parent), one not
    child = tmp / "child"
    child.mkdir()
    ckey = keygen(child / "keys", "secure.example.org", sep=True)
    for name, extra in (("secure", dnssec_yaml([ckey])), ("insecure", "")):
        (child / f"{name}.yaml").write_text(
            f"zone: {name}.example.org\n{SOA}ns: [ns.{name}.example.org.]\n"
            f"records:\n  ns: {{A: 127.0.0.1}}\n  www: {{A: 192.0.2.{len(name)}}}\n" + extra
        )
    zf = root / "example.org.yaml"
    child_ds = _ds(child, ckey, "secure.example.org")
    text = zf.read_text().replace(
        "records:\n",
        "records:\n"
        f'  secure: {{NS: ns.secure.example.org., DS: "{child_ds}"}}\n'
        "  ns.secure: {A: 127.0.0.1}\n"
        "  insecure: {NS: ns.insecure.example.org.}\n"
        "  ns.insecure: {A: 127.0.0.1}\n",
        1,
    )
    zf.write_text(text)
    # a zone whose trust anchor is another key: must be bogus (SERVFAIL)
    good = keygen(root / "keys", "bogus.test", sep=True)
    wrong = keygen(tmp / "elsewhere", "bogus.test", sep=True)
    (root / "bogus.test.yaml").write_text(
        f"zone: bogus.test\n{SOA}ns: [ns1.example.org.]\nrecords:\n  www: {{A: 192.0.2.9}}\n"
        + dnssec_yaml([good])
    )
    anchors = [
        f"example.org. DS {_ds(root, keys['example.org'][0], 'example.org')}",
        f"other.test. DS {_ds(root, keys['other.test'][0], 'other.test')}",
        f"bogus.test. DS {_ds(tmp, 'elsewhere/' + Path(wrong).name, 'bogus.test')}",
    ]
    with (
        ServerThread(settings_for(root, tmp / "p", demo_geoip)) as parent,
        ServerThread(settings_for(child, tmp / "c")) as kid,
    ):
        stubs = {
            "example.org.": parent.addr(),
            "other.test.": parent.addr(),
            "bogus.test.": parent.addr(),
            "secure.example.org.": kid.addr(),
            "insecure.example.org.": kid.addr(),
        }
        udir = tmp / "unbound"
        udir.mkdir()
        with Unbound(udir, stubs, anchors) as ub:
            yield World(ub, parent, root, anchors)


SECURE = [
    # (name, type, ECS, rcode, answer types, expected addresses or None)
    ("mail.example.org", "A", None, "NOERROR", ["A"], {"192.0.2.25"}),
    ("example.org", "MX", None, "NOERROR", ["MX"], None),
    ("dl.example.org", "A", "192.0.2.0/24", "NOERROR", ["A"], {"127.1.0.1", "127.5.0.1"}),
    ("dl.example.org", "A", "198.51.100.0/24", "NOERROR", ["A"], None),
    ("one.example.org", "A", "203.0.113.0/24", "NOERROR", ["A"], {"127.3.0.1"}),
    ("one.example.org", "A", "198.51.100.0/24", "NOERROR", ["A"], {"127.2.0.1"}),
    ("one.example.org", "A", "81.2.69.0/24", "NOERROR", ["A"], None),
    ("dl.example.org", "AAAA", "2001:db8:3::/48", "NOERROR", ["AAAA"], None),
    ("www.example.org", "A", "203.0.113.0/24", "NOERROR", ["CNAME", "A"], None),
    ("hop.other.test", "A", None, "NOERROR", ["CNAME", "CNAME", "A"], None),
    ("nope.example.org", "A", None, "NOERROR", [], None),  # NXDOMAIN, compact (RFC 9824)
    ("deep.er.nope.example.org", "AAAA", None, "NOERROR", [], None),
    ("mail.example.org", "TXT", None, "NOERROR", [], None),  # NODATA
    ("v4only.example.org", "AAAA", None, "NOERROR", [], None),  # steered NODATA
    ("_tcp.dl.example.org", "TXT", None, "NOERROR", [], None),  # empty non-terminal
    ("dangling.example.org", "A", None, "NOERROR", ["CNAME"], None),  # → nothing there
    ("a.users.example.org", "A", None, "NOERROR", ["A"], {"192.0.2.80"}),  # wildcard
    ("b.users.example.org", "TXT", None, "NOERROR", [], None),  # wildcard NODATA
    ("www.secure.example.org", "A", None, "NOERROR", ["A"], {"192.0.2.6"}),  # via DS
    ("example.org", "DNSKEY", None, "NOERROR", ["DNSKEY"], None),
]


@pytest.mark.parametrize(("name", "rdtype", "ecs", "rcode", "types", "addrs"), SECURE)
def test_unbound_validates_as_secure(
    world: World,
    name: str,
    rdtype: str,
    ecs: str | None,
    rcode: str,
    types: list[str],
    addrs: set[str] | None,
) -> None:
    r = world.unbound.ask(name, rdtype, ecs=ecs)
    assert dns.rcode.to_text(r.rcode()) == rcode, r
    assert secure(r), f"not AD=1:\n{r}\n{world.unbound.log()[-3000:]}"
    got = [dns.rdatatype.to_text(rr.rdtype) for rr in r.answer if rr.rdtype != 46]
    assert got == types, r
    if addrs is not None:
        data = [rr for rr in r.answer if rr.rdtype != dns.rdatatype.RRSIG]
        assert {rd.address for rd in data[-1]} <= addrs, r
    if ecs is not None:
        opt = ecs_of(r)  # Unbound hands the authority's scope on to its client
        assert opt is not None and opt.scopelen > 0, r


def test_unbound_insecure_delegation_and_bogus_zone(world: World) -> None:
    """No DS in the parent (proved by the NSEC at the cut): an insecure answer,
    not a failure. A zone that does not match its trust anchor: SERVFAIL —
    the validator in this test really validates."""
    r = world.unbound.ask("www.insecure.example.org")
    assert r.rcode() == dns.rcode.NOERROR and not secure(r)
    assert [rd.address for rd in r.answer[0]] == ["192.0.2.8"]
    r = world.unbound.ask("www.bogus.test")
    assert r.rcode() == dns.rcode.SERVFAIL and not r.answer


@pytest.mark.skipif(shutil.which("delv") is None, reason="delv (bind9-dnsutils) not installed")
@pytest.mark.parametrize(
    ("name", "rdtype", "verdict"),
    [
        ("mail.example.org", "A", "; fully validated"),
        ("dl.example.org", "A", "; fully validated"),
        ("www.example.org", "AAAA", "; fully validated"),
        ("a.users.example.org", "A", "; fully validated"),
        ("nope.example.org", "A", "; negative response, fully validated"),
        ("mail.example.org", "TXT", "; negative response, fully validated"),
        ("_tcp.dl.example.org", "A", "; negative response, fully validated"),
    ],
)
def test_delv_agrees(world: World, tmp_path: Path, name: str, rdtype: str, verdict: str) -> None:
    anchor = world.anchors[0].split(" DS ", 1)[1].split()
    (tmp_path / "anchors").write_text(
        "trust-anchors {\n"
        f'  example.org. static-ds {anchor[0]} {anchor[1]} {anchor[2]} "{anchor[3]}";\n'
        "};\n"
    )
    host, port = world.parent.addr()
    out = subprocess.run(
        [
            "delv",
            f"@{host}",
            "-p",
            str(port),
            "-a",
            str(tmp_path / "anchors"),
            "+root=example.org",
            name,
            rdtype,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verdict in out.stdout.splitlines(), out.stdout + out.stderr


# ----------------------------------------------------------------------------- rollover


def test_zsk_rollover_on_a_running_server_stays_secure(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    """Pre-publish: a new ZSK joins the DNSKEY set, signing nothing; after the
    resolver's caches have turned over, signing switches to it while the old
    key stays published; then the old key goes. A validating resolver that
    asks all along gets AD=1 every time (caches capped at 2 s, so each step's
    wait stands for the DNSKEY TTL)."""
    root = tmp_path / "zones"
    keys = signed_test_zones(root)
    ksk, zsk1 = keys["example.org"]
    zsk2 = keygen(root / "keys", "example.org", sep=False)
    zf = root / "example.org.yaml"
    base = zf.read_text().split("dnssec:")[0]

    def step(keylist: list[str | tuple[str, bool]]) -> None:
        zf.write_text(base + dnssec_yaml(keylist))
        assert st.reload()

    anchor = f"example.org. DS {_ds(root, ksk, 'example.org')}"
    failures: list[str] = []
    stop = threading.Event()
    asked = [0]

    def resolve_all_along() -> None:
        names = [
            ("dl.example.org", "A", "192.0.2.0/24"),
            ("mail.example.org", "A", None),
            ("nope.example.org", "A", None),
            ("www.example.org", "AAAA", "2001:db8:1::/48"),
        ]
        while not stop.is_set():
            for name, rdtype, ecs in names:
                try:
                    r = ub.ask(name, rdtype, ecs=ecs, timeout=3)
                except Exception as e:  # noqa: BLE001 — a timeout is a failure too
                    failures.append(f"{name}: {e!r}")
                    continue
                asked[0] += 1
                if r.rcode() != dns.rcode.NOERROR or not secure(r):
                    failures.append(
                        f"{name} {rdtype}: {dns.rcode.to_text(r.rcode())} AD={secure(r)}"
                    )
            time.sleep(0.05)

    def zsk_tags() -> set[int]:
        r = ub.ask("example.org", "DNSKEY")
        return {
            dns.dnssec.key_id(k) for rr in r.answer if rr.rdtype == 48 for k in rr if k.flags == 256
        }

    def signing_tag() -> int:
        r = ub.ask("mail.example.org", "A")
        (sig,) = [rr for rr in r.answer if rr.rdtype == 46]
        return sig[0].key_tag

    tag1 = read_key(root / zsk1, "example.org").tag
    tag2 = read_key(root / zsk2, "example.org").tag
    udir = tmp_path / "unbound"
    udir.mkdir()
    with (
        ServerThread(settings_for(root, tmp_path, demo_geoip)) as st,
        Unbound(udir, {"example.org.": st.addr()}, [anchor], cache_max_ttl=2) as ub,
    ):
        worker = threading.Thread(target=resolve_all_along, daemon=True)
        worker.start()
        try:
            time.sleep(1.5)
            assert signing_tag() == tag1 and zsk_tags() == {tag1}
            step([ksk, zsk1, (zsk2, False)])  # 1. pre-publish the new ZSK
            time.sleep(3)  # > the caches' TTL: every resolver has seen it
            assert zsk_tags() == {tag1, tag2} and signing_tag() == tag1
            step([ksk, (zsk1, False), zsk2])  # 2. switch signing, both published
            time.sleep(3)  # > TTL: no answer signed by the old ZSK is cached
            assert zsk_tags() == {tag1, tag2} and signing_tag() == tag2
            step([ksk, zsk2])  # 3. the old ZSK goes
            time.sleep(3)
            assert zsk_tags() == {tag2} and signing_tag() == tag2
        finally:
            stop.set()
            worker.join(10)
    assert not failures, failures[:10]
    assert asked[0] > 40
