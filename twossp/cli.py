"""The command line: the only module that prints for humans and chooses exit codes.

Every command is a few lines over library calls; errors become messages in one place
(``TwosspGroup.invoke``), never a traceback. Everything that comes from a user (names, keys, paths,
URLs, error messages) is printed as plain text, never as rich markup, and database URLs only ever
with their password masked.

Exit codes (also in the README):
  0    success
  1    a run failed, runs were left undone, or a library error while working
  2    invalid input: a sweep or dashboard file, a command-line argument, a database URL or file,
       runs that could not succeed (unsupported architecture, infeasible sparsity, no placement)
  3    the database schema is out of date (or newer than this twossp)
  130  interrupted (Ctrl-C, SIGTERM) or cancelled with `twossp sweep cancel`: unfinished runs released
An unexpected internal error (a bug) prints its traceback with a request to report it, and exits 1.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Iterable, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from twossp.contracts import GGUF_TYPES
from twossp.dash.render import FORMATS
from twossp.errors import (CheckpointError, DatabaseError, EngineUnavailable, PlanError, QueryError, SchemaOutdated,
                           SpecError, TwosspError, UnknownName, ViewError, last_line)

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

#: exit code of each library error class (the first match in order wins); any other TwosspError: 1
EXIT_CODES: tuple[tuple[type[TwosspError], int], ...] = (
    (SpecError, 2), (PlanError, 2), (DatabaseError, 2), (UnknownName, 2), (CheckpointError, 2), (QueryError, 2),
    (ViewError, 2), (EngineUnavailable, 2), (SchemaOutdated, 3),
)

FILES_OPTION = click.option(
    "--remote-files", is_flag=True,
    help="The sweep's local paths (models, text files, task data) exist on the cluster's nodes, not on this "
         "machine, and the nodes reach the hub where this machine does not: do not check them here.")
DB_OPTION = click.option("--db", "db_url", envvar="TWOSSP_DB", default=None,
                         help="SQLAlchemy URL or SQLite path (default: sqlite:///twossp.db; env TWOSSP_DB).")


def say(*parts: str | tuple[str, str], stderr: bool = False) -> None:
    """Print plain text (pieces may be ``(text, style)``): no markup is interpreted in any of it."""
    (err if stderr else console).print(Text.assemble(*parts), soft_wrap=True)


def fail(message: str, code: int) -> NoReturn:
    say(("error", "red"), " ", message, stderr=True)
    sys.exit(code)


class TwosspGroup(click.Group):
    """Turns every library error into its message and exit code, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpecError as exc:
            for problem in exc.problems:
                say(("error", "red"), " ", str(problem), stderr=True)
            say(f"{len(exc.problems)} problem(s) found", stderr=True)
            sys.exit(2)
        except PlanError as exc:
            for problem in exc.problems:
                say(("cannot succeed", "red"), " ", problem, stderr=True)
            say(f"{len(exc.problems)} run problem(s) found; nothing was run or stored", stderr=True)
            sys.exit(2)
        except TwosspError as exc:
            fail(str(exc), next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), 1))
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception:  # noqa: BLE001 - a bug: show it, and ask for a report
            err.print(Text(traceback.format_exc()))
            say(("internal error", "red"), " (a bug in twossp, not in your input): please report it with the "
                "command you ran and the traceback above", stderr=True)
            sys.exit(1)


def _open(db_url: str | None, create: bool = False):  # noqa: ANN202 - a twossp.db.database.Database
    """The database: created on first use only by commands that write (``create``)."""
    from twossp.db.database import Database

    return Database(db_url, create=create)


@click.group(cls=TwosspGroup, help="twossp: structured pruning of LLMs with 2SSP, run as declarative sweeps.")
@click.version_option(package_name="twossp")
def main() -> None:
    # twossp reports its own progress: the libraries' bars (transformers' "Loading weights" and
    # "Writing model shards", the hub's downloads) would break into it. Set before any of them is
    # imported; the Ray workers a sweep starts inherit it. HF_HUB_DISABLE_PROGRESS_BARS=0 keeps them.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# ---------------------------------------------------------------------------------- sweep
@main.group(cls=TwosspGroup, help="Validate, plan and run sweep files.")
def sweep() -> None:
    pass


def _load_and_check(files: Iterable[str], on_ok: Any = None, remote_files: bool = False,
                    resolve: bool = False) -> list[tuple[str, Any, Any, Any]]:
    """Each sweep file validated (every problem of every file at once), its runs planned and
    preflighted from local files: (file, spec, runs, preflight); ``on_ok`` is told of each valid file."""
    from twossp.plan import plan_sweep
    from twossp.runtime.loading import resolve_revisions
    from twossp.runtime.preflight import preflight
    from twossp.spec import load_sweep

    loaded, problems = [], []
    for file in files:
        try:
            spec = load_sweep(file, check_files=not remote_files)
        except SpecError as exc:
            problems += exc.problems
            continue
        if resolve:  # hub branches to the commits they name: the keys then name the weights
            spec = resolve_revisions(spec)
        runs = plan_sweep(spec)
        loaded.append((file, spec, runs, preflight(runs)))
        if on_ok:
            on_ok(*loaded[-1])
    if problems:
        raise SpecError(problems)
    return loaded


@sweep.command("validate", help="Check sweep files; report every problem with file and line.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@FILES_OPTION
def validate(files: tuple[str, ...], remote_files: bool) -> None:
    def ok(file: str, spec: Any, runs: list[Any], report: Any) -> None:
        say(("ok", "green"), f" {file}: sweep {spec.name!r}, {len(runs)} runs")

    _raise_plan_problems(report for *_, report in _load_and_check(files, on_ok=ok, remote_files=remote_files))


def _raise_plan_problems(reports: Iterable[Any], remote_ok: bool = True) -> None:
    """Refuse runs that could not succeed. What only the machines that run them can tell (a task
    reading the hub, unreachable from here) is a warning, or a refusal when the runs run here."""
    reports = list(reports)
    problems = [p for report in reports for p in report.problems]
    remote = [p for report in reports for p in report.remote]
    if remote and not remote_ok:
        problems += remote + ["(if the runs execute on nodes that reach the hub, pass --remote-files)"]
    elif remote:
        for line in remote:
            say(("warning", "yellow"), f": {line}", stderr=True)
    if problems:
        raise PlanError(problems)


@sweep.command("plan", help="List the runs a sweep expands to, their keys, what each will remove, the placement "
               "and peak memory per device each will take, and which are already done; exits 2 if a run could "
               "not succeed.")
@click.argument("file", type=click.Path(dir_okay=False))
@DB_OPTION
@click.option("--address", default=None,
              help="Check the runs' resources against this Ray cluster (auto or HOST:PORT); without it, "
                   "against this machine's CPUs and memory (GPUs are checked when the sweep runs).")
@click.option("--gpus", type=click.FloatRange(min=0), default=None,
              help="Plan the memory as if every model had this many GPUs (its `gpus:`), each with its `gpu_memory:`.")
@FILES_OPTION
def plan(file: str, db_url: str | None, address: str | None, gpus: float | None, remote_files: bool) -> None:
    from twossp.db import store
    from twossp.db.versioning import database_exists
    from twossp.plan import SharedPlan, estimate_work, plan_shared

    [(_, spec, runs, report)] = _load_and_check([file], remote_files=remote_files, resolve=True)
    statuses: dict[str, str] = {}
    if database_exists(db_url):
        with _open(db_url) as db, db.session() as session:
            statuses = store.run_statuses(session, [r.key for r in runs])
    shared = plan_shared(runs) if spec.runtime.share else SharedPlan()
    work = estimate_work(runs, shared, report.counts)
    placements = _placements(runs, report, gpus)
    console.print(_runs_table(spec.name, runs, statuses, report, shared, work, placements))
    if shared.steps:
        console.print(_steps_table(shared, work))
    _say_work(runs, statuses, report, work)
    _say_memory(runs, report, placements)
    unplaceable = _unplaceable(runs, address)
    _raise_plan_problems([report])
    if unplaceable:
        sys.exit(2)


def _runs_table(name: str, runs: list[Any], statuses: dict[str, str], report: Any, shared: Any, work: Any,
               placements: dict[str, Any]) -> Table:
    """``sweep plan``'s table: one row per run, what it will remove, its estimated layer forwards,
    the shared step it takes (a recovered run: the pruning run it starts from), its placement and peak
    memory per device, and its state in the database."""
    from twossp.methods import method_of

    table = Table(title=Text(f"sweep {name}: {len(runs)} runs"))
    recovering = any(run.recovery for run in runs)
    for col in ("key", "model", "method", "sparsity", "calib", "seed", *(("recovery",) if recovering else ()),
                "will remove", "layer forwards", "shares", "memory", "in database"):
        table.add_column(col)
    colours = {"completed": "green", "failed": "red", "new": "cyan"}
    for run in runs:
        status = str(statuses.get(run.key, "new"))
        forwards = work.runs.get(run.key)
        table.add_row(run.key, Text(run.model.label), run.method.name,
                      f"{run.sparsity:g}" if run.sparsity is not None else "-",
                      str(run.calibration.samples) if run.calibration else "-",
                      str(run.calibration.seed) if run.calibration else "-",
                      *((run.recovery.label if run.recovery else "-",) if recovering else ()),
                      Text(report.previews.get(run.key, "?")),
                      f"{sum(forwards):,}" if forwards is not None else
                      ("-" if method_of(run.method).work is None else "?"),
                      f"from {run.pruning_run.key}" if run.recovery else shared.needs.get(run.key, "-"),
                      _memory_cell(placements.get(run.key)),
                      Text(status, style=colours.get(status, "yellow")))
    return table


def _placements(runs: list[Any], report: Any, gpus: float | None) -> dict[str, Any]:
    """Each run's planned placement (``twossp.memory.plan_placement``) on its model's GPUs (``--gpus``
    overriding them) or this machine's memory; "?" where its config.json lacks a size the estimate
    needs. A run that fits no placement is one more problem of ``report``, with the settings that
    would make it fit. Runs whose model's config.json is not local are absent."""
    from twossp.memory import plan_placement
    from twossp.runtime.executors import this_machine

    host = int(this_machine()["memory"])
    placements: dict[str, Any] = {}
    for run in runs:
        config, counts = report.configs.get(run.model.label), report.counts.get(run.model.label)
        if config is None or counts is None:
            continue
        try:
            choice = placements[run.key] = plan_placement(run, config, counts, host, gpus)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            placements[run.key] = "?"
            continue
        if not choice.fits:
            report.problems.append(f"{run.label}: {choice.problem()}")
    return placements


def _memory_cell(choice: Any) -> Text:
    if choice is None or isinstance(choice, str):
        return Text(choice or "-")
    return Text(choice.summary(), style="" if choice.fits else "red")


def _steps_table(shared: Any, work: Any) -> Table:
    """``sweep plan``'s shared steps: each computed once for the runs that share it."""
    from twossp.methods import SHARED_STEPS

    count = len(shared.steps)
    steps = Table(title=Text(f"{count} shared step{'s' if count != 1 else ''}, each computed once for the runs "
                             "that share it"))
    for col in ("key", "step", "runs", "layer forwards", "computes"):
        steps.add_column(col)
    for key, step in shared.steps.items():
        forwards = work.steps.get(key)
        steps.add_row(key, Text(step.label), str(len(shared.dependents(key))),
                      f"{forwards:,}" if forwards is not None else "?",
                      Text(SHARED_STEPS[step.kind].description))
    return steps


def _say_work(runs: list[Any], statuses: dict[str, str], report: Any, work: Any) -> None:
    """``sweep plan``'s summary: runs already done, the pruning work with and without sharing, and
    why some runs have no estimate or no preview."""
    done = sum(1 for s in statuses.values() if s == "completed")
    say(f"{done} of {len(runs)} runs already completed")
    if work.estimated:
        ratio = f" ({work.shared / work.unshared:.2f}x)" if work.unshared else ""
        covers = "" if work.estimated == len(runs) else f" of the {work.estimated} runs with an estimate"
        say(f"estimated pruning work{covers}: {work.unshared:,} decoder-layer forwards without sharing, "
            f"{work.shared:,} with it{ratio} (evaluation not counted)")
    if work.estimated < len(runs):
        say((f"{len(runs) - work.estimated} run(s) not estimated: their method has none (-: evopress, slicegpt), or "
             "their model's config.json is not local or their sparsity cannot be reached (?)", "dim"))
    if report.unknown:
        say(("will remove: shown once a model's config.json is local (path:, the hub cache, or a builtin/GGUF "
             "model after its first run)", "dim"))


def _say_memory(runs: list[Any], report: Any, placements: dict[str, Any]) -> None:
    """``sweep plan``'s notes on the memory column: why some runs have no estimate, and what a GPU
    estimate without the GPUs' memory is."""
    if len(placements) < len(runs):
        say(("memory: - where the model's config.json is not local (or not valid)", "dim"))
    if any(isinstance(choice, str) for choice in placements.values()):
        say(("memory: ? where the model's config.json lacks a size the estimate needs (vocab_size, hidden_size, "
             "intermediate_size, num_attention_heads)", "dim"))
    if any(not isinstance(c, str) and c.on_gpu and not c.capacity for c in placements.values()):
        say(("memory: GiB? is the estimate of one placement (single's for auto) where a model's GPU memory is "
             "unknown: give the model `gpu_memory:` to plan which placement its runs take", "dim"))


def _unplaceable(runs: list[Any], address: str | None) -> int:
    """Print, per model, the runs whose resources no node can ever give; how many there are."""
    from twossp.runtime.executors import RayExecutor, this_machine, unplaceable

    if address:
        executor = RayExecutor(address=address)
        try:
            reasons, where = executor.unplaceable(runs), f"the Ray cluster at {address}"
        except Exception as exc:  # noqa: BLE001 - Ray's connection errors have no common type
            fail(f"could not check resources against the Ray cluster at {address}: {exc}", 2)
        finally:
            executor.close()
    else:  # GPUs are checked by `sweep run` (or with --address): counting them here would import torch
        reasons, where = unplaceable(runs, [this_machine()], ignore=("GPU",)), "this machine (the local Ray cluster)"
    by_model: dict[str, tuple[int, str]] = {}
    for run in runs:
        if run.key in reasons:
            count, _ = by_model.get(run.model.label, (0, ""))
            by_model[run.model.label] = (count + 1, reasons[run.key])
    for label, (count, reason) in by_model.items():
        say((f"{count} run(s) of {label} can never be placed on {where}:", "red"), f" {reason}")
    return len(reasons)


@sweep.command("run", help="Run a sweep: plan it, skip completed runs, execute the rest, store results.")
@click.argument("file", type=click.Path(dir_okay=False))
@DB_OPTION
@click.option("--executor", type=click.Choice(["ray", "local"]), default="ray", show_default=True,
              help="ray: local Ray cluster (or --address); local: in-process, one run at a time.")
@click.option("--address", default=None, help="Attach to an existing Ray cluster (auto or HOST:PORT).")
@click.option("--rerun-failed", is_flag=True, help="Also re-run runs that failed before.")
@click.option("--max-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Re-submissions of a run whose Ray worker or node died (a run that raises is never retried).")
@click.option("--stale-after", type=click.FloatRange(min=0.5), default=120.0, show_default=True,
              help="Seconds without a heartbeat after which another driver's running run counts as abandoned.")
@click.option("--no-share", "no_share", is_flag=True,
              help="Every run computes everything itself (no shared steps; as `runtime: {share: false}`).")
@FILES_OPTION
def run(file: str, db_url: str | None, executor: str, address: str | None, rerun_failed: bool, max_retries: int,
        stale_after: float, no_share: bool, remote_files: bool) -> None:
    from twossp.dash.live import LiveSweep
    from twossp.errors import SweepCancelled
    from twossp.runtime.driver import run_sweep
    from twossp.runtime.executors import LocalExecutor, RayExecutor

    [(_, spec, _, report)] = _load_and_check([file], remote_files=remote_files, resolve=True)
    _raise_plan_problems([report], remote_ok=remote_files)  # before the database is touched
    with _open(db_url, create=True) as db:
        runner = RayExecutor(address=address, max_retries=max_retries) if executor == "ray" else LocalExecutor()
        # SIGTERM (a scheduler stopping us) is handled like Ctrl-C: unfinished runs are released.
        previous_handler = signal.signal(signal.SIGTERM, _interrupt)
        try:
            outcome = run_sweep(spec, db, runner, path=str(Path(file).resolve()), rerun_failed=rerun_failed,
                                display=LiveSweep(console), stale_after=stale_after, share=not no_share)
        except SweepCancelled:
            say(("cancelled", "yellow"),
                " (twossp sweep cancel): unfinished runs were released and will run next time", stderr=True)
            sys.exit(130)
        except KeyboardInterrupt:
            say(("interrupted", "yellow"), ": unfinished runs were released and will run next time", stderr=True)
            sys.exit(130)
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            runner.close()
    console.print()
    elsewhere = f", {len(outcome.elsewhere)} done by another driver" if outcome.elsewhere else ""
    say((f"{len(outcome.completed)} completed, {len(outcome.failed)} failed, {len(outcome.skipped)} skipped"
         f"{elsewhere}", "bold"), f" (results in {db.display_url})")
    _say_shared(outcome)
    for retried_run, reason in outcome.retried:
        say(("retried", "yellow"), f" {retried_run.label} ({retried_run.key}): {reason}", stderr=True)
    for failed_run, error in outcome.failed:
        say(("failed", "red"), f" {failed_run.label} ({failed_run.key}): {last_line(error, '?')}",
            stderr=True)
    if outcome.skipped_failed:
        say(f"{len(outcome.skipped_failed)} run(s) failed in an earlier sweep run and were skipped; "
            "re-run them with --rerun-failed", stderr=True)
    if outcome.dropped:
        say(f"{len(outcome.dropped)} run(s) were taken over by another driver; their results are that driver's",
            stderr=True)
    if outcome.failed:
        sys.exit(1)


def _say_shared(outcome: Any) -> None:
    """What the sweep's shared steps did: computed now (and how long), or read from the database."""
    computed = [(step, result) for step, result in outcome.steps_computed if result.status == "completed"]
    failed = [(step, result) for step, result in outcome.steps_computed if result.status != "completed"]
    if computed or outcome.steps_reused:
        seconds = sum(result.seconds for _, result in computed)
        say(f"shared steps: {len(computed)} computed ({seconds:.1f} s), {len(outcome.steps_reused)} taken from the "
            "database")
    for step, result in failed:
        say(("shared step failed", "red"), f" {step.label} ({step.key}): "
            f"{last_line(result.error, '?')}", stderr=True)


@sweep.command("tasks", help="Write the lm-eval configs (and the converted task data) a sweep's runs evaluate "
               "with, to DIR: `lm_eval --include_path DIR --tasks ...` then runs the same tasks on the same data.")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("directory", type=click.Path(file_okay=False))
def sweep_tasks(file: str, directory: str) -> None:
    from twossp.evaluate.harness import prepare_tasks
    from twossp.spec import load_sweep

    spec = load_sweep(file)
    if not spec.evaluation.tasks:
        fail(f"{file}: the sweep evaluates no task (evaluation.tasks)", 2)
    prepared = prepare_tasks(spec.evaluation.tasks, spec.evaluation.task_data, directory)
    for p in prepared:
        say(f"{p.spec.name}\t{p.source}" + (f"\t{len(p.subtasks)} subtasks" if p.subtasks else ""))
    say(f"lm_eval --model hf --model_args pretrained=MODEL_DIR --include_path {directory} "
        f"--tasks {','.join(p.spec.name for p in prepared)}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@sweep.command("cancel", help="Ask the drivers running a sweep to stop; their unfinished runs go back to pending.")
@click.argument("sweep_ref")
@DB_OPTION
def cancel(sweep_ref: str, db_url: str | None) -> None:
    """SWEEP_REF is a sweep file or a sweep name."""
    from twossp.db import store

    name = sweep_ref
    if Path(sweep_ref).is_file():
        from twossp.spec import load_sweep

        name = load_sweep(sweep_ref).name
    with _open(db_url) as db, db.session() as session:
        running = store.request_cancel(session, name)
    if running is None:
        fail(f"no sweep named {name!r} in {db.display_url}", 2)
    say(f"cancel requested for sweep {name!r}: {running} run(s) running; their drivers stop within "
        "their heartbeat interval (at most a quarter of --stale-after, 30 s by default)")


# ---------------------------------------------------------------------------------- results
FORMAT_OPTION = click.option("--format", "output_format", type=click.Choice(FORMATS),
                             default="table", show_default=True,
                             help="table: for the terminal; csv and json: every column's plain value; markdown, latex: "
                                  "for documents (best in bold).")
FIGURE_OPTION = click.option("--output", "figure", type=click.Path(dir_okay=False), default=None,
                             help="Also write the view's chart to FIGURE (.png, .svg or .pdf), for papers.")
PARAM_OPTION = click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
                            help="A view parameter (repeatable); twossp dash list shows each view's.")


def _read_only(db_url: str | None):  # noqa: ANN202 - a twossp.db.database.Database
    """The database opened read-only (enforced by the database): what views and SQL read through."""
    from twossp.db.database import Database

    return Database(db_url, create=False, read_only=True)


def _show_view(view: Any, db_url: str | None, params: Any, output_format: str, figure: str | None,
               live: bool = False) -> None:
    """Run a view and print it in ``output_format``; its chart under a table, and into ``figure``."""
    from twossp.dash import render
    from twossp.dash.charts import terminal, write_figure
    from twossp.dash.views import figure_checked, parse_params, run_view, watch

    values = parse_params(view, params)
    if live and (output_format != "table" or figure):
        fail("--live redraws the view's table in the terminal: it takes no --format and no --output", 2)
    with _read_only(db_url) as db:
        if live:
            watch(view, db, values, console)
            return
        frames = run_view(view, db, values)
    chart = figure_checked(view, frames, figure) if figure else view.chart  # before anything is printed
    if output_format != "table":
        click.echo(render.formatted(frames, output_format, view.name, values), nl=False)
    elif not any(f.rows for f in frames):
        given = {k: v for k, v in values.items() if v is not None and v != view.params[k].default}
        shown = ", ".join(f"{k} {v!r}" for k, v in given.items())
        say(f"{view.spec.empty} in {db.display_url}" + (f" for {shown}" if shown else ""))
    else:
        console.print(render.tables(frames))
        if chart is not None and frames[0].rows:
            console.print(Text.from_ansi(terminal(frames[0], chart, width=min(console.width, 120))))
    if figure:
        written = write_figure(frames[0], chart, figure)
        say(f"wrote {written}", stderr=output_format != "table")


@main.command(help="Methods side by side per model and sparsity, against dense (the view `leaderboard`).")
@DB_OPTION
@click.option("--sweep", "sweep_name", default=None, help="Only runs of this sweep.")
@click.option("--dashboard", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A view file to show instead of the packaged leaderboard view.")
@FORMAT_OPTION
@FIGURE_OPTION
def leaderboard(db_url: str | None, sweep_name: str | None, dashboard: str | None, output_format: str,
                figure: str | None) -> None:
    from twossp.dash.views import find_view, load_view

    view = load_view(dashboard) if dashboard else find_view("leaderboard")
    params = [f"sweep={sweep_name}"] if sweep_name else []
    _show_view(view, db_url, params, output_format, figure)


@main.command("show", help="One run in detail (the view `run`): spec, provenance, timings, scores, generations "
              "and its layer map. RUN_KEY may be a unique prefix.")
@click.argument("run_key")
@DB_OPTION
@FORMAT_OPTION
def show(run_key: str, db_url: str | None, output_format: str) -> None:
    from twossp.dash.views import find_view

    _show_view(find_view("run"), db_url, {"key": run_key}, output_format, None)


@main.group(cls=TwosspGroup, help="Declared views of the results (dashboards/*.yaml, and your own).")
def dash() -> None:
    pass


@dash.command("list", help="Every view: its name, where it comes from, its parameters and what it shows.")
def dash_list() -> None:
    from twossp.dash.views import load_view, view_dirs, view_files

    table = Table(box=None, pad_edge=False)
    for col in ("view", "from", "parameters", "shows"):
        table.add_column(col, overflow="fold")
    problems = []
    for name, (path, origin) in view_files().items():
        try:
            view = load_view(path, origin)
        except SpecError as exc:
            problems += exc.problems
            continue
        params = ", ".join(f"{p}{'' if not v.required else ' (required)'}" for p, v in view.params.items())
        table.add_row(Text(name), origin, Text(params or "-"), Text(view.spec.description or view.spec.title))
    console.print(table)
    say(("views are read from: ", "dim"), ("; ".join(f"{d} ({o})" for d, o in view_dirs()), "dim"))
    if problems:
        raise SpecError(problems)


@dash.command("show", help="Show a view (by name, or a view file's path).")
@click.argument("name")
@DB_OPTION
@PARAM_OPTION
@FORMAT_OPTION
@FIGURE_OPTION
@click.option("--live", is_flag=True, help="Redraw every few seconds (the view's refresh:, default 2) until Ctrl-C.")
def dash_show(name: str, db_url: str | None, params: tuple[str, ...], output_format: str, figure: str | None,
              live: bool) -> None:
    from twossp.dash.views import find_view

    _show_view(find_view(name), db_url, list(params), output_format, figure, live=live)


@main.command("runs", help="List runs with their status (and error, for failed ones).")
@DB_OPTION
@click.option("--status", type=click.Choice(["pending", "running", "completed", "failed"]), default=None,
              help="Only runs with this status.")
@click.option("--scores", "show_scores", is_flag=True,
              help="Under each run, its scores (dataset, metric, value): per-task accuracies, speed, perplexity.")
def runs_cmd(db_url: str | None, status: str | None, show_scores: bool) -> None:
    from twossp.db import store

    with _open(db_url) as db, db.session() as session:
        rows = store.run_rows(session, status, with_scores=show_scores)
    table = Table()
    for col in ("key", "model", "method", "target", "achieved", "status", "tries", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        error = last_line(r.error)
        method = f"{r.method} + {r.recovery}" if r.recovery else r.method  # a recovered run: its recovery too
        table.add_row(r.key, Text(r.model), method, f"{r.target_sparsity:g}",
                      f"{r.achieved_sparsity:.4f}" if r.achieved_sparsity is not None else "-", str(r.status),
                      str(r.attempts), Text(error))
        if show_scores:  # indented under the run: dataset in the model column, metric, value
            for s in sorted(r.scores, key=lambda s: (s.dataset, s.metric)):
                table.add_row("", Text(f"  {s.dataset}", style="dim"), Text(s.metric, style="dim"),
                              Text(f"{s.value:.6g}", style="dim"), *[""] * 4)
    console.print(table)


@main.command("export", help="Save a completed run's pruned model to DIR, rebuilt from the dense weights "
              "and the masks stored in the database, with a model card (README.md): a Hugging Face checkpoint that "
              "loads without twossp (plain where every block is whole; the Nemotron-NAS schema that transformers "
              "with trust_remote_code=True, vLLM and SGLang load where blocks differ), the stock architecture with "
              "removed parts as zeros (--format hf-stock), or one GGUF file that llama.cpp runs with the removed "
              "parts absent (--format gguf). twossp.load_pruned(DIR) reads any of the checkpoints back.")
@click.argument("run_key")
@click.argument("directory", type=click.Path(file_okay=False))
@DB_OPTION
@click.option("--format", "save_format", type=click.Choice(["safetensors", "hf-stock", "gguf"]),
              default="safetensors", show_default=True,
              help="A portable Hugging Face checkpoint, the stock architecture with zeros, or one GGUF file.")
@click.option("--type", "tensor_type", type=click.Choice(list(GGUF_TYPES)), default=None,
              help="GGUF tensor type (default f16): f32 is the model exactly; q8_0 and the 4- and 5-bit types "
                   "quantise after pruning; the K-quant mixes (q6_k ... q2_k) are made by llama.cpp's own quantiser "
                   "(needs llama-cpp-python).")
@click.option("--evaluate", is_flag=True,
              help="GGUF: measure the file in llama.cpp as the run was evaluated (perplexity on its windows, prompt "
                   "and generation tokens per second) and store the figures beside the run's (export_scores) and in "
                   "the model card.")
@click.option("--overwrite", is_flag=True, help="Replace what DIR holds (by default DIR must be empty or new).")
def export(run_key: str, directory: str, db_url: str | None, save_format: str, tensor_type: str | None,
           evaluate: bool, overwrite: bool) -> None:
    from twossp.runtime.export import export_run

    for flag, given in (("--type", tensor_type), ("--evaluate", evaluate)):
        if given and save_format != "gguf":
            raise click.UsageError(f"{flag} is for a GGUF file: it needs --format gguf")
    with _open(db_url) as db:
        saved = export_run(db, run_key, directory, overwrite=overwrite, save_format=save_format,
                           tensor_type=tensor_type or "f16", evaluate=evaluate)
    say(f"saved to {saved.directory}: {saved.note}")
    for dataset, metric, value in getattr(saved, "scores", []):
        say(f"  llama.cpp {metric.replace('_', ' ')}{'' if dataset == 'speed' else f' ({dataset})'}: {value:.6g}")


@main.command("check", help="Check an exported Hugging Face folder against the loading rules of vLLM, SGLang, "
              "llama.cpp's converter and transformers, reading only config.json and the safetensors headers (no "
              "weights, no GPU): a table of rules; exit 1 when one fails.")
@click.argument("directory", type=click.Path(file_okay=False))
def check(directory: str) -> None:
    from twossp.serve.check import check_folder

    report = check_folder(directory)
    click.echo(report.render())
    if not report.ok:
        sys.exit(1)


# ---------------------------------------------------------------------------------- list
@main.group("list", cls=TwosspGroup, help="What twossp supports.")
def list_group() -> None:
    pass


@list_group.command("methods", help="Sweep methods, one per line, with the paper each follows.")
def list_methods() -> None:
    from twossp.methods import METHODS

    for name, entry in METHODS.items():
        click.echo(f"{name}\t{entry.description}")


@list_group.command("families", help="Supported model architectures (config.architectures), one per line.")
def list_families() -> None:
    from twossp.families import family_descriptions

    for arch, description in family_descriptions().items():
        click.echo(f"{arch}\t{description}")


@list_group.command("tasks", help="Downstream lm-eval tasks, one per line, with the published files each reads "
                    "from a local folder.")
def list_tasks() -> None:
    from twossp.tasks import TASKS

    for name, task in TASKS.items():
        click.echo(f"{name}\t{task.description}; hub: {task.hub}; files: {', '.join(task.evaluated.records)}")


# ---------------------------------------------------------------------------------- db
@main.group(cls=TwosspGroup, help="Database schema management (Alembic).")
def db() -> None:
    pass


@db.command("upgrade", help="Upgrade the database schema to this version of twossp (creating it if needed).")
@DB_OPTION
def db_upgrade(db_url: str | None) -> None:
    from twossp.db.urls import safe_url
    from twossp.db.versioning import upgrade

    upgrade(db_url)
    say(f"{safe_url(db_url)}: schema at head")


@db.command("sql", help="Run one SQL statement read-only (the database itself refuses writes) and print "
            "its rows; :name parameters from --param. STATEMENT - reads it from standard input (a .sql file); put "
            "-- before a statement that starts with a -- comment.")
@click.argument("statement")
@DB_OPTION
@PARAM_OPTION
@FORMAT_OPTION
def db_sql(statement: str, db_url: str | None, params: tuple[str, ...], output_format: str) -> None:
    from twossp.dash import render
    from twossp.dash.views import named_values, sql_frame

    if statement == "-":
        statement = sys.stdin.read()
    values = named_values(params)
    with _read_only(db_url) as db:
        frame = sql_frame(db, statement, values)
    if output_format == "table":
        console.print(render.table(frame))
        say((f"{len(frame.rows)} row(s)", "dim"))
    else:
        click.echo(render.formatted([frame], output_format, "sql", values), nl=False)


@db.command("current", help="Print the schema revision of the database.")
@DB_OPTION
def db_current(db_url: str | None) -> None:
    from twossp.db.versioning import describe_revision

    say(describe_revision(db_url))


if __name__ == "__main__":
    main()
