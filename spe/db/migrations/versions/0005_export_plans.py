"""export outputs say who computed them (server plan, DP ledger, workspace) and a plan's hash

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 18:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("export_outputs", schema=None) as batch_op:
        # Everything filed before plans existed was computed in the workspace.
        batch_op.add_column(
            sa.Column(
                "computed_by", sa.String(length=16), nullable=False, server_default="workspace"
            )
        )
        batch_op.add_column(sa.Column("plan_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_export_outputs_plan_sha256"), ["plan_sha256"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("export_outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_export_outputs_plan_sha256"))
        batch_op.drop_column("plan_sha256")
        batch_op.drop_column("computed_by")
