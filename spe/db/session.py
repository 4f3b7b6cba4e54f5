"""Engines and transactions: one place that knows how SPE talks to its database.

SQLite runs in WAL mode and every writing transaction starts with BEGIN IMMEDIATE, so
concurrent writers queue on the write lock instead of failing half-way. The schema revision is
checked once per engine: an old or missing schema is an error that says to run
``spe db upgrade``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from spe.config import Settings, get_settings, mask_url
from spe.errors import SPEError


class DatabaseError(SPEError):
    """The database cannot be used as it is; the message says what to do."""

    exit_code = 5


class SPESession(Session):
    """The session class every SPE transaction uses; the audit hooks are installed on it."""


_guard_installed = False


def _install_audit_guard() -> None:
    """Install the audit guard on SPESession (once; imported late to avoid an import cycle)."""
    global _guard_installed
    if not _guard_installed:
        from spe.audit.log import install

        install(SPESession)
        _guard_installed = True


_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[SPESession]] = {}
_checked: set[str] = set()


def _configure_sqlite(engine: Engine, settings: Settings) -> None:
    busy_ms = int(settings.db_busy_timeout_seconds * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("spe_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_spe_engine(settings: Settings, **kwargs: Any) -> Engine:
    """A new engine for the configured database (no schema check)."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": settings.db_busy_timeout_seconds, "check_same_thread": False},
            **kwargs,
        )
        _configure_sqlite(engine, settings)
    else:
        engine = create_engine(url, pool_pre_ping=True, **kwargs)
    from spe.audit.log import install_engine

    install_engine(engine)
    return engine


def describe_operational_error(error: Exception, url: str) -> str:
    orig = getattr(error, "orig", None) or error
    reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return (
        f"Cannot use the database at {mask_url(url)} ({reason}); check SPE_DATABASE_URL "
        "and that the database server is running."
    )


def get_engine(check_schema: bool = True) -> Engine:
    """The process-wide engine for the configured database."""
    settings = get_settings()
    key = settings.database_url
    with _lock:
        _install_audit_guard()
        engine = _engines.get(key)
        if engine is None:
            engine = create_spe_engine(settings)
            _engines[key] = engine
            _makers[key] = sessionmaker(engine, class_=SPESession, expire_on_commit=False)
    if check_schema and key not in _checked:
        from spe.db.migrate import check_schema_current

        check_schema_current(engine)
        _checked.add(key)
    return engine


def reset_engine() -> None:
    """Dispose of cached engines (tests switch databases; forked processes must not share)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _makers.clear()
        _checked.clear()


def session_maker() -> sessionmaker[SPESession]:
    get_engine()
    return _makers[get_settings().database_url]


@contextlib.contextmanager
def transaction() -> Iterator[SPESession]:
    """One writing transaction: everything in it, audit events included, commits or none does."""
    maker = session_maker()
    try:
        with maker() as session, session.begin():
            yield session
    except (exc.OperationalError, exc.InterfaceError) as error:
        raise DatabaseError(
            describe_operational_error(error, get_settings().database_url)
        ) from None


@contextlib.contextmanager
def readonly() -> Iterator[SPESession]:
    """A reading transaction (on SQLite it does not take the write lock)."""
    engine = get_engine()
    try:
        with (
            SPESession(bind=engine.execution_options(spe_readonly=True)) as session,
            session.begin(),
        ):
            session.info["spe_readonly"] = True
            yield session
    except (exc.OperationalError, exc.InterfaceError) as error:
        raise DatabaseError(
            describe_operational_error(error, get_settings().database_url)
        ) from None


def ping(engine: Engine) -> None:
    """Raise DatabaseError unless the database answers."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (exc.OperationalError, exc.InterfaceError, exc.ArgumentError) as error:
        raise DatabaseError(describe_operational_error(error, str(engine.url))) from None
