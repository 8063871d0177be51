"""For a GPU host: one model pruned with 2SSP under each placement, in one go: the peak CUDA memory
per device, the stage-1 and stage-2 times, and whether every placement chose the same.

    python benchmarks/big_model.py --model /models/Llama-3.1-8B --gpus 1
    python benchmarks/big_model.py --model /models/Meta-Llama-3-70B --gpus 4 --placements split,stream
    python benchmarks/big_model.py --model /models/Llama-3.1-8B --data-dir ../shared/data --json

``--model`` is a local Hugging Face folder with safetensors shards (what ``stream`` reads from).
Each placement runs in a child process of its own, so each peak is that placement's alone:
``single`` (the whole model on cuda:0), ``split`` (the blocks over ``--gpus`` GPUs), ``stream``
(from disk: blocks read from the shards, at most two on cuda:0), ``stream-host`` (the same from
page-locked host memory). A placement that runs out of memory is reported as such and the others go
on. Calibration: ``--samples`` windows of ``--seq-len`` tokens from the C4 subset in ``--data-dir``
(else random tokens, said in the output); stage 2 on the first; perplexity on 4 windows of
WikiText-2 (else random). The candidate batch is ``runtime.batch: auto`` (8 on CUDA).
Prints one JSON line per placement, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PLACEMENTS = {"single": ("single", "disk"), "split": ("split", "disk"), "stream": ("stream", "disk"),
              "stream-host": ("stream", "host")}


def _windows(tokenizer, data_dir: Path | None, name: str, count: int, seq_len: int, vocab: int):
    import torch

    files = {"c4": "c4/c4_validation_2k.derived.jsonl", "wikitext2": "wikitext-2-raw/wiki.test.raw"}
    path = data_dir / files[name] if data_dir else None
    if path is not None and path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            text = "\n\n".join(json.loads(line)["text"] for line in text.splitlines() if line.strip())
        ids = torch.tensor(tokenizer(text[: 40 * count * seq_len], add_special_tokens=False)["input_ids"])
        return ids[: count * seq_len].view(count, seq_len), "real"
    return torch.randint(0, vocab, (count, seq_len), generator=torch.Generator().manual_seed(0)), "random"


def child(args: argparse.Namespace) -> dict:
    import torch

    from twossp.device import run_devices, torch_dtype
    from twossp.evaluate.perplexity import perplexity
    from twossp.families import adapter_for
    from twossp.prune.two_stage import prune_2ssp
    from twossp.runtime.loading import load_placed, load_tokenizer
    from twossp.spec import ModelSpec

    placement, offload = PLACEMENTS[args.child]
    spec = ModelSpec(path=str(args.model))
    devices = run_devices(torch.device("cuda"), args.gpus if placement == "split" else 1)
    begin = time.perf_counter()
    model, placed = load_placed(spec, torch_dtype(args.dtype), placement, devices, offload)
    loaded = time.perf_counter() - begin
    tokenizer = load_tokenizer(spec)
    vocab = model.config.vocab_size
    calibration, calib_kind = _windows(tokenizer, args.data_dir, "c4", args.samples, args.seq_len, vocab)
    evaluation, eval_kind = _windows(tokenizer, args.data_dir, "wikitext2", 4, args.seq_len, vocab)
    for device in devices:
        torch.cuda.reset_peak_memory_stats(device)
    outcome = prune_2ssp(model, adapter_for(model.config), calibration, args.sparsity, devices[0],
                         num_calibration_second_stage=1, batch=args.batch)
    ppl = perplexity(model, adapter_for(model.config), evaluation, devices[0], batch=1).perplexity
    return {"placement": placed.describe(), "load_seconds": loaded, "stage1_seconds": outcome.timings["stage 1"],
            "stage2_seconds": outcome.timings["stage 2"], "removed": outcome.removed_attention,
            "ffn_kept_sums": [int(k.sum()) for k in outcome.kept_ffn], "perplexity": ppl,
            "peak_cuda_bytes": {str(d): torch.cuda.max_memory_allocated(d) for d in devices},
            "max_resident_blocks": placed.max_resident, "calibration": calib_kind, "evaluation": eval_kind,
            "gpu": torch.cuda.get_device_name(devices[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--placements", default="single,split,stream,stream-host")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--sparsity", type=float, default=0.25)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="stage-2 candidates per forward")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per placement")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=list(PLACEMENTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = {}
    for name in args.placements.split(","):
        command = [sys.executable, __file__, "--child", name] + [a for a in sys.argv[1:] if a != "--json"]
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results[name] = {"error": f"timed out after {args.timeout} s"}
        else:
            lines = out.stdout.strip().splitlines()
            results[name] = json.loads(lines[-1]) if out.returncode == 0 and lines else \
                {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
        print(json.dumps({name: results[name]}), flush=True)
    done = [r for r in results.values() if "error" not in r]
    same = len({json.dumps([r["removed"], r["ffn_kept_sums"]]) for r in done}) <= 1
    print(json.dumps({"summary": {"same_choices": same, "placements": list(results)}}))


if __name__ == "__main__":
    main()
