"""recorder quotas and read budgets kept in the database (placeholder kept in the chain; filled in by the work that needs it)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 21:00:00.000000
"""

from collections.abc import Sequence

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
