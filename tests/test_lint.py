"""The linter the code is written for: ruff, with the rules in pyproject.toml ([tool.ruff]), over
the package, its migrations and dashboards, the tests and the benchmarks. A violation fails the suite,
so CI enforces what the `noqa` comments in the code assume."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: it comes with the dev extra (make install-test)")
    found = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stdout + found.stderr
