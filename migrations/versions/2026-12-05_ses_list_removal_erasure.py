"""ses_list_removal: an erased address waits here until SES's account suppression list lets
it go (SES could not be reached at the erasure)

Revision ID: 7a1c4e9d2b58
Revises: a3f1c7e9d2b4
Create Date: 2026-12-05 13:20:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7a1c4e9d2b58"
down_revision: str | None = "a3f1c7e9d2b4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ses_list_removal",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ses_list_removal")),
    )
    op.create_index(
        "ix_ses_list_removal_due", "ses_list_removal", ["next_attempt_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_ses_list_removal_due", table_name="ses_list_removal")
    op.drop_table("ses_list_removal")
