"""SQLAlchemy sessions, models and Alembic migrations.

SQLite (WAL) is the embedded default; PostgreSQL is used in production.
"""

from spe.db.session import DatabaseError, get_engine, readonly, reset_engine, transaction

__all__ = ["DatabaseError", "get_engine", "readonly", "reset_engine", "transaction"]
