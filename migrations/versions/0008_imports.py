"""imports read streaming (issue 17): byte ranges of chunks on job_parts; import_progress

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PART_COLUMNS = ("byte_start", "byte_end", "first_line", "last_line")


def upgrade() -> None:
    with op.batch_alter_table("job_parts", schema=None) as batch_op:
        for name in PART_COLUMNS:
            batch_op.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
    op.create_table(
        "import_progress",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("rows_validated", sa.BigInteger(), nullable=False),
        sa.Column("rows_rejected", sa.BigInteger(), nullable=False),
        sa.Column("rejects_path", sa.Text(), nullable=True),
        sa.Column("rejects", sa.Text(), nullable=True),
        sa.Column("source_size", sa.BigInteger(), nullable=True),
        sa.Column("source_mtime_ns", sa.BigInteger(), nullable=True),
        sa.Column("rate", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("import_progress")
    with op.batch_alter_table("job_parts", schema=None) as batch_op:
        for name in PART_COLUMNS:
            batch_op.drop_column(name)
