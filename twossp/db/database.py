"""``Database``: the result database opened for twossp, an engine and a session factory over a
schema at the head revision.

A command that writes opens it with ``Database(url)`` (created on first use); a reading command
with ``create=False``, which never creates a file or a schema; ``twossp db sql`` and the views with
``read_only=True``, where ``Database.query`` runs one statement given by the user and the database
itself refuses every write. It is a context manager: ``with Database(url) as db:`` closes it.

A URL that cannot be used raises ``DatabaseError`` with one message saying what is wrong and how to
fix it (``twossp.db.diagnosis``); no message contains a password (``twossp.db.urls.safe_url``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, bindparam
from sqlalchemy import exc as sa_exc
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session, sessionmaker

from twossp.db.diagnosis import driver_reason, explain, explained
from twossp.db.engines import ONE_STATEMENT, make_engine
from twossp.db.urls import check_target, database_url, safe_url
from twossp.db.versioning import check_schema
from twossp.errors import QueryError, TwosspError


@dataclass(frozen=True)
class QueryResult:
    """What one query returned: its column names and its rows, in order. A statement that returns
    no rows (``begin``, ``set ...``) has neither."""

    columns: list[str]
    rows: list[tuple]


class Database:
    """An engine and a session factory over a database whose schema is at the head revision.

    ``create`` (the default, for commands that write): an empty database, or a SQLite file that
    does not exist yet, gets the head schema. Without it (commands that only read) nothing is ever
    created: a missing SQLite file or an empty database raises ``DatabaseError``. ``url`` is the
    real URL (for connecting); ``display_url`` the one to show.

    ``read_only`` (with ``create=False``; for ``twossp db sql`` and the views): the database itself
    refuses every write, through ``query`` and ``session`` alike (see ``make_engine``). The schema
    is still checked: that only reads.

    ``with Database(url) as db:`` closes it at the end of the block, however the block ends."""

    def __init__(self, url: str | None = None, *, create: bool = True, read_only: bool = False) -> None:
        if read_only and create:
            raise ValueError("Database(read_only=True) cannot create a database or its schema: give create=False")
        self.read_only = read_only
        self.url = database_url(url)
        self.display_url = safe_url(self.url)
        check_target(self.url, create=create)
        self.engine = make_engine(self.url, read_only=read_only)
        try:
            with explained(self.url):
                check_schema(self.engine, self.url, create=create)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
        """Run ``sql``, one statement given by the user, with ``params`` for its named parameters
        (``:name``; a colon before a name is one even inside a string: ``\\:`` keeps a colon; a list
        value binds as its items, for ``in :name``), in a
        transaction that is always rolled back, and return what it returned. Only on a read-only
        Database (``ValueError`` otherwise): that the database refuses writes is the guarantee,
        the rollback a second line.

        ``QueryError`` (the database's own words, one line) for a statement that cannot run, more
        than one statement (SQLite's driver and PostgreSQL's extended protocol both refuse them
        before running any), a parameter without a value, or a write (the database refused it);
        ``DatabaseError`` when the database cannot be reached or stays locked."""
        if not self.read_only:
            raise ValueError("Database.query runs a user's SQL, only on a Database(read_only=True)")
        given = dict(params or {})
        statement = self._statement(sql, given)
        with explained(self.url), self.engine.connect() as conn:  # cannot connect: DatabaseError
            try:
                result = conn.execution_options(**{ONE_STATEMENT: True}).execute(statement, given)
                if not result.returns_rows:
                    return QueryResult([], [])
                return QueryResult(list(result.keys()), [tuple(row) for row in result])
            except sa_exc.DBAPIError as exc:
                raise self._query_error(exc) from None
            finally:
                try:
                    conn.rollback()
                except sa_exc.DBAPIError:
                    # The statement left the connection unusable (psycopg refuses COPY ... TO STDOUT
                    # with the server still copying): close it rather than pool it. Closing a
                    # connection rolls back its transaction all the same.
                    conn.invalidate()

    def _statement(self, sql: str, given: Mapping[str, Any]) -> TextClause:
        """``sql`` as a statement whose list values bind as their items (``where key in :keys``);
        ``QueryError`` for a parameter without a value in ``given``."""
        statement = sql_text(sql)
        lists = [name for name, value in given.items() if isinstance(value, (list, tuple))]
        if lists:
            statement = statement.bindparams(*[bindparam(name, expanding=True) for name in lists
                                               if name in statement.compile().params])
        missing = [name for name in statement.compile(dialect=self.engine.dialect).params if name not in given]
        if missing:
            listed = ", ".join(f":{name}" for name in missing)
            raise QueryError(f"query on {self.display_url}: no value given for the parameter"
                             f"{'s' if len(missing) > 1 else ''} {listed}")
        return statement

    def _query_error(self, exc: sa_exc.DBAPIError) -> TwosspError:
        """What a statement of ``query`` raised, as ``QueryError``; as ``DatabaseError`` where the
        fault is the database's, not the statement's (a lost connection, a lock held too long)."""
        reason = driver_reason(exc, self.url)
        low = reason.lower()
        if exc.connection_invalidated or (self.engine.dialect.name == "sqlite" and "database is locked" in low):
            return explain(exc, self.url)
        where = f"query on {self.display_url}"
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if (sqlstate == "25006"  # read_only_sql_transaction
                or (sqlstate == "25001" and "read-write" in low)  # SET TRANSACTION READ WRITE too late
                or "attempt to write a readonly database" in low or "not authorized" in low
                or "authorization denied" in low):
            return QueryError(f"{where}: the database is opened read-only and refused the write ({reason})")
        if "one statement at a time" in low or "multiple commands" in low:
            return QueryError(f"{where}: more than one statement; give one at a time ({reason})")
        if "copy cannot be used with this method" in low:  # psycopg: COPY to or from the client
            return QueryError(f"{where}: COPY ... TO STDOUT or FROM STDIN cannot run here; SELECT the rows "
                              f"instead ({reason})")
        return QueryError(f"{where}: {reason}")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
