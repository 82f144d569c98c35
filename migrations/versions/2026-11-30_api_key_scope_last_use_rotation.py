"""api key scope, last use, rotation

Revision ID: 7bd23ef3350d
Revises: 5b0c1f2d7a91
Create Date: 2026-11-30 19:19:48.879771+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7bd23ef3350d"
down_revision: str | None = "5b0c1f2d7a91"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Keys made before scopes could do everything: they stay admin. New keys name their scope.
    op.add_column("api_key", sa.Column("scope", sa.Text(), nullable=False, server_default="admin"))
    op.alter_column("api_key", "scope", server_default=None)
    op.create_check_constraint("scope", "api_key", "scope IN ('app', 'admin', 'test')")
    op.add_column("api_key", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_key", sa.Column("previous_key_hash", sa.LargeBinary(), nullable=True))
    op.add_column(
        "api_key",
        sa.Column("previous_key_expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_unique_constraint(
        op.f("uq_api_key_previous_key_hash"), "api_key", ["previous_key_hash"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("uq_api_key_previous_key_hash"), "api_key", type_="unique")
    op.drop_column("api_key", "previous_key_expires_at")
    op.drop_column("api_key", "previous_key_hash")
    op.drop_column("api_key", "last_used_at")
    op.drop_constraint("scope", "api_key", type_="check")
    op.drop_column("api_key", "scope")
