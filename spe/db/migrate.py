"""Alembic migrations run from inside SPE (``spe db upgrade``) and the schema check.

The migration scripts live in ``spe/db/migrations``; there is no alembic.ini for users to keep.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, exc

from spe.config import get_settings, mask_url
from spe.db.session import DatabaseError, describe_operational_error

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", get_settings().database_url.replace("%", "%%"))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except (exc.OperationalError, exc.InterfaceError) as error:
        raise DatabaseError(describe_operational_error(error, str(engine.url))) from None


def check_schema_current(engine: Engine) -> None:
    """Raise DatabaseError unless the database is at the migration this SPE needs."""
    current = current_revision(engine)
    head = head_revision()
    where = mask_url(str(engine.url.render_as_string(hide_password=False)))
    if current is None:
        raise DatabaseError(
            f"The database at {where} has no SPE schema yet; run `spe db upgrade` first."
        )
    if current != head:
        raise DatabaseError(
            f"The database is at migration {current} but this SPE needs {head}; "
            "run `spe db upgrade`."
        )


def upgrade(revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``revision``; returns (before, after)."""
    from spe.db.session import get_engine, ping

    engine = get_engine(check_schema=False)
    ping(engine)
    before = current_revision(engine)
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return before, current_revision(engine) or ""


def downgrade(revision: str) -> None:
    from spe.db.session import get_engine

    engine = get_engine(check_schema=False)
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
