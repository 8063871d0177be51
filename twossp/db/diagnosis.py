"""What went wrong with a database, in one message that says how to fix it.

SQLAlchemy, the drivers and the file system each raise their own errors, in their own words, some
of them with the password in them. ``explained(url)`` turns any of them into one ``DatabaseError``:
the first of the named diagnoses below that recognises the error writes its message; the driver's
own words (one line, password masked) are kept in it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from twossp.db.urls import KINDS, is_sqlite, safe_url, scrub, sqlite_path
from twossp.errors import DatabaseError, TwosspError


def driver_reason(exc: BaseException, url: str) -> str:
    """The driver's own words, on one line, without the SQLAlchemy boilerplate or the password."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).split("\n(Background on this error")[0]
    text = re.sub(r"^connection failed: ", "", text.strip())
    text = re.sub(r"^connection to server at \"[^\"]*\"(?: \([^)]*\))?, port \d+ failed: ", "", text)
    text = re.sub(r"\bFATAL:\s+", "", text)
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")  # the rest: hints, [SQL: ...]
    return scrub(text, url) or type(orig).__name__


@dataclass(frozen=True)
class _Failure:
    """One error raised opening or using ``url``: what the diagnoses look at."""

    exc: BaseException
    url: str
    reason: str  # the driver's words (``driver_reason``)
    parsed: URL | None  # None: the URL does not parse

    @classmethod
    def of(cls, exc: BaseException, url: str) -> _Failure:
        try:
            parsed: URL | None = make_url(url)
        except Exception:  # noqa: BLE001
            parsed = None
        return cls(exc, url, driver_reason(exc, url), parsed)

    @property
    def shown(self) -> str:
        return safe_url(self.url)

    def says(self, *words: str) -> bool:
        """Whether the driver's words contain any of ``words`` (lower case)."""
        low = self.reason.lower()
        return any(word in low for word in words)

    @property
    def path(self) -> Path | None:
        return sqlite_path(self.parsed) if self.parsed else None

    @property
    def where(self) -> str:
        parsed = self.parsed
        return f"{parsed.host or 'localhost'}:{parsed.port or 5432}" if parsed else "its host and port"


# ---------------------------------------------------------------------------------- any database

def _unknown_kind(f: _Failure) -> str | None:
    """SQLAlchemy has no dialect of that name (``postgres://``, a typo)."""
    if not isinstance(f.exc, sa_exc.NoSuchModuleError):
        return None
    kind = f.parsed.drivername if f.parsed else "?"
    hint = " (did you mean postgresql+psycopg://...?)" if kind.startswith("postgres") else ""
    return f"database {f.shown}: unknown kind of database {kind!r}{hint}; twossp stores results in {KINDS}"


def _driver_missing(f: _Failure) -> str | None:
    """The dialect's Python driver is not installed."""
    if not isinstance(f.exc, ImportError):
        return None
    module = getattr(f.exc, "name", None) or f.reason
    return (f"database {f.shown}: its Python driver ({module}) is not installed; for PostgreSQL "
            f"install psycopg (pip install 'twossp[postgres]') and use postgresql+psycopg://...")


def _unusable_url(f: _Failure) -> str | None:
    """SQLAlchemy refused an argument of the URL."""
    if not isinstance(f.exc, sa_exc.ArgumentError):
        return None
    return f"{f.shown} is not a usable database URL ({f.reason}); give {KINDS}"


# ---------------------------------------------------------------------------------- a SQLite file

def _not_sqlite(f: _Failure) -> str | None:
    if not f.says("file is not a database", "file is encrypted"):
        return None
    return (f"database {f.shown}: {f.path} is not a SQLite database ({f.reason}); point --db at "
            f"a twossp database, or at a new file name to start one")


def _damaged(f: _Failure) -> str | None:
    if not f.says("malformed"):
        return None
    return (f"database {f.shown}: {f.path} is damaged ({f.reason}); restore it from a copy, or "
            f"point --db at a new file name to start a new database")


def _read_only_file(f: _Failure) -> str | None:
    if not f.says("readonly", "read-only"):
        return None
    return (f"database {f.shown}: {f.path} is read-only ({f.reason}); make the file and its folder "
            f"writable, or give another path")


def _locked(f: _Failure) -> str | None:
    if not f.says("locked"):
        return None
    return (f"database {f.shown}: {f.path} stays locked by another process ({f.reason}); "
            f"try again when it has finished")


def _cannot_open(f: _Failure) -> str | None:
    if not (f.says("unable to open") or isinstance(f.exc, OSError)):
        return None
    return (f"database {f.shown}: cannot open {f.path} ({f.reason}); check that the file and "
            f"its folder exist and are readable and writable")


# ---------------------------------------------------------------------------------- a server

def _login_refused(f: _Failure) -> str | None:
    if not (f.says("password authentication failed", "no password supplied", "authentication failed")
            or re.search(r"role \"[^\"]*\" does not exist", f.reason.lower())):
        return None
    user = f.parsed.username if f.parsed else None
    return (f"database {f.shown}: the server refused the login of user {user!r} ({f.reason}); "
            f"check the user name and password in the URL (--db or TWOSSP_DB)")


def _no_such_database(f: _Failure) -> str | None:
    if not re.search(r"database \"[^\"]*\" does not exist", f.reason.lower()):
        return None
    name = f.parsed.database if f.parsed else "?"
    return (f"database {f.shown}: the server at {f.where} has no database {name!r}; create it "
            f"(e.g. createdb -h {f.parsed.host if f.parsed else 'HOST'} {name}) or correct the name "
            f"in the URL")


#: a driver's words for a server it cannot reach
_UNREACHABLE = ("connection refused", "could not connect", "resolve host", "name or service", "timeout",
                "timed out", "no route to host", "network is unreachable", "server closed the connection",
                "connection reset", "is the server running")


def _unreachable(f: _Failure) -> str | None:
    if not (isinstance(f.exc, (sa_exc.OperationalError, sa_exc.InterfaceError, OSError)) and f.says(*_UNREACHABLE)):
        return None
    return (f"cannot reach the database server of {f.shown} ({f.reason}); check that PostgreSQL "
            f"is running and accepts TCP connections at {f.where}, and the host and port in the URL")


_Diagnosis = Callable[[_Failure], str | None]

#: the diagnoses, in order: the first that recognises an error writes its message
_ANY_DATABASE: tuple[_Diagnosis, ...] = (_unknown_kind, _driver_missing, _unusable_url)
_SQLITE_FILE: tuple[_Diagnosis, ...] = (_not_sqlite, _damaged, _read_only_file, _locked, _cannot_open)
_SERVER: tuple[_Diagnosis, ...] = (_login_refused, _no_such_database, _unreachable)


def explain(exc: BaseException, url: str) -> DatabaseError:
    """A ``DatabaseError`` with one message for ``exc``, raised opening or using ``url``."""
    failure = _Failure.of(exc, url)
    sqlite = failure.parsed is not None and is_sqlite(failure.parsed)
    for diagnose in (*_ANY_DATABASE, *(_SQLITE_FILE if sqlite else _SERVER)):
        message = diagnose(failure)
        if message is not None:
            return DatabaseError(message)
    return DatabaseError(f"database {failure.shown}: {failure.reason}")


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
