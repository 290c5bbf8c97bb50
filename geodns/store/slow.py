"""The slow read of the server's health poll: which addresses serve but slowly.

An address is slow when at least `quorum` of the voting regions call it slow
*or worse* (down counts as a slow vote: with quorum 2, one region seeing it
down and another seeing it slow make it slow, not fast), and at least one of
them measured it slow. Down wins over slow: the server skips down addresses
before it looks at speed. The figures shown are one slow region's (the
greatest text, for a stable choice).

The columns come with revision `SLOW_REVISION`; a DNS node upgraded before
the checker (which migrates) reads an older store as "nothing slow" instead
of failing every poll, as with the drains.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection

from geodns.store.schema import AddressRow, AddressStateRow

SLOW_REVISION = 4  # migrations/versions/0004_slow.py: keep the number in step


def has_slow_columns(revision: str | None) -> bool:
    number = (revision or "").split("_", 1)[0]
    return number.isdigit() and int(number) >= SLOW_REVISION


def slow_addresses(
    conn: Connection, regions: list[str] | None, quorum: int
) -> dict[tuple[str, str, str], str]:
    """(pool, mirror, address) → the figures in words; `regions` None: all vote."""
    st = AddressStateRow
    voting: Any = st.region.in_(regions) if regions is not None else None
    slow_row: Any = st.slow.is_(True) if voting is None else (st.slow.is_(True) & voting)
    votes: Any = func.count() if voting is None else func.sum(case((voting, 1), else_=0))
    stmt = (
        select(
            AddressRow.pool,
            AddressRow.mirror,
            AddressRow.address,
            func.max(case((slow_row, st.slow_reason), else_="")),
        )
        .join(st, st.address_id == AddressRow.id)
        .where(st.slow.is_(True) | st.up.is_(False))  # every row left is a "slow or worse" vote
        .group_by(AddressRow.pool, AddressRow.mirror, AddressRow.address)
        .having((votes >= quorum) & (func.max(case((slow_row, 1), else_=0)) == 1))
    )
    return {(r[0], r[1], r[2]): str(r[3] or "") for r in conn.execute(stmt).all()}
