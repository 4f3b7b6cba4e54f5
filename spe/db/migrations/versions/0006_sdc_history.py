"""the cumulative disclosure audit: releases per holder, their cells, the compact history

Revision ID: 0006
Revises: 0008
Create Date: 2026-12-07 18:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0008"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sdc_releases",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("release_id", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("output_name", sa.String(length=500), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sdc_releases")),
        sa.UniqueConstraint(
            "holder",
            "release_id",
            "output_name",
            name=op.f("uq_sdc_releases_holder_release_id_output_name"),
        ),
    )
    with op.batch_alter_table("sdc_releases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sdc_releases_holder"), ["holder"], unique=False)
    op.create_table(
        "sdc_release_cells",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("release", sa.Uuid(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("space", sa.String(length=300), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["release"], ["sdc_releases.id"], name=op.f("fk_sdc_release_cells_release_sdc_releases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sdc_release_cells")),
        sa.UniqueConstraint(
            "holder", "space", "seq", name=op.f("uq_sdc_release_cells_holder_space_seq")
        ),
    )
    with op.batch_alter_table("sdc_release_cells", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sdc_release_cells_release"), ["release"], unique=False)
    op.create_table(
        "sdc_history_snapshots",
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("space", sa.String(length=300), nullable=False),
        sa.Column("n_releases", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("holder", "space", name=op.f("pk_sdc_history_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("sdc_history_snapshots")
    with op.batch_alter_table("sdc_release_cells", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sdc_release_cells_release"))
    op.drop_table("sdc_release_cells")
    with op.batch_alter_table("sdc_releases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sdc_releases_holder"))
    op.drop_table("sdc_releases")
