"""SQLAlchemy engines over the result database, and read-only ones.

``make_engine(url, read_only=True)`` (``twossp db sql``, the views) is kept read-only by the
database itself, not by twossp looking at the SQL: SQLite opens the file read-only, PostgreSQL runs
every transaction READ ONLY. Nothing connects, and nothing is created, until the engine is used."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from twossp.db.diagnosis import explain
from twossp.db.urls import check_target, is_sqlite, parse_url, safe_url, sqlite_path
from twossp.errors import DatabaseError

CONNECT_TIMEOUT_S = 10  # a PostgreSQL host that does not answer is reported, not waited on forever

#: libpq options of a read-only connection: every transaction starts READ ONLY
_PG_READ_ONLY = "-c default_transaction_read_only=on"

#: the execution option of ``Database.query``: run the statement as one prepared statement
ONE_STATEMENT = "twossp_one_statement"

#: (dialect, driver) that ``make_engine(read_only=True)`` knows how to keep read-only
_READ_ONLY_DRIVERS = (("sqlite", "pysqlite"), ("postgresql", "psycopg"))


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for ``url`` (nothing is connected or created yet). Raises ``DatabaseError`` for a
    URL SQLAlchemy cannot use (malformed, unknown kind, driver not installed).

    ``read_only``: the database itself refuses every write through this engine (see
    ``_sqlite_read_only`` and ``_PG_READ_ONLY``), and a missing SQLite file is ``DatabaseError``,
    never created."""
    connect_args, options = _engine_arguments(url, parse_url(url), read_only=read_only)
    try:
        engine = create_engine(url, connect_args=connect_args, **options)
    except (sa_exc.SQLAlchemyError, ImportError) as exc:  # ImportError: the dialect's driver is not installed
        raise explain(exc, url) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if read_only:
        _hold_read_only(engine, url)
    return engine


def _engine_arguments(url: str, parsed: URL, *, read_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``create_engine``'s ``connect_args`` (for the driver) and its other keyword arguments."""
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {}
    postgres = parsed.get_backend_name() == "postgresql"
    if postgres and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    if read_only and postgres:
        # Two locks, each enough alone: the session default (which a statement may SET, but only
        # inside the transaction that query() rolls back), and psycopg's BEGIN READ ONLY of every
        # transaction through this engine (postgresql_readonly), whatever the session default is.
        given = parsed.query.get("options")  # the user's own libpq options are kept
        given = " ".join(given) if isinstance(given, tuple) else given or ""
        connect_args["options"] = f"{given} {_PG_READ_ONLY}".strip()
        options["execution_options"] = {"postgresql_readonly": True}
    if read_only and is_sqlite(parsed):
        path = sqlite_path(check_target(url, create=False))
        assert path is not None  # check_target refuses a database in memory
        options["creator"] = _sqlite_read_only(path)
    return connect_args, options


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    """The ``connect`` hook of a SQLite engine: foreign keys enforced, a lock waited on for 30 s."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _hold_read_only(engine: Engine, url: str) -> None:
    """Refuse a driver whose connections nothing here keeps read-only; psycopg's statements go one
    at a time (``_execute_one_statement``)."""
    if (engine.dialect.name, engine.dialect.driver) not in _READ_ONLY_DRIVERS:
        engine.dispose()
        raise DatabaseError(f"database {safe_url(url)}: twossp opens read-only only SQLite (sqlite:///PATH) "
                            f"and PostgreSQL through psycopg (postgresql+psycopg://...), not "
                            f"{engine.dialect.name}+{engine.dialect.driver}")
    if engine.dialect.driver == "psycopg":
        event.listen(engine, "do_execute", _execute_one_statement)


def _sqlite_read_only(path: Path) -> Callable[[], sqlite3.Connection]:
    """A connection factory for the SQLite file at ``path``, made read-only three ways:

    - ``mode=ro``: SQLite opens the file read-only, so no statement can write it (nor create it);
    - ``PRAGMA query_only``: no statement may change any database, the temporary one included;
    - an authorizer that denies ATTACH and DETACH (an ATTACH, or the ATTACH inside VACUUM INTO,
      creates and writes another file, whatever the main one allows), turning ``query_only`` off,
      and ``load_extension()``.

    The path is made absolute now, so that a later change of directory does not move it."""
    uri = Path(os.path.abspath(path)).as_uri() + "?mode=ro"  # as_uri quotes '?', '#', '%', spaces

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)  # as SQLAlchemy's pool of files wants
        try:
            conn.execute("PRAGMA query_only=ON")
            conn.set_authorizer(_sqlite_authorizer)
        except BaseException:
            conn.close()
            raise
        return conn

    return connect


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None,
                       _trigger: str | None) -> int:
    """SQLite's authorizer callback (``sqlite3_set_authorizer``) of a read-only connection: the few
    statements that could write without touching the main file are denied when prepared."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and arg2 is not None and (arg1 or "").lower() == "query_only":
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _execute_one_statement(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
    """The ``do_execute`` hook of a read-only psycopg engine: ``Database.query``'s statement goes as
    one prepared statement (PostgreSQL's extended protocol), which the server refuses to hold more
    than one command. Left to itself, psycopg sends a statement without parameters through the
    simple protocol, which runs several: ``COMMIT; DELETE ...`` would leave the read-only
    transaction before the DELETE."""
    if not context.execution_options.get(ONE_STATEMENT):
        return None
    conn = cursor.connection
    if conn.prepare_threshold is None:  # psycopg ignores prepare=True while preparing is switched off
        conn.prepare_threshold = 5  # psycopg's default
    cursor.execute(statement, parameters, prepare=True)
    return True
