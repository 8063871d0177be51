"""A user's SQL on the result database (``twossp db sql``, the views): ``Database(url, create=False,
read_only=True)`` and ``Database.query``.

The database itself refuses every write: SQLite opens the file read-only (plus ``query_only`` and an
authorizer that denies ATTACH), PostgreSQL runs every transaction READ ONLY. One call runs one
statement (PostgreSQL gets it as one prepared statement), in a transaction always rolled back, so
no trick in the SQL text escapes. Every attempt is checked against the whole content of the
database, read through a normal ``Database`` before and after.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect, select
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL

from tests.support.stored_runs import T0, claim, record, tiny_sweep
from twossp.contracts import RunResult, RunStatus
from twossp.db.models import Run, Sweep
from twossp.db.database import Database, QueryResult
from twossp.errors import DatabaseError, QueryError, TwosspError
from twossp.plan import plan_sweep

REFUSED = "the database is opened read-only and refused the write"

#: a test of one backend: ``db_url`` (tests/conftest.py) with that parameter only
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
POSTGRES_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

#: plain writes, each of which runs on a writable connection (``test_each_write_is_a_real_write``)
WRITES = [
    "INSERT INTO scores (run_id, dataset, metric, value) SELECT run_id, 'other.txt', metric, value FROM scores",
    "UPDATE runs SET status = 'failed', error = 'overwritten'",
    "DELETE FROM scores",
    "DELETE FROM runs",
    "DROP TABLE generations",
    "CREATE TABLE extra (x INTEGER)",
    "ALTER TABLE runs ADD COLUMN extra INTEGER",
    "CREATE INDEX ix_extra ON runs (host)",
    "UPDATE alembic_version SET version_num = '0001'",
]

#: more than one statement in one call: refused before any of them runs
SEVERAL = [
    "select 1; delete from runs",
    "commit; delete from runs",
    "rollback; delete from runs",
    "begin; delete from runs",
    "select 1;\n-- a comment\ndelete from runs;",
]


def snapshot(url: str) -> dict[str, object]:
    """Everything in the database at ``url``, read through a normal (writable) ``Database``: each
    table's columns and rows (in a stable order), and on PostgreSQL each sequence's state."""
    with Database(url, create=False) as db:
        with db.engine.connect() as conn:
            found: dict[str, object] = {}
            inspector = inspect(conn)
            for table in sorted(inspector.get_table_names()):
                columns = [c["name"] for c in inspector.get_columns(table)]
                rows = [tuple(row) for row in conn.execute(sql_text(f'SELECT * FROM "{table}"'))]
                found[table] = (columns, sorted(rows, key=repr))
            if conn.dialect.name == "postgresql":
                for sequence in sorted(inspector.get_sequence_names()):
                    found[f"sequence {sequence}"] = tuple(
                        conn.execute(sql_text(f'SELECT last_value, is_called FROM "{sequence}"')).one())
            return found


def fill(url: str) -> None:
    """A sweep of two runs through the real store: one completed with scores, timings and
    generations, one failed."""
    with Database(url) as writer:
        spec = tiny_sweep("readonly-sql")
        dense, pruned = plan_sweep(spec)
        assert claim(writer, spec, dense, pruned)
        record(writer, pruned, RunResult(
            key=pruned.key, status=RunStatus.COMPLETED, started_at=T0, finished_at=T0, achieved_sparsity=0.5,
            scores=[("eval.txt", "perplexity", 12.5), ("eval.txt", "loss", 2.5)], timings={"prune": 1.5},
            generations=[("The old teacher", " opened the window.", 5)]))
        record(writer, dense, RunResult(key=dense.key, status=RunStatus.FAILED, error="RuntimeError: boom",
                                        started_at=T0, finished_at=T0))


@pytest.fixture
def stored(db_url: str) -> str:
    """``db_url`` (SQLite or PostgreSQL) holding a sweep of two runs."""
    fill(db_url)
    return db_url


@pytest.fixture
def ro(stored: str):  # a read-only Database
    with Database(stored, create=False, read_only=True) as database:
        yield database


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def refused_without_a_trace(ro: Database, url: str, statements: list[str], *, why: str | None = REFUSED,
                            params: dict | None = None) -> list[str]:
    """Run each statement; the problems found: one that did not raise ``QueryError`` (saying
    ``why``), or left the database changed."""
    problems = []
    before = snapshot(url)
    for sql in statements:
        try:
            got = ro.query(sql, params)
        except QueryError as exc:
            if why is not None and why not in str(exc):
                problems.append(f"{sql!r}: {exc}")
        else:
            problems.append(f"{sql!r} ran and returned {got}")
        if snapshot(url) != before:
            problems.append(f"{sql!r} changed the database")
            before = snapshot(url)
    return problems


# ---------------------------------------------------------------------------------- reading

def test_a_select_with_named_parameters(ro: Database) -> None:
    got = ro.query("SELECT r.method, r.status, s.metric, s.value FROM runs r JOIN scores s ON s.run_id = r.id "
                   "WHERE r.method = :method AND s.value > :floor ORDER BY s.metric", {"method": "2ssp", "floor": 1})
    assert got == QueryResult(["method", "status", "metric", "value"],
                              [("2ssp", "completed", "loss", 2.5), ("2ssp", "completed", "perplexity", 12.5)])
    assert ro.query("SELECT count(*) AS n FROM runs") == QueryResult(["n"], [(2,)])
    assert ro.query("SELECT key FROM runs WHERE id = :id", {"id": -1}) == QueryResult(["key"], [])


def test_the_same_query_again_and_after_an_error(ro: Database) -> None:
    """PostgreSQL: each statement is prepared, and the rollback after it drops the prepared ones."""
    first = ro.query("SELECT status FROM runs ORDER BY status")
    with pytest.raises(QueryError):
        ro.query("SELECT nothing FROM runs")
    for _ in range(3):
        assert ro.query("SELECT status FROM runs ORDER BY status") == first == QueryResult(
            ["status"], [("completed",), ("failed",)])


def test_a_percent_sign_and_a_cast_are_plain_sql(ro: Database, stored: str) -> None:
    cast = "CAST(7 AS TEXT)" if is_sqlite(stored) else "7::text"
    assert ro.query(f"SELECT '100%' AS p, 7 % 3 AS m, {cast} AS t, '12:30' AS hm") == QueryResult(
        ["p", "m", "t", "hm"], [("100%", 1, "7", "12:30")])


def test_a_statement_without_rows(ro: Database, stored: str) -> None:
    assert ro.query("begin") == QueryResult([], [])
    assert ro.query("") == QueryResult([], [])
    if is_sqlite(stored):
        info = ro.query("pragma table_info(runs)")
        assert info.columns[:3] == ["cid", "name", "type"] and ("id" in [row[1] for row in info.rows])
    else:
        assert ro.query("set work_mem = '8MB'") == QueryResult([], [])


def test_orm_reads_through_the_read_only_database(ro: Database, stored: str) -> None:
    with ro.session() as session:
        assert sorted(run.status for run in session.scalars(select(Run))) == ["completed", "failed"]
    before = snapshot(stored)
    with pytest.raises(sa_exc.DBAPIError), ro.session() as session:
        session.add(Sweep(name="sneaked-in", spec={}))
    with pytest.raises(sa_exc.DBAPIError), ro.session() as session:
        session.execute(sql_text("DELETE FROM runs"))
    assert snapshot(stored) == before


# ---------------------------------------------------------------------------------- errors

def test_an_unknown_table_a_syntax_error(ro: Database) -> None:
    with pytest.raises(QueryError, match=r"^query on .*: .*\bno_such_table\b") as caught:
        ro.query("SELECT * FROM no_such_table")
    assert "\n" not in str(caught.value) and isinstance(caught.value, TwosspError)
    with pytest.raises(QueryError, match=r"^query on .*: .*selec"):
        ro.query("selec 1")


def test_a_missing_parameter_is_named(ro: Database) -> None:
    with pytest.raises(QueryError, match=r"^query on .*: no value given for the parameter :key$"):
        ro.query("SELECT * FROM runs WHERE id = :id AND key = :key", {"id": 1})
    with pytest.raises(QueryError, match=r"no value given for the parameters :id, :key$"):
        ro.query("SELECT * FROM runs WHERE id = :id AND key = :key")
    assert ro.query("SELECT :a AS a", {"a": None, "unused": 1}) == QueryResult(["a"], [(None,)])


def test_read_only_needs_create_false(stored: str) -> None:
    with pytest.raises(ValueError, match="create=False"):
        Database(stored, read_only=True)
    with pytest.raises(ValueError, match="create=False"):
        Database(stored, create=True, read_only=True)


def test_query_is_only_for_a_read_only_database(stored: str) -> None:
    with Database(stored, create=False) as writer:
        with pytest.raises(ValueError, match="read_only=True"):
            writer.query("SELECT 1")


# ---------------------------------------------------------------------------------- writes refused

def test_each_write_is_a_real_write(stored: str) -> None:
    """The control of the tests below: on a writable connection every statement of ``WRITES``
    runs (in a transaction rolled back here), so a refusal below is the read-only database's."""
    with Database(stored, create=False) as writer:
        for sql in WRITES:
            with writer.engine.connect() as conn:
                conn.execute(sql_text(sql))
                conn.rollback()


def test_writes_are_refused_and_change_nothing(ro: Database, stored: str) -> None:
    assert refused_without_a_trace(ro, stored, WRITES) == []
    assert refused_without_a_trace(ro, stored, ["DELETE FROM runs WHERE id = :id"], params={"id": 1}) == []


def test_several_statements_are_refused_before_any_runs(ro: Database, stored: str) -> None:
    assert refused_without_a_trace(ro, stored, SEVERAL, why="more than one statement; give one at a time") == []
    assert refused_without_a_trace(ro, stored, ["select :x; delete from runs"], params={"x": 1},
                                   why="more than one statement") == []


def test_a_write_inside_a_select(ro: Database, stored: str) -> None:
    """A data-modifying CTE (PostgreSQL runs it, read-only refuses it; SQLite does not parse it)."""
    why = None if is_sqlite(stored) else REFUSED
    assert refused_without_a_trace(ro, stored, ["WITH d AS (DELETE FROM runs RETURNING id) SELECT * FROM d"],
                                   why=why) == []


@SQLITE_ONLY
def test_sqlite_tricks_are_refused(ro: Database, stored: str, tmp_path: Path) -> None:
    files = sorted(os.listdir(tmp_path))
    tricks = [
        f"ATTACH DATABASE '{tmp_path / 'x.db'}' AS x",  # would create and write another file
        f"VACUUM INTO '{tmp_path / 'copy.db'}'",         # ditto, by an ATTACH of its own
        "VACUUM",
        "PRAGMA query_only = off",
        "PRAGMA user_version = 7",
        "PRAGMA journal_mode = wal",
        "ANALYZE",
        "CREATE TEMP TABLE t (x INTEGER)",
        "SELECT load_extension('/nonexistent/ext')",
    ]
    assert refused_without_a_trace(ro, stored, tricks) == []
    assert refused_without_a_trace(ro, stored, ["DETACH DATABASE main"], why=None) == []
    assert refused_without_a_trace(ro, stored, ["DELETE FROM runs"]) == []  # query_only is still on
    assert ro.query("PRAGMA query_only") == QueryResult(["query_only"], [(1,)])
    assert sorted(os.listdir(tmp_path)) == files  # no x.db, copy.db, journal or WAL file


@POSTGRES_ONLY
def test_postgres_tricks_are_refused(ro: Database, stored: str) -> None:
    tricks = [
        "SELECT nextval('runs_id_seq')",
        "SELECT setval('runs_id_seq', 1000)",
        "SELECT set_config('transaction_read_only', 'off', false)",  # too late: the statement is a query
        "DO $$ BEGIN DELETE FROM runs; END $$",
        "DO $$ BEGIN SET TRANSACTION READ WRITE; DELETE FROM runs; END $$",
        "TRUNCATE runs CASCADE",
        "SELECT * FROM runs FOR UPDATE",
        "CREATE TEMP TABLE t (x INTEGER)",
        "COPY runs FROM '/dev/null'",
    ]
    assert refused_without_a_trace(ro, stored, tricks) == []
    assert refused_without_a_trace(ro, stored, ["set transaction read write; delete from runs"],
                                   why="more than one statement") == []
    others = [
        "DO $$ BEGIN COMMIT; DELETE FROM runs; END $$",  # invalid transaction termination
        "VACUUM runs",                                   # cannot run inside a transaction block
        "COPY runs FROM STDIN",
        "COPY runs TO STDOUT",                           # psycopg: only through cursor.copy()
    ]
    assert refused_without_a_trace(ro, stored, others, why=None) == []
    assert ro.query("SELECT count(*) FROM runs").rows == [(2,)]  # a connection left copying was dropped


@pytest.mark.parametrize("escape", [
    "commit",
    "set transaction read write",
    "set session characteristics as transaction read write",
    "set default_transaction_read_only = off",
    "select set_config('default_transaction_read_only', 'off', false)",
    "begin read write",
])
def test_a_statement_that_lifts_read_only_does_not_last_to_the_next_call(ro: Database, stored: str,
                                                                         escape: str) -> None:
    """Each runs (or not), alone; its effect ends with the rollback of its own transaction, so the
    next call is read-only again."""
    before = snapshot(stored)
    try:
        ro.query(escape)
    except QueryError:
        pass
    sneak = "INSERT INTO sweeps (name, spec) VALUES ('sneaked-in', '{}')"
    assert refused_without_a_trace(ro, stored, ["DELETE FROM runs", sneak]) == []
    assert snapshot(stored) == before


@POSTGRES_ONLY
def test_postgres_every_transaction_is_read_only_whatever_the_session_default(ro: Database, stored: str) -> None:
    """Both locks: the session default ``default_transaction_read_only`` (libpq ``options``), and
    psycopg's ``BEGIN READ ONLY`` (``postgresql_readonly``), which holds alone when the default is
    lifted and committed (here through the ORM session, which commits)."""
    assert ro.query("SELECT current_setting('default_transaction_read_only') AS d, "
                    "current_setting('transaction_read_only') AS t").rows == [("on", "on")]
    with ro.session() as session:
        session.execute(sql_text("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"))
    with ro.session() as session:  # the same pooled connection: nothing else uses the pool
        assert session.execute(sql_text("SELECT current_setting('default_transaction_read_only'), "
                                        "current_setting('transaction_read_only')")).one() == ("off", "on")
    assert refused_without_a_trace(ro, stored, ["DELETE FROM runs"]) == []


@POSTGRES_ONLY
def test_postgres_the_users_own_libpq_options_are_kept(stored: str) -> None:
    with Database(f"{stored}?options=-c%20statement_timeout%3D4321", create=False, read_only=True) as db:
        assert db.query("SELECT current_setting('statement_timeout') AS s, "
                        "current_setting('default_transaction_read_only') AS d").rows == [("4321ms", "on")]
        assert refused_without_a_trace(db, stored, ["DELETE FROM runs"]) == []


# ---------------------------------------------------------------------------------- files, writers, passwords

def test_a_missing_sqlite_file_is_never_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(DatabaseError, match=r"^no database at .*missing\.db"):
        Database(f"sqlite:///{missing}", create=False, read_only=True)
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_path_with_uri_characters(tmp_path: Path) -> None:
    """The read-only connection opens the file by a ``file:`` URI: the path is quoted in it (and in
    the SQLAlchemy URL, whose '?' would start a query string)."""
    folder = tmp_path / "odd ?name #1 %20 é"
    folder.mkdir()
    url = URL.create("sqlite", database=str(folder / "results?.db")).render_as_string()
    fill(url)
    with Database(url, create=False, read_only=True) as db:
        assert db.query("SELECT count(*) FROM runs").rows == [(2,)]
        assert refused_without_a_trace(db, url, ["DELETE FROM runs"]) == []
    assert sorted(p.name for p in folder.iterdir()) == ["results?.db"]


def test_reading_while_a_writer_is_open(ro: Database, stored: str) -> None:
    """A writer in the middle of a transaction: the reader sees the last committed state, then the
    writer's once it commits."""
    with Database(stored, create=False) as writer:
        with writer.session() as session:
            session.add(Sweep(name="second", spec={}))
            session.flush()
            assert ro.query("SELECT name FROM sweeps ORDER BY name").rows == [("readonly-sql",)]
        assert ro.query("SELECT name FROM sweeps ORDER BY name").rows == [("readonly-sql",), ("second",)]


def test_no_message_carries_the_password(postgres_password_url) -> None:
    server = postgres_password_url
    url = server.new_database()
    fill(url)
    with Database(url, create=False, read_only=True) as db:
        assert server.password not in db.display_url
        messages = []
        for sql in ["DELETE FROM runs", "SELECT * FROM no_such_table", "select 1; delete from runs",
                    "SELECT :missing", f"SELECT * FROM \"{server.password}\""]:
            with pytest.raises(QueryError) as caught:
                db.query(sql)
            messages.append(str(caught.value))
        assert REFUSED in messages[0]
        assert all(server.password not in message and "***" in message for message in messages), messages


class _OtherSQLiteDriver(SQLiteDialect_pysqlite):
    """A SQLite driver other than the standard library's, for the test below."""

    driver = "othersqlite"


@SQLITE_ONLY
def test_a_driver_it_cannot_keep_read_only_is_refused(stored: str, tmp_path: Path) -> None:
    """Read-only is made per driver (a file URI and an authorizer for sqlite3; session options,
    BEGIN READ ONLY and prepared statements for psycopg): any other is refused, not trusted."""
    registry.register("sqlite.othersqlite", __name__, "_OtherSQLiteDriver")
    url = stored.replace("sqlite://", "sqlite+othersqlite://", 1)
    with pytest.raises(DatabaseError, match=r"opens read-only only SQLite .* not sqlite\+othersqlite$"):
        Database(url, create=False, read_only=True)
