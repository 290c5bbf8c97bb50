"""Operator drains and their history.

Revision ID: 0003_drains
Revises: 0002_expected
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from geodns.store.schema import UTCDateTime

revision = "0003_drains"
down_revision = "0002_expected"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # New tables only: existing rows are untouched, and a 0001 reader (an older
    # DNS node during a rolling upgrade) keeps working beside them.
    op.create_table(
        "drains",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pool", sa.String(200), nullable=False),
        sa.Column("mirror", sa.String(200), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("until", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("pool", "mirror", "address", name="uq_drain"),
    )
    op.create_table(
        "drain_events",
        sa.Column("id", _BigId, primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("pool", sa.String(200), nullable=False),
        sa.Column("mirror", sa.String(200), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("until", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_drain_events_mirror_at", "drain_events", ["mirror", "at"])
    op.create_index("ix_drain_events_at", "drain_events", ["at"])


def downgrade() -> None:
    op.drop_table("drain_events")
    op.drop_table("drains")
