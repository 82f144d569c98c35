"""send_pacer.throttled_at: SES throttled a call, and every replica books at half the rate
until SES takes mail again

Revision ID: 7a2f4c8e1b35
Revises: 7a1c4e9d2b58
Create Date: 2026-12-05 13:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7a2f4c8e1b35"
down_revision: str | None = "7a1c4e9d2b58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "send_pacer", sa.Column("throttled_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("send_pacer", "throttled_at")
