"""The leaderboard's downstream accuracy and speed-up columns (the view `leaderboard`), from results
recorded through the real store: mean ±sd over seeds per calibration size, the change in accuracy
against dense in points, and prefill and decode speed-ups against dense."""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.text import Text

from tests.support.stored_runs import T0, claim, record, tiny_sweep
from twossp.contracts import RunResult, RunStatus
from twossp.dash.render import tables
from twossp.dash.views import find_view, parse_params, run_view
from twossp.db.database import Database
from twossp.plan import RunSpec, plan_sweep

# per run: perplexity, mean accuracy (a fraction), prefill seconds, decode tokens per second
DENSE = (10.0, 0.50, 0.20, 100.0)
PRUNED = {  # (calibration samples, seed) -> figures
    (2, 0): (20.0, 0.40, 0.125, 150.0),
    (2, 1): (22.0, 0.44, 0.125, 160.0),
    (4, 0): (18.0, 0.52, 0.100, 170.0),
    (4, 1): (19.0, 0.55, 0.120, 180.0),
}


def result(run: RunSpec, figures: tuple[float, float, float, float], *, downstream: bool = True) -> RunResult:
    ppl, acc, prefill, decode = figures
    scores = [("eval.txt", "perplexity", ppl)]
    if downstream:
        scores += [("downstream", "acc_mean", acc), ("arc_easy", "acc", acc), ("arc_easy", "acc_norm", acc + 0.01),
                   ("arc_easy", "acc_stderr", 0.01), ("mmlu", "acc", acc), ("mmlu_anatomy", "acc", acc),
                   ("speed", "prefill_seconds", prefill), ("speed", "decode_tokens_per_second", decode),
                   ("speed", "decode_seconds", 1.0)]
    return RunResult(key=run.key, status=RunStatus.COMPLETED, started_at=T0, finished_at=T0,
                     achieved_sparsity=run.sparsity or 0.0, scores=scores)


def record_sweep(db: Database, *, downstream: bool = True) -> list[RunSpec]:
    spec = tiny_sweep("downstream", calibration={"source": {"path": "/data/calib.jsonl"}, "samples": [2, 4],
                                                 "seq_len": 16}, seeds=[0, 1])
    runs = plan_sweep(spec)
    assert claim(db, spec, *runs)
    for run in runs:
        figures = DENSE if run.method.name == "dense" else PRUNED[(run.calibration.samples, run.calibration.seed)]
        record(db, run, result(run, figures, downstream=downstream))
    return runs


def render(db: Database) -> list[str]:
    view = find_view("leaderboard")
    console = Console(width=200, record=True, color_system="standard", force_terminal=True)
    console.print(tables(run_view(view, db, parse_params(view, []))))
    return console.export_text(styles=True).splitlines()


def plain(line: str) -> str:
    return Text.from_ansi(line).plain


def line_of(lines: list[str], method: str, samples: int | str) -> str:
    (found,) = [line for line in lines if f" {method} " in plain(line) and plain(line).split()[4] == str(samples)]
    return found


def test_accuracy_and_speed_ups_per_calibration_size(db: Database) -> None:
    record_sweep(db)
    lines = render(db)
    text = " ".join(" ".join(plain(line).split()) for line in lines)  # the caption wraps
    header = next(plain(line) for line in lines if "method" in plain(line))
    assert header.split() == ["model", "target", "method", "achieved", "n", "eval.txt", "Δ", "acc", "Δ",
                              "prefill", "decode"]
    assert "acc: mean downstream accuracy, its Δ in points; prefill, decode: speed-up against dense" in text
    assert "arc_easy" not in text and "mmlu" not in text  # per-task figures are not columns

    # dense shows its accuracy, and no change or speed-up against itself
    assert plain(line_of(lines, "dense", "-")).split() == ["tiny", "0", "dense", "0.000", "-", "10.00", "-",
                                                           f"{100 * DENSE[1]:.1f}%", "-", "-", "-"]
    for samples in (2, 4):
        figures = [PRUNED[(samples, seed)] for seed in (0, 1)]
        acc = [f[1] for f in figures]
        points = 100 * (statistics.mean(acc) - DENSE[1])
        prefill = DENSE[2] / statistics.mean(f[2] for f in figures)
        decode = statistics.mean(f[3] for f in figures) / DENSE[3]
        line = line_of(lines, "2ssp", samples)
        cells = plain(line)
        assert f"{100 * statistics.mean(acc):.1f}% ±{100 * statistics.stdev(acc):.1f}%" in cells
        assert f"{points:+.1f} pt" in cells
        assert cells.split()[-2:] == [f"{prefill:.2f}x", f"{decode:.2f}x"]
        colour = "\x1b[31m" if points < 0 else "\x1b[32m"  # red when below dense, green above
        assert f"{colour}{points:+.1f} pt" in line
    # the inputs were picked to cover both directions and both ways a speed-up is computed
    assert "-8.0 pt" in text and "+3.5 pt" in text and "1.60x" in text and "1.82x" in text


def test_without_downstream_or_speed_scores_the_columns_are_left_out(db: Database) -> None:
    record_sweep(db, downstream=False)
    text = " ".join(" ".join(plain(line).split()) for line in render(db))
    assert " acc " not in text and "prefill" not in text and "decode" not in text and " pt" not in text
    assert ("perplexity per dataset (lower is better), mean over seeds (±sd); Δ: change against dense; "
            "n: calibration samples; "
            "achieved: sparsity counted on the pruned model") in text
