"""jobs: partial indexes for the look for jobs to stop (cancel requested, deadline passed)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 01:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

def upgrade() -> None:
    op.create_index(
        "ix_jobs_cancel_requested",
        "jobs",
        ["state"],
        sqlite_where=sa.text("cancel_requested = 1"),
        postgresql_where=sa.text("cancel_requested"),
    )
    op.create_index(
        "ix_jobs_deadline",
        "jobs",
        ["state", "deadline_at"],
        sqlite_where=sa.text("deadline_at IS NOT NULL"),
        postgresql_where=sa.text("deadline_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_deadline", table_name="jobs")
    op.drop_index("ix_jobs_cancel_requested", table_name="jobs")
