"""A terminal of fixed size for the tests that compare what the CLI prints, so that their output is
the same in any terminal, CI's included."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from twossp import cli


@contextmanager
def fixed_terminal(width: int, lines: int = 50) -> Iterator[None]:
    """A terminal ``width`` columns wide and ``lines`` high until the block ends: the CLI's consoles
    that wide and without colour (rich reads COLUMNS and FORCE_COLOR once, when twossp.cli is
    imported, so an env given to CliRunner comes too late for them), and COLUMNS and LINES for what
    asks on each call (plotext fits its charts in the terminal)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", str(width))
        mp.setenv("LINES", str(lines))
        mp.setattr(cli, "console", Console(width=width, highlight=False, color_system=None))
        mp.setattr(cli, "err", Console(width=width, stderr=True, highlight=False, color_system=None))
        yield


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    """The CLI run in-process on ``args`` (each as text), its exceptions not caught: a traceback
    fails the test rather than becoming an exit code."""
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False, env=env)
