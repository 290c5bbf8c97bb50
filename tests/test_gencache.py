"""The two-generation cache, and what it is for: a flood of one-off names does
not evict the answers in use."""

from __future__ import annotations

import random
from pathlib import Path

import dns.message
import pytest

from geodns.dns.gencache import TwoGen
from geodns.runtime.server import Server

from .conftest import TEST_ZONES
from .util import query, settings_for

DL = (b"\x02dl\x07example\x03org\x00", 1)  # the cache key: wire name, qtype


def test_turnover_keeps_what_was_used_and_bounds_memory() -> None:
    c: TwoGen[int, str] = TwoGen(3)
    for k in range(3):
        c.put(k, str(k))
    c.put(3, "3")  # new is full: it becomes old
    assert len(c) == 4 and list(c.new) == [3] and list(c.old) == [0, 1, 2]
    assert c.new.get(1) is None and c.get(1) == "1"  # promoted from old
    assert 1 in c.new and 1 not in c.old
    c.put(4, "4")
    c.put(5, "5")  # turnover: 0 and 2 were not used since the last one
    assert c.get(0) is None and c.get(2) is None
    assert c.get(1) == "1" and c.get(3) == "3"
    for k in range(1000):
        c.put(100 + k, "x")
        assert len(c) <= 2 * c.cap
    assert [k for k, _ in c.items()][-2:] == [1098, 1099]  # least recent first
    with pytest.raises(ValueError):
        TwoGen(0)


def test_random_name_flood_does_not_evict_the_hot_answers(
    tmp_path: Path, demo_geoip: tuple[Path, Path]
) -> None:
    srv = Server(settings_for(TEST_ZONES, tmp_path, demo_geoip))
    srv.load_initial()
    responder = srv.current.responder  # type: ignore[union-attr]
    responder.cache = TwoGen(64)
    responder.ecs_clients = TwoGen(64)

    def ask(name: str, ecs: str | None = "192.0.2.0/24") -> dns.message.Message:
        out = responder.handle(query(name, ecs=ecs).to_wire(), "127.0.0.1")
        assert out is not None
        return dns.message.from_wire(out)

    first = ask("dl.example.org")
    hot = responder.cache.new[DL]
    rng = random.Random(7)
    for i in range(2000):  # NXDOMAIN names and one-off client subnets
        ask(f"x{rng.getrandbits(48):x}.example.org", ecs=f"10.{i % 250}.{i // 250}.0/24")
        if i % 20 == 0:
            ask("dl.example.org")
        assert len(responder.cache) <= 128 and len(responder.ecs_clients) <= 128
    assert responder.cache.get(DL) is hot  # never rebuilt
    # the same best group still answers (one German mirror a set, by weight)
    german = {"127.1.0.1", "127.5.0.1"}
    for msg in (first, ask("dl.example.org")):
        assert {rr.address for rr in msg.answer[0]} <= german
