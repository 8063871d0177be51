"""Opening the result database, as every command does through ``Database`` (twossp.db.database), and
so the modules it is made of (urls, diagnosis, engines, versioning): every unusable URL is one
``DatabaseError`` saying what is wrong and how to fix it, never a traceback; no message nor log line contains a
password; a reading command (``create=False``) never creates a file or a schema.

The password tests run against a real PostgreSQL server that requires one
(``postgres_password_url``, tests/conftest.py).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from twossp.db.database import Database
from twossp.db.engines import make_engine
from twossp.db.urls import database_url, safe_url
from twossp.db.versioning import alembic_config, database_exists, describe_revision, head_revision, upgrade
from twossp.errors import DatabaseError, SchemaOutdated, TwosspError


def with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TWOSSP_DB", raising=False)
    return tmp_path


# ---------------------------------------------------------------------------------- safe_url

@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://twossp:S3cret-pw@db.example:5432/results",
     "postgresql+psycopg://twossp:***@db.example:5432/results"),
    ("postgresql+psycopg://twossp:p%40ss%2Fw%3Ard@db/results", "postgresql+psycopg://twossp:***@db/results"),
    ("postgresql+psycopg://twossp:pa/ss@db/results", "postgresql+psycopg://twossp:***@db/results"),
    ("postgresql+psycopg://twossp@db/results?password=S3cret-pw&sslmode=require",
     "postgresql+psycopg://twossp@db/results?password=***&sslmode=require"),
    ("postgresql+psycopg://db/results", "postgresql+psycopg://db/results"),
    ("sqlite:///results/x.db", "sqlite:///results/x.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("results.db", "sqlite:///results.db"),
    ("postgresql+psycopg://twossp:S3cret-pw@db:notaport/results", "postgresql+psycopg://twossp:***@db:notaport/results"),
    ("?? ://twossp:S3cret-pw@ nonsense", "?? ://twossp:***@ nonsense"),
])
def test_safe_url_masks_the_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_safe_url_agrees_with_sqlalchemy_on_where_the_password_is() -> None:
    for url in ("postgresql+psycopg://u:pw@h/d", "postgresql+psycopg://u:p:w@h:1/d", "mysql://a:b%23c@h/d"):
        parsed = make_url(url)
        masked = make_url(safe_url(url))
        assert (masked.username, masked.host, masked.port, masked.database, masked.password) == (
            parsed.username, parsed.host, parsed.port, parsed.database, "***")


def test_safe_url_of_none_is_the_default_or_twossp_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOSSP_DB", raising=False)
    assert safe_url(None) == "sqlite:///twossp.db"
    monkeypatch.setenv("TWOSSP_DB", "postgresql+psycopg://u:S3cret-pw@h/d")
    assert safe_url(None) == "postgresql+psycopg://u:***@h/d"


def test_database_keeps_the_real_url_and_shows_the_masked_one(in_tmp: Path) -> None:
    with Database("results.db") as db:
        assert (db.url, db.display_url) == ("sqlite:///results.db", "sqlite:///results.db")


def test_a_with_block_closes_the_database_however_it_ends(in_tmp: Path) -> None:
    with pytest.raises(RuntimeError, match="the block failed"), Database("results.db") as db:
        with db.session() as session:
            session.execute(text("SELECT 1"))
        assert db.engine.pool.checkedin() == 1  # the connection waits in the pool
        raise RuntimeError("the block failed")
    assert db.engine.pool.checkedin() == 0  # closed: the engine's connections are gone


# ---------------------------------------------------------------------------------- unusable URLs

RANDOM_BYTES = bytes(range(256)) * 16


@pytest.mark.parametrize("create", [True, False], ids=["create", "read"])
@pytest.mark.parametrize("url, message", [
    ("sqlite:///no/such/folder/x.db", r"^database sqlite:///no/such/folder/x\.db: folder no/such/folder does not exist; "
                                      r"create it \(mkdir -p no/such/folder\) or give a path in an existing folder$"),
    ("no/such/folder/x.db", r"folder no/such/folder does not exist"),
    ("foo://x", r"^database foo://x: unknown kind of database 'foo'; twossp stores results in SQLite "
                r"\(a file path, or sqlite:///PATH\) or PostgreSQL \(postgresql\+psycopg://USER:PASSWORD@HOST:PORT/DBNAME\)$"),
    ("postgres://twossp:S3cret-pw@h/d", r"^database postgres://twossp:\*\*\*@h/d: unknown kind of database 'postgres' "
                                        r"\(did you mean postgresql\+psycopg://\.\.\.\?\)"),
    ("sqlite://", r"^sqlite:// is an in-memory SQLite database: the results would vanish when twossp exits; "
                  r"give a file path instead \(e\.g\. --db results\.db, or sqlite:///results\.db\)$"),
    ("sqlite:///:memory:", r"^sqlite:///:memory: is an in-memory SQLite database"),
    ("sqlite:///file::memory:?uri=true", r"is an in-memory SQLite database"),
    ("://twossp:S3cret-pw@h/d", r"^://twossp:\*\*\*@h/d is not a database URL \(Could not parse SQLAlchemy URL"),
    ("postgresql+psycopg://twossp:S3cret-pw@h:port/d",
     r"^postgresql\+psycopg://twossp:\*\*\*@h:port/d is not a database URL \(invalid literal for int"),
    ("sqlite:/x.db", r"^sqlite:/x\.db is not a database URL \(no '//' after the scheme"),
    ("postgresql+psycopg://twossp:S3cret-pw@127.0.0.1:1/results",
     r"^cannot reach the database server of postgresql\+psycopg://twossp:\*\*\*@127\.0\.0\.1:1/results "
     r"\(Connection refused\); check that PostgreSQL is running and accepts TCP connections at 127\.0\.0\.1:1, "
     r"and the host and port in the URL$"),
    ("postgresql+psycopg://twossp:S3cret-pw@host.invalid/results",
     r"^cannot reach the database server of postgresql\+psycopg://twossp:\*\*\*@host\.invalid/results"),
    ("mysql://twossp:S3cret-pw@h/d", r"^database mysql://twossp:\*\*\*@h/d: its Python driver \(MySQLdb\) is not installed"),
])
def test_an_unusable_url_is_one_database_error(in_tmp: Path, url: str, message: str, create: bool) -> None:
    with pytest.raises(DatabaseError, match=message) as caught:
        Database(url, create=create)
    assert "S3cret-pw" not in str(caught.value)
    error = caught.value  # no driver error (whose message might hold the password) chained to it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert list(in_tmp.iterdir()) == []  # nothing created


@pytest.mark.parametrize("create", [True, False], ids=["create", "read"])
def test_a_file_that_is_not_a_database(in_tmp: Path, create: bool) -> None:
    (in_tmp / "x.db").write_bytes(RANDOM_BYTES)
    with pytest.raises(DatabaseError, match=r"^database sqlite:///x\.db: x\.db is not a SQLite database "
                                            r"\(file is not a database\); point --db at a twossp database, "
                                            r"or at a new file name to start one$"):
        Database("x.db", create=create)
    assert (in_tmp / "x.db").read_bytes() == RANDOM_BYTES  # untouched
    with pytest.raises(DatabaseError, match="is not a SQLite database"):
        upgrade("x.db")
    assert (in_tmp / "x.db").read_bytes() == RANDOM_BYTES


def test_a_folder_is_not_a_database_file(in_tmp: Path) -> None:
    (in_tmp / "results").mkdir()
    with pytest.raises(DatabaseError, match=r"results is a folder, not a database file; give a file path inside it"):
        Database("results")


def test_database_error_is_a_twossp_error() -> None:
    assert issubclass(DatabaseError, TwosspError)


def test_a_scheme_without_slashes_is_malformed() -> None:
    with pytest.raises(DatabaseError, match="no '//' after the scheme"):
        database_url("postgresql+psycopg:db/results")
    assert database_url("results:v2.db") == "sqlite:///results:v2.db"  # a bare path may hold a colon


def test_upgrade_reports_unusable_urls_too(in_tmp: Path) -> None:
    for url in ("foo://x", "sqlite://", "postgresql+psycopg://twossp:S3cret-pw@127.0.0.1:1/results"):
        with pytest.raises(DatabaseError) as caught:
            upgrade(url)
        assert "S3cret-pw" not in str(caught.value)


# ---------------------------------------------------------------------------------- reading never creates

def test_reading_a_missing_sqlite_file_does_not_create_it(in_tmp: Path) -> None:
    with pytest.raises(DatabaseError, match=r"^no database at results\.db \(sqlite:///results\.db\); check --db or "
                                            r"TWOSSP_DB \(a sweep run creates the database on first use\)$"):
        Database("results.db", create=False)
    assert not (in_tmp / "results.db").exists()
    with pytest.raises(DatabaseError, match="no database at"):
        describe_revision("results.db")
    assert not database_exists("results.db")
    assert list(in_tmp.iterdir()) == []


def test_reading_an_empty_database_is_refused_and_creates_no_schema(db_url: str) -> None:
    make_engine(db_url).dispose()
    if db_url.startswith("sqlite"):
        Path(make_url(db_url).database).touch()  # an empty file is an empty SQLite database
    with pytest.raises(DatabaseError, match=r"^database .* holds no twossp results \(it is empty\); check --db or "
                                            r"TWOSSP_DB \(a sweep run creates the schema on first use\)$"):
        Database(db_url, create=False)
    engine = make_engine(db_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    assert database_exists(db_url)
    assert describe_revision(db_url).endswith(": empty (no twossp schema yet; a sweep run or twossp db upgrade "
                                              "creates it)")


def test_reading_an_existing_database(db_url: str) -> None:
    Database(db_url).close()  # a writing command creates it
    Database(db_url, create=False).close()
    assert database_exists(db_url)
    assert describe_revision(db_url) == (f"{safe_url(db_url)}: schema 0009 (recovery after pruning: a recovered "
                                         "run's loss curve, and its recovery label), up to date")


def test_an_outdated_schema_is_refused_with_the_upgrade_command(db_url: str) -> None:
    command.upgrade(alembic_config(db_url), "0002")
    for create in (True, False):  # neither a writing nor a reading command upgrades an existing schema
        with pytest.raises(SchemaOutdated, match=rf"^database .* is at schema 0002, twossp needs 0009; "
                                                 rf"run: twossp db upgrade --db '{re.escape(safe_url(db_url))}'$"):
            Database(db_url, create=create)
    assert describe_revision(db_url).endswith(f"schema 0002, twossp needs 0009; run: twossp db upgrade --db "
                                              f"'{safe_url(db_url)}'")
    upgrade(db_url)
    Database(db_url, create=False).close()


def test_database_exists(in_tmp: Path, postgres_admin_url: str) -> None:
    assert not database_exists("results.db")
    assert not database_exists("no/such/folder/x.db")
    (in_tmp / "x.db").write_bytes(RANDOM_BYTES)
    assert database_exists("x.db")  # there is something there (which Database then refuses)
    assert database_exists(postgres_admin_url)
    assert not database_exists(make_url(postgres_admin_url).set(database="twossp_no_such_db")
                               .render_as_string(hide_password=False))
    for url in ("foo://x", "sqlite://", "postgresql+psycopg://u:S3cret-pw@127.0.0.1:1/d"):
        with pytest.raises(DatabaseError):
            database_exists(url)
    assert sorted(p.name for p in in_tmp.iterdir()) == ["x.db"]


def test_a_server_without_that_database(postgres_admin_url: str) -> None:
    url = make_url(postgres_admin_url).set(database="twossp_no_such_db").render_as_string(hide_password=False)
    with pytest.raises(DatabaseError, match=r"the server at 127\.0\.0\.1:\d+ has no database 'twossp_no_such_db'; "
                                            r"create it \(e\.g\. createdb -h 127\.0\.0\.1 twossp_no_such_db\) or "
                                            r"correct the name in the URL$"):
        Database(url)


# ---------------------------------------------------------------------------------- passwords

def test_a_wrong_password_is_refused_without_printing_it(postgres_password_url) -> None:
    server = postgres_password_url
    wrong = "Wr0ng-pw-4711"
    url = with_password(server.url, wrong)
    for attempt in (lambda: Database(url), lambda: Database(url, create=False), lambda: upgrade(url),
                    lambda: database_exists(url), lambda: describe_revision(url)):
        with pytest.raises(DatabaseError, match=rf"^database {re.escape(make_url(server.url).drivername)}://twossp:\*\*\*@"
                                                r"127\.0\.0\.1:\d+/postgres: the server refused the login of user "
                                                r"'twossp' \(password authentication failed for user \"twossp\"\); "
                                                r"check the user name and password in the URL \(--db or TWOSSP_DB\)$"
                           ) as caught:
            attempt()
        assert wrong not in str(caught.value) and server.password not in str(caught.value)


def test_no_password_for_a_server_that_requires_one(postgres_password_url) -> None:
    parsed = make_url(postgres_password_url.url)
    url = f"postgresql+psycopg://{parsed.username}@{parsed.host}:{parsed.port}/{parsed.database}"
    with pytest.raises(DatabaseError, match=r"the server refused the login of user 'twossp'"):
        Database(url)


def test_the_right_password_opens_and_is_never_shown(postgres_password_url, caplog, capfd) -> None:
    """First use (the Alembic migrations run), a reading open, the upgrade and the description: no
    message, log line (SQLAlchemy's and Alembic's, at DEBUG) nor output carries the password."""
    server = postgres_password_url
    url = server.new_database()
    assert server.password in url
    with caplog.at_level(logging.DEBUG):
        for name in ("sqlalchemy", "alembic"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        try:
            with Database(url) as db:
                assert db.display_url == safe_url(url) and server.password not in db.display_url
                assert server.password not in repr(db)
                with db.session() as session:
                    assert session.execute(text("SELECT current_user")).scalar() == "twossp"
            upgrade(url)
            Database(url, create=False).close()
            description = describe_revision(url)
        finally:
            for name in ("sqlalchemy", "alembic"):
                logging.getLogger(name).setLevel(logging.NOTSET)
    assert "Running upgrade" in caplog.text  # the logs were captured
    assert description.endswith("up to date") and server.password not in description
    out, err = capfd.readouterr()
    for seen in (caplog.text, out, err, description):
        assert server.password not in seen


def test_schema_outdated_messages_on_postgres_do_not_carry_the_password(postgres_password_url) -> None:
    server = postgres_password_url
    url = server.new_database()
    command.upgrade(alembic_config(url), "0002")
    shown = safe_url(url)
    with pytest.raises(SchemaOutdated) as caught:
        Database(url)
    message = str(caught.value)
    assert message == (f"database {shown} is at schema 0002, twossp needs {head_revision()}; run: twossp db upgrade "
                       f"--db '{shown}' (with the real password in place of ***), or with TWOSSP_DB set to the URL: "
                       f"twossp db upgrade")
    assert server.password not in message and server.password not in describe_revision(url)

    engine = make_engine(url)  # a schema version this twossp does not know
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    for attempt in (lambda: Database(url), lambda: upgrade(url)):
        with pytest.raises(SchemaOutdated) as caught:
            attempt()
        assert "9999" in str(caught.value) and server.password not in str(caught.value)

    foreign = server.new_database()
    engine = make_engine(foreign)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE inventory (id INTEGER)"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaOutdated, match="has tables but no twossp schema version") as caught:
        Database(foreign)
    assert server.password not in str(caught.value)


def test_a_password_in_the_query_string_is_masked_too(postgres_password_url) -> None:
    parsed = make_url(postgres_password_url.url)
    url = (f"postgresql+psycopg://{parsed.username}@{parsed.host}:{parsed.port}/{parsed.database}"
           f"?password=Wr0ng-pw-4711")
    with pytest.raises(DatabaseError, match=r"password=\*\*\*.*refused the login") as caught:
        Database(url)
    assert "Wr0ng-pw-4711" not in str(caught.value)


def test_twossp_db_is_read_when_no_url_is_given(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOSSP_DB", str(in_tmp / "from-env.db"))
    Database().close()
    assert (in_tmp / "from-env.db").is_file()
    assert database_exists()
    assert describe_revision().endswith("up to date")
    assert os.environ["TWOSSP_DB"] in safe_url(None)


def test_no_privilege_to_create_the_schema_is_reported_at_once(postgres_admin_url: str) -> None:
    """A user who may connect but not create tables: the failed first-use migration is reported as
    it is, not mistaken (for a minute) for another driver creating the schema."""
    import time
    import uuid

    from tests.support.pg_server import drop_database, new_database

    url = new_database(postgres_admin_url)
    role = f"reader_{uuid.uuid4().hex[:8]}"
    admin = make_engine(postgres_admin_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        as_reader = make_url(url).set(username=role).render_as_string(hide_password=False)
        start = time.monotonic()
        with pytest.raises(DatabaseError, match=rf"^database .*{role}@.*: permission denied for schema public"):
            Database(as_reader)
        assert time.monotonic() - start < 15
    finally:
        drop_database(postgres_admin_url, url)
        with admin.begin() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
