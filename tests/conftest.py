"""The suite's fixtures; the helpers behind them are in ``tests/support`` (one copy each).

- ``apart_from_the_users_setup`` (every test): no view folder or database of the developer's.
- ``tiny``, ``cpu``: tiny deterministic models of every family (``tests.support.models``) and the
  CPU device.
- ``tiny_checkpoint``: a tiny checkpoint on disk with its text and sweep files, built once per
  session (``tests.support.tiny_checkpoint``).
- ``views_db``: a database a real small sweep filled, once per session (``tests.support.swept_views``).
- ``postgres_admin_url``, ``postgres_password_url``: throwaway PostgreSQL servers for the session
  (``tests.support.pg_server``); ``db_url`` and ``db``: an empty database on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import torch

from tests.support import models
from tests.support.pg_server import (
    drop_database,
    new_database,
    password_unavailable_reason,
    postgres_password_server,
    postgres_server,
    unavailable_reason,
)
from tests.support.swept_views import Swept, sweep_for_views
from tests.support.tiny_checkpoint import TinyCheckpoint, build
from twossp.db.database import Database


@pytest.fixture(autouse=True, scope="session")
def apart_from_the_users_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite sees none of the developer's own setup: no view of theirs (``TWOSSP_DASHBOARDS``,
    ``~/.config/twossp/dashboards``) replaces a packaged one in the view tests and snapshots, and no
    command reaches their database through ``TWOSSP_DB``. A test that wants either sets it itself.
    The libraries' progress bars are off for the whole session, as the CLI turns them off (set here,
    the CLI run in-process by a test leaves nothing behind it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TWOSSP_DASHBOARDS", str(tmp_path_factory.mktemp("no-user-views")))
        mp.delenv("TWOSSP_DB", raising=False)
        mp.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The tiny models' helpers by name: ``config``, ``model``, ``tokens`` and ``families``
    (``tests.support.models``; a test module may import them from there as well)."""
    return SimpleNamespace(config=models.tiny_config, model=models.tiny_model, tokens=models.random_tokens,
                           families=models.FAMILIES)


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """Built once per session (about a second)."""
    return build(tmp_path_factory.mktemp("tiny-checkpoint"))


@pytest.fixture(scope="session")
def views_db(tiny_checkpoint: TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Swept:
    """The views' sweep, run once per test session (about a minute), its database normalised."""
    return sweep_for_views(tiny_checkpoint, tmp_path_factory.mktemp("views"), tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 for the whole session (see tests/support/pg_server.py)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_password_url() -> Iterator[SimpleNamespace]:
    """A throwaway PostgreSQL server that requires a password (scram-sha-256) of every connection,
    for the whole session (see tests/support/pg_server.py):

    - ``url``: its admin URL with the password in it
      (``postgresql+psycopg://twossp:PASSWORD@127.0.0.1:PORT/postgres``; the superuser),
    - ``password``: the password itself, to assert that no output contains it,
    - ``user``: the user name,
    - ``new_database()``: a fresh empty database on it; returns its URL (with the password).
      Dropped with the server at the end of the session.
    """
    reason = password_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from sqlalchemy.engine import make_url

    with postgres_password_server() as (url, password):
        created: list[str] = []

        def fresh() -> str:
            created.append(new_database(url))
            return created[-1]

        yield SimpleNamespace(url=url, password=password, user=make_url(url).username, new_database=fresh)
        for database in created:  # a server given by TWOSSP_TEST_POSTGRES outlives the session
            drop_database(url, database)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file in ``tmp_path``, or a fresh Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    url = new_database(admin_url)
    try:
        yield url
    finally:
        drop_database(admin_url, url)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """An open ``Database`` on ``db_url`` (SQLite, and PostgreSQL where the test server runs)."""
    with Database(db_url) as database:
        yield database
