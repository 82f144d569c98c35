"""support scope; the claim's lane of test-key mail

Revision ID: a3f1c7e9d2b4
Revises: 5e7d3b1a9c20
Create Date: 2026-12-05 13:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a3f1c7e9d2b4"
down_revision: str | None = "5e7d3b1a9c20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("scope", "api_key", type_="check")
    op.create_check_constraint("scope", "api_key", "scope IN ('app', 'admin', 'support', 'test')")
    op.create_index(
        "ix_message_due_test",
        "message",
        ["next_attempt_at"],
        postgresql_where=sa.text("test AND status IN ('queued', 'sending', 'scheduled')"),
    )


def downgrade() -> None:
    op.drop_index("ix_message_due_test", table_name="message")
    # Support keys cannot be kept under the old rule: they go.
    op.execute("DELETE FROM api_key WHERE scope = 'support'")
    op.drop_constraint("scope", "api_key", type_="check")
    op.create_check_constraint("scope", "api_key", "scope IN ('app', 'admin', 'test')")
