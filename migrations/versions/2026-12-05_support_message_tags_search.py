"""support desk: message.tags, and the indexes that find a person's mail (by recipient or
user id, newest first) and mail by tag

Revision ID: 7a1f4c2e9b35
Revises: 7a2f4c8e1b35
Create Date: 2026-12-05 13:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "7a1f4c2e9b35"
down_revision: str | None = "7a2f4c8e1b35"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "message",
        sa.Column(
            "tags",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.create_index("ix_message_recipient_created", "message", ["recipient_id", "created_at", "id"])
    op.create_index(
        "ix_message_user_created",
        "message",
        ["user_id", "created_at", "id"],
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
    op.create_index(
        "ix_message_tags",
        "message",
        ["tags"],
        postgresql_using="gin",
        postgresql_ops={"tags": "jsonb_path_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_message_tags", table_name="message")
    op.drop_index("ix_message_user_created", table_name="message")
    op.drop_index("ix_message_recipient_created", table_name="message")
    op.drop_column("message", "tags")
