"""the p % rule of the cumulative audit: released values per person, sealed

sdc_release_values keeps what each person contributed to a release's sum cells (server-computed
outputs), sdc_value_maps each person's released value per holder and sum space; both sealed
under the platform key.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sdc_release_values",
        sa.Column("cells", sa.Uuid(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cells"],
            ["sdc_release_cells.id"],
            name=op.f("fk_sdc_release_values_cells_sdc_release_cells"),
        ),
        sa.PrimaryKeyConstraint("cells", name=op.f("pk_sdc_release_values")),
    )
    op.create_table(
        "sdc_value_maps",
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("space", sa.String(length=300), nullable=False),
        sa.Column("n_releases", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("holder", "space", name=op.f("pk_sdc_value_maps")),
    )


def downgrade() -> None:
    op.drop_table("sdc_value_maps")
    op.drop_table("sdc_release_values")
