"""members added through the data holder: pending memberships

A person added to an approved project waits in project_member_requests until a reviewer of the
project's data holder approves (they then get a project_members row) or refuses with a reason.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "project_member_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "role",
            sa.Enum("LEAD", "MEMBER", name="memberrole", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "APPROVED",
                "REFUSED",
                "WITHDRAWN",
                name="memberrequeststatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_project_member_requests_project_id_projects"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_project_member_requests_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_project_member_requests")),
    )
    with op.batch_alter_table("project_member_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_project_member_requests_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_project_member_requests_user_id"), ["user_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("project_member_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_project_member_requests_user_id"))
        batch_op.drop_index(batch_op.f("ix_project_member_requests_project_id"))
    op.drop_table("project_member_requests")
