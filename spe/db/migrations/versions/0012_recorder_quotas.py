"""recorder quotas and read budgets kept in the database: workspace_quota_windows

One counter per (workspace, quota, window): airlock requests per window and bytes per UTC day,
the recorder's own, the read budget through the browser, and the day's alarm markers. Shared by
every airlock process and kept over restarts (they were in each process's memory).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workspace_quota_windows",
        sa.Column("workspace", sa.String(length=140), nullable=False),
        sa.Column("counter", sa.String(length=48), nullable=False),
        sa.Column("window_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "workspace", "counter", "window_start", name=op.f("pk_workspace_quota_windows")
        ),
    )


def downgrade() -> None:
    op.drop_table("workspace_quota_windows")
