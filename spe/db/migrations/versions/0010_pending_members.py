"""members added through the data holder: pending memberships (placeholder kept in the chain; filled in by the work that needs it)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 21:00:00.000000
"""

from collections.abc import Sequence

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
