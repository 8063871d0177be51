"""Provenance that must not lie: the git revision only of the project's own checkout, and the
dashboards inside the package a wheel installs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from twossp.runtime.worker import git_revision

REPO = Path(__file__).resolve().parents[2]


def test_the_git_revision_is_the_projects_own_checkout() -> None:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:  # a source tree without git: nothing to record
        assert git_revision(REPO) is None
        return
    assert git_revision(REPO) == head.stdout.strip()


def test_no_revision_from_a_copy_inside_another_repository(tmp_path: Path) -> None:
    other = tmp_path / "someone-elses-project"
    (other / "venv" / "lib").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    (other / "pyproject.toml").write_text('[project]\nname = "their-app"\n')
    subprocess.run(["git", "-C", str(other), "add", "."], check=True)
    subprocess.run(["git", "-C", str(other), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x"],
                   check=True)
    assert git_revision(other) is None                  # their checkout, not twossp's
    assert git_revision(other / "venv" / "lib") is None  # an install inside it
    assert git_revision(tmp_path) is None               # no checkout at all


def test_a_wheel_ships_the_dashboards_and_migrations(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("twossp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twossp/dashboards/leaderboard.yaml" in names
    assert {f"twossp/migrations/versions/{p.name}" for p in (REPO / "migrations" / "versions").glob("0*.py")} <= names
