"""One person, one conversation: user identities (phone number, BSUID, parent BSUID).

``conversations.wa_id`` widens from 64 to 256 characters (a BSUID may need up to 256) and is no
longer unique: who a user is lives in the new ``user_identities`` table, one row per name Meta
gives them, unique per agent phone number. Every existing conversation keeps its id, messages
and history, and gets the identity its ``wa_id`` held (a phone number when it is digits, else a
BSUID).

Revision ID: 0003_user_identities
Revises: 0002_quarantined_events
Create Date: 2026-12-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_user_identities"
down_revision: str | None = "0002_quarantined_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.alter_column(
            "wa_id", existing_type=sa.String(64), type_=sa.String(256), existing_nullable=False
        )
        batch.drop_constraint("uq_conversations_phone_wa", type_="unique")
        batch.create_index("ix_conversations_phone_wa", ["phone_number_id", "wa_id"])
    op.create_table(
        "user_identities",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey(
                "conversations.id", ondelete="CASCADE", name="fk_user_identities_conversation_id"
            ),
            nullable=False,
        ),
        sa.Column("phone_number_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "phone_number_id", "kind", "value", name="uq_user_identities_value"
        ),
    )
    op.create_index("ix_user_identities_conversation", "user_identities", ["conversation_id"])

    # Existing conversations keep their user: digits are a phone number, anything else a BSUID.
    is_phone = (
        "c.wa_id ~ '^[+]?[0-9]+$'"
        if op.get_bind().dialect.name == "postgresql"
        else "c.wa_id NOT GLOB '*[^0-9+]*'"
    )
    op.execute(
        "INSERT INTO user_identities "
        "(conversation_id, phone_number_id, kind, value, created_at, updated_at) "
        f"SELECT c.id, c.phone_number_id, CASE WHEN {is_phone} THEN 'phone' ELSE 'user_id' END, "
        "c.wa_id, c.created_at, c.updated_at FROM conversations c WHERE c.wa_id <> ''"
    )


def downgrade() -> None:
    op.drop_index("ix_user_identities_conversation", table_name="user_identities")
    op.drop_table("user_identities")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index("ix_conversations_phone_wa")
        batch.create_unique_constraint("uq_conversations_phone_wa", ["phone_number_id", "wa_id"])
        batch.alter_column(
            "wa_id", existing_type=sa.String(256), type_=sa.String(64), existing_nullable=False
        )
