"""send times, cancel, batches: message.send_at, the claim's indexes take scheduled mail,
and the stored answer of a batch sent with an Idempotency-Key

Revision ID: 5e7d3b1a9c20
Revises: 9c4e2a7b1d06
Create Date: 2026-12-05 09:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "5e7d3b1a9c20"
down_revision: str | None = "9c4e2a7b1d06"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = "status IN ('queued', 'sending')"
_AFTER = "status IN ('queued', 'sending', 'scheduled')"


def _due_indexes(where: str) -> None:
    op.drop_index("ix_message_due", table_name="message")
    op.drop_index("ix_message_due_by_category", table_name="message")
    op.create_index(
        "ix_message_due", "message", ["next_attempt_at"], postgresql_where=sa.text(where)
    )
    op.create_index(
        "ix_message_due_by_category",
        "message",
        ["category", "next_attempt_at"],
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    op.add_column("message", sa.Column("send_at", sa.DateTime(timezone=True), nullable=True))
    _due_indexes(_AFTER)
    op.create_table(
        "send_batch",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("results", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_key.id"], name=op.f("fk_send_batch_api_key_id_api_key")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_send_batch")),
        sa.UniqueConstraint(
            "api_key_id", "idempotency_key", name=op.f("uq_send_batch_api_key_id_idempotency_key")
        ),
    )


def downgrade() -> None:
    op.drop_table("send_batch")
    _due_indexes(_BEFORE)
    op.drop_column("message", "send_at")
