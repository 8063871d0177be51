"""Opening the result database: SQLite file by default, any SQLAlchemy URL by ``--db`` or
``TWOSSP_DB``. A fresh database is created through the Alembic migrations on first use by a
command that writes (``Database(url)``); a reading command opens with ``create=False`` and never
creates a file or a schema. One on an older schema is refused with the upgrade command.

A URL that cannot be used (malformed, an unknown kind of database, in memory, a SQLite folder that
does not exist, a file that is not a database, a server that cannot be reached or refuses the login)
raises ``DatabaseError`` with one message saying what is wrong and how to fix it. No message (nor
anything logged here) contains a password: URLs are shown through ``safe_url``."""

from __future__ import annotations

import os
import re
import shlex
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote, urlparse

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from twossp.db.models import Base
from twossp.errors import SchemaOutdated, TwosspError

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


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (nothing is connected or created yet). Raises ``DatabaseError`` for a
    URL SQLAlchemy cannot use (malformed, unknown kind, driver not installed)."""
    parsed = _parse(url)
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = create_engine(url, connect_args=connect_args)
    except (sa_exc.SQLAlchemyError, ImportError) as exc:  # ImportError: the dialect's driver is not installed
        raise explain(exc, url) from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    return engine


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


class Database:
    """An engine and a session factory over a database whose schema is at the head revision.

    ``create`` (the default, for commands that write): an empty database, or a SQLite file that
    does not exist yet, gets the head schema. Without it (commands that only read) nothing is ever
    created: a missing SQLite file or an empty database raises ``DatabaseError``. ``auto_upgrade``
    is the old name of ``create``. ``url`` is the real URL (for connecting); ``display_url`` the one
    to show."""

    def __init__(self, url: str | None = None, *, create: bool = True, auto_upgrade: bool | None = None):
        if auto_upgrade is not None:
            create = auto_upgrade
        self.url = database_url(url)
        self.display_url = safe_url(self.url)
        _check_target(self.url, create=create)
        self.engine = make_engine(self.url)
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
        if current is None and create and tables <= ours and self._wait_for_revision(head, timeout=30.0):
            return  # another driver was creating the schema at this very moment, and has finished
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

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
