"""Which database a URL names, and how it is shown.

The result database is a SQLite file by default, any SQLAlchemy URL by ``--db`` or ``TWOSSP_DB``
(``database_url``). A URL that cannot hold results (malformed, in memory, a SQLite folder that does
not exist, a file that is not there for a reading command) is refused here, before anything
connects, with a ``DatabaseError`` that says what to give instead (``check_target``).

No message (nor anything logged) contains a password: URLs are shown through ``safe_url``, and a
driver's own words go through ``scrub`` first."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from twossp.errors import DatabaseError

DEFAULT_URL = "sqlite:///twossp.db"
MASK = "***"
#: the kinds of database twossp stores results in, as messages name them
KINDS = ("SQLite (a file path, or sqlite:///PATH) or PostgreSQL "
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
                            f"sqlite:///PATH, postgresql+psycopg://HOST/DBNAME); give {KINDS}")
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


def passwords(url: str) -> list[str]:
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


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's message, say) with ``url`` and its password masked."""
    text = text.replace(url, safe_url(url))
    for secret in passwords(url):
        text = text.replace(secret, MASK)
    return text


# ---------------------------------------------------------------------------------- checking URLs

def parse_url(url: str) -> URL:
    """``url`` parsed by SQLAlchemy; ``DatabaseError`` (password masked) when it does not parse."""
    shown = safe_url(url)
    try:
        return make_url(url)
    except (sa_exc.ArgumentError, ValueError, TypeError) as exc:
        reason = scrub(str(exc), url)
        raise DatabaseError(f"{shown} is not a database URL ({reason}); give {KINDS}") from None


def sqlite_path(parsed: URL) -> Path | None:
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


def is_sqlite(parsed: URL) -> bool:
    return parsed.drivername.split("+")[0] == "sqlite"


def check_target(url: str, *, create: bool) -> URL:
    """``url`` parsed; for SQLite, refused unless it names a file twossp can use (and, without
    ``create``, one that exists). Nothing is created."""
    parsed = parse_url(url)
    shown = safe_url(url)
    if not is_sqlite(parsed):
        return parsed
    path = sqlite_path(parsed)
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
