"""Alembic environment for twossp. Used by `twossp db upgrade`, by the automatic first-use upgrade
and by a plain `alembic` command run from the repository root (settings in pyproject.toml)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine

from twossp.db.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("TWOSSP_DB") or "sqlite:///twossp.db"
    engine = create_engine(url)
    with engine.begin() as conn:
        _configure(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("twossp migrations run online only (give a database URL)")
run()
