"""Throwaway PostgreSQL servers for the database tests, started on 127.0.0.1 and stopped at the
end of the session. Uses the Debian ``postgresql`` package's binaries (``.ci/run`` installs it);
``TWOSSP_TEST_POSTGRES`` (an admin URL) points at an existing server instead.

Two kinds: ``postgres_server()`` trusts every local TCP connection (no password), and
``postgres_password_server()`` requires a password (scram-sha-256) for every TCP connection, its
superuser ``twossp`` having the password ``PASSWORD``: a wrong or missing password is refused, as
on a real server."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

USER = "twossp"
PASSWORD = "tw0ssp-S3cret-pw"  # distinctive, so that a test can grep any output for it


def _binaries() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists() and Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable_reason() -> str | None:
    if os.environ.get("TWOSSP_TEST_POSTGRES"):
        return None
    if _binaries() is None:
        return "PostgreSQL binaries not found (apt-get install postgresql, or set TWOSSP_TEST_POSTGRES)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run the server as"
    return None


def password_unavailable_reason() -> str | None:
    """Why ``postgres_password_server`` cannot run here, or None. With ``TWOSSP_TEST_POSTGRES`` it
    needs that URL to carry a password (a server that trusts everyone cannot refuse a wrong one)."""
    external = os.environ.get("TWOSSP_TEST_POSTGRES")
    if external:
        from sqlalchemy.engine import make_url

        if not make_url(external).password:
            return "TWOSSP_TEST_POSTGRES has no password: cannot test password authentication against it"
        return None
    return unavailable_reason()


@contextmanager
def _server(*initdb_auth: str, superuser: str, password: str | None) -> Iterator[int]:
    """initdb + pg_ctl start on a free port of 127.0.0.1; yields the port."""
    bindir = _binaries()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="twossp-pg-"))
    data, log, port = root / "data", root / "log", _free_port()
    as_postgres: list[str] = []
    pwfile: list[str] = []
    if password is not None:
        (root / "pw").write_text(password + "\n")
        os.chmod(root / "pw", 0o600)
        pwfile = [f"--pwfile={root / 'pw'}"]
    if os.geteuid() == 0:  # initdb refuses to run as root
        for path in (root, root / "pw"):
            if path.exists():
                shutil.chown(path, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]

    def run(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", superuser, *initdb_auth, *pwfile,
        "-E", "UTF8", "--locale=C.UTF-8")
    (root / "pw").unlink(missing_ok=True)
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start")
    try:
        yield port
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``): no password."""
    if os.environ.get("TWOSSP_TEST_POSTGRES"):
        yield os.environ["TWOSSP_TEST_POSTGRES"]
        return
    with _server("--auth=trust", superuser="postgres", password=None) as port:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"


@contextmanager
def postgres_password_server() -> Iterator[tuple[str, str]]:
    """Yield ``(admin URL, password)``: ``postgresql+psycopg://twossp:PASSWORD@127.0.0.1:PORT/postgres``,
    on a server that requires that password (scram-sha-256) of every TCP connection. Local socket
    connections (not used by the tests) are trusted."""
    external = os.environ.get("TWOSSP_TEST_POSTGRES")
    if external:
        from sqlalchemy.engine import make_url

        yield external, make_url(external).password
        return
    with _server("--auth-host=scram-sha-256", "--auth-local=trust", superuser=USER, password=PASSWORD) as port:
        yield f"postgresql+psycopg://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/postgres", PASSWORD


def _as_admin(admin_url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE) on the server of ``admin_url``."""
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(statement))
    finally:
        admin.dispose()


def new_database(admin_url: str) -> str:
    """A fresh, empty database on the server of ``admin_url``; its URL (same credentials)."""
    from sqlalchemy.engine import make_url

    name = f"twossp_test_{uuid.uuid4().hex[:12]}"
    _as_admin(admin_url, f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy.engine import make_url

    _as_admin(admin_url, f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
