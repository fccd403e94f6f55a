"""The inbox: what the web tier received and the worker has not finished with.

Messages and echoes are stored here by the web tier and the Celery queue carries only their
wamid, so Redis (and its append-only file) never holds a message's text. A row goes when its
task is done, and with the retention purge at the latest.

Revision ID: 0004_inbox
Revises: 0003_user_identities
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_inbox"
down_revision: str | None = "0003_user_identities"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("wamid", sa.String(256), primary_key=True),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_inbox_created_at", "inbox", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_inbox_created_at", table_name="inbox")
    op.drop_table("inbox")
