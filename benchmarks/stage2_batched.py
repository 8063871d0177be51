"""Stage 2 of 2SSP and perplexity evaluation, one candidate (window) per forward against several:
the script a GPU host runs in one go (issue 12).

    python benchmarks/stage2_batched.py --model /models/Llama-2-7b-hf --data-dir DATA --dtype bfloat16
    python benchmarks/stage2_batched.py --data-dir DATA --seq-len 256 --num-calibration 4 --eval-windows 4

For a model given by path (a Hugging Face folder; default: the builtin SmolLM2-135M-Instruct) on the
device given (default: auto, CUDA when there is one), in the dtype given:
- the dense model's WikiText-2 perplexity, its windows one per forward and ``--batches`` per forward;
- 2SSP at ``--sparsity``: stage 1 once, then stage 2 from the same width-pruned model once per
  batch size (1 = one candidate per forward, the CPU's setting), each timed on the device (CUDA
  events where there are, ``twossp.device.elapsed``), with its peak memory; the removed attentions
  must be the same for every batch size (the script exits 1 if not);
- the pruned model's perplexity, windows batched.

Calibration is the C4 subset (first n windows of L tokens, the first one scoring stage 2),
evaluation WikiText-2 test (first w windows), as in ``prune_smollm2.py``, whose data folder
(``--data-dir`` or ``TWOSSP_BENCH_DATA``) it reads. Progress on stderr; a table on stdout, or one
JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prune_smollm2 import Log, read_texts, tokenize


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="2SSP stage 2 and perplexity, batched against one at a time.")
    p.add_argument("--model", type=Path, default=None, help="a Hugging Face model folder (default: builtin SmolLM2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on an accelerator, float32 on the CPU")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--num-calibration", type=int, default=32)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--alpha", type=float, default=1.5)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16],
                   help="candidates (and evaluation windows) per forward; 1 is the reference (default 1 8 16)")
    p.add_argument("--data-dir", type=Path, default=os.environ.get("TWOSSP_BENCH_DATA"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("--data-dir (or TWOSSP_BENCH_DATA) is required")
    if 1 not in args.batches:
        args.batches = [1, *args.batches]
    return args


def timed(device: torch.device, fn: Any) -> tuple[Any, float]:
    from twossp.device import elapsed

    out: list[Any] = []
    seconds = elapsed(device, lambda: out.append(fn()))
    return out[0], seconds


def run(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    from twossp.budget import two_stage_budget
    from twossp.device import device_name, peak_memory, release_memory, reset_peak_memory, resolve_device, torch_dtype
    from twossp.evaluate.perplexity import make_windows, perplexity
    from twossp.families import adapter_for
    from twossp.prune.depth import remove_attention_greedy
    from twossp.prune.width import neuron_scores, prune_width, top_neurons
    from twossp.runtime.loading import load_model
    from twossp.spec import ModelSpec

    device = resolve_device(args.device)
    dtype = args.dtype or ("float32" if device.type == "cpu" else "bfloat16")
    spec = ModelSpec(path=str(args.model)) if args.model else ModelSpec(builtin="smollm2-135m-instruct")
    dense, tokenizer = load_model(spec, torch_dtype(dtype), device)
    adapter = adapter_for(dense.config)
    log(f"{spec.label} on {device_name(device)} in {dtype}: {len(adapter.layers(dense))} blocks")
    calibration_text, wiki = read_texts(args.data_dir)
    calibration = make_windows(tokenize(tokenizer, calibration_text), args.seq_len, args.num_calibration)
    evaluation = make_windows(tokenize(tokenizer, wiki), args.seq_len, args.eval_windows)
    report: dict[str, Any] = {"model": spec.label, "device": device_name(device), "dtype": dtype,
                              "seq_len": args.seq_len, "calibration": calibration.shape[0],
                              "evaluation": evaluation.shape[0], "sparsity": args.sparsity, "host": platform.node(),
                              "torch": torch.__version__, "dense": [], "stage2": [], "pruned": []}
    for batch in args.batches:
        ppl, seconds = timed(device, lambda: perplexity(dense, adapter, evaluation, device, batch=batch))
        report["dense"].append({"batch": batch, "perplexity": ppl.perplexity, "seconds": seconds})
        log(f"dense perplexity, {batch} per forward: {ppl.perplexity:.4f} in {seconds:.2f} s")

    budget = two_stage_budget(adapter.block_counts(dense), args.sparsity, args.alpha)
    scores, stage1 = timed(device, lambda: neuron_scores(dense, adapter, calibration, device))
    kept = [top_neurons(s, budget.ffn_keep) for s in scores]
    report["stage1_seconds"] = stage1
    log(f"stage 1: {stage1:.2f} s; stage 2 removes {budget.num_attention_removed} attentions")
    reference = None
    for batch in args.batches:
        model = copy.deepcopy(dense)
        prune_width(model, adapter, kept)
        reset_peak_memory(device)
        search, seconds = timed(device, lambda: remove_attention_greedy(
            model, adapter, calibration[:1], budget.num_attention_removed, device, batch=batch))
        peak = peak_memory(device)
        reference = reference or search
        same = search.removed == reference.removed
        report["stage2"].append({"batch": batch, "seconds": seconds, "removed": search.removed,
                                 "same_choices": same, "calibration_perplexity": search.calibration_perplexity,
                                 "layer_forwards": search.layer_forwards, "peak_memory": peak})
        log(f"stage 2, {batch} candidates per forward: {seconds:.2f} s, removed {search.removed}"
            f"{'' if same else ' DIFFERENT CHOICES'}")
        if batch == max(args.batches):
            ppl, eval_seconds = timed(device, lambda: perplexity(model, adapter, evaluation, device, batch=batch))
            report["pruned"].append({"batch": batch, "perplexity": ppl.perplexity, "seconds": eval_seconds})
        model = None  # freed before the next copy: one pruned model on the device at a time
        release_memory(device)
    return report


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    first = report["stage2"][0]["seconds"]
    table = Table(title=f"2SSP stage 2 at {report['sparsity']:g}, {report['model']}, {report['device']}, "
                        f"{report['dtype']}, L={report['seq_len']}")
    for col in ("candidates per forward", "stage 2 s", "x one at a time", "layer forwards", "peak memory",
                "removed", "same choices"):
        table.add_column(col)
    for row in report["stage2"]:
        peak = f"{row['peak_memory'][1] / 2**30:.2f} GiB" if row["peak_memory"] else "-"
        table.add_row(str(row["batch"]), f"{row['seconds']:.2f}", f"{row['seconds'] / first:.2f}",
                      f"{row['layer_forwards']:,}", peak, str(row["removed"]), str(row["same_choices"]))
    console.print(table)
    dense = report["dense"][0]["seconds"]
    evaluation = Table(title=f"perplexity of {report['evaluation']} WikiText-2 windows")
    for col in ("model", "windows per forward", "perplexity", "seconds", "x one at a time"):
        evaluation.add_column(col)
    for row in report["dense"]:
        evaluation.add_row("dense", str(row["batch"]), f"{row['perplexity']:.4f}", f"{row['seconds']:.2f}",
                           f"{row['seconds'] / dense:.2f}")
    for row in report["pruned"]:
        evaluation.add_row(f"2SSP {report['sparsity']:g}", str(row["batch"]), f"{row['perplexity']:.4f}",
                           f"{row['seconds']:.2f}", "")
    console.print(evaluation)
    console.print(f"stage 1: {report['stage1_seconds']:.2f} s; host {report['host']}, torch {report['torch']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args, Log())
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0 if all(row["same_choices"] for row in report["stage2"]) else 1


if __name__ == "__main__":
    sys.exit(main())
