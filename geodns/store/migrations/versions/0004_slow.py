"""Slow mirrors (issue 18): `address_states.slow` and `slow_reason`,
`state_changes.slow`.

It only adds columns (with server defaults, so existing rows read as "not
slow"), nothing else depends on it: written after 0001 and re-pointed after
0003_drains when rebased onto the branches merged before it.

Revision ID: 0004_slow
Revises: 0003_drains
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_slow"
down_revision = "0003_drains"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("address_states") as batch:
        batch.add_column(sa.Column("slow", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("slow_reason", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("state_changes") as batch:
        batch.add_column(sa.Column("slow", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("state_changes") as batch:
        batch.drop_column("slow")
    with op.batch_alter_table("address_states") as batch:
        batch.drop_column("slow_reason")
        batch.drop_column("slow")
