"""Engines, sessions and migrations. The only module with backend-specific SQL (SQLite PRAGMAs,
PostgreSQL advisory locks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from catalens.errors import ConfigError, DatabaseBusyError, DatabaseError, DatabaseUnavailableError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
Sessions = sessionmaker[Session]


def create_db_engine(url: str, *, timeout_s: float = 5.0) -> Engine:
    """An engine with the per-connection settings the backend needs (SQLite: WAL, FKs, timeout;
    PostgreSQL: a connect timeout, connections checked before use so a restarted server is
    reconnected to, and an unreachable server raised as DatabaseUnavailableError)."""
    is_sqlite = url.startswith("sqlite")
    if is_sqlite and url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if is_sqlite:
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "handle_error", _typed_sqlite_errors)
        return engine
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ConfigError("a PostgreSQL database needs psycopg 3: pip install 'catalens[postgres]'") from exc
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=timeout_s,
                           connect_args={"connect_timeout": max(1, round(timeout_s))})
    event.listen(engine, "handle_error", _typed_server_errors)
    return engine


def _typed_server_errors(context: Any) -> None:
    """A lost or refused connection -> DatabaseUnavailableError (a 503 to retry), with one line saying where."""
    if not (context.is_disconnect or _is_connect_failure(context.original_exception)):
        return
    url = context.engine.url if context.engine is not None else None
    where = f"{url.host}:{url.port}/{url.database}" if url is not None else "the database"
    reason = str(context.original_exception).strip().splitlines()[0][:200] if context.original_exception else ""
    raise DatabaseUnavailableError(f"the database at {where} is unreachable ({reason}); retry shortly") \
        from context.sqlalchemy_exception


def _is_connect_failure(exc: BaseException | None) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError)


def serialize_appends(session: Session) -> None:
    """Make concurrent change-log appends commit in sequence order (PostgreSQL: a transaction-scoped
    advisory lock; SQLite serializes writers anyway). Else a reader could see seq 11 commit before
    seq 10 and skip 10 for good."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7412001)"))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _typed_sqlite_errors(context: Any) -> None:
    """SQLITE_BUSY / SQLITE_LOCKED (a lock held past busy_timeout) -> DatabaseBusyError: a 503 to retry."""
    orig = context.original_exception
    code = getattr(orig, "sqlite_errorcode", None)
    busy = (code & 0xFF) in (5, 6) if isinstance(code, int) else "database is locked" in str(orig)
    if busy:
        raise DatabaseBusyError(f"the database is busy (a write waited past its lock timeout): {orig}") \
            from context.sqlalchemy_exception


_LEFT_AS_IT_IS = "the file was left untouched (restore it from a backup, or build into a new --index-dir)"


def check_integrity(engine: Engine) -> None:
    """Refuse to run on a malformed SQLite file (never deleting it for the user) or an unreachable server."""
    if engine.dialect.name != "sqlite":
        with engine.connect() as conn:  # DatabaseUnavailableError, one line, when the server is not there
            conn.exec_driver_sql("SELECT 1")
        return
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql("PRAGMA quick_check").scalar()
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]  # one line, not SQLAlchemy's two
        raise DatabaseError(f"database {engine.url} cannot be opened: {reason}; {_LEFT_AS_IT_IS}") from exc
    if result != "ok":
        raise DatabaseError(f"database {engine.url} failed its integrity check: {str(result).splitlines()[0]}; "
                            f"{_LEFT_AS_IT_IS}")


def create_session_factory(engine: Engine) -> Sessions:
    return sessionmaker(engine, expire_on_commit=False)


def open_database(url: str, *, timeout_s: float = 5.0) -> tuple[Engine, Sessions]:
    """Engine + session factory, integrity-checked and upgraded to the newest schema."""
    engine = create_db_engine(url, timeout_s=timeout_s)
    check_integrity(engine)
    upgrade_database(url)
    return engine, create_session_factory(engine)


def refresh_statistics(sessions: Sessions) -> None:
    """Refresh the query planner's statistics after a bulk change: without them SQLite filters
    products through the low-selectivity `deleted` index instead of `category` / `brand`."""
    with sessions() as session:
        session.execute(text("ANALYZE"))  # the same statement on SQLite and PostgreSQL
        session.commit()


def alembic_config(url: str) -> Config:

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_database(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema with Alembic (the only way the schema changes)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
