"""Input a new user gets wrong, through the real CLI: one specific message, the README's exit code,
no traceback, no password, and nothing written. One test per class of mistake (the sweep-file
classes themselves are in tests/test_spec.py and tests/test_spec_property.py)."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import Result
from sqlalchemy import select, update

from tests.support.consoles import fixed_terminal, invoke
from twossp.contracts import RunStatus
from twossp.db.models import Run, utcnow
from twossp.db.database import Database

SECTION = "[bold red]x[/]"  # rich markup, which must be printed as it is


@pytest.fixture(autouse=True, scope="module")
def terminal() -> Iterator[None]:
    with fixed_terminal(300):
        yield


def assert_clean(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return " ".join(result.output.split())


# --------------------------------------------------------------------------------- databases
def test_reading_commands_never_create_a_database(tiny_checkpoint, tmp_path: Path) -> None:
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "reading")
    missing = tmp_path / "typo.db"
    for args in (("leaderboard",), ("runs",), ("export", "abc", tmp_path / "out"), ("sweep", "cancel", sweep_file),
                 ("db", "current")):
        flat = assert_clean(invoke(*args, "--db", missing), 2)
        assert "no database at" in flat and "typo.db" in flat
        assert not missing.exists(), args
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url, says", [
    ("sqlite:////no/such/folder/x.db", "does not exist"),
    ("foo://x", "unknown kind of database"),
    ("sqlite://", "in-memory"),
    ("sqlite:///:memory:", "in-memory"),
    ("postgresql+psycopg://u:pw-in-url@127.0.0.1:1/x", "cannot reach"),
])
def test_unusable_database_urls_are_one_message(tiny_checkpoint, tmp_path: Path, url: str, says: str) -> None:
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "urls")
    for args in (("runs",), ("leaderboard",), ("db", "upgrade"), ("sweep", "run", sweep_file, "--executor", "local")):
        flat = assert_clean(invoke(*args, "--db", url), 2)
        assert says in flat and "pw-in-url" not in flat


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "x.db"
    junk.write_bytes(b"\x00not a database" * 100)
    flat = assert_clean(invoke("runs", "--db", junk), 2)
    assert "not a SQLite database" in flat
    assert junk.read_bytes() == b"\x00not a database" * 100


def test_no_command_prints_a_postgres_password(postgres_password_url, tiny_checkpoint, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Against a server that requires the password: every command, its output and its logs."""
    caplog.set_level(logging.DEBUG)
    url, password = postgres_password_url.new_database(), postgres_password_url.password
    wrong = url.replace(password, "Wr0ng-pw-123")
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "secret")
    outputs = [
        invoke("db", "upgrade", "--db", url), invoke("db", "current", "--db", url),
        invoke("sweep", "plan", sweep_file, "--db", url),
        invoke("sweep", "run", sweep_file, "--executor", "local", "--db", url),
        invoke("leaderboard", "--db", url), invoke("runs", "--db", url),
        invoke("sweep", "cancel", "secret", "--db", url), invoke("sweep", "cancel", "no-such-sweep", "--db", url),
        invoke("export", "ffff", tmp_path / "out", "--db", url),
        invoke("runs", "--db", wrong), invoke("leaderboard", "--db", wrong),
    ]
    empty = postgres_password_url.new_database()
    outputs.append(invoke("leaderboard", "--db", empty))
    from alembic import command

    from twossp.db.versioning import alembic_config

    command.downgrade(alembic_config(url), "0002")  # an outdated schema: the upgrade hint names the URL
    outdated = invoke("leaderboard", "--db", url)
    assert outdated.exit_code == 3 and "twossp db upgrade" in outdated.output, outdated.output
    outputs.append(outdated)
    for result in outputs:
        assert "Traceback" not in result.output, result.output
        assert password not in result.output and "Wr0ng-pw-123" not in result.output, result.output
    assert outputs[3].exit_code == 0, outputs[3].output
    assert "***" in outputs[3].output  # the summary names the database, masked
    assert outputs[9].exit_code == 2 and "refused the login" in outputs[9].output
    assert password not in caplog.text and "Wr0ng-pw-123" not in caplog.text


# --------------------------------------------------------------------------------- markup
def test_rich_markup_in_names_and_paths_is_printed_as_it_is(tiny_checkpoint, tmp_path: Path) -> None:
    folder = tmp_path / "[red]dir"  # markup that would colour (and hide) what follows
    folder.mkdir()
    sweep_file = tiny_checkpoint.write_sweep(folder / "[b]s.yaml", SECTION,
                                             models=[{"path": str(tiny_checkpoint.model_dir), "name": SECTION}])
    db_file = folder / "r.db"
    ok = invoke("sweep", "validate", sweep_file)
    assert_clean(ok, 0)
    assert str(sweep_file) in ok.output and SECTION in ok.output
    run = invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file)
    assert_clean(run, 0)
    assert SECTION in run.output and str(db_file) in run.output
    for args in (("leaderboard",), ("runs",)):
        assert SECTION in invoke(*args, "--db", db_file).output
    missing = assert_clean(invoke("export", "[x]", tmp_path / "o", "--db", db_file), 2)
    assert "'[x]'" in missing
    bad = folder / "[i]bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert str(bad) in assert_clean(invoke("sweep", "validate", bad), 2)


# --------------------------------------------------------------------------------- found early
def _model_with_config(tmp_path: Path, tiny_checkpoint, **changes: object) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint.model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "OPTForCausalLM", "FalconForCausalLM", "GPTNeoXForCausalLM"])
def test_an_unsupported_architecture_is_refused_by_validate_plan_and_run(tiny_checkpoint, tmp_path: Path,
                                                                         arch: str) -> None:
    model = _model_with_config(tmp_path, tiny_checkpoint, architectures=[arch])
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "arch", models=[{"path": str(model)}])
    db_file = tmp_path / "r.db"
    for args in (("sweep", "validate", sweep_file), ("sweep", "plan", sweep_file, "--db", db_file),
                 ("sweep", "run", sweep_file, "--executor", "local", "--db", db_file)):
        flat = assert_clean(invoke(*args), 2)
        assert f"unsupported architecture {arch}" in flat and "LlamaForCausalLM" in flat
    assert not db_file.exists()


def test_an_infeasible_sparsity_is_refused_before_anything_runs(tiny_checkpoint, tmp_path: Path) -> None:
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "budget", methods=["dense", "2ssp", "shortgpt"],
                                             sparsities=[0.25, 0.999])
    db_file = tmp_path / "r.db"
    plan = assert_clean(invoke("sweep", "plan", sweep_file, "--db", db_file), 2)
    assert "s=0.999" in plan and "cannot succeed" in plan
    run = assert_clean(invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file), 2)
    assert "nothing was run or stored" in run
    assert not db_file.exists()


@pytest.mark.parametrize("text, says", [
    ("{not json", "not a readable JSON file"),
    ('["a list"]', "not a JSON object"),
    ('{"architectures": ["LlamaForCausalLM"]}', "incomplete or invalid"),
    ('{"architectures": "LlamaForCausalLM", "hidden_size": 64}', "should be a list"),
])
def test_a_broken_config_json_is_one_message_in_plan(tiny_checkpoint, tmp_path: Path, text: str, says: str) -> None:
    model = _model_with_config(tmp_path, tiny_checkpoint)
    (model / "config.json").write_text(text)
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "config", models=[{"path": str(model)}])
    assert says in assert_clean(invoke("sweep", "plan", sweep_file, "--db", tmp_path / "r.db"), 2)


def test_a_malformed_dashboard_file_is_every_problem_with_its_line(tmp_path: Path) -> None:
    db_file = tmp_path / "r.db"
    assert_clean(invoke("db", "upgrade", "--db", db_file), 0)
    view = tmp_path / "view.yaml"
    view.write_text("title: ok\nquery: 3\nbogus: 1\n")
    flat = assert_clean(invoke("leaderboard", "--db", db_file, "--dashboard", view), 2)
    assert f"{view}:2: query" in flat and f"{view}:3: bogus: unknown key 'bogus'" in flat
    view.write_text("title: [unclosed\n")
    assert "invalid YAML" in assert_clean(invoke("leaderboard", "--db", db_file, "--dashboard", view), 2)


# --------------------------------------------------------------------------------- runs and exports
@pytest.fixture(scope="module")
def swept(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("input-swept")
    sweep_file = tiny_checkpoint.write_sweep(root / "s.yaml", "input")
    db_file = root / "r.db"
    assert_clean(invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file), 0)
    return sweep_file, db_file


def test_a_key_prefix_is_literal_text_not_a_like_pattern(swept, tmp_path: Path) -> None:
    _, db_file = swept
    for pattern in ("%", "_", "%_%"):
        flat = assert_clean(invoke("export", pattern, tmp_path / "out", "--db", db_file), 2)
        assert f"no run with a key starting {pattern!r}" in flat


def test_export_refuses_a_non_empty_directory_unless_overwrite(swept, tmp_path: Path) -> None:
    _, db_file = swept
    with Database(db_file) as db, db.session() as session:
        key = session.scalars(select(Run.key).where(Run.method == "2ssp")).first()
    target = tmp_path / "out"
    target.mkdir()
    (target / "model.safetensors.index.json").write_text("{}")  # an earlier, sharded checkpoint
    flat = assert_clean(invoke("export", key, target, "--db", db_file), 2)
    assert "is not empty" in flat and "--overwrite" in flat
    assert [p.name for p in target.iterdir()] == ["model.safetensors.index.json"]
    assert_clean(invoke("export", key, target, "--db", db_file, "--overwrite"), 0)
    assert not (target / "model.safetensors.index.json").exists() and (target / "config.json").exists()


def test_a_rerun_that_skips_failed_runs_says_how_to_rerun_them(tiny_checkpoint, tmp_path: Path) -> None:
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "skips")
    db_file = tmp_path / "r.db"
    assert_clean(invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file), 0)
    with Database(db_file) as db, db.session() as session:
        session.execute(update(Run).where(Run.method == "2ssp").values(status=RunStatus.FAILED, error="x"))
    flat = assert_clean(invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file), 0)
    assert "2 run(s) failed in an earlier sweep run and were skipped; re-run them with --rerun-failed" in flat


def test_a_run_held_by_a_dead_driver_of_this_host_is_taken_over_at_once(tiny_checkpoint, tmp_path: Path) -> None:
    """A SIGKILLed driver restarted at once: its run is `running` with a fresh heartbeat, but its
    process is gone, so the restarted driver takes the run instead of leaving it undone."""
    import platform
    import subprocess
    import sys

    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "dead")
    db_file = tmp_path / "r.db"
    assert_clean(invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file), 0)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{platform.node()}:{gone.stdout.strip()}:deadbeef"
    with Database(db_file) as db, db.session() as session:
        key = session.scalars(select(Run.key).where(Run.method == "2ssp")).first()
        session.execute(update(Run).where(Run.key == key).values(
            status=RunStatus.RUNNING, owner=dead_owner, heartbeat_at=utcnow() + timedelta(hours=1)))
    flat = assert_clean(invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file), 0)
    assert "1 completed, 0 failed, 2 skipped" in flat
    with Database(db_file) as db, db.session() as session:
        row = session.scalars(select(Run).where(Run.key == key)).one()
        assert row.status == RunStatus.COMPLETED and row.owner != dead_owner and row.attempts == 2


def test_new_weights_in_the_same_folder_are_new_runs_and_old_masks_are_not_exported(tiny_checkpoint,
                                                                                    tmp_path: Path) -> None:
    """The run key names the weights, not the folder: after the weights in a `path:` folder change,
    the sweep computes every run again, and `export` refuses the old runs' masks."""
    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint.model_dir, model)
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "stale", models=[{"path": str(model)}])
    db_file = tmp_path / "r.db"
    assert "3 completed, 0 failed, 0 skipped" in assert_clean(
        invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file), 0)
    with Database(db_file) as db, db.session() as session:
        old = session.scalars(select(Run.key).where(Run.method == "2ssp")).first()
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    save_file({name: (t * 1.01 if t.is_floating_point() else t).contiguous() for name, t in tensors.items()},
              weights, metadata={"format": "pt"})
    assert not torch.equal(load_file(weights)[next(iter(tensors))], tensors[next(iter(tensors))])
    again = assert_clean(invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file), 0)
    assert "3 completed, 0 failed, 0 skipped" in again
    refused = assert_clean(invoke("export", old, tmp_path / "out", "--db", db_file), 2)
    assert "other weights" in refused and not (tmp_path / "out").exists()


def test_listing_evaluation_datasets_in_another_order_keeps_the_dense_baseline(tiny_checkpoint,
                                                                              tmp_path: Path) -> None:
    """Two sweeps list the same evaluation datasets in different orders: the second one's dense run
    is the first one's (same key), and its pruned runs still compare against it (same evaluation key)."""
    second = tmp_path / "second.txt"
    shutil.copy(tiny_checkpoint.evaluation, second)
    first_order = [{"path": str(tiny_checkpoint.evaluation)}, {"path": str(second)}]
    a = tiny_checkpoint.write_sweep(tmp_path / "a.yaml", "order-a", sparsities=[0.25],
                                    evaluation={"perplexity": first_order, "seq_len": 16, "max_windows": 4})
    b = tiny_checkpoint.write_sweep(tmp_path / "b.yaml", "order-b", sparsities=[0.5],
                                    evaluation={"perplexity": first_order[::-1], "seq_len": 16, "max_windows": 4})
    db_file = tmp_path / "r.db"
    assert "2 completed" in assert_clean(invoke("sweep", "run", a, "--executor", "local", "--db", db_file), 0)
    assert "1 completed, 0 failed, 1 skipped" in assert_clean(
        invoke("sweep", "run", b, "--executor", "local", "--db", db_file), 0)
    board = invoke("leaderboard", "--db", db_file)
    rows = [line for line in board.output.splitlines() if " 2ssp " in line]
    assert len(rows) == 2, board.output
    assert all(row.count("%") == 2 for row in rows), board.output  # a change against dense per dataset


def test_remote_files_skips_the_local_file_checks(tiny_checkpoint, tmp_path: Path) -> None:
    """On a cluster's head node, paths that exist only on the worker nodes are not this machine's."""
    sweep_file = tiny_checkpoint.write_sweep(tmp_path / "s.yaml", "remote",
                                             models=[{"path": "/on/the/nodes/model"}])
    assert "model directory not found" in assert_clean(invoke("sweep", "validate", sweep_file), 2)
    assert_clean(invoke("sweep", "validate", sweep_file, "--remote-files"), 0)
    assert_clean(invoke("sweep", "plan", sweep_file, "--remote-files", "--db", tmp_path / "r.db"), 0)
