"""Recovery after pruning, for a GPU host (and, with tiny settings, this CPU): 2SSP at each sparsity,
then the pruned model healed by distillation from the dense model (``kd``) or by the next-token loss
alone (``ce``) at one fixed token budget, with WikiText-2 perplexity before and after.

    # an H100 (80 GB): Llama-3.1-8B in bf16, LoRA (full fine-tuning of 8B with its teacher does not fit)
    python benchmarks/recovery.py --model /models/Llama-3.1-8B --data-dir ../shared/data --tune lora \\
        --steps 100 --batch-size 4 --accumulation 2 --seq-len 1024 --lr 2e-4 --json recovery-llama8b.json
    # this 2-core CPU: the builtin SmolLM2-135M-Instruct in fp32, a smoke run of a few steps (about 2 min)
    .venv/bin/python benchmarks/recovery.py --data-dir ../shared/data --sparsities 0.5 --steps 3 \\
        --batch-size 2 --seq-len 128 --prune-len 128 --num-calibration 4 --eval-windows 4

Protocol. The model (``--model DIR``, a local Hugging Face folder; default the builtin SmolLM2) is
loaded once in ``--dtype`` (bf16 on CUDA, fp32 on the CPU by default). C4 (the parquet subset in
``--data-dir``, or ``TWOSSP_BENCH_DATA``) gives the calibration, the first ``--num-calibration``
windows of ``--prune-len`` tokens, and the recovery text, the rest of the same token stream (so the
two never overlap). WikiText-2 test gives the evaluation, the first ``--eval-windows`` windows of
``--prune-len`` tokens: a held-out text of another source, so a gain is not domain fitting. For each
sparsity, a copy of the dense model is pruned once with 2SSP (``twossp.prune.prune``) and kept on
the host; each recovery (every ``--losses`` x ``--tune``) starts from a fresh copy of it on the
device, with the dense model as the teacher of ``kd``, and runs ``twossp.recover.recover`` for
``--steps`` optimiser steps of ``--batch-size`` x ``--accumulation`` windows of ``--seq-len`` tokens
(AdamW, ``--warmup`` steps then a cosine). Reported per recovery: perplexity before and after, the
share of the gap to dense closed in log space, (ln before - ln after) / (ln before - ln dense),
training tokens per second and seconds (the loop's own wall clock), and the peak memory of the
recovery (twossp.device.peak_memory: CUDA allocator peak, or the process's peak resident set on the
CPU), which includes the dense teacher and the student resident on the device.

Progress goes to stderr; stdout gets a table; ``--json FILE`` writes the records and what produced them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prune_smollm2 import Log, fail, git_revision  # the benchmarks' shared helpers

C4_FILE = Path("c4") / "c4_validation_2k.parquet"
WIKITEXT_FILE = Path("wikitext-2-raw") / "wiki.test.raw"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="local Hugging Face model folder (default: builtin SmolLM2-135M)")
    p.add_argument("--data-dir", type=Path, default=os.environ.get("TWOSSP_BENCH_DATA"),
                   help=f"folder with {C4_FILE} and {WIKITEXT_FILE}; env TWOSSP_BENCH_DATA")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cuda, cpu, ...")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 on CUDA, float32 elsewhere")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--losses", nargs="+", choices=("kd", "ce"), default=["kd", "ce"])
    p.add_argument("--tune", nargs="+", choices=("full", "lora"), default=["full"])
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps of every recovery")
    p.add_argument("--batch-size", type=int, default=8, help="windows per micro-batch")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per step")
    p.add_argument("--seq-len", type=int, default=1024, help="recovery window length in tokens")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, help="warm-up steps (default: a tenth of --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prune-len", type=int, default=2048, help="calibration and evaluation window length")
    p.add_argument("--num-calibration", type=int, default=32, help="C4 calibration windows for 2SSP")
    p.add_argument("--eval-windows", type=int, default=32, help="WikiText-2 windows evaluated")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the records to FILE")
    args = p.parse_args(argv)
    bad = [f"sparsity {s} is not strictly between 0 and 1" for s in args.sparsities if not 0 < s < 1]
    bad += [f"--{n.replace('_', '-')} must be at least 1" for n in ("steps", "batch_size", "accumulation", "seq_len",
            "prune_len", "num_calibration", "eval_windows", "lora_rank") if getattr(args, n) < 1]
    if bad:
        p.error("; ".join(bad))
    if args.data_dir is None or not all((Path(args.data_dir) / f).is_file() for f in (C4_FILE, WIKITEXT_FILE)):
        fail(f"reference data not found in {args.data_dir}: give the folder holding {C4_FILE} and {WIKITEXT_FILE} "
             "with --data-dir (or TWOSSP_BENCH_DATA)")
    args.data_dir = Path(args.data_dir).resolve()
    return args


def recovery_spec(args: argparse.Namespace, loss: str, tune: str, c4: Any) -> Any:
    """The ``recovery:`` entry a sweep file would hold for this recovery, built in code."""
    from twossp.spec import LoraSpec, RecoverySpec

    lora = LoraSpec(rank=args.lora_rank, alpha=2.0 * args.lora_rank) if tune == "lora" else None
    warmup = args.steps // 10 if args.warmup is None else args.warmup
    return RecoverySpec(loss=loss, tune=tune, lora=lora, steps=args.steps, lr=args.lr, warmup=warmup,
                        schedule="cosine", batch_size=args.batch_size, accumulation=args.accumulation,
                        seq_len=args.seq_len, data=c4, seed=args.seed)


def gap_closed(before: float, after: float, dense: float) -> float | None:
    """The share of the pruned model's perplexity gap to dense that recovery closed, in log space."""
    gap = math.log(before) - math.log(dense)
    return (math.log(before) - math.log(after)) / gap if gap > 0 else None


def run(args: argparse.Namespace, log: Log) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from twossp.data.tokens import calibration_windows, token_stream
    from twossp.device import batch_size, device_name, peak_memory, release_memory, reset_peak_memory, \
        resolve_device, torch_dtype
    from twossp.evaluate.perplexity import make_windows, perplexity
    from twossp.families import adapter_for
    from twossp.methods import METHODS
    from twossp.prune import PruneContext, prune
    from twossp.recover import recover
    from twossp.runtime.loading import load_model
    from twossp.spec import FileSource, ModelSpec

    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    spec = ModelSpec(path=str(args.model)) if args.model else ModelSpec(builtin="smollm2-135m-instruct")
    dense, tokenizer = load_model(spec, dtype, device)
    adapter = adapter_for(dense.config)
    batch = batch_size(device)
    c4 = FileSource(path=str(args.data_dir / C4_FILE))
    calibration = calibration_windows(tokenizer, c4, args.num_calibration, args.prune_len, 0)
    recovery_text = token_stream(tokenizer, c4)[calibration.numel():]
    wikitext = token_stream(tokenizer, FileSource(path=str(args.data_dir / WIKITEXT_FILE)))
    evaluation = make_windows(wikitext, args.prune_len, args.eval_windows)

    def ppl(model: torch.nn.Module) -> float:
        return perplexity(model, adapter, evaluation, device, batch=batch).perplexity

    dense_ppl = ppl(dense)
    log(f"dense: perplexity {dense_ppl:.3f}; {recovery_text.numel():,} recovery tokens, "
        f"{calibration.shape[0]} calibration and {evaluation.shape[0]} evaluation windows")
    setup = {"model": str(args.model or "builtin:smollm2-135m-instruct"), "device": device_name(device),
             "dtype": str(dtype).removeprefix("torch."), "dense_perplexity": dense_ppl,
             "recovery_tokens_available": recovery_text.numel(), "torch": torch.__version__,
             "python": platform.python_version(), "git_revision": git_revision(), "args": {
                 k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    records = []
    for sparsity in args.sparsities:
        pruned = copy.deepcopy(dense)
        prune(PruneContext(model=pruned, adapter=adapter, calibration=calibration, sparsity=sparsity,
                           method=METHODS["2ssp"].spec(), device=device, batch=batch,
                           progress=log.progress(f"2ssp {sparsity}")))
        before = ppl(pruned)
        log(f"2ssp {sparsity}: perplexity {before:.3f}")
        pruned.to("cpu")  # each recovery's copy goes to the device; this one waits on the host
        for tune in args.tune:
            for loss in args.losses:
                label = f"2ssp {sparsity} {loss}-{tune}"
                student = copy.deepcopy(pruned).to(device)
                release_memory(device)
                reset_peak_memory(device)
                outcome = recover(student, dense if loss == "kd" else None, adapter, recovery_text,
                                  recovery_spec(args, loss, tune, c4), device, dtype, step_logger(log, label))
                peak = peak_memory(device)
                after = ppl(outcome.model)
                last = outcome.curve[-1]
                records.append({
                    "sparsity": sparsity, "loss": loss, "tune": tune, "perplexity_before": before,
                    "perplexity_after": after, "gap_closed": gap_closed(before, after, dense_ppl),
                    "tokens": outcome.tokens, "seconds": outcome.seconds,
                    "tokens_per_second": outcome.tokens / outcome.seconds, "peak_memory_metric": peak and peak[0],
                    "peak_memory_bytes": peak and peak[1], "final_loss": last.loss, "final_kd_loss": last.kd_loss,
                    "final_ce_loss": last.ce_loss, "recovery": outcome.details(),
                    "curve": [asdict(step) for step in outcome.curve]})
                log(f"{label}: perplexity {before:.3f} -> {after:.3f} in {outcome.seconds:.1f}s "
                    f"({records[-1]['tokens_per_second']:.0f} tokens/s)")
                del student, outcome
        del pruned
    return setup, records


def step_logger(log: Log, label: str) -> Any:
    """The recovery's progress on stderr, about ten lines a recovery."""
    def report(phase: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            log(f"{label}: {phase} step {done}/{total}")
    return report


def print_table(setup: dict[str, Any], records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=140)
    a = setup["args"]
    tokens = a["steps"] * a["batch_size"] * a["accumulation"] * a["seq_len"]
    table = Table(title=f"2SSP, then recovery: {setup['model']} on {setup['device']} ({setup['dtype']}); "
                        f"{a['steps']} steps x {a['batch_size']}x{a['accumulation']} x {a['seq_len']} tokens = "
                        f"{tokens:,} C4 tokens; WikiText-2 perplexity (dense {setup['dense_perplexity']:.3f})")
    for col in ("sparsity", "recovery", "PPL before", "PPL after", "gap closed (log)", "final loss", "tokens/s",
                "seconds", "peak memory GiB"):
        table.add_column(col, justify="left" if col == "recovery" else "right")
    for r in records:
        closed = "n/a" if r["gap_closed"] is None else f"{r['gap_closed']:.1%}"
        memory = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.2f}"
        table.add_row(f"{r['sparsity']}", f"{r['loss']}-{r['tune']}", f"{r['perplexity_before']:.3f}",
                      f"{r['perplexity_after']:.3f}", closed, f"{r['final_loss']:.4f}", f"{r['tokens_per_second']:.0f}",
                      f"{r['seconds']:.1f}", memory)
    console.print(table)
    metric = next((r["peak_memory_metric"] for r in records if r["peak_memory_metric"]), "none")
    console.print(f"[dim]peak memory: {metric}; torch {setup['torch']}, python {setup['python']}, "
                  f"git {setup['git_revision']}[/dim]")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = Log()
    setup, records = run(args, log)
    print_table(setup, records)
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "records": records}, indent=1) + "\n", encoding="utf-8")
        log(f"records written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
