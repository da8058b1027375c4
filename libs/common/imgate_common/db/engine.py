"""Async engine and session factory for SQLite (local) and PostgreSQL (production)."""

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.telemetry import instrument_engine


def normalize_url(url: str) -> str:
    """Accept plain `sqlite:///` and `postgresql://` URLs and pick the async drivers."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Several processes share the file: WAL lets readers run beside the writer, and the busy
    # timeout makes a writer wait for the lock instead of failing at once. NORMAL sync is safe
    # with WAL (a power cut may lose the last commits, never corrupt the file) and spares an
    # fsync per commit.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # The driver's own BEGIN is deferred; `_begin_immediate` issues ours instead.
    dbapi_conn.isolation_level = None


def _begin_immediate(conn: Connection) -> None:
    # A deferred transaction that read first cannot become a writer once another process has
    # committed since its read: SQLite answers `database is locked` at once, whatever the busy
    # timeout. Taking the write lock at BEGIN makes every transaction wait its turn instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, *, pre_ping: bool = True) -> AsyncEngine:
    """`pre_ping=False` spares the round trip that tests each pooled connection before use: for
    a consumer whose failed message is simply retried (a connection that died while pooled
    fails one statement, is replaced, and the message comes back a second later)."""
    # hide_parameters: a failed statement's error names no values, so message text and secrets
    # never reach a log or a span through an exception.
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _begin_immediate)
    else:
        engine = create_async_engine(
            url, pool_pre_ping=pre_ping, pool_size=5, max_overflow=10, hide_parameters=True
        )
    instrument_engine(engine)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
