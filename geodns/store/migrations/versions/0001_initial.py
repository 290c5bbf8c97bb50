"""Initial health store schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from geodns.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mirror_addresses",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pool", sa.String(200), nullable=False),
        sa.Column("mirror", sa.String(200), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("family", sa.Integer(), nullable=False),
        sa.UniqueConstraint("pool", "mirror", "address", name="uq_mirror_address"),
    )
    op.create_index("ix_mirror_addresses_mirror", "mirror_addresses", ["mirror"])
    op.create_table(
        "probe_results",
        sa.Column("id", _BigId, primary_key=True),
        sa.Column(
            "address_id",
            sa.Integer(),
            sa.ForeignKey("mirror_addresses.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("unrecoverable", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("latency", sa.Float(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
    )
    op.create_index(
        "ix_probe_results_addr_kind", "probe_results", ["address_id", "region", "kind", "at"]
    )
    op.create_index("ix_probe_results_at", "probe_results", ["at"])
    op.create_table(
        "address_states",
        sa.Column(
            "address_id",
            sa.Integer(),
            sa.ForeignKey("mirror_addresses.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("region", sa.String(64), primary_key=True),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("checked_at", UTCDateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("warning", sa.Text(), nullable=True),
        sa.Column("kinds", sa.JSON(), nullable=False),
    )
    op.create_index("ix_address_states_up", "address_states", ["up"])
    op.create_table(
        "state_changes",
        sa.Column("id", _BigId, primary_key=True),
        sa.Column(
            "address_id",
            sa.Integer(),
            sa.ForeignKey("mirror_addresses.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_state_changes_addr_at", "state_changes", ["address_id", "at"])
    op.create_index("ix_state_changes_at", "state_changes", ["at"])
    op.create_table(
        "store_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    # The counter row exists from the start so the server's poll is one SELECT.
    op.bulk_insert(
        sa.table("store_meta", sa.column("key", sa.String()), sa.column("value", sa.BigInteger())),
        [{"key": "state_version", "value": 0}],
    )


def downgrade() -> None:
    op.drop_table("store_meta")
    op.drop_table("state_changes")
    op.drop_table("address_states")
    op.drop_table("probe_results")
    op.drop_table("mirror_addresses")
