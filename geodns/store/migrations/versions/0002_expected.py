"""Expected state published by a leader (issue 17): expected_pools, expected_objects.

Self-contained: it creates only its own two tables, so it can follow any other
revision (re-pointing `down_revision` is a one-line change).

Revision ID: 0002_expected
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from geodns.store.schema import UTCDateTime

revision = "0002_expected"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "expected_pools",
        sa.Column("pool", sa.String(200), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.Column("objects", sa.BigInteger(), nullable=False),
        sa.Column("dirs", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("gone", sa.BigInteger(), nullable=False),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
    )
    op.create_table(
        "expected_objects",
        sa.Column("pool", sa.String(200), primary_key=True),
        sa.Column("path", sa.Text(), primary_key=True),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("first_seen", UTCDateTime(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("gone_at", UTCDateTime(), nullable=True),
        sqlite_with_rowid=False,  # SQLite: the key is the table, no second B-tree
    )
    # "changes since version V" of one pool: a range scan
    op.create_index("ix_expected_objects_version", "expected_objects", ["pool", "version"])


def downgrade() -> None:
    op.drop_index("ix_expected_objects_version", table_name="expected_objects")
    op.drop_table("expected_objects")
    op.drop_table("expected_pools")
