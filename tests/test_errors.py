"""The typed errors' helpers."""

from __future__ import annotations

import pytest

from twossp.errors import last_line

TRACEBACK = """Traceback (most recent call last):
  File "worker.py", line 3, in run
    prune(model)
twossp.errors.BudgetError: sparsity 0.9 cannot be met
"""


def test_last_line_is_what_a_traceback_ends_with() -> None:
    assert last_line(TRACEBACK) == "twossp.errors.BudgetError: sparsity 0.9 cannot be met"
    assert last_line("one line") == "one line"
    assert last_line("first\nlast  \n\n") == "last"  # trailing blank lines and spaces skipped


@pytest.mark.parametrize("error", [None, "", " ", "\n", " \t\n \r\n"])
def test_no_text_gives_the_default_instead_of_an_index_error(error) -> None:
    assert last_line(error) == ""
    assert last_line(error, "?") == "?"
