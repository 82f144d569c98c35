"""SES feedback stored as data on the message's history

Revision ID: 3e7f0a5c1d24
Revises: 9c41d2e8b7a3
Create Date: 2026-11-30 21:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3e7f0a5c1d24"
down_revision: str | None = "9c41d2e8b7a3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("message_event", sa.Column("feedback", sa.Text(), nullable=True))
    # The history written before: the reputation watch matched these texts.
    op.execute(
        "UPDATE message_event SET feedback = 'hard_bounce' "
        "WHERE kind = 'bounce' AND detail LIKE 'bounce Permanent%'"
    )
    op.execute(
        "UPDATE message_event SET feedback = 'complaint' "
        "WHERE kind = 'complaint' AND detail NOT LIKE 'complaint not-spam%'"
    )


def downgrade() -> None:
    op.drop_column("message_event", "feedback")
