"""Why a client gets what it gets, as data (`geodns explain` renders it).

Runs the server's own code path (same config loader, GeoIP, health snapshot,
resolution and ranking) without opening sockets, and returns the client's
location, every mirror address with tier, distance, health and whether it is
answered, and the exact answer and ECS scope the server would give.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from geodns.dns import wire
from geodns.dns.answer import UNKNOWN_CLIENT
from geodns.dns.names import to_wire
from geodns.model import Pool
from geodns.runtime.server import Server
from geodns.steering.geo import GeoInfo
from geodns.steering.rank import TIER_NAMES, ExplainRow, Ranked, band_limit, explain_rows


def explain(server: Server, name: str, client: str, qtype: str = "A") -> dict[str, Any]:
    assert server.current is not None and server.config is not None
    responder = server.current.responder
    has_prefix = "/" in client
    try:
        # as the server reads an ECS option: host bits beyond the prefix are FORMERR
        net = ipaddress.ip_network(client, strict=has_prefix)
    except ValueError as e:
        raise ValueError(f"{e} (the server answers FORMERR to such a Client Subnet)") from None
    if has_prefix and net.prefixlen == 0:
        raise ValueError(
            "a /0 Client Subnet names no client: the server then steers by the "
            "resolver's own address, so give that address instead"
        )
    addr = net.network_address
    info = server.geodb.lookup(addr.packed) if server.geodb is not None else UNKNOWN_CLIENT
    qt = wire.AAAA if qtype == "AAAA" else wire.A
    qname = to_wire(name.lower().rstrip("."))
    res = responder.resolve(qname, qt)  # type: ignore[attr-defined]
    out: dict[str, Any] = {
        "name": name,
        "type": qtype,
        "client": str(net if has_prefix else addr),
        "client_geo": _geo(info),
        "generation": server.generation,
        "health": {
            "store": bool(server.s.resolved_store_url()),
            "store_ok": server.health.ok,
            "down": len(server.health.down),
            "drains": len(server.health.drains),
            "slow": len(server.health.slow),
            "snapshot": server.health.have_snapshot,
            "source": server.health.source,
        },
        "rcode": wire.RCODE_NAMES.get(res.rcode, str(res.rcode)),
        "chain": [_rr_text(o) for o, _t in res.answer],
    }
    if res.steer is None:
        out["steered"] = False
        out["ecs_scope"] = 0 if has_prefix else None
        out["note"] = (
            "not a steered name: the answer does not depend on the client"
            if res.rcode != wire.REFUSED
            else "not in any of our zones (REFUSED)"
        )
        return out
    st = res.steer
    sr = responder.steer(res, info)  # type: ignore[attr-defined]
    pool = server.config.pools[st.pool]
    rows = explain_rows(sr.groups, sr.variants)
    ranked = {(r.mirror, str(r.address)): r for r in rows}
    mirrors = []
    for cand, why in sr.skipped:
        # an operator's drain and a scope rule are named as such (the rest: skipped)
        state = why.split(" ", 1)[0] if why.startswith(("drained ", "excluded:")) else "skipped"
        mirrors.append(
            {
                "mirror": cand.mirror,
                "address": str(cand.address),
                "state": state.rstrip(":"),
                "why": why,
                "weight": cand.weight,
                "geo": _geo(cand.geo),
            }
        )
    for cand, why in sr.waiting:
        state = "standby" if why.startswith("standby") else "fallback"
        mirrors.append(
            {"mirror": cand.mirror, "address": str(cand.address), "state": state, "why": why}
        )
    fam_attr = "ipv6" if qt == wire.AAAA else "ipv4"
    min_answers = st.min_answers if st.min_answers is not None else pool.min_answers
    best = sr.groups[0][0] if sr.groups and sr.groups[0] else None
    slow = responder.steering.slow  # type: ignore[attr-defined]
    for m in pool.mirrors:
        for a in getattr(m, fam_attr):
            key = (m.name, str(a))
            if key not in ranked:
                continue
            r = ranked[key]
            why = _why(r, best, pool, st.answers, min_answers)
            if r.slow:
                figures = slow.get((st.pool, m.name, str(a))) or "measured slow by the checker"
                why = f"slow: {figures}; " + (
                    f"answered, nothing faster is as near: {why}"
                    if r.answered
                    else "ranks one group behind"
                )
            mirrors.append(
                {
                    "mirror": m.name,
                    "address": str(a),
                    "state": "answered" if r.answered else "ranked",
                    "group": r.group,
                    "tier": r.tier,
                    "distance_km": _round(r.distance_km),
                    "weight": r.weight,
                    "slow": r.slow,
                    "answered_share": round(r.answered, 3),
                    "first_share": round(r.leading, 3),
                    "why": why,
                }
            )
    # best first: ranked rows in rank order, then fallback and skipped ones
    order = {
        "answered": 0,
        "ranked": 0,
        "standby": 1,
        "fallback": 1,
        "excluded": 2,
        "drained": 2,
        "skipped": 2,
    }
    mirrors.sort(key=lambda m: (order[m["state"]], m.get("group", 0), m.get("distance_km") or 0))
    out.update(
        {
            "steered": True,
            "pool": st.pool,
            "answers": st.answers,
            "min_answers": min_answers,
            "band": {"tie_km": pool.tie_km, "factor": pool.band_factor},
            "ttl": st.ttl,
            "case": sr.case,
            "mirrors": mirrors,
            "answer": [str(r.candidate.address) for r in sr.variants[0]] if sr.variants else [],
            "cycle": len(sr.variants),
            "variants": [[str(r.candidate.address) for r in v] for v in sr.variants],
            "ecs_scope": info.prefix
            if has_prefix and server.geodb is not None
            else (0 if has_prefix else None),
        }
    )
    if sr.rcode != wire.NOERROR:
        out["rcode"] = wire.RCODE_NAMES[sr.rcode]
    return out


def _why(r: ExplainRow, best: Ranked | None, pool: Pool, answers: int, min_answers: int) -> str:
    """Why a ranked address is (or is not) in the answers, in the ranking's words."""
    if r.answered:
        share = f"in {r.answered:.0%} of answers"
        if r.group == 0:
            return share if r.answered == 1 else f"{share} (the group shares the set by weight)"
        return f"{share}: padding from group {r.group + 1} (min_answers {min_answers})"
    if r.group == 0 or best is None:
        return f"over answers: the group's other members fill the {answers} slot(s)"
    if TIER_NAMES[best.tier] != r.tier:
        return f"farther group: tier {r.tier} (the best group is tier {TIER_NAMES[best.tier]})"
    if best.distance_km is not None and r.distance_km is not None:
        limit = band_limit(best.distance_km, pool.tie_km, pool.band_factor)
        return (
            f"outside the band: {r.distance_km:.0f} km > {limit:.0f} km "
            f"(max(nearest {best.distance_km:.0f} + {pool.tie_km:g}, "
            f"{pool.band_factor:g} x nearest))"
        )
    return f"farther group: group {r.group + 1} of tier {r.tier}"


def _geo(g: GeoInfo) -> dict[str, Any]:
    return {
        "asn": g.asn,
        "country": g.country,
        "continent": g.continent,
        "location": list(g.location) if g.location else None,
        "network_prefix": g.prefix,
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _rr_text(owner: bytes) -> str:
    from geodns.dns.names import from_wire

    return from_wire(owner)
