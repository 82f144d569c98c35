"""retention at a year's scale: autovacuum after a day's delete, spent params by index

Revision ID: 7a1f3c5e9b24
Revises: 7a1f4c2e9b35
Create Date: 2026-12-05 13:30:00.000000+00:00

A day's delete is a 400th of a table that keeps 400 days: at PostgreSQL's default
autovacuum_vacuum_scale_factor (0.2) its space would be free for new mail only after 80 days of
deletes, and the tables would carry that much dead weight. At 0.002 autovacuum takes them about
once a day's delete, whatever the traffic (bench/year.py, bench/NOTES.md "A year of mail").

Retention's first statement (outbox.drop_spent_params) looked for link params left in the whole
message table every ten minutes: a scan of every mail kept. Only mails of the last days hold
params; a partial index holds just those.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7a1f3c5e9b24"
down_revision: str | None = "7a1f4c2e9b35"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("message", "message_event")


def upgrade() -> None:
    op.create_index(
        "ix_message_with_params",
        "message",
        ["id"],
        unique=False,
        postgresql_where=sa.text("params IS NOT NULL"),
    )
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0.002)")


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET (autovacuum_vacuum_scale_factor)")
    op.drop_index(
        "ix_message_with_params",
        table_name="message",
        postgresql_where=sa.text("params IS NOT NULL"),
    )
