"""A throwaway PostgreSQL server for the database tests, started on 127.0.0.1 and stopped at the
end of the session. Uses the Debian ``postgresql`` package's binaries (``.ci/run`` installs it);
``TWOSSP_TEST_POSTGRES`` (an admin URL) points at an existing server instead."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``)."""
    if os.environ.get("TWOSSP_TEST_POSTGRES"):
        yield os.environ["TWOSSP_TEST_POSTGRES"]
        return
    bindir = _binaries()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="twossp-pg-"))
    data, log, port = root / "data", root / "log", _free_port()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]

    def run(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
