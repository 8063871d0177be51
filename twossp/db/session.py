"""Opening the result database: SQLite file by default, any SQLAlchemy URL by ``--db`` or
``TWOSSP_DB``. A fresh database is created through the Alembic migrations on first use by a
command that writes (``Database(url)``); a reading command opens with ``create=False`` and never
creates a file or a schema. One on an older schema is refused with the upgrade command.

``Database(url, create=False, read_only=True)`` (``twossp db sql``, the views) is kept read-only by
the database itself, not by twossp looking at the SQL: SQLite opens the file read-only, PostgreSQL
runs every transaction READ ONLY. ``Database.query`` runs one statement given by the user on it.

A URL that cannot be used (malformed, an unknown kind of database, in memory, a SQLite folder that
does not exist, a file that is not a database, a server that cannot be reached or refuses the login)
raises ``DatabaseError`` with one message saying what is wrong and how to fix it. No message (nor
anything logged here) contains a password: URLs are shown through ``safe_url``."""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, bindparam, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy import text as sql_text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from twossp.db.models import Base
from twossp.errors import QueryError, SchemaOutdated, TwosspError

try:
    from twossp.errors import DatabaseError
except ImportError:  # until twossp.errors has it
    class DatabaseError(TwosspError):  # type: ignore[no-redef]
        """The result database cannot be used (bad URL, unreachable server, refused login, a file
        that is not a database). Messages never contain a password."""

DEFAULT_URL = "sqlite:///twossp.db"
MASK = "***"
CONNECT_TIMEOUT_S = 10  # a PostgreSQL host that does not answer is reported, not waited on forever
_KINDS = ("SQLite (a file path, or sqlite:///PATH) or PostgreSQL "
          "(postgresql+psycopg://USER:PASSWORD@HOST:PORT/DBNAME)")


def _resolve(explicit: str | None) -> str:
    url = (explicit or os.environ.get("TWOSSP_DB") or DEFAULT_URL).strip()
    if "://" not in url:  # a bare path means a SQLite file
        url = f"sqlite:///{url}"
    return url


def database_url(explicit: str | os.PathLike | None = None) -> str:
    """The URL to open: ``explicit``, else ``TWOSSP_DB``, else ``sqlite:///twossp.db``; a bare path
    means a SQLite file. ``DatabaseError`` for a scheme without ``//`` (``sqlite:/x.db``)."""
    given = str(explicit or os.environ.get("TWOSSP_DB") or DEFAULT_URL).strip()
    if "://" not in given and re.match(r"(?i)^(sqlite|postgres(ql)?)(\+\w+)?:", given):
        raise DatabaseError(f"{_mask(given)} is not a database URL (no '//' after the scheme: "
                            f"sqlite:///PATH, postgresql+psycopg://HOST/DBNAME); give {_KINDS}")
    return _resolve(given)


# ---------------------------------------------------------------------------------- passwords

#: where SQLAlchemy's URL parser finds the password: ``scheme://user:PASSWORD@`` (user without ``:``
#: or ``/``, password without ``@``)
_PASSWORD_IN_URL = re.compile(r"^([\w+]+://[^:/]*:)([^@]*)(@)")
_PASSWORD_IN_QUERY = re.compile(r"(?i)([?&]password=)([^&#]*)")
_LOOSE_PASSWORD = re.compile(r"(://[^:/@?#]*:)(.*)(@)")  # any string with ://user:...@ in it


def safe_url(url: str | None) -> str:
    """``url`` (``None``: the one ``database_url`` picks) as written, with its password masked as
    ``***`` (also a ``password=`` query argument), found where SQLAlchemy's parser finds it (the
    masked form of ``make_url(url).render_as_string(hide_password=True)``, without re-escaping the
    rest); in a string that does not parse, anything between ``://user:`` and ``@`` is masked. The
    only form of a URL that twossp prints. Never raises."""
    return _mask(_resolve(url))


def _mask(url: str) -> str:
    masked = _PASSWORD_IN_URL.sub(rf"\g<1>{MASK}\g<3>", url, count=1)
    if masked == url:
        masked = _LOOSE_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", url, count=1)
    return _PASSWORD_IN_QUERY.sub(rf"\g<1>{MASK}", masked)


def _secrets(url: str) -> list[str]:
    """Every spelling of the password in ``url`` (decoded and as written), longest first."""
    found: set[str] = set()
    try:
        parsed = make_url(url)
        for secret in (parsed.password, parsed.query.get("password")):
            if isinstance(secret, str) and secret:
                found |= {secret, quote(secret, safe=""), quote(secret)}
    except Exception:  # noqa: BLE001
        pass
    for pattern in (_PASSWORD_IN_URL, _LOOSE_PASSWORD, _PASSWORD_IN_QUERY):
        match = pattern.search(url)
        if match and match.group(2):
            found |= {match.group(2), unquote(match.group(2))}
    return sorted((s for s in found if s and s != MASK), key=len, reverse=True)


def _scrub(text: str, url: str) -> str:
    """``text`` (a driver's message, say) with ``url`` and its password masked."""
    text = text.replace(url, safe_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, MASK)
    return text


def _upgrade_hint(url: str) -> str:
    """The command that upgrades ``url``, never with its password: where there is one, the user puts
    it back in place of ``***`` or sets TWOSSP_DB."""
    shown = safe_url(url)
    if _secrets(url):
        return (f"twossp db upgrade --db '{shown}' (with the real password in place of {MASK}), "
                f"or with TWOSSP_DB set to the URL: twossp db upgrade")
    return f"twossp db upgrade --db '{shown}'"


# ---------------------------------------------------------------------------------- checking URLs

def _parse(url: str) -> URL:
    shown = safe_url(url)
    try:
        return make_url(url)
    except (sa_exc.ArgumentError, ValueError, TypeError) as exc:
        reason = _scrub(str(exc), url)
        raise DatabaseError(f"{shown} is not a database URL ({reason}); give {_KINDS}") from None


def _sqlite_path(parsed: URL) -> Path | None:
    """The file of a SQLite URL; None when the database would live in memory."""
    database = parsed.database or ""
    memory = parsed.query.get("mode") == "memory"
    if database.startswith("file:"):
        uri = urlparse(database)
        memory = memory or "mode=memory" in uri.query
        database = unquote(uri.path)
    if memory or database in ("", ":memory:"):
        return None
    return Path(database)


def _is_sqlite(parsed: URL) -> bool:
    return parsed.drivername.split("+")[0] == "sqlite"


def _check_target(url: str, *, create: bool) -> URL:
    """``url`` parsed; for SQLite, refused unless it names a file twossp can use (and, without
    ``create``, one that exists). Nothing is created."""
    parsed = _parse(url)
    shown = safe_url(url)
    if not _is_sqlite(parsed):
        return parsed
    path = _sqlite_path(parsed)
    if path is None:
        raise DatabaseError(f"{shown} is an in-memory SQLite database: the results would vanish when twossp "
                            f"exits; give a file path instead (e.g. --db results.db, or sqlite:///results.db)")
    if path.is_dir():
        raise DatabaseError(f"database {shown}: {path} is a folder, not a database file; "
                            f"give a file path inside it (e.g. {path / 'twossp.db'})")
    folder = path.parent
    if not folder.is_dir():
        raise DatabaseError(f"database {shown}: folder {folder} does not exist; create it "
                            f"(mkdir -p {shlex.quote(str(folder))}) or give a path in an existing folder")
    if not create and not path.exists():
        raise DatabaseError(f"no database at {path} ({shown}); check --db or TWOSSP_DB "
                            f"(a sweep run creates the database on first use)")
    return parsed


def _reason(exc: BaseException, url: str) -> str:
    """The driver's own words, on one line, without the SQLAlchemy boilerplate or the password."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).split("\n(Background on this error")[0]
    text = re.sub(r"^connection failed: ", "", text.strip())
    text = re.sub(r"^connection to server at \"[^\"]*\"(?: \([^)]*\))?, port \d+ failed: ", "", text)
    text = re.sub(r"\bFATAL:\s+", "", text)
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")  # the rest: hints, [SQL: ...]
    return _scrub(text, url) or type(orig).__name__


def explain(exc: BaseException, url: str) -> DatabaseError:
    """A ``DatabaseError`` with one message for ``exc``, raised opening or using ``url``."""
    shown = safe_url(url)
    reason = _reason(exc, url)
    low = reason.lower()
    try:
        parsed: URL | None = make_url(url)
    except Exception:  # noqa: BLE001
        parsed = None
    if isinstance(exc, sa_exc.NoSuchModuleError):
        kind = parsed.drivername if parsed else "?"
        hint = " (did you mean postgresql+psycopg://...?)" if kind.startswith("postgres") else ""
        return DatabaseError(f"database {shown}: unknown kind of database {kind!r}{hint}; twossp stores "
                             f"results in {_KINDS}")
    if isinstance(exc, ImportError):
        module = getattr(exc, "name", None) or reason
        return DatabaseError(f"database {shown}: its Python driver ({module}) is not installed; for PostgreSQL "
                             f"install psycopg (pip install 'twossp[postgres]') and use postgresql+psycopg://...")
    if isinstance(exc, sa_exc.ArgumentError):
        return DatabaseError(f"{shown} is not a usable database URL ({reason}); give {_KINDS}")
    sqlite = parsed is not None and _is_sqlite(parsed)
    if sqlite:
        path = _sqlite_path(parsed) if parsed else None
        if "file is not a database" in low or "file is encrypted" in low:
            return DatabaseError(f"database {shown}: {path} is not a SQLite database ({reason}); point --db at "
                                 f"a twossp database, or at a new file name to start one")
        if "malformed" in low:
            return DatabaseError(f"database {shown}: {path} is damaged ({reason}); restore it from a copy, or "
                                 f"point --db at a new file name to start a new database")
        if "readonly" in low or "read-only" in low:
            return DatabaseError(f"database {shown}: {path} is read-only ({reason}); make the file and its folder "
                                 f"writable, or give another path")
        if "locked" in low:
            return DatabaseError(f"database {shown}: {path} stays locked by another process ({reason}); "
                                 f"try again when it has finished")
        if "unable to open" in low or isinstance(exc, OSError):
            return DatabaseError(f"database {shown}: cannot open {path} ({reason}); check that the file and "
                                 f"its folder exist and are readable and writable")
        return DatabaseError(f"database {shown}: {reason}")
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}" if parsed else "its host and port"
    user = parsed.username if parsed else None
    if ("password authentication failed" in low or "no password supplied" in low
            or "authentication failed" in low or re.search(r"role \"[^\"]*\" does not exist", low)):
        return DatabaseError(f"database {shown}: the server refused the login of user {user!r} ({reason}); "
                             f"check the user name and password in the URL (--db or TWOSSP_DB)")
    if re.search(r"database \"[^\"]*\" does not exist", low):
        name = parsed.database if parsed else "?"
        return DatabaseError(f"database {shown}: the server at {where} has no database {name!r}; create it "
                             f"(e.g. createdb -h {parsed.host if parsed else 'HOST'} {name}) or correct the name "
                             f"in the URL")
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, OSError)) and any(
            s in low for s in ("connection refused", "could not connect", "resolve host", "name or service",
                               "timeout", "timed out", "no route to host", "network is unreachable",
                               "server closed the connection", "connection reset", "is the server running")):
        return DatabaseError(f"cannot reach the database server of {shown} ({reason}); check that PostgreSQL "
                             f"is running and accepts TCP connections at {where}, and the host and port in the URL")
    return DatabaseError(f"database {shown}: {reason}")


@contextmanager
def explained(url: str) -> Iterator[None]:
    """Turn what SQLAlchemy, a driver or the file system raises about ``url`` into ``DatabaseError``
    (never with the password); twossp's own errors pass through."""
    try:
        yield
    except TwosspError:
        raise
    except (sa_exc.SQLAlchemyError, OSError) as exc:
        raise explain(exc, url) from None
    except Exception as exc:  # a driver's own error class outside SQLAlchemy's wrapping (psycopg.Error, ...)
        if type(exc).__module__.split(".")[0] in ("psycopg", "psycopg2", "sqlite3"):
            raise explain(exc, url) from None
        raise


# ---------------------------------------------------------------------------------- engines, Alembic

def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("twossp.migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


#: libpq options of a read-only connection: every transaction starts READ ONLY
_PG_READ_ONLY = "-c default_transaction_read_only=on"

#: the execution option of ``Database.query``: run the statement as one prepared statement
_ONE_STATEMENT = "twossp_one_statement"

#: (dialect, driver) that ``make_engine(read_only=True)`` knows how to keep read-only
_READ_ONLY_DRIVERS = (("sqlite", "pysqlite"), ("postgresql", "psycopg"))


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for ``url`` (nothing is connected or created yet). Raises ``DatabaseError`` for a
    URL SQLAlchemy cannot use (malformed, unknown kind, driver not installed).

    ``read_only``: the database itself refuses every write through this engine (see
    ``_sqlite_read_only`` and ``_PG_READ_ONLY``), and a missing SQLite file is ``DatabaseError``,
    never created."""
    parsed = _parse(url)
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
    if read_only and _is_sqlite(parsed):
        path = _sqlite_path(_check_target(url, create=False))
        assert path is not None  # _check_target refuses a database in memory
        options["creator"] = _sqlite_read_only(path)
    try:
        engine = create_engine(url, connect_args=connect_args, **options)
    except (sa_exc.SQLAlchemyError, ImportError) as exc:  # ImportError: the dialect's driver is not installed
        raise explain(exc, url) from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    if read_only and (engine.dialect.name, engine.dialect.driver) not in _READ_ONLY_DRIVERS:
        engine.dispose()  # nothing here would keep another driver's connections read-only
        raise DatabaseError(f"database {safe_url(url)}: twossp opens read-only only SQLite (sqlite:///PATH) "
                            f"and PostgreSQL through psycopg (postgresql+psycopg://...), not "
                            f"{engine.dialect.name}+{engine.dialect.driver}")
    if read_only and engine.dialect.driver == "psycopg":
        event.listen(engine, "do_execute", _execute_one_statement)
    return engine


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


def _execute_one_statement(cursor, statement: str, parameters, context) -> bool | None:
    """The ``do_execute`` hook of a read-only psycopg engine: ``Database.query``'s statement goes as
    one prepared statement (PostgreSQL's extended protocol), which the server refuses to hold more
    than one command. Left to itself, psycopg sends a statement without parameters through the
    simple protocol, which runs several: ``COMMIT; DELETE ...`` would leave the read-only
    transaction before the DELETE."""
    if not context.execution_options.get(_ONE_STATEMENT):
        return None
    conn = cursor.connection
    if conn.prepare_threshold is None:  # psycopg ignores prepare=True while preparing is switched off
        conn.prepare_threshold = 5  # psycopg's default
    cursor.execute(statement, parameters, prepare=True)
    return True


def _probe(url: str) -> None:
    """Connect once and read the schema version: raises ``DatabaseError`` for anything unusable."""
    engine = make_engine(url)
    try:
        with explained(url):
            current_revision(engine)
    finally:
        engine.dispose()


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database at ``url`` (``None``: ``database_url()``) to ``revision``, creating a
    SQLite file and the schema if needed (``twossp db upgrade``)."""
    url = database_url(url)
    _check_target(url, create=True)
    _probe(url)  # an unusable URL is reported as such, not as a failed migration
    try:
        with explained(url):
            command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise SchemaOutdated(f"cannot upgrade {safe_url(url)}: {_scrub(str(exc), url)} "
                             f"(written by a newer twossp?)") from None


def head_revision(url: str | None = None) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url(url))).get_current_head()


def known_revision(url: str | None, revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config(database_url(url))).get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# ---------------------------------------------------------------------------------- for the CLI

def database_exists(url: str | None = None) -> bool:
    """Whether there is a database at ``url`` (``None``: ``database_url()``): a SQLite file that
    exists, or a server database that exists (whatever it holds). Creates nothing. False for a
    SQLite file in a folder that does not exist; ``DatabaseError`` for a URL that cannot be used
    (malformed, unknown kind, in memory, a server that cannot be reached or refuses the login)."""
    url = database_url(url)
    parsed = _parse(url)
    if _is_sqlite(parsed):
        try:
            _check_target(url, create=True)
        except DatabaseError:
            path = _sqlite_path(parsed)
            if path is not None and not path.parent.is_dir():
                return False
            raise
        path = _sqlite_path(parsed)
        return path is not None and path.is_file()
    try:
        _probe(url)
    except DatabaseError as exc:
        if re.search(r"has no database '", str(exc)):
            return False
        raise
    return True


def describe_revision(url: str | None = None) -> str:
    """One line on the schema of the database at ``url`` (``twossp db current``): its revision and
    whether this twossp can use it. Creates nothing; ``DatabaseError`` when there is no usable
    database there."""
    url = database_url(url)
    _check_target(url, create=False)
    engine = make_engine(url)
    try:
        with explained(url):
            current = current_revision(engine)
            tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    head = head_revision(url)
    shown = safe_url(url)
    if current is None:
        if not tables:
            return f"{shown}: empty (no twossp schema yet; a sweep run or twossp db upgrade creates it)"
        return f"{shown}: has tables but no twossp schema version (not a twossp database?)"
    if current == head:
        return f"{shown}: schema {current} ({_revision_doc(url, current)}), up to date"
    if not known_revision(url, current):
        return f"{shown}: schema {current}, unknown to this twossp (written by a newer twossp?)"
    return f"{shown}: schema {current}, twossp needs {head}; run: {_upgrade_hint(url)}"


def _revision_doc(url: str, revision: str) -> str:
    script = ScriptDirectory.from_config(alembic_config(url)).get_revision(revision)
    return (script.doc or "").strip().splitlines()[0] if script is not None and script.doc else revision


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
    created: a missing SQLite file or an empty database raises ``DatabaseError``. ``auto_upgrade``
    is the old name of ``create``. ``url`` is the real URL (for connecting); ``display_url`` the one
    to show.

    ``read_only`` (with ``create=False``; for ``twossp db sql`` and the views): the database itself
    refuses every write, through ``query`` and ``session`` alike (see ``make_engine``). The schema
    is still checked: that only reads."""

    def __init__(self, url: str | None = None, *, create: bool = True, auto_upgrade: bool | None = None,
                 read_only: bool = False):
        if auto_upgrade is not None:
            create = auto_upgrade
        if read_only and create:
            raise ValueError("Database(read_only=True) cannot create a database or its schema: give create=False")
        self.read_only = read_only
        self.url = database_url(url)
        self.display_url = safe_url(self.url)
        _check_target(self.url, create=create)
        self.engine = make_engine(self.url, read_only=read_only)
        try:
            with explained(self.url):
                self._check_schema(create)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"

    def _check_schema(self, create: bool) -> None:
        head = head_revision(self.url)
        current = current_revision(self.engine)
        if current == head:
            return
        shown = self.display_url
        tables = set(inspect(self.engine).get_table_names())
        if current is None and not tables:
            if not create:
                raise DatabaseError(f"database {shown} holds no twossp results (it is empty); check --db or "
                                    f"TWOSSP_DB (a sweep run creates the schema on first use)")
            try:
                upgrade(self.url)  # first use: create the schema
            except Exception:
                # Two drivers starting on one empty database race to create it: the loser fails
                # on tables the winner is creating. Fine, once the winner has finished. When no
                # table has appeared, nobody else is creating them: the error is real (no
                # privilege to create tables, say), and is reported without the long wait.
                ours = set(Base.metadata.tables) | {"alembic_version"}
                racing = bool(set(inspect(self.engine).get_table_names()) & ours)
                if not self._wait_for_revision(head, timeout=60.0 if racing else 2.0):
                    raise
            return
        hint = _upgrade_hint(self.url)
        ours = set(Base.metadata.tables) | {"alembic_version"}
        if current is None and tables <= ours and self._wait_for_revision(head, timeout=30.0):
            # A driver was creating the schema at this very moment (some of our tables, no version
            # yet), and has finished: a reader (a status view started with the sweep) waits for it too.
            return
        if current is None:
            raise SchemaOutdated(
                f"database {shown} has tables but no twossp schema version; "
                f"point --db at a new file or database, or run: {hint}"
            )
        if not known_revision(self.url, current):
            raise SchemaOutdated(
                f"database {shown} is at schema {current}, which this version of twossp does not know "
                f"(written by a newer twossp?); upgrade twossp rather than the database"
            )
        raise SchemaOutdated(f"database {shown} is at schema {current}, twossp needs {head}; run: {hint}")

    def _wait_for_revision(self, revision: str | None, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if current_revision(self.engine) == revision:
                return True
            time.sleep(0.25)
        return False

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
        statement = sql_text(sql)
        given = dict(params or {})
        lists = [name for name, value in given.items() if isinstance(value, (list, tuple))]
        if lists:  # a list binds as its values: `where key in :keys`
            statement = statement.bindparams(*[bindparam(name, expanding=True) for name in lists
                                               if name in statement.compile().params])
        missing = [name for name in statement.compile(dialect=self.engine.dialect).params if name not in given]
        if missing:
            listed = ", ".join(f":{name}" for name in missing)
            raise QueryError(f"query on {self.display_url}: no value given for the parameter"
                             f"{'s' if len(missing) > 1 else ''} {listed}")
        with explained(self.url), self.engine.connect() as conn:  # cannot connect: DatabaseError
            try:
                result = conn.execution_options(**{_ONE_STATEMENT: True}).execute(statement, given)
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

    def _query_error(self, exc: sa_exc.DBAPIError) -> TwosspError:
        """What a statement of ``query`` raised, as ``QueryError``; as ``DatabaseError`` where the
        fault is the database's, not the statement's (a lost connection, a lock held too long)."""
        reason = _reason(exc, self.url)
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
