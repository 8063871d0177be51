"""Opening the result database: SQLite file by default, any SQLAlchemy URL by ``--db`` or
``TWOSSP_DB``. A fresh database is created through the Alembic migrations on first use; one on an
older schema is refused with the exact upgrade command."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from importlib import resources
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from twossp.db.models import Base
from twossp.errors import SchemaOutdated

DEFAULT_URL = "sqlite:///twossp.db"


def database_url(explicit: str | None = None) -> str:
    url = explicit or os.environ.get("TWOSSP_DB") or DEFAULT_URL
    if "://" not in url:  # a bare path means a SQLite file
        url = f"sqlite:///{url}"
    return url


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("twossp.migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def make_engine(url: str) -> Engine:
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    return engine


def upgrade(url: str, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise SchemaOutdated(f"cannot upgrade {url}: {exc} (written by a newer twossp?)") from None


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def known_revision(url: str, revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config(url)).get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Database:
    """An engine and a session factory over a database whose schema is at the head revision."""

    def __init__(self, url: str | None = None, *, auto_upgrade: bool = True):
        self.url = database_url(url)
        self.engine = make_engine(self.url)
        self._check_schema(auto_upgrade)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _check_schema(self, auto_upgrade: bool) -> None:
        head = head_revision(self.url)
        current = current_revision(self.engine)
        if current == head:
            return
        tables = set(inspect(self.engine).get_table_names())
        if current is None and not tables and auto_upgrade:
            try:
                upgrade(self.url)  # first use: create the schema
            except Exception:
                # Two drivers starting on one empty database race to create it: the loser fails
                # on tables the winner is creating. Fine, once the winner has finished.
                if not self._wait_for_revision(head):
                    raise
            return
        hint = f"twossp db upgrade --db '{self.url}'"
        ours = set(Base.metadata.tables) | {"alembic_version"}
        if current is None and auto_upgrade and tables <= ours and self._wait_for_revision(head, timeout=30.0):
            return  # another driver was creating the schema at this very moment, and has finished
        if current is None:
            raise SchemaOutdated(
                f"database {self.url} has tables but no twossp schema version; "
                f"point --db at a new file or database, or run: {hint}"
            )
        if not known_revision(self.url, current):
            raise SchemaOutdated(
                f"database {self.url} is at schema {current}, which this version of twossp does not know "
                f"(written by a newer twossp?); upgrade twossp rather than the database"
            )
        raise SchemaOutdated(f"database {self.url} is at schema {current}, twossp needs {head}; run: {hint}")

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
