"""The schema version of a result database, kept by the Alembic tree packaged as twossp.migrations.

A fresh database is created through the migrations on first use by a command that writes; a
reading command never creates a file or a schema. ``check_schema`` is the start-up guard of
``Database``: a database on an older schema is refused with the exact upgrade command (never with
its password), one written by a newer twossp is refused as such. ``twossp db upgrade`` and
``twossp db current`` are ``upgrade`` and ``describe_revision``."""

from __future__ import annotations

import re
import time
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, inspect

from twossp.db.diagnosis import explained
from twossp.db.engines import make_engine
from twossp.db.models import Base
from twossp.db.urls import (MASK, check_target, database_url, is_sqlite, parse_url, passwords, safe_url, scrub,
                            sqlite_path)
from twossp.errors import DatabaseError, SchemaOutdated


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("twossp.migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


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


def _revision_doc(url: str, revision: str) -> str:
    script = ScriptDirectory.from_config(alembic_config(url)).get_revision(revision)
    return (script.doc or "").strip().splitlines()[0] if script is not None and script.doc else revision


def upgrade_hint(url: str) -> str:
    """The command that upgrades ``url``, never with its password: where there is one, the user puts
    it back in place of ``***`` or sets TWOSSP_DB."""
    shown = safe_url(url)
    if passwords(url):
        return (f"twossp db upgrade --db '{shown}' (with the real password in place of {MASK}), "
                f"or with TWOSSP_DB set to the URL: twossp db upgrade")
    return f"twossp db upgrade --db '{shown}'"


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
    check_target(url, create=True)
    _probe(url)  # an unusable URL is reported as such, not as a failed migration
    try:
        with explained(url):
            command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise SchemaOutdated(f"cannot upgrade {safe_url(url)}: {scrub(str(exc), url)} "
                             f"(written by a newer twossp?)") from None


# ---------------------------------------------------------------------------------- for the CLI

def database_exists(url: str | None = None) -> bool:
    """Whether there is a database at ``url`` (``None``: ``database_url()``): a SQLite file that
    exists, or a server database that exists (whatever it holds). Creates nothing. False for a
    SQLite file in a folder that does not exist; ``DatabaseError`` for a URL that cannot be used
    (malformed, unknown kind, in memory, a server that cannot be reached or refuses the login)."""
    url = database_url(url)
    parsed = parse_url(url)
    if is_sqlite(parsed):
        try:
            check_target(url, create=True)
        except DatabaseError:
            path = sqlite_path(parsed)
            if path is not None and not path.parent.is_dir():
                return False
            raise
        path = sqlite_path(parsed)
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
    check_target(url, create=False)
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
    return f"{shown}: schema {current}, twossp needs {head}; run: {upgrade_hint(url)}"


# ---------------------------------------------------------------------------------- the start-up guard

def _our_tables() -> set[str]:
    """The tables of a twossp database, Alembic's own included."""
    return set(Base.metadata.tables) | {"alembic_version"}


def check_schema(engine: Engine, url: str, *, create: bool) -> None:
    """Return once the database of ``engine`` (at ``url``) is at the head revision: an empty one
    gets the head schema with ``create`` (``DatabaseError`` without it); one that another process
    is creating right now is waited for; any other is refused with ``SchemaOutdated``, which says
    what to do (upgrade the database, or twossp)."""
    head = head_revision(url)
    current = current_revision(engine)
    if current == head:
        return
    tables = set(inspect(engine).get_table_names())
    if current is None and not tables:
        _create_schema(engine, url, head, create=create)
        return
    if current is None and tables <= _our_tables() and _wait_for_revision(engine, head, timeout=30.0):
        # A driver was creating the schema at this very moment (some of our tables, no version
        # yet), and has finished: a reader (a status view started with the sweep) waits for it too.
        return
    raise _outdated(url, current, head)


def _create_schema(engine: Engine, url: str, head: str | None, *, create: bool) -> None:
    """First use of an empty database: the head schema, made here or by a racing driver."""
    if not create:
        raise DatabaseError(f"database {safe_url(url)} holds no twossp results (it is empty); check --db or "
                            f"TWOSSP_DB (a sweep run creates the schema on first use)")
    try:
        upgrade(url)
    except Exception:
        # Two drivers starting on one empty database race to create it: the loser fails
        # on tables the winner is creating. Fine, once the winner has finished. When no
        # table has appeared, nobody else is creating them: the error is real (no
        # privilege to create tables, say), and is reported without the long wait.
        racing = bool(set(inspect(engine).get_table_names()) & _our_tables())
        if not _wait_for_revision(engine, head, timeout=60.0 if racing else 2.0):
            raise


def _outdated(url: str, current: str | None, head: str | None) -> SchemaOutdated:
    """Why the database at ``url``, at revision ``current``, cannot be used, and what to do."""
    shown, hint = safe_url(url), upgrade_hint(url)
    if current is None:
        return SchemaOutdated(
            f"database {shown} has tables but no twossp schema version; "
            f"point --db at a new file or database, or run: {hint}"
        )
    if not known_revision(url, current):
        return SchemaOutdated(
            f"database {shown} is at schema {current}, which this version of twossp does not know "
            f"(written by a newer twossp?); upgrade twossp rather than the database"
        )
    return SchemaOutdated(f"database {shown} is at schema {current}, twossp needs {head}; run: {hint}")


def _wait_for_revision(engine: Engine, revision: str | None, timeout: float = 60.0) -> bool:
    """Whether the database of ``engine`` reaches ``revision`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if current_revision(engine) == revision:
            return True
        time.sleep(0.25)
    return False
