"""Which mirror addresses a steered name hands to a client.

Built once per (config, health snapshot, GeoIP generation): every enabled
mirror address becomes a `rank.Candidate` with its location resolved, split
by family and by role (ranked mirrors vs. the pool's fallback). `steer()` is
then a ranking over a handful of precomputed candidates, called only when the
responder has no cached answer for the client's GeoIP profile.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from geodns.dns import wire
from geodns.model import Config, Pool, Steered
from geodns.steering.geo import GeoDB, GeoInfo
from geodns.steering.rank import (
    TIER_NAMES,
    Candidate,
    Ranked,
    address_shares,
    answer_variants,
    mirror_geo,
    rank,
)

Key = tuple[str, str, str]  # (pool, mirror, address text) as in the store
_STAGES = ("nearest", "standby", "fallback")


@dataclass(frozen=True, slots=True)
class SteerResult:
    rcode: int  # NOERROR, or SERVFAIL when the pool says so
    variants: list[tuple[Ranked, ...]]  # cycled per query; empty → NODATA
    # "nearest" | "standby" | "fallback" | "failopen" | "servfail" | "nodata"
    case: str
    groups: list[tuple[Ranked, ...]]  # the ranking the variants come from, for explain
    skipped: list[tuple[Candidate, str]]  # candidates not considered, with why
    waiting: list[tuple[Candidate, str]] = field(default_factory=list)  # healthy, later stage


@dataclass(slots=True)
class _Family:
    ranked: list[Candidate]  # enabled, not fallback, healthy, weight > 0
    standby: list[Candidate]  # the same with weight 0
    fallback: list[Candidate]  # enabled fallback mirrors, healthy
    everyone: list[Candidate]  # every enabled address (fail-open)
    skipped: list[tuple[Candidate, str]]


_WAITING = {
    "standby": "standby (weight 0): answered only when no positive-weight address is healthy",
    "fallback": "fallback only: answered when no other mirror is healthy",
}


class Steering:
    def __init__(
        self,
        config: Config,
        geodb: GeoDB | None,
        down: Iterable[Key] = (),
        *,
        max_variants: int = 256,
    ) -> None:
        self.max_variants = max_variants
        down_set = frozenset(down)
        # per pool: the down addresses that concern it (to tell what a change touched)
        self.down_by_pool: dict[str, frozenset[Key]] = {
            name: frozenset(k for k in down_set if k[0] == name) for name in config.pools
        }
        self.pools: dict[str, dict[int, _Family]] = {
            name: {fam: _family(pool, fam, geodb, down_set) for fam in (4, 6)}
            for name, pool in config.pools.items()
        }
        self.config = config

    def unchanged_pools(self, old: Steering) -> set[str]:
        """Pools whose definition and health are the same as in `old` (the caller
        also checks that GeoIP data did not change)."""
        return {
            name
            for name, pool in self.config.pools.items()
            if old.config.pools.get(name) == pool
            and old.down_by_pool.get(name) == self.down_by_pool[name]
        }

    def steer(self, st: Steered, family: int, client: GeoInfo) -> SteerResult:
        fam = self.pools[st.pool][family]
        pool = self.config.pools[st.pool]
        if not fam.everyone:
            return SteerResult(wire.NOERROR, [], "nodata", [], fam.skipped)
        min_answers = st.min_answers if st.min_answers is not None else pool.min_answers

        def answer(case: str, cands: list[Candidate]) -> SteerResult:
            groups = rank(cands, client, tie_km=pool.tie_km, band_factor=pool.band_factor)
            variants = answer_variants(
                groups, st.answers, min_answers=min_answers, max_variants=self.max_variants
            )
            # healthy addresses of the later stages, for explain
            later = stages[[c for c, _ in stages].index(case) + 1 :] if case in _STAGES else []
            waiting = [(c, _WAITING[name]) for name, cs in later for c in cs]
            return SteerResult(wire.NOERROR, variants, case, groups, fam.skipped, waiting)

        # Stages: positive weights; standbys only when none of those is healthy
        # anywhere in the pool; then the pool's fallback mirrors.
        stages = [("nearest", fam.ranked), ("standby", fam.standby), ("fallback", fam.fallback)]
        for case, cands in stages:
            if cands:
                return answer(case, cands)
        if pool.on_empty == "servfail":
            return SteerResult(wire.SERVFAIL, [], "servfail", [], fam.skipped)
        # Fail open: a wrong answer beats none when the checker says all is down
        # (more often the checker's network is broken than every mirror at once).
        return answer("failopen", fam.everyone)


def _family(pool: Pool, family: int, geodb: GeoDB | None, down: frozenset[Key]) -> _Family:
    out = _Family([], [], [], [], [])
    fallback = set(pool.fallback)
    shares = address_shares(pool, family)
    for m in pool.mirrors:
        addrs = m.ipv4 if family == 4 else m.ipv6
        for a in addrs:
            geo = mirror_geo(m, a, geodb)
            cand = Candidate(pool.name, m.name, a, m.weight, geo, shares[m.name])
            if not m.enabled:
                out.skipped.append((cand, "disabled in configuration"))
                continue
            out.everyone.append(cand)
            if (pool.name, m.name, str(a)) in down:
                out.skipped.append((cand, "down (health checker)"))
            elif m.name in fallback:
                out.fallback.append(cand)
            elif cand.rank_weight > 0:
                out.ranked.append(cand)
            else:
                out.standby.append(cand)
    return out


def tier_name(r: Ranked) -> str:
    return TIER_NAMES[r.tier]
