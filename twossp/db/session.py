"""Temporary: the names twossp.db.session held, until every importer uses the modules they moved to
(urls, diagnosis, engines, versioning, database). Removed with the last importer."""

from twossp.db.database import Database, QueryResult  # noqa: F401
from twossp.db.diagnosis import explain, explained  # noqa: F401
from twossp.db.engines import make_engine  # noqa: F401
from twossp.db.urls import database_url, safe_url  # noqa: F401
from twossp.db.versioning import (alembic_config, current_revision, database_exists, describe_revision,  # noqa: F401
                                  head_revision, known_revision, upgrade)
from twossp.errors import DatabaseError  # noqa: F401
