"""Which mirror addresses a steered name hands to a client.

Built once per (config, health snapshot, GeoIP generation): every enabled
mirror address becomes a `rank.Candidate` with its location resolved, split
by family and by role (ranked mirrors vs. the pool's fallback). `steer()` is
then a ranking over a handful of precomputed candidates, called only when the
responder has no cached answer for the client's GeoIP profile.

Drained addresses (operator drains from the health snapshot) are left out
here, for every client and every stage, fail-open included; mirrors with
scope keys are narrowed per client in `steer()` (`eligibility`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from geodns.dns import wire
from geodns.model import Config, Mirror, Pool, Steered
from geodns.steering.eligibility import for_client
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
        drained: Mapping[Key, str] | None = None,
        slow: Mapping[Key, str] | Iterable[Key] = (),
        max_variants: int = 256,
    ) -> None:
        """`drained`: address → the words explain shows (eligibility.drained_keys).
        `slow`: addresses that serve slowly (ranked one group behind), with the
        figures in words when given as a mapping (shown by explain)."""
        self.max_variants = max_variants
        down_set = frozenset(down)
        drained = drained or {}
        self.slow: dict[Key, str] = (
            dict(slow) if isinstance(slow, Mapping) else dict.fromkeys(slow, "")
        )
        slow_set = frozenset(self.slow)
        # per pool: the down, drained and slow addresses that concern it (to tell
        # what a change touched)
        self.down_by_pool: dict[
            str, tuple[frozenset[Key], frozenset[tuple[Key, str]], frozenset[Key]]
        ] = {
            name: (
                frozenset(k for k in down_set if k[0] == name),
                frozenset(kv for kv in drained.items() if kv[0][0] == name),
                frozenset(k for k in slow_set if k[0] == name),
            )
            for name in config.pools
        }
        self.pools: dict[str, dict[int, _Family]] = {
            name: {fam: _family(pool, fam, geodb, down_set, drained, slow_set) for fam in (4, 6)}
            for name, pool in config.pools.items()
        }
        # per pool: its mirrors with scope keys, by name (most pools have none)
        self.scoped: dict[str, dict[str, Mirror]] = {
            name: {m.name: m for m in pool.mirrors if m.scoped}
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
        if self.scoped[st.pool]:
            fam = _for_client(fam, self.scoped[st.pool], client)
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


def _for_client(fam: _Family, scoped: Mapping[str, Mirror], client: GeoInfo) -> _Family:
    """The family as `client` sees it: scope exclusions join the skipped ones."""
    everyone, excluded = for_client(fam.everyone, scoped, client)
    out = _Family(
        for_client(fam.ranked, scoped, client)[0],
        for_client(fam.standby, scoped, client)[0],
        for_client(fam.fallback, scoped, client)[0],
        everyone,
        list(fam.skipped),
    )
    said = {c for c, _ in fam.skipped}  # a down address needs one reason, not two
    out.skipped += [(c, why) for c, why in excluded if c not in said]
    return out


def _family(
    pool: Pool,
    family: int,
    geodb: GeoDB | None,
    down: frozenset[Key],
    drained: Mapping[Key, str],
    slow: frozenset[Key] = frozenset(),
) -> _Family:
    out = _Family([], [], [], [], [])
    fallback = set(pool.fallback)
    shares = address_shares(pool, family)
    for m in pool.mirrors:
        addrs = m.ipv4 if family == 4 else m.ipv6
        for a in addrs:
            geo = mirror_geo(m, a, geodb)
            key = (pool.name, m.name, str(a))
            cand = Candidate(pool.name, m.name, a, m.weight, geo, shares[m.name], key in slow)
            if not m.enabled:
                out.skipped.append((cand, "disabled in configuration"))
                continue
            drain = drained.get((pool.name, m.name, str(a)))
            if drain is not None:  # never answered, not even when failing open
                out.skipped.append((cand, drain))
                continue
            out.everyone.append(cand)
            if key in down:
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
