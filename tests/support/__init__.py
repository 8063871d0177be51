"""Helpers the tests share, one copy each; the fixtures built on them are in ``tests/conftest.py``.

- ``models``: tiny deterministic models of every family, token batches, and what the tests read
  off a model (logits, parameter counts, one layer's call).
- ``searches``: naive reference searches written from the papers' protocols, for the pruning tests
  to check twossp's fast searches against.
- ``tiny_checkpoint``: a tiny checkpoint on disk with its tokenizer, text files and sweep files.
- ``task_files``: small downstream task files in each format their authors publish.
- ``stored_runs``: runs put in a database through the real store, without executing them.
- ``swept_views``: a database a real small sweep filled, normalised for the view snapshots.
- ``pg_server``: throwaway PostgreSQL servers on 127.0.0.1.
- ``consoles``: a terminal of fixed size for tests that compare what the CLI prints.
"""
