"""claim lanes by category, and the send pause on the pacer row

Revision ID: 5b0c1f2d7a91
Revises: 1320d090267d
Create Date: 2026-11-30 19:55:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b0c1f2d7a91"
down_revision: str | None = "1320d090267d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_message_due_by_category",
        "message",
        ["category", "next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'sending')"),
    )
    op.add_column("send_pacer", sa.Column("pause_reason", sa.Text(), nullable=True))
    op.add_column(
        "send_pacer", sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True)
    )
    # The gate every claim goes through (app/emails/outbox.py); the worker makes it too.
    op.execute("INSERT INTO send_pacer (id, next_slot_at) VALUES (1, now()) ON CONFLICT DO NOTHING")


def downgrade() -> None:
    op.drop_column("send_pacer", "paused_until")
    op.drop_column("send_pacer", "pause_reason")
    op.drop_index(
        "ix_message_due_by_category",
        table_name="message",
        postgresql_where=sa.text("status IN ('queued', 'sending')"),
    )
