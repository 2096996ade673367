"""remote_jobs: every remote job a ledger job ever owned (one owner each, by primary key)

A job's `remote_id` holds only its latest attempt's remote job; reconciliation must know every
remote job the ledger owns (an earlier attempt's too) so that none is taken for a lost
submission's, and the key makes adopting one remote job for two ledger jobs impossible.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "remote_jobs",
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("remote_id", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("provider", "remote_id"),
    )
    op.create_index("ix_remote_jobs_job_id", "remote_jobs", ["job_id"], unique=False)
    # The remote jobs the ledger owns today (each job's latest) are owned from the start.
    op.execute(
        "INSERT INTO remote_jobs (provider, remote_id, job_id, at) "
        "SELECT provider, remote_id, min(id), max(updated_at) FROM jobs "
        "WHERE remote_id IS NOT NULL AND remote_id != '' GROUP BY provider, remote_id"
    )


def downgrade() -> None:
    op.drop_index("ix_remote_jobs_job_id", table_name="remote_jobs")
    op.drop_table("remote_jobs")
