"""SmolLM2-135M-Instruct pruned with 2SSP at 50%, streamed from disk against held in memory, one run
each through the worker (``execute_run``), as a sweep runs them: the same removals and perplexity?
How much slower, and how much less resident memory?

    .venv/bin/python benchmarks/stream_smollm2.py            # prints a table, then one JSON line
    .venv/bin/python benchmarks/stream_smollm2.py --json

The run is the quickstart's 2SSP cell at 0.5 (the builtin SmolLM2, 16 Lee-corpus calibration windows
of 256 tokens, stage 2 on one, perplexity on 32 Lee evaluation windows), with
``runtime.placement: single`` and then ``stream`` (``offload: disk``: the blocks stay in the
converted checkpoint's safetensors file; each is read when it runs, at most two at once). Each
placement runs in a child process of its own, so each peak resident set (``VmHWM``, read per phase
by the worker) is that run's alone; the resident set before the run (the interpreter, torch,
transformers: about as large as this model) is printed too, and the ratio of the peaks above it. Time is the run's own phases (load, calibration, stage 1, stage
2, evaluation). Run it alone on the machine: a second torch process on two cores slows both ~10x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SWEEP = {
    "name": "stream-smollm2",
    "models": [{"builtin": "smollm2-135m-instruct"}],
    "methods": [{"name": "2ssp", "alpha": 1.5, "num_calibration_second_stage": 1}],
    "sparsities": [0.5],
    "calibration": {"source": "lee-calibration", "samples": [16], "seq_len": 256},
    "evaluation": {"perplexity": ["lee-evaluation"], "seq_len": 256, "max_windows": 32},
}


def child(placement: str) -> dict:
    """One run placed ``placement``, as the worker records it."""
    import yaml

    import lm_eval  # noqa: F401 - imported before the baseline is read, as the run imports them
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from twossp.plan import plan_sweep
    from twossp.runtime.worker import execute_run
    from twossp.spec import parse_sweep

    data = {**SWEEP, "runtime": {"device": "cpu", "dtype": "float32", "placement": placement, "offload": "disk"}}
    run = plan_sweep(parse_sweep(yaml.safe_dump(data), "stream-smollm2.yaml", check_files=False))[0]
    before = resident_bytes()  # the interpreter, torch, transformers and lm-eval, before the run loads anything
    result = execute_run(run)
    if result.error:
        raise SystemExit(result.error)
    return {"placement": result.placement, "timings": result.timings, "scores": result.scores, "rss_before": before,
            "removed": result.details["removed_attention_order"], "memory": result.memory,
            "ffn_kept": [m.ffn_kept for m in result.masks]}


def resident_bytes() -> int:
    import re
    from pathlib import Path

    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE).group(1)) * 1024


def measure(placement: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", placement], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(single: dict, stream: dict) -> dict:
    def seconds(run: dict) -> float:
        return sum(v for k, v in run["timings"].items() if k not in ("prune",))  # prune = stage 1 + stage 2

    def peak(run: dict) -> int:
        return max(size for phase, _, metric, size in run["memory"] if phase != "plan")

    def perplexity(run: dict) -> float:
        return next(v for d, m, v in run["scores"] if m == "perplexity")

    return {"removed_single": single["removed"], "removed_stream": stream["removed"],
            "same_removals": single["removed"] == stream["removed"] and single["ffn_kept"] == stream["ffn_kept"],
            "perplexity_single": perplexity(single), "perplexity_stream": perplexity(stream),
            "seconds_single": round(seconds(single), 2), "seconds_stream": round(seconds(stream), 2),
            "time_ratio": round(seconds(stream) / seconds(single), 3),
            "peak_rss_single": peak(single), "peak_rss_stream": peak(stream),
            "peak_rss_ratio": round(peak(stream) / peak(single), 3),
            "rss_before_single": single["rss_before"], "rss_before_stream": stream["rss_before"],
            "peak_above_before_ratio": round((peak(stream) - stream["rss_before"]) / (peak(single) - single["rss_before"]), 3),
            "phases_single": single["timings"], "phases_stream": stream["timings"],
            "memory_single": single["memory"], "memory_stream": stream["memory"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["single", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    result = summary(measure("single"), measure("stream"))
    if not args.json:
        for key in ("removed_single", "removed_stream", "same_removals", "perplexity_single", "perplexity_stream",
                    "seconds_single", "seconds_stream", "time_ratio", "peak_rss_single", "peak_rss_stream",
                    "peak_rss_ratio", "rss_before_single", "rss_before_stream", "peak_above_before_ratio"):
            print(f"{key:>18}  {result[key]}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
