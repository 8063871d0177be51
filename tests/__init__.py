"""twossp's test suite: a package, so that every test module has its own dotted name
(``tests.cli.test_sql``, ``tests.db.test_readonly_sql``) and the shared helpers import as
``tests.support.<module>``. Fixtures are in ``tests/conftest.py``."""
