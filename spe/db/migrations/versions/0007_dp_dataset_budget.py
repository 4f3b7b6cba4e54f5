"""the privacy budget belongs to the dataset: dp_dataset_budgets (total, allocated, spent)

Existing per-project budgets become allocations from their dataset's budget. The dataset's
total is the largest budget any one project had (what the policy gave each project, plus its
top-ups), or what all projects together already spent if that is more: the privacy loss
already incurred is counted, and the total never grows to the sum of the old per-project
budgets. When the allocations then add up to more than the total, the total binds (a query is
charged against both). The data holder can change the total afterwards (``spe dp total``).

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-20 10:00:00.000000
"""

import datetime as dt
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dp_dataset_budgets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("dataset_id", sa.Uuid(), nullable=False),
        sa.Column("total_micro", sa.BigInteger(), nullable=False),
        sa.Column("allocated_micro", sa.BigInteger(), nullable=False),
        sa.Column("spent_micro", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_dp_dataset_budgets_dataset_id_datasets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dp_dataset_budgets")),
        sa.UniqueConstraint("dataset_id", name=op.f("uq_dp_dataset_budgets_dataset_id")),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT dataset_id, MAX(total_micro), SUM(total_micro), SUM(spent_micro) "
            "FROM dp_budgets GROUP BY dataset_id"
        )
    ).fetchall()
    table = sa.table(
        "dp_dataset_budgets",
        sa.column("id", sa.Uuid()),
        sa.column("dataset_id", sa.Uuid()),
        sa.column("total_micro", sa.BigInteger()),
        sa.column("allocated_micro", sa.BigInteger()),
        sa.column("spent_micro", sa.BigInteger()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    now = dt.datetime.now(dt.UTC)
    for dataset_id, largest, allocated, spent in rows:
        dataset_key = dataset_id if isinstance(dataset_id, uuid.UUID) else uuid.UUID(dataset_id)
        connection.execute(
            table.insert().values(
                id=uuid.uuid4(),
                dataset_id=dataset_key,
                total_micro=max(int(largest), int(spent)),
                allocated_micro=int(allocated),
                spent_micro=int(spent),
                created_at=now,
                updated_at=now,
            )
        )


def downgrade() -> None:
    op.drop_table("dp_dataset_budgets")
