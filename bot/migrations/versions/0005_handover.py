"""Handover to a person: a conversation can be held by a person until a time.

``conversations`` gets ``held_until`` (``NULL`` or past: the bot answers), when and why the
hold started, who holds it, how many messages came while held, when a person last released it
and the fallback answers in a row. The operator counts held conversations with
``SELECT count(*) FROM conversations WHERE held_until > now()`` (indexed).

Revision ID: 0005_handover
Revises: 0004_inbox
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_handover"
down_revision: str | None = "0004_inbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("held_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("held_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("held_reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("held_by", sa.String(256), nullable=True))
        batch.add_column(
            sa.Column("held_messages", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("consecutive_fallbacks", sa.Integer(), nullable=False, server_default="0")
        )
        batch.create_index("ix_conversations_held_until", ["held_until"])


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index("ix_conversations_held_until")
        for column in ("consecutive_fallbacks", "released_at", "held_messages", "held_by",
                       "held_reason", "held_since", "held_until"):
            batch.drop_column(column)
