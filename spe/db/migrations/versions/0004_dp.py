"""differentially private queries: the budget ledger and the queries

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 02:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dp_budgets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("dataset_id", sa.Uuid(), nullable=False),
        sa.Column("total_micro", sa.BigInteger(), nullable=False),
        sa.Column("spent_micro", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_dp_budgets_dataset_id_datasets")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_dp_budgets_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dp_budgets")),
        sa.UniqueConstraint(
            "project_id", "dataset_id", name=op.f("uq_dp_budgets_project_id_dataset_id")
        ),
    )
    with op.batch_alter_table("dp_budgets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dp_budgets_project_id"), ["project_id"], unique=False)
    op.create_table(
        "dp_queries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("dataset_id", sa.Uuid(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("epsilon_micro", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_dp_queries_dataset_id_datasets")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_dp_queries_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dp_queries")),
    )
    with op.batch_alter_table("dp_queries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dp_queries_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_dp_queries_username"), ["username"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dp_queries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dp_queries_username"))
        batch_op.drop_index(batch_op.f("ix_dp_queries_project_id"))
    op.drop_table("dp_queries")
    with op.batch_alter_table("dp_budgets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dp_budgets_project_id"))
    op.drop_table("dp_budgets")
