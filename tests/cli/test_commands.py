"""The command line (twossp.cli): help text, exit codes, and what each command prints and writes.

Exit codes: 0 success; 1 a run failed; 2 invalid sweep file or usage; 3 database schema out of date.
Most tests drive ``twossp.cli.main`` through click's ``CliRunner``; a few run the real console script.
The sweeps run in-process (``--executor local``) on the tiny on-disk checkpoint (tests/support/tiny_checkpoint.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import click
import pytest
from alembic import command
from click.testing import Result
from sqlalchemy import select

from tests.support.consoles import fixed_terminal, invoke
from tests.test_spec import BAD_SWEEPS, expected_problems
from twossp import cli
from twossp.db.models import Run
from twossp.db.database import Database
from twossp.db.versioning import alembic_config, head_revision, upgrade

REPO = Path(__file__).resolve().parents[2]
GOOD_SWEEPS = [p for p in (REPO / "sweeps" / "quickstart.yaml", REPO / "sweeps" / "llama.yaml") if p.exists()]
TWOSSP = Path(sys.executable).with_name("twossp")  # the console script of this environment


@pytest.fixture(autouse=True, scope="module")
def wide_consoles() -> Iterator[None]:
    """Rich would wrap and ellipsise tables at CliRunner's default 80 columns."""
    with fixed_terminal(400):
        yield


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(db_file: Path) -> dict[str, Run]:
    with Database(f"sqlite:///{db_file}") as db, db.session() as session:
        return {r.key: r for r in session.scalars(select(Run))}


# ------------------------------------------------------------------------------------- help


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, group
    for name, sub in group.commands.items():
        if isinstance(sub, click.Group):
            yield from _commands(sub, (*path, name))
        else:
            yield (*path, name), sub


COMMANDS = list(_commands(cli.main))


def test_the_command_tree() -> None:
    assert {" ".join(p) for p, _ in COMMANDS} == {
        "", "sweep", "sweep validate", "sweep plan", "sweep run", "sweep cancel", "leaderboard", "runs", "db", "db upgrade",
        "db current", "db sql", "list", "list methods", "list families", "list tasks", "sweep tasks", "export", "show",
        "dash", "dash list", "dash show", "check"}


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) or "twossp" for p, _ in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], cmd: click.Command) -> None:
    assert cmd.help and cmd.help.strip(), f"`twossp {' '.join(path)}` has no help text"
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert param.help, f"option {param.opts} of `twossp {' '.join(path)}` has no help text"
    result = invoke(*path, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output
    assert cmd.help.split(".")[0].split(":")[0] in " ".join(result.output.split())


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and "0.1.0" in result.output


def test_console_script_help() -> None:
    result = subprocess.run([TWOSSP, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("sweep", "leaderboard", "runs", "db"):
        assert name in result.stdout


# ------------------------------------------------------------------------------------- sweep validate


@pytest.mark.parametrize("path", BAD_SWEEPS, ids=[p.name for p in BAD_SWEEPS])
def test_validate_reports_every_problem_of_a_bad_sweep(path: Path) -> None:
    result = invoke("sweep", "validate", path)
    assert result.exit_code == 2, result.output
    expected = expected_problems(path)
    assert expected
    lines = result.output.splitlines()
    for line, text in expected:
        assert any(f"{path}:{line}:" in out and text in out for out in lines), (
            f"expected `{path}:{line}: ... {text}` in:\n{result.output}")
    assert f"{len(expected)} problem(s) found" in result.output


def test_validate_reports_all_files_at_once() -> None:
    bad = [p for p in BAD_SWEEPS if p.name in ("several-problems.yaml", "alpha-zero.yaml")]
    result = invoke("sweep", "validate", *bad, *GOOD_SWEEPS)
    assert result.exit_code == 2
    for path in bad:
        for line, _ in expected_problems(path):
            assert f"{path}:{line}:" in result.output
    for path in GOOD_SWEEPS:
        assert f"ok {path}" in result.output


@pytest.mark.parametrize("path", GOOD_SWEEPS, ids=[p.name for p in GOOD_SWEEPS])
def test_validate_accepts_the_shipped_sweeps(path: Path) -> None:
    result = invoke("sweep", "validate", path)
    assert result.exit_code == 0, result.output
    assert re.search(rf"ok {re.escape(str(path))}: sweep '[^']+', \d+ runs", result.output)


def test_validate_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("sweep", "validate", tmp_path / "nowhere.yaml")
    assert result.exit_code == 2
    assert "nowhere.yaml" in result.output


def test_console_script_validate_exit_code() -> None:
    bad = next(p for p in BAD_SWEEPS if p.name == "several-problems.yaml")
    result = subprocess.run([TWOSSP, "sweep", "validate", bad], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{bad}:13:" in result.stderr and "greater than 0" in result.stderr


_NO_TORCH = """\
import sys
from twossp.cli import main
sys.argv = ["twossp", *sys.argv[1:]]
try:
    main(standalone_mode=False)
except SystemExit as exc:
    print("exit", exc.code)
heavy = sorted(m for m in ("torch", "transformers", "ray") if m in sys.modules)
assert not heavy, f"imported {heavy}"
"""


def test_validate_and_plan_do_not_import_torch(tmp_path: Path) -> None:
    bad = next(p for p in BAD_SWEEPS if p.name == "several-problems.yaml")
    for args in (["sweep", "validate", *map(str, GOOD_SWEEPS)], ["sweep", "validate", str(bad)],
                 ["sweep", "plan", str(GOOD_SWEEPS[0]), "--db", str(tmp_path / "none.db")]):
        result = subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"


# ------------------------------------------------------------------------------------- sweep plan / run


@pytest.fixture(scope="module")
def tiny_sweep(tiny_checkpoint, tmp_path_factory) -> Path:
    return tiny_checkpoint.write_sweep(tmp_path_factory.mktemp("cli") / "tiny.yaml", name="tiny-cli")


@pytest.fixture(scope="module")
def swept(tiny_sweep: Path, tmp_path_factory) -> tuple[Path, Result]:
    """The tiny sweep run once with `--executor local` into a fresh database."""
    db_file = tmp_path_factory.mktemp("cli-db") / "results.db"
    result = invoke("sweep", "run", tiny_sweep, "--executor", "local", "--db", db_file)
    return db_file, result


def planned_keys(sweep_file: Path) -> list[str]:
    from twossp.plan import plan_sweep
    from twossp.spec import load_sweep

    return [r.key for r in plan_sweep(load_sweep(sweep_file))]


def plan_statuses(output: str, keys: list[str]) -> dict[str, str]:
    statuses = {}
    for line in output.splitlines():
        for key in keys:
            if key in line:
                statuses[key] = line.split("│")[-2].strip()
    return statuses


def test_plan_on_a_fresh_database_says_new_and_creates_nothing(tiny_sweep: Path, tmp_path: Path) -> None:
    db_file = tmp_path / "fresh.db"
    result = invoke("sweep", "plan", tiny_sweep, "--db", db_file)
    assert result.exit_code == 0, result.output
    keys = planned_keys(tiny_sweep)
    assert len(keys) == 3
    assert plan_statuses(result.output, keys) == {k: "new" for k in keys}
    assert "sweep tiny-cli: 3 runs" in result.output
    assert "0 of 3 runs already completed" in result.output
    assert not db_file.exists()


def test_plan_of_an_invalid_sweep_exits_2(tmp_path: Path) -> None:
    bad = next(p for p in BAD_SWEEPS if p.name == "several-problems.yaml")
    result = invoke("sweep", "plan", bad, "--db", tmp_path / "x.db")
    assert result.exit_code == 2
    assert f"{bad}:10:" in result.output
    assert not (tmp_path / "x.db").exists()


def test_run_completes_every_run_and_writes_rows(swept, tiny_sweep: Path) -> None:
    db_file, result = swept
    assert result.exit_code == 0, result.output
    assert "3 runs planned, 0 already in the database, 3 to run" in result.output
    assert "3 completed, 0 failed, 0 skipped" in result.output
    stored = rows(db_file)
    assert set(stored) == set(planned_keys(tiny_sweep))
    assert {r.status for r in stored.values()} == {"completed"}
    assert {r.method for r in stored.values()} == {"dense", "2ssp"}


def test_plan_after_the_run_says_completed(swept, tiny_sweep: Path) -> None:
    db_file, _ = swept
    result = invoke("sweep", "plan", tiny_sweep, "--db", db_file)
    assert result.exit_code == 0
    keys = planned_keys(tiny_sweep)
    assert plan_statuses(result.output, keys) == {k: "completed" for k in keys}
    assert "3 of 3 runs already completed" in result.output


def test_second_run_skips_everything_and_does_no_work(swept, tiny_sweep: Path) -> None:
    db_file, _ = swept
    before = {k: (r.status, r.started_at, r.finished_at) for k, r in rows(db_file).items()}
    result = invoke("sweep", "run", tiny_sweep, "--executor", "local", "--db", db_file)
    assert result.exit_code == 0, result.output
    assert "3 runs planned, 3 already in the database, 0 to run" in result.output
    assert "0 completed, 0 failed, 3 skipped" in result.output
    assert {k: (r.status, r.started_at, r.finished_at) for k, r in rows(db_file).items()} == before


def test_invalid_sweep_leaves_an_existing_database_untouched(swept, tmp_path: Path) -> None:
    db_file, _ = swept
    digest = sha256(db_file)
    for bad in (p for p in BAD_SWEEPS if p.name in ("several-problems.yaml", "yaml-unclosed-bracket.yaml")):
        result = invoke("sweep", "run", bad, "--executor", "local", "--db", db_file)
        assert result.exit_code == 2, result.output
        assert f"{bad}:" in result.output
    assert sha256(db_file) == digest


# ------------------------------------------------------------------------------------- failures


@pytest.fixture(scope="module")
def swept_with_a_missing_model(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path, Path, Result]:
    root = tmp_path_factory.mktemp("cli-missing")
    # a model folder that validates (its config.json is there) but whose weights are not: a
    # missing folder is refused before anything runs (see the bad sweeps); this one fails to load
    missing = root / "no-such-model"
    missing.mkdir()
    for file in tiny_checkpoint.model_dir.iterdir():  # config and tokenizer, no weights
        if file.suffix != ".safetensors":
            shutil.copy(file, missing / file.name)
    sweep_file = tiny_checkpoint.write_sweep(
        root / "two-models.yaml", name="two-models",
        models=[{"path": str(tiny_checkpoint.model_dir)}, {"path": str(missing)}])
    db_file = root / "results.db"
    result = invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file)
    return sweep_file, db_file, missing, result


def test_a_model_that_cannot_load_fails_its_runs_only(swept_with_a_missing_model) -> None:
    _, db_file, missing, result = swept_with_a_missing_model
    assert result.exit_code == 1, result.output
    assert "3 completed, 3 failed, 0 skipped" in result.output
    stored = rows(db_file)
    good = [r for r in stored.values() if r.model == "tiny-llama"]
    bad = [r for r in stored.values() if r.model == "no-such-model"]
    assert len(good) == len(bad) == 3
    assert {r.status for r in good} == {"completed"}
    assert {r.status for r in bad} == {"failed"}
    for r in bad:
        assert str(missing) in r.error
        assert r.finished_at is not None and r.achieved_sparsity is None
    for r in bad:
        assert f"failed no-such-model {r.method}" in result.output and r.key in result.output
    assert result.output.count(f"found in directory {missing}") >= 3


def test_runs_lists_failed_runs_with_their_error(swept_with_a_missing_model) -> None:
    _, db_file, missing, _ = swept_with_a_missing_model
    stored = rows(db_file)
    result = invoke("runs", "--status", "failed", "--db", db_file)
    assert result.exit_code == 0, result.output
    for r in stored.values():
        assert (r.key in result.output) == (r.status == "failed")
    assert result.output.count("found in directory") == 3
    assert str(missing) in result.output

    everything = invoke("runs", "--db", db_file)
    assert all(key in everything.output for key in stored)


def test_rerun_failed_retries_only_the_failed_runs(swept_with_a_missing_model) -> None:
    sweep_file, db_file, _, _ = swept_with_a_missing_model
    completed_before = {k: r.finished_at for k, r in rows(db_file).items() if r.status == "completed"}
    result = invoke("sweep", "run", sweep_file, "--executor", "local", "--db", db_file, "--rerun-failed")
    assert result.exit_code == 1
    assert "0 completed, 3 failed, 3 skipped" in result.output
    after = rows(db_file)
    assert {k: after[k].finished_at for k in completed_before} == completed_before


# ------------------------------------------------------------------------------------- leaderboard


def test_leaderboard_shows_methods_against_dense(swept) -> None:
    db_file, _ = swept
    result = invoke("leaderboard", "--db", db_file)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "tiny-llama" in out and "dense" in out and "2ssp" in out
    assert "eval.txt" in out and "Δ" in out
    assert "perplexity per dataset (lower is better), mean over seeds (±sd); Δ: change against dense" in " ".join(
        out.split())
    stored = list(rows_with_scores(db_file))
    dense = next(ppl for method, _, ppl in stored if method == "dense")
    assert f"{dense:.2f}" in out
    for method, sparsity, ppl in stored:
        if method == "2ssp":
            line = next(row for row in out.splitlines() if "2ssp" in row and f" {sparsity:.3g} " in row)
            assert f"{ppl:.2f}" in line
            change = (ppl / dense - 1) * 100
            assert (f"{change:+.0f}%" if abs(change) >= 100 else f"{change:+.1f}%") in line


def rows_with_scores(db_file: Path) -> Iterator[tuple[str, float, float]]:
    with Database(f"sqlite:///{db_file}") as db, db.session() as session:
        for r in session.scalars(select(Run)):
            yield r.method, r.target_sparsity, next(s.value for s in r.scores if s.metric == "perplexity")


def test_leaderboard_filters_by_sweep(swept) -> None:
    db_file, _ = swept
    assert "tiny-llama" in invoke("leaderboard", "--db", db_file, "--sweep", "tiny-cli").output
    result = invoke("leaderboard", "--db", db_file, "--sweep", "other")
    assert result.exit_code == 0 and "no completed runs" in result.output and "'other'" in result.output


# ------------------------------------------------------------------------------------- db


def test_db_upgrade_then_current_prints_the_head(tmp_path: Path) -> None:
    db_file = tmp_path / "new.db"
    url = f"sqlite:///{db_file}"
    result = invoke("db", "upgrade", "--db", db_file)
    assert result.exit_code == 0, result.output
    assert f"{url}: schema at head" in result.output
    head = head_revision(url)
    result = invoke("db", "current", "--db", db_file)
    assert result.exit_code == 0
    assert f"{url}: schema {head}" in result.output and "up to date" in result.output


def test_db_option_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_file = tmp_path / "env.db"
    monkeypatch.setenv("TWOSSP_DB", str(db_file))
    assert invoke("db", "upgrade").exit_code == 0
    assert db_file.exists()
    assert f"schema {head_revision(f'sqlite:///{db_file}')}" in invoke("db", "current").output


def _downgraded_with_foreign_table(db_file: Path) -> str:
    url = f"sqlite:///{db_file}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    with sqlite3.connect(db_file) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    return url


def _stamped_unknown(db_file: Path) -> str:
    url = f"sqlite:///{db_file}"
    upgrade(url)
    with sqlite3.connect(db_file) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    return url


@pytest.mark.parametrize("args", [("leaderboard",), ("runs",), ("sweep", "plan", "SWEEP"),
                                  ("sweep", "run", "SWEEP", "--executor", "local")],
                         ids=["leaderboard", "runs", "plan", "run"])
def test_an_outdated_database_is_refused_with_the_upgrade_command(args, tiny_sweep: Path, tmp_path: Path) -> None:
    db_file = tmp_path / "old.db"
    url = _downgraded_with_foreign_table(db_file)
    digest = sha256(db_file)
    result = invoke(*(tiny_sweep if a == "SWEEP" else a for a in args), "--db", db_file)
    assert result.exit_code == 3, result.output
    hint = f"twossp db upgrade --db '{url}'"
    assert hint in result.output
    assert sha256(db_file) == digest  # refused before touching anything

    if args == ("leaderboard",):  # and the printed command really fixes it
        printed = re.search(r"twossp db upgrade --db '[^']+'", result.output)[0]
        assert invoke(*shlex.split(printed)[1:]).exit_code == 0
        fixed = invoke("leaderboard", "--db", db_file)
        assert fixed.exit_code == 0 and "no completed runs" in fixed.output


def test_a_database_at_an_unknown_revision_is_refused(tmp_path: Path) -> None:
    db_file = tmp_path / "future.db"
    _stamped_unknown(db_file)
    result = invoke("leaderboard", "--db", db_file)
    assert result.exit_code == 3
    assert "is at schema ffffffffffff, which this version of twossp does not know" in result.output
    assert "newer twossp" in result.output
    upgrade = invoke("db", "upgrade", "--db", db_file)
    assert upgrade.exit_code == 3 and "Traceback" not in upgrade.output
    assert "cannot upgrade" in upgrade.output and "ffffffffffff" in upgrade.output


def test_list_methods_and_families_print_one_per_line_with_a_description() -> None:
    from twossp.families import supported_architectures
    from twossp.methods import METHODS

    methods = invoke("list", "methods")
    assert methods.exit_code == 0
    lines = methods.output.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == list(METHODS)
    assert all(len(line.split("\t")[1]) > 10 for line in lines)
    assert "arXiv 2501.17771" in methods.output

    families = invoke("list", "families")
    assert families.exit_code == 0
    lines = families.output.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == supported_architectures()
    assert "SmolLM2" in families.output


PAPER_CONFIGS = {  # the published configs' relevant fields (docs/method.md, Worked numbers)
    "llama2-7b": {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008,
                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    "qwen25-7b": {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
                  "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4},
    "phi3-medium": {"architectures": ["Phi3ForCausalLM"], "hidden_size": 5120, "intermediate_size": 17920,
                    "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 10},
}


def test_plan_shows_what_each_sparsity_removes_from_configs_alone(tmp_path: Path) -> None:
    for name, config in PAPER_CONFIGS.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))  # a config, no weights
    sweep = tmp_path / "paper.yaml"
    sweep.write_text(
        "name: paper\nmodels:\n" + "".join(f"  - path: {n}\n" for n in PAPER_CONFIGS)
        + "methods: [dense, 2ssp]\nsparsities: [0.25, 0.375, 0.5]\n"
        "calibration: {source: lee-calibration, samples: [32], seq_len: 2048}\n"
        "evaluation: {perplexity: [lee-evaluation]}\n")
    env = {**os.environ, "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, "sweep", "plan", str(sweep), "--db",
                             str(tmp_path / "none.db")], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr  # and no torch was imported
    lines = result.stdout.splitlines()

    def cell(model: str, sparsity: str) -> str:
        return next(line for line in lines if f" {model} " in line and f" {sparsity} " in line)

    for sparsity, expected in (("0.25", "5 attn, FFN 11008->7744"), ("0.375", "9 attn, FFN 11008->6368"),
                               ("0.5", "13 attn, FFN 11008->4992")):
        assert expected in cell("llama2-7b", sparsity)
    for sparsity, expected in (("0.25", "0 attn, FFN 18944->13525"), ("0.375", "0 attn, FFN 18944->10816"),
                               ("0.5", "1 attn, FFN 18944->8204")):
        assert expected in cell("qwen25-7b", sparsity)
    for sparsity, expected in (("0.25", "1 attn, FFN 17920->12480"), ("0.375", "3 attn, FFN 17920->9920"),
                               ("0.5", "6 attn, FFN 17920->7466")):
        assert expected in cell("phi3-medium", sparsity)


def test_plan_shows_the_shared_steps_and_the_work_with_and_without_them(tmp_path: Path) -> None:
    """From a config.json alone (no torch): a 2SSP grid of 3 sparsities x 2 alphas shares one stage-1
    step, ShortGPT and the window method one block-states step; the estimated layer forwards per run,
    per step and for the sweep are those ``estimate_work`` gives."""
    from twossp.families import config_block_counts
    from twossp.plan import estimate_work, plan_shared, plan_sweep
    from twossp.spec import load_sweep

    (tmp_path / "llama2-7b").mkdir()
    (tmp_path / "llama2-7b" / "config.json").write_text(json.dumps(PAPER_CONFIGS["llama2-7b"]))
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(
        "name: grid\nmodels: [{path: llama2-7b}]\n"
        "methods: [{name: 2ssp, alpha: 1.5}, {name: 2ssp, alpha: 1.0}, shortgpt, window]\n"
        "sparsities: [0.25, 0.375, 0.5]\n"
        "calibration: {source: lee-calibration, samples: [32], seq_len: 2048}\n"
        "evaluation: {perplexity: [lee-evaluation]}\n")
    env = {**os.environ, "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, "sweep", "plan", str(sweep), "--db",
                             str(tmp_path / "none.db")], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = plan_sweep(load_sweep(sweep))
    shared = plan_shared(runs)
    assert sorted(step.kind for step in shared.steps.values()) == ["block states", "ffn scores"]
    work = estimate_work(runs, shared, {"llama2-7b": config_block_counts(PAPER_CONFIGS["llama2-7b"])})
    assert "2 shared steps" in result.stdout
    for key, step in shared.steps.items():
        line = next(line for line in result.stdout.splitlines() if key in line and step.kind in line)
        assert f" {len(shared.dependents(key))} " in line and f"{work.steps[key]:,}" in line
    assert work.steps and all(value == 32 * 32 for value in work.steps.values())  # 32 windows x 32 blocks
    assert work.shared == work.unshared - 10 * 32 * 32  # 12 runs, 2 steps: 10 fewer stage-1 passes
    assert (f"estimated pruning work: {work.unshared:,} decoder-layer forwards without sharing, {work.shared:,} "
            f"with it ({work.shared / work.unshared:.2f}x)") in result.stdout
    for run in runs:
        line = next(line for line in result.stdout.splitlines() if run.key in line)
        assert shared.needs[run.key] in line and f"{sum(work.runs[run.key]):,}" in line


def test_plan_reports_runs_no_node_of_this_machine_can_hold(tiny_checkpoint, tmp_path: Path) -> None:
    big = tiny_checkpoint.write_sweep(tmp_path / "big.yaml", "big", models=[
        {"path": str(tiny_checkpoint.model_dir), "cpus": 100000}])
    result = invoke("sweep", "plan", big, "--db", tmp_path / "none.db")
    assert result.exit_code == 2, result.output  # a run that cannot succeed
    flat = " ".join(result.output.split())
    assert "3 run(s) of tiny-llama can never be placed on this machine (the local Ray cluster):" \
           in flat and "needs 100000 CPU on one node" in flat, result.output
    small = invoke("sweep", "plan", tiny_checkpoint.write_sweep(tmp_path / "small.yaml", "small"),
                   "--db", tmp_path / "none.db")
    assert small.exit_code == 0 and "can never be placed" not in small.output
