"""Alembic environment: runs on the connection SPE hands over (never reads alembic.ini)."""

from alembic import context

from spe.db.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - SPE always passes a connection
    raise RuntimeError("run migrations through `spe db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
