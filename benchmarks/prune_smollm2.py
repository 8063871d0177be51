"""2SSP (and the block-removal baselines) on the real SmolLM2-135M-Instruct: pruning time, stage-2
work, perplexity, forward latency.

    .venv/bin/python benchmarks/prune_smollm2.py --seq-len 1024 --verify-naive   # the setting of the notes
    .venv/bin/python benchmarks/prune_smollm2.py --seq-len 128 --num-calibration 4 --eval-windows 4
    .venv/bin/python benchmarks/prune_smollm2.py --seq-len 128 --num-calibration 4 --eval-windows 4 --method all

``--method`` picks the pruning method from the library's registry (``twossp.prune.prune``):
``2ssp`` (default), ``shortgpt`` (drop the ceil(s*N) blocks of lowest Block Influence), ``window``
(drop the ceil(s*N) consecutive blocks whose input and output are most similar), ``blockpruner``
(greedy attention/FFN submodule removal by calibration perplexity), ``evopress`` (evolutionary
search over which blocks to drop), ``slicegpt`` (PCA rotations, hidden width sliced), or ``all``
(each method at each sparsity, one combined table), each with its defaults from ``twossp list
methods``. The baselines get all n calibration windows (BlockPruner scores candidates on its
``num_calibration`` = 1 of them); they have no stage 2, so the stage-2 columns are
2SSP's only. BlockPruner runs one greedy search, to the highest sparsity: the greedy path does not
depend on the target, so each lower sparsity's search is a prefix of it; its pruning time is the
search's elapsed time when it reached that sparsity's target, and its model is the dense one with
that prefix removed through the stored-mask mechanism (the same model a search stopping there gives, tested in
``tests/prune/test_blockpruner.py``; its CPU seconds are the whole search's, so shown only for the top).

Protocol (docs/evaluation.md; everything on the CPU, fp32, 2 threads):
- the model is loaded once (``twossp.runtime.loading.load_model``, builtin SmolLM2); every sparsity
  prunes its own ``copy.deepcopy`` of the dense model, so loading is never part of pruning time;
- calibration: the C4 subset's texts joined with "\\n\\n", tokenised once without special tokens,
  the first n windows of L tokens (all n feed stage 1, the first one feeds stage 2; all n feed the
  block methods' scores);
- evaluation: WikiText-2 test with "\\r" removed, tokenised once, the first w non-overlapping
  windows of L tokens;
- latency: one full forward (LM head included) of one L-token window, a few warm-up runs, then the
  median of the timed runs, for the dense model and every pruned one.

The data is not part of the repository: ``--data-dir DIR`` (or ``TWOSSP_BENCH_DATA``) names a folder
holding the C4 subset and WikiText-2 test files named below; the script exits with status 2 and
says so when they are absent. Progress goes to stderr; stdout carries
either a rich table or, with ``--json``, one JSON object per line: a ``dense`` record, then one
``sparsity`` record per method and sparsity (each with a ``method`` field).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import logging
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
C4_FILE = Path("c4") / "c4_validation_2k.derived.jsonl"
WIKITEXT_FILE = Path("wikitext-2-raw") / "wiki.test.raw"

TARGET_LAYER_FORWARD_RATIO = 0.55  # stage-2 decoder-layer forwards / naive search's
from twossp.methods import METHODS as REGISTRY  # noqa: E402 - torch-free

METHODS = tuple(name for name, entry in REGISTRY.items() if entry.prunes)  # --method all: registry order


# --- setup ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark 2SSP (or a block-removal baseline) pruning of "
                                            "SmolLM2-135M-Instruct on the CPU.")
    p.add_argument("--seq-len", type=int, default=2048, help="window length L in tokens (default 2048)")
    p.add_argument("--num-calibration", type=int, default=32, help="calibration windows n (default 32)")
    p.add_argument("--eval-windows", type=int, default=32, help="WikiText-2 evaluation windows w (default 32)")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.375, 0.5],
                   help="target sparsities, fractions of the decoder-layer parameters (default 0.25 0.375 0.5)")
    p.add_argument("--data-dir", type=Path, default=os.environ.get("TWOSSP_BENCH_DATA"),
                   help=f"folder with the reference data ({C4_FILE}, {WIKITEXT_FILE}); env TWOSSP_BENCH_DATA")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards before the latency runs (default 2)")
    p.add_argument("--timed-runs", type=int, default=5, help="timed forwards, median reported (default 5)")
    p.add_argument("--method", choices=(*METHODS, "all"), default="2ssp",
                   help="pruning method: 2ssp (default), a baseline, or all (each method at each sparsity, "
                        "one combined table)")
    p.add_argument("--verify-naive", action="store_true",
                   help="re-run stage 2 as the naive search (a full perplexity evaluation per candidate) and "
                        "check it makes the same choices; costly (about 2x stage 2); 2SSP only")
    p.add_argument("--option", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the method's sweep spec (as in a sweep file, e.g. "
                        "generations=20 for evopress); repeatable; one method only")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = p.parse_args(argv)
    problems = []
    for name in ("seq_len", "num_calibration", "eval_windows", "timed_runs"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        problems.append("--warmup must be at least 0")
    problems += [f"sparsity {s} is not strictly between 0 and 1" for s in args.sparsities if not 0 < s < 1]
    args.options = {}
    for option in args.option:
        field, sep, value = option.partition("=")
        if not sep or not field:
            problems.append(f"--option {option!r} is not FIELD=VALUE")
        args.options[field] = value
    if args.options and args.method == "all":
        problems.append("--option needs a single --method")
    if problems:
        p.error("; ".join(problems))
    args.method_spec = None  # the --option'ed spec of the single method
    if args.options:
        from pydantic import ValidationError

        try:
            args.method_spec = REGISTRY[args.method].spec(**args.options)
        except ValidationError as exc:
            p.error(f"--option for {args.method}: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    return args


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class Log:
    """Progress on stderr, stamped with the seconds since start; stdout stays for results."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)

    def progress(self, label: str):
        # Only the end of each phase: stage 2 reports every candidate, far too chatty for a log.
        def report(phase: str, done: int, total: int) -> None:
            if done == total:
                self(f"{label}: {phase} done ({total})")
        return report


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    # The texts are far longer than the model's context on purpose: silence that warning.
    log = logging.getLogger("transformers.tokenization_utils_base")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    finally:
        log.setLevel(level)


def read_texts(data_dir: Path) -> tuple[str, str]:
    c4, wiki = data_dir / C4_FILE, data_dir / WIKITEXT_FILE
    missing = [str(f) for f in (c4, wiki) if not f.is_file()]
    if missing:
        fail(f"reference data not found: {', '.join(missing)}; give the folder that holds it with --data-dir "
             "(or TWOSSP_BENCH_DATA).")
    with c4.open(encoding="utf-8") as f:
        calibration = "\n\n".join(json.loads(line)["text"] for line in f if line.strip())
    return calibration, wiki.read_text(encoding="utf-8").replace("\r", "")


def window_arguments(p: argparse.ArgumentParser) -> None:
    """The reference data and window options of the export benchmarks (8 windows of 512 tokens)."""
    p.add_argument("--data-dir", type=Path, default=os.environ.get("TWOSSP_BENCH_DATA"),
                   help=f"folder with the reference data ({C4_FILE}, {WIKITEXT_FILE}); env TWOSSP_BENCH_DATA")
    p.add_argument("--seq-len", type=int, default=512, help="calibration and evaluation window length L")
    p.add_argument("--num-calibration", type=int, default=8, help="C4 calibration windows for stage 1")
    p.add_argument("--eval-windows", type=int, default=8, help="WikiText-2 windows evaluated")


def pruned_2ssp(args: argparse.Namespace, log: "Log", sparsity: float) -> tuple[Any, Any, Any, torch.Tensor, float]:
    """SmolLM2 (fp32, CPU, 2 threads) pruned with 2SSP at ``sparsity`` on ``args``' C4 windows: the
    pruned model, its tokenizer, its adapter, the WikiText-2 windows and twossp's perplexity on them."""
    from twossp.evaluate.perplexity import make_windows, perplexity
    from twossp.families import adapter_for
    from twossp.prune import PruneContext, prune
    from twossp.runtime.loading import load_model
    from twossp.spec import ModelSpec

    if args.data_dir is None:
        fail("give the reference data folder with --data-dir (or TWOSSP_BENCH_DATA)")
    calibration_text, evaluation_text = read_texts(args.data_dir)
    torch.set_num_threads(2)
    device = torch.device("cpu")
    model, tokenizer = load_model(ModelSpec(builtin="smollm2-135m-instruct"), torch.float32, device)
    adapter = adapter_for(model.config)
    calibration = make_windows(tokenize(tokenizer, calibration_text), args.seq_len, args.num_calibration)
    evaluation = make_windows(tokenize(tokenizer, evaluation_text), args.seq_len, args.eval_windows)
    outcome = prune(PruneContext(model=model, adapter=adapter, calibration=calibration, sparsity=sparsity,
                                 method=REGISTRY["2ssp"].spec(), device=device, progress=log.progress(f"2ssp {sparsity}")))
    own = perplexity(model, adapter, evaluation, device).perplexity
    log(f"2ssp {sparsity}: twossp perplexity {own:.4f}, attention removed {sorted(outcome.removed_attention)}, "
        f"FFN width {model.config.intermediate_size}")
    return model, tokenizer, adapter, evaluation, own


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


# --- measurements -------------------------------------------------------------------------------------

@torch.no_grad()
def matmul_gflops(repeats: int = 20) -> float:
    """Throughput of a fixed fp32 matmul (one FFN projection at L=1024), best of three: the cores are
    shared, and a probe before and after each measurement shows how much of the machine it had."""
    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return repeats * 2 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e9


@torch.no_grad()
def forward_seconds(model: torch.nn.Module, window: torch.Tensor, device: torch.device, warmup: int,
                    runs: int) -> float:
    """Median wall clock of one full forward (LM head included) of one window, batch size 1."""
    from twossp.device import synchronize

    ids = window.view(1, -1).to(device)
    times = []
    for k in range(warmup + runs):
        synchronize(device)
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        synchronize(device)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def shared_tensors(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    """A ``deepcopy`` memo that shares every parameter and buffer: the copy gets its own modules and
    config, so removing an attention (structural, never in place) leaves ``model`` untouched, while
    the ~0.5 GB of weights are not copied for every candidate."""
    return {id(t): t for t in (*model.parameters(), *model.buffers())}


@torch.no_grad()
def naive_stage2(dense: torch.nn.Module, adapter: Any, kept_ffn: list[torch.Tensor], windows: torch.Tensor,
                 steps: int, device: torch.device) -> dict[str, Any]:
    """Stage 2 the slow, obvious way, as an independent check of the library's incremental search:
    stage 1 replayed from its kept neurons, then every candidate is a deep copy with that attention
    removed (weights shared) and a full perplexity evaluation; the lowest wins (ties: the lowest block index)."""
    from twossp.evaluate.perplexity import perplexity
    from twossp.prune.width import prune_width

    model = copy.deepcopy(dense)
    prune_width(model, adapter, kept_ffn)
    layers = adapter.layers(model)
    removed, perplexities, forwards = [], [], 0
    start = time.perf_counter()
    for _ in range(steps):
        best, best_index = math.inf, -1
        for i in range(len(layers)):
            if not adapter.is_attention_present(layers[i]):
                continue
            candidate = copy.deepcopy(model, memo=shared_tensors(model))
            adapter.remove_attention(candidate, i)
            ppl = perplexity(candidate, adapter, windows, device).perplexity
            forwards += len(layers) * windows.shape[0]
            if ppl < best:
                best, best_index = ppl, i
        adapter.remove_attention(model, best_index)
        removed.append(best_index)
        perplexities.append(best)
    return {"removed": removed, "calibration_perplexity": perplexities, "layer_forwards": forwards,
            "seconds": time.perf_counter() - start}


def calibration_forward_seconds(dense: torch.nn.Module, adapter: Any, windows: torch.Tensor,
                                device: torch.device) -> float:
    """One dense decoder forward per calibration window, summed: what stage 1 reads its activations
    from, and so the yardstick of its cost, measured here rather than taken from elsewhere."""
    from twossp.device import synchronize

    decoder = adapter.decoder(dense)
    with torch.no_grad():
        decoder(input_ids=windows[:1].to(device), use_cache=False)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for window in windows:
            decoder(input_ids=window.view(1, -1).to(device), use_cache=False)
        synchronize(device)
    return time.perf_counter() - start


def run(args: argparse.Namespace, log: Log, emit: Callable[[dict[str, Any]], None]) -> None:
    """Measure everything; ``emit`` receives the dense record, then each sparsity's as soon as it is done."""
    calibration_text, evaluation_text = read_texts(args.data_dir)

    import transformers

    from twossp.errors import TwosspError
    from twossp.evaluate.perplexity import make_windows, perplexity
    from twossp.families import adapter_for
    from twossp.prune import PruneContext, prune
    from twossp.runtime.loading import load_model
    from twossp.spec import ModelSpec

    methods = METHODS if args.method == "all" else (args.method,)
    specs = {name: REGISTRY[name].spec() for name in METHODS}  # each method with its paper's defaults
    if args.method_spec is not None:
        specs[args.method] = args.method_spec
        log(f"{args.method} options: {specs[args.method].model_dump(exclude={'name'})}")

    torch.set_num_threads(2)
    device = torch.device("cpu")
    start = time.perf_counter()
    try:
        dense, tokenizer = load_model(ModelSpec(builtin="smollm2-135m-instruct"), torch.float32, device)
    except TwosspError as exc:
        fail(str(exc))
    load_s = time.perf_counter() - start
    adapter = adapter_for(dense.config)
    dense_counts = adapter.block_counts(dense)
    log(f"model loaded in {load_s:.1f}s: {dense_counts.num_layers} layers, d_ff {dense_counts.intermediate_size}")

    # Fail on an infeasible sparsity now rather than after an hour of pruning the others.
    try:
        for s in args.sparsities:
            for name in methods:  # each method's plan preview raises where it could not succeed
                REGISTRY[name].preview(specs[name], s, dense_counts)
    except TwosspError as exc:
        fail(str(exc))

    calibration = make_windows(tokenize(tokenizer, calibration_text), args.seq_len, args.num_calibration)
    evaluation = make_windows(tokenize(tokenizer, evaluation_text), args.seq_len, args.eval_windows)
    for name, windows, wanted in (("calibration (C4)", calibration, args.num_calibration),
                                  ("evaluation (WikiText-2)", evaluation, args.eval_windows)):
        if windows.shape[0] < wanted:
            fail(f"{name} text holds only {windows.shape[0]} windows of {args.seq_len} tokens, {wanted} asked")
    log(f"tokenised: calibration {tuple(calibration.shape)}, evaluation {tuple(evaluation.shape)}")

    probe = matmul_gflops()
    calibration_fwd = calibration_forward_seconds(dense, adapter, calibration, device)
    dense_ppl = perplexity(dense, adapter, evaluation, device).perplexity
    dense_fwd = forward_seconds(dense, evaluation[0], device, args.warmup, args.timed_runs)
    log(f"dense: perplexity {dense_ppl:.3f}, forward {dense_fwd:.3f}s")
    dense_record = {
        "record": "dense",
        "method": "dense",
        "model": "smollm2-135m-instruct",
        "seq_len": args.seq_len,
        "num_calibration": args.num_calibration,
        "eval_windows": args.eval_windows,
        "method_options": args.options,  # --option overrides of the method's defaults
        "num_layers": dense_counts.num_layers,
        "ffn_width": dense_counts.intermediate_size,
        "layer_params": dense_counts.layer_params,
        "perplexity": dense_ppl,
        "forward_s": dense_fwd,
        "calibration_forward_s": calibration_fwd,  # one dense decoder forward per calibration window
        "load_s": load_s,
        "matmul_gflops": probe,
        "device": "cpu",
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "git_revision": git_revision(),
    }
    emit(dense_record)

    for name in methods:
        if REGISTRY[name].prefix_search:
            for record in blockpruner_records(args, log, dense, adapter, calibration, evaluation, device,
                                              specs[name], dense_ppl, dense_fwd, dense_counts):
                emit(record)
            continue
        for s in args.sparsities:
            label = f"{name}, sparsity {s}"
            model = copy.deepcopy(dense)
            probe, load = matmul_gflops(), os.getloadavg()[0]
            cpu_start = time.process_time()
            outcome = prune(PruneContext(model=model, adapter=adapter, calibration=calibration, sparsity=s,
                                         method=specs[name], device=device, progress=log.progress(label)))
            cpu_s = time.process_time() - cpu_start
            probe_after, load_after = matmul_gflops(), os.getloadavg()[0]
            measured = {"method": name, "label": label, "probe": probe, "probe_after": probe_after, "cpu_s": cpu_s,
                        "load_before_after": [load, load_after], "calibration_fwd": calibration_fwd,
                        "dense_ppl": dense_ppl, "dense_fwd": dense_fwd, "dense_counts": dense_counts}
            if outcome.budget is not None:  # a two-stage method: stage timings and stage-2 work
                record = two_ssp_record(args, log, model, dense, adapter, calibration, evaluation, device, s,
                                        outcome, measured)
            else:
                record = block_record(args, log, name, model, adapter, evaluation, device, s, outcome, measured)
            emit(record)
            del model


def two_ssp_record(args: argparse.Namespace, log: Log, model: torch.nn.Module, dense: torch.nn.Module,
                   adapter: Any, calibration: torch.Tensor, evaluation: torch.Tensor, device: torch.device,
                   s: float, outcome: Any, measured: dict[str, Any]) -> dict[str, Any]:
    """The 2SSP record: stage timings, stage 1 against one dense forward per calibration window,
    stage-2 work (and, with --verify-naive, time) against the naive search, in the same run."""
    from twossp.evaluate.perplexity import perplexity

    label, probe, probe_after, cpu_s = measured["label"], measured["probe"], measured["probe_after"], measured["cpu_s"]
    dense_ppl, dense_fwd, dense_counts = measured["dense_ppl"], measured["dense_fwd"], measured["dense_counts"]
    depth = outcome.search
    widths = {adapter.ffn_width(layer) for layer in adapter.layers(model)}
    ffn_kept = widths.pop() if len(widths) == 1 else sorted(widths)  # 2SSP keeps the same width everywhere
    achieved = 1 - adapter.block_counts(model).layer_params / dense_counts.layer_params
    ppl = perplexity(model, adapter, evaluation, device).perplexity
    fwd = forward_seconds(model, evaluation[0], device, args.warmup, args.timed_runs)
    ratio = depth.layer_forwards / depth.naive_layer_forwards if depth.naive_layer_forwards else None
    record = {
        "record": "sparsity",
        "method": measured["method"],
        "sparsity": s,
        "achieved_sparsity": achieved,
        "attention_removed": outcome.removed_attention,
        "ffn_kept": ffn_kept,
        "perplexity": ppl,
        "dense_perplexity": dense_ppl,
        "stage1_s": outcome.timings["stage 1"],
        "stage2_s": outcome.timings["stage 2"],
        "total_s": outcome.timings["prune"],
        "prune_cpu_s": cpu_s,
        "matmul_gflops_before_after": [probe, probe_after],
        "load_average_before_after": measured["load_before_after"],
        "stage1_vs_calibration_forwards": outcome.timings["stage 1"] / measured["calibration_fwd"],
        "stage2_layer_forwards": depth.layer_forwards,
        "naive_layer_forwards": depth.naive_layer_forwards,
        "layer_forward_ratio": ratio,
        "stage2_candidates": sum(dense_counts.num_layers - k for k in range(len(outcome.removed_attention))),
        "calibration_perplexity": depth.calibration_perplexity,
        "forward_s": fwd,
        "dense_forward_s": dense_fwd,
        "speedup": dense_fwd / fwd,
    }
    record["meets_layer_forward_target"] = None if ratio is None else ratio <= TARGET_LAYER_FORWARD_RATIO
    log(f"{label}: removed {outcome.removed_attention}, FFN {ffn_kept}, perplexity {ppl:.3f}, "
        f"prune {record['total_s']:.1f}s")
    if args.verify_naive:
        naive = naive_stage2(dense, adapter, outcome.kept_ffn, calibration[:1], len(outcome.removed_attention),
                             device)
        diffs = [abs(a - b) / b for a, b in zip(depth.calibration_perplexity, naive["calibration_perplexity"])]
        record["naive_check"] = {
            "identical_choices": naive["removed"] == outcome.removed_attention,
            "removed": naive["removed"],
            "layer_forwards": naive["layer_forwards"],
            "fast_layer_forwards": depth.layer_forwards,
            "max_rel_calibration_perplexity_diff": max(diffs, default=0.0),
            "seconds": naive["seconds"],
        }
        record["stage2_time_ratio_vs_naive"] = record["stage2_s"] / naive["seconds"]
        log(f"{label}: naive stage 2 removed {naive['removed']} in {naive['seconds']:.1f}s "
            f"({naive['layer_forwards']} layer forwards vs {depth.layer_forwards})")
    return record


def block_record(args: argparse.Namespace, log: Log, name: str, model: torch.nn.Module, adapter: Any,
                 evaluation: torch.Tensor, device: torch.device, s: float, outcome: Any,
                 measured: dict[str, Any]) -> dict[str, Any]:
    """A baseline's record: what it removed (whole blocks and submodules in dense indices, or the
    sliced width), no stage 2."""
    from twossp.evaluate.perplexity import perplexity

    dense_counts = measured["dense_counts"]
    counts = adapter.block_counts(model)
    widths = {adapter.ffn_width(layer) for layer in adapter.layers(model) if adapter.is_ffn_present(layer)}
    ffn_kept = widths.pop() if len(widths) == 1 else sorted(widths)
    achieved = 1 - counts.layer_params / dense_counts.layer_params
    ppl = perplexity(model, adapter, evaluation, device).perplexity
    fwd = forward_seconds(model, evaluation[0], device, args.warmup, args.timed_runs)
    record = {
        "record": "sparsity",
        "method": name,
        "sparsity": s,
        "achieved_sparsity": achieved,
        "removed_blocks": outcome.removed_blocks,
        "blocks_removed": len(outcome.removed_blocks),
        "ffn_removed": outcome.removed_ffn,
        "sliced_width": outcome.details.get("sliced_width"),
        "layers_kept": counts.num_layers,
        "attention_removed": outcome.removed_attention,
        "ffn_kept": ffn_kept,
        "perplexity": ppl,
        "dense_perplexity": measured["dense_ppl"],
        "total_s": outcome.timings["prune"],
        "prune_cpu_s": measured["cpu_s"],
        "matmul_gflops_before_after": [measured["probe"], measured["probe_after"]],
        "block_scores": outcome.details.get("scores"),
        "forward_s": fwd,
        "dense_forward_s": measured["dense_fwd"],
        "speedup": measured["dense_fwd"] / fwd,
    }
    log(f"{measured['label']}: {removed_text(record)}, perplexity {ppl:.3f}, prune {record['total_s']:.1f}s")
    return record


def blockpruner_records(args: argparse.Namespace, log: Log, dense: torch.nn.Module, adapter: Any,
                        calibration: torch.Tensor, evaluation: torch.Tensor, device: torch.device, spec: Any,
                        dense_ppl: float, dense_fwd: float, dense_counts: Any) -> list[dict[str, Any]]:
    """BlockPruner at every sparsity from one greedy search to the highest: the path does not depend
    on the target (tests/prune/test_blockpruner.py), so a lower sparsity's search is a prefix of it.
    Its pruning time is the search's elapsed time at the step where it reached that target (what a
    search stopping there takes), and its model is the dense one with that prefix removed."""
    from twossp.contracts import PruneOutcome, layer_masks
    from twossp.prune import PruneContext, prune
    from twossp.prune.blockpruner import split_removals, steps_for
    from twossp.prune.masks import apply_masks

    top = max(args.sparsities)
    searched = copy.deepcopy(dense)
    probe = matmul_gflops()
    cpu_start = time.process_time()
    outcome = prune(PruneContext(model=searched, adapter=adapter, calibration=calibration, sparsity=top, method=spec,
                                 device=device, progress=log.progress(f"blockpruner to {top}")))
    cpu_s = time.process_time() - cpu_start
    probe_after = matmul_gflops()
    del searched
    d = outcome.details
    order = outcome.removal_order
    records = []
    for s in args.sparsities:
        steps = steps_for(d["removed_params_after_each_removal"], dense_counts.layer_params, s)
        model = copy.deepcopy(dense)
        attention, ffn, blocks = split_removals(order[:steps])
        apply_masks(model, adapter, layer_masks(dense_counts.num_layers, dense_counts.intermediate_size, None,
                                                attention, blocks, ffn))
        seconds = d["seconds_after_each_removal"][steps - 1]
        prefix = PruneOutcome(kept_ffn=None, removed_attention=attention, removed_ffn=ffn, removed_blocks=blocks,
                              timings={"prune": seconds}, details={})
        measured = {"method": spec.name, "label": f"{spec.name}, sparsity {s}", "probe": probe, "probe_after": probe_after,
                    "cpu_s": cpu_s if steps == len(order) else None, "dense_ppl": dense_ppl,  # the whole search's
                    "dense_fwd": dense_fwd, "dense_counts": dense_counts}
        record = block_record(args, log, spec.name, model, adapter, evaluation, device, s, prefix, measured)
        record.update(steps=steps, removal_order=[list(x) for x in order[:steps]],
                      calibration_perplexity=outcome.calibration_perplexity[:steps],
                      timed_from_search_to=top)
        records.append(record)
        del model
    return records


# --- output -------------------------------------------------------------------------------------------

def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def print_table(args: argparse.Namespace, dense: dict[str, Any], records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Redirected to a file, rich would wrap at 80 columns; the two tables need a little more.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    title = (f"2SSP on SmolLM2-135M-Instruct, L={args.seq_len}, {args.num_calibration} calibration windows, "
             f"{args.eval_windows} WikiText-2 windows, CPU fp32, {dense['threads']} threads")
    quality = Table(title=title)
    for col in ("sparsity", "achieved", "attention removed (in order)", "FFN kept", "WikiText-2 PPL",
                "forward s", "speedup"):
        quality.add_column(col, justify="left" if col.startswith("attention") else "right")
    quality.add_row("dense", "0", "-", str(dense["ffn_width"]), f"{dense['perplexity']:.3f}",
                    f"{dense['forward_s']:.3f}", "1.00x")
    for r in records:
        quality.add_row(f"{r['sparsity']}", f"{r['achieved_sparsity']:.4f}", ", ".join(map(str, r["attention_removed"])),
                        str(r["ffn_kept"]), f"{r['perplexity']:.3f}", f"{r['forward_s']:.3f}", f"{r['speedup']:.2f}x")
    console.print(quality)

    cost = Table(title="Pruning cost, all measured in this run (model loading excluded; probe = fp32 matmul "
                       "GFLOP/s before/after; load = 1-min load average before/after)")
    for col in ("sparsity", "stage 1 s", "st-1 / fwd", "stage 2 s", "st-2 / naive s", "total s", "CPU s",
                "stage-2 layer fwd", "naive", "ratio", "probe", "load"):
        cost.add_column(col, justify="right")
    for r in records:
        cost.add_row(f"{r['sparsity']}", f"{r['stage1_s']:.1f}", f"{r['stage1_vs_calibration_forwards']:.2f}",
                     f"{r['stage2_s']:.1f}", _fmt(r.get("stage2_time_ratio_vs_naive"), ".3f"), f"{r['total_s']:.1f}",
                     _fmt(r['prune_cpu_s'], '.1f'), f"{r['stage2_layer_forwards']:,}", f"{r['naive_layer_forwards']:,}",
                     _fmt(r["layer_forward_ratio"], ".3f"),
                     "/".join(f"{g:.0f}" for g in r["matmul_gflops_before_after"]),
                     "/".join(f"{x:.2f}" for x in r["load_average_before_after"]))
    console.print(cost)
    print_2ssp_notes(console, records)
    print_environment(console, dense)


def print_2ssp_notes(console: Any, records: list[dict[str, Any]]) -> None:
    """How each 2SSP record fares: stage-2 work against the naive search's (counted), and with
    --verify-naive the naive search itself, timed in this run on this machine."""
    console.print(f"Target: stage-2 layer forwards <= {TARGET_LAYER_FORWARD_RATIO}x the naive search's (counted). "
                  "st-1 / fwd: stage 1 against one dense decoder forward per calibration window; st-2 / naive s: "
                  "stage 2 against the naive full-model search (--verify-naive), both timed in this run.")
    for r in records:
        lf = {True: "meets", False: "MISSES", None: "no"}[r["meets_layer_forward_target"]]
        console.print(f"  sparsity {r['sparsity']}: layer-forward ratio {_fmt(r['layer_forward_ratio'], '.3f')} "
                      f"({lf} target); stage 1 {r['stage1_vs_calibration_forwards']:.2f}x the dense forwards")
        if "naive_check" in r:
            c = r["naive_check"]
            verdict = "identical" if c["identical_choices"] else f"DIFFERENT (naive removed {c['removed']})"
            console.print(f"    naive stage 2: choices {verdict}; {c['seconds']:.1f}s against ours "
                          f"{r['stage2_s']:.1f}s ({r['stage2_time_ratio_vs_naive']:.3f}x); layer forwards naive "
                          f"{c['layer_forwards']:,} vs ours {c['fast_layer_forwards']:,}; max rel. calibration-PPL "
                          f"diff {c['max_rel_calibration_perplexity_diff']:.2e}")


def print_environment(console: Any, dense: dict[str, Any]) -> None:
    console.print(f"[dim]torch {dense['torch']}, transformers {dense['transformers']}, python {dense['python']}, "
                  f"git {dense['git_revision']}, model load {dense['load_s']:.1f}s (excluded), matmul probe at "
                  f"start {dense['matmul_gflops']:.0f} GFLOP/s[/dim]")


def removed_count(r: dict[str, Any]) -> str:
    if r.get("sliced_width"):
        return f"width {r['sliced_width']}"
    parts = [f"{len(r.get(k) or [])} {name}" for k, name in (("removed_blocks", "blocks"), ("attention_removed", "attn"),
                                                            ("ffn_removed", "FFN")) if r.get(k)]
    return " + ".join(parts) or "-"


def removed_text(r: dict[str, Any]) -> str:
    """What a record removed, in dense indices (2SSP: attentions in order of removal)."""
    if r.get("sliced_width"):
        return f"hidden width sliced to {r['sliced_width']}"
    parts = [f"{name} {', '.join(map(str, r.get(k) or []))}" for k, name in (
        ("removed_blocks", "blocks"), ("attention_removed", "attention"), ("ffn_removed", "FFN")) if r.get(k)]
    return "; ".join(parts) or "nothing"


def print_combined_table(args: argparse.Namespace, dense: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """One table, method x sparsity; the stage-2 columns are 2SSP's ('-' for block methods)."""
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=200)
    methods = ", ".join(dict.fromkeys(r["method"] for r in records))
    title = (f"{methods} on SmolLM2-135M-Instruct, L={args.seq_len}, {args.num_calibration} calibration windows, "
             f"{args.eval_windows} WikiText-2 windows, CPU fp32, {dense['threads']} threads")
    table = Table(title=title)
    columns = ("method", "sparsity", "achieved", "removed", "FFN kept", "prune s", "stage 1 s", "stage 2 s",
               "CPU s", "st-2 layer fwd", "ratio", "st-2/naive s", "WikiText-2 PPL", "forward s", "speedup", "probe")
    for col in columns:
        table.add_column(col, justify="left" if col in ("method", "removed") else "right", no_wrap=True)
    dash = "-"
    table.add_row("dense", "0", "0", dash, str(dense["ffn_width"]), dash, dash, dash, dash, dash, dash, dash,
                  f"{dense['perplexity']:.3f}", f"{dense['forward_s']:.3f}", "1.00x", f"{dense['matmul_gflops']:.0f}")
    for r in records:
        two_ssp = "stage1_s" in r  # a two-stage record
        removed = f"{len(r['attention_removed'])} attn" if two_ssp else removed_count(r)
        table.add_row(
            r["method"], f"{r['sparsity']}", f"{r['achieved_sparsity']:.4f}", removed, str(r["ffn_kept"]),
            f"{r['total_s']:.1f}",
            f"{r['stage1_s']:.1f}" if two_ssp else dash,
            f"{r['stage2_s']:.1f}" if two_ssp else dash,
            _fmt(r['prune_cpu_s'], '.1f'),
            f"{r['stage2_layer_forwards']:,}" if two_ssp else dash,
            _fmt(r["layer_forward_ratio"], ".3f") if two_ssp else dash,
            _fmt(r.get("stage2_time_ratio_vs_naive"), ".3f") if two_ssp else dash,
            f"{r['perplexity']:.3f}", f"{r['forward_s']:.3f}", f"{r['speedup']:.2f}x",
            "/".join(f"{g:.0f}" for g in r["matmul_gflops_before_after"]),
        )
    console.print(table)
    console.print("prune s: pruning wall clock (model loading excluded); st-2 layer fwd, ratio: 2SSP stage-2 "
                  "decoder-layer forwards and their ratio to the naive search's; st-2/naive s: stage 2's time against "
                  "the naive search's, timed in this run (--verify-naive); probe: fp32 matmul GFLOP/s before/after pruning. Removed (dense indices): "
                  "2SSP's attentions in order of removal, the block methods' whole blocks:")
    for r in records:
        console.print(f"  {r['method']} {r['sparsity']}: {removed_text(r)}")
    two_ssp_records = [r for r in records if "stage1_s" in r]
    if two_ssp_records:
        print_2ssp_notes(console, two_ssp_records)
    print_environment(console, dense)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data_dir is None or not Path(args.data_dir).is_dir():
        fail(f"data folder not found: {args.data_dir}; give the folder holding {C4_FILE} and {WIKITEXT_FILE} "
             "with --data-dir (or TWOSSP_BENCH_DATA).")
    args.data_dir = Path(args.data_dir)
    log = Log()
    records: list[dict[str, Any]] = []

    def emit(record: dict[str, Any]) -> None:
        records.append(record)
        if args.json:  # as soon as measured: a long run that dies still leaves its lines
            print(json.dumps(record), flush=True)

    run(args, log, emit)
    dense, records = records[0], records[1:]
    if not args.json:
        if records and all("stage1_s" in r for r in records):  # one two-stage method
            print_table(args, dense, records)
        else:
            print_combined_table(args, dense, records)
    naive_mismatch = any(not r["naive_check"]["identical_choices"] for r in records if "naive_check" in r)
    return 1 if naive_mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
