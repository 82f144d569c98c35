"""a test key's mail: rendered and recorded, never sent

Revision ID: 9c41d2e8b7a3
Revises: 7bd23ef3350d
Create Date: 2026-11-30 20:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9c41d2e8b7a3"
down_revision: str | None = "7bd23ef3350d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "message", sa.Column("test", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )


def downgrade() -> None:
    op.drop_column("message", "test")
