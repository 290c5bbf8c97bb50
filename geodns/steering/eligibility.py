"""Which mirror addresses a client may be given at all, before ranking.

Two operator controls narrow the candidates (README "Scope and drains"):

- **Scope** (pool YAML, per mirror): `only: asn | country | continent` answers
  the mirror only to clients of its own ASN, country or continent;
  `also_countries` makes clients in those countries rank it in the country
  tier, as if it stood there (and, for `only`, counts them as its own);
  `exclude_countries` never answers it there. A client field that GeoIP does
  not know matches nothing, as in ranking. Scope depends only on the client's
  (asn, country, continent), all part of the answer cache's profile key, so
  cached rotations stay right.
- **Drains** (the store, `checker drain`): a drained address is never
  answered, not even when the pool fails open; it is not a health verdict,
  so it is kept apart from the down-set. A drain changes the health snapshot,
  and answers are rebuilt as for any health change.

Plain functions over plain data; the per-query path never calls them (they
run when a client profile's ranking is built).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from geodns.model import Config, Mirror
from geodns.steering.geo import GeoInfo
from geodns.steering.rank import Candidate

Key = tuple[str, str, str]  # (pool, mirror, address text) as in the store


# --------------------------------------------------------------------------- scope


def scope_exclusion(mirror: Mirror, geo: GeoInfo, client: GeoInfo) -> str | None:
    """Why `mirror` (located at `geo`) is never answered to `client`, or None."""
    cc = client.country
    if cc is not None and cc in mirror.exclude_countries:
        return f"excluded: exclude_countries (client {cc})"
    also = mirror.also_countries
    if mirror.only == "asn":
        if client.asn is None or geo.asn is None or client.asn != geo.asn:
            return f"excluded: only asn (mirror {_as(geo.asn)}, client {_as(client.asn)})"
    elif mirror.only == "country":
        if cc is None or (cc != geo.country and cc not in also):
            return (
                f"excluded: only country (mirror {_where(geo.country, also)}, client {cc or '?'})"
            )
    elif mirror.only == "continent":
        here = client.continent is not None and client.continent == geo.continent
        if not here and (cc is None or cc not in also):
            return (
                f"excluded: only continent (mirror {_where(geo.continent, also)}, "
                f"client {client.continent or '?'})"
            )
    return None


def _as(asn: int | None) -> str:
    return f"AS{asn}" if asn is not None else "AS?"


def _where(code: str | None, also: Sequence[str]) -> str:
    return (code or "?") + (f" +{'+'.join(also)}" if also else "")


def as_if_there(cand: Candidate, also: Sequence[str], client: GeoInfo) -> Candidate:
    """`also_countries`: the candidate placed in the client's country (and
    continent) for ranking; its ASN and coordinates stay its own, so distance
    inside the country tier is still real."""
    cc = client.country
    if cc is None or cc not in also or cand.geo.country == cc:
        return cand
    geo = replace(cand.geo, country=cc, continent=client.continent or cand.geo.continent)
    return replace(cand, geo=geo)


def for_client(
    candidates: Iterable[Candidate], scoped: Mapping[str, Mirror], client: GeoInfo
) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """(the candidates `client` may get, ready to rank; those excluded, with why).

    `scoped`: mirror name → Mirror, only for mirrors with scope keys (the rest
    pass through untouched)."""
    kept: list[Candidate] = []
    excluded: list[tuple[Candidate, str]] = []
    for c in candidates:
        m = scoped.get(c.mirror)
        if m is None:
            kept.append(c)
            continue
        why = scope_exclusion(m, c.geo, client)
        if why is not None:
            excluded.append((c, why))
        else:
            kept.append(as_if_there(c, m.also_countries, client) if m.also_countries else c)
    return kept, excluded


# --------------------------------------------------------------------------- drains


class DrainLike(Protocol):
    """What a drain is to steering (`geodns.store.Drain` is one)."""

    @property
    def pool(self) -> str: ...
    @property
    def mirror(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def who(self) -> str: ...
    @property
    def until(self) -> datetime | None: ...

    def active(self, now: datetime) -> bool: ...
    def covers(self, pool: str, mirror: str, address: str) -> bool: ...


def drain_words(d: DrainLike) -> str:
    """`drained until 2026-12-01 14:00:00Z (kernel upgrade; by alice)`: explain's text."""
    until = d.until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if d.until else None
    head = f"drained until {until}" if until else "drained until undrained"
    return f"{head} ({d.reason}; by {d.who})"


def drained_keys(
    config: Config, drains: Iterable[DrainLike], now: datetime | None = None
) -> dict[Key, str]:
    """Every configured (pool, mirror, address) a drain in force at `now` holds,
    with the words explain shows. The most specific drain speaks (an address's
    own drain before its mirror's)."""
    now = now or datetime.now(UTC)
    live = [d for d in drains if d.active(now)]
    if not live:
        return {}
    names = {d.mirror for d in live}
    out: dict[Key, str] = {}
    for pool in config.pools.values():
        for m in pool.mirrors:
            if m.name not in names:
                continue
            for a in m.addresses():
                text = str(a)
                hits = [d for d in live if d.covers(pool.name, m.name, text)]
                if hits:
                    best = max(hits, key=lambda d: (bool(d.address), bool(d.pool)))
                    out[(pool.name, m.name, text)] = drain_words(best)
    return out


def next_end(drains: Iterable[DrainLike]) -> datetime | None:
    """When the soonest timed drain ends: the server re-reads then, so a drain
    runs out without anyone writing to the store."""
    ends = [d.until for d in drains if d.until is not None]
    return min(ends) if ends else None
