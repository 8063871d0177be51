"""The result database: its ORM models (``models``, a public interface managed by Alembic), its
writes and reads (``store``), and opening it from a URL with its schema checked (the other
modules)."""
