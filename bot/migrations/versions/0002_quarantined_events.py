"""Quarantined webhook elements.

Revision ID: 0002_quarantined_events
Revises: 0001_initial
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_quarantined_events"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quarantined_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("phone_number_id", sa.String(64), nullable=True),
        sa.Column("field", sa.String(64), nullable=True),
        sa.Column("element", sa.String(16), nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("path", sa.String(256), nullable=False),
        sa.Column("wamid", sa.String(256), nullable=True),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("fingerprint", name="uq_quarantined_events_fingerprint"),
    )
    op.create_index("ix_quarantined_events_created_at", "quarantined_events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_quarantined_events_created_at", table_name="quarantined_events")
    op.drop_table("quarantined_events")
