"""A Llama-shaped model of several GB (random weights, built here), pruned with 2SSP streamed from
disk in a process whose memory the kernel caps well below the weights' size, against the same
pruning in memory without a cap: the same choices? What peak, what time?

    .venv/bin/python benchmarks/stream_big_random.py                       # 24 blocks, hidden 2048, FFN 8192: 6.6 GB fp32
    .venv/bin/python benchmarks/stream_big_random.py --limit-fraction 0.33 --sparsity 0.25 --json

The model is written once into ``--folder`` (default: ``$TMPDIR/twossp-big-random``), one
safetensors shard per block plus one for the embeddings and the LM head, each tensor drawn from a
generator seeded by its name, so it never sits whole in memory; it is reused when its config matches.
Each pruning runs in a child process of its own (``--child``): ``single`` loads the whole model
(``runtime.placement: single``); ``stream`` reads each block from the shards when it runs
(``stream``, ``offload: disk``), under ``RLIMIT_DATA`` = ``--limit-fraction`` x the weights' bytes,
set in the child before it imports anything (private writable memory counts against it; the
read-only maps of the shards do not). Both prune the same random calibration windows (2SSP: stage 1
on all, stage 2 on the first) and then measure perplexity on two other random windows. Printed: the
limit, the weights' size, each child's peak resident set (``VmHWM``) and time, and whether the
removals, FFN masks and perplexities agree. Run it alone: a second torch process on two cores
slows both ~10x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16,
             num_key_value_heads=8, vocab_size=32000)


def build(folder: Path, shape: dict) -> int:
    """The random checkpoint in ``folder`` (kept when its config is this one); its weights' bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, tie_word_embeddings=False, max_position_embeddings=4096, rms_norm_eps=1e-5)
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    size = sum(4 * torch.Size(s).numel() for s in shapes.values())
    marker = folder / "built.json"
    if marker.is_file() and json.loads(marker.read_text()) == shape:
        return size
    folder.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[str]] = {}
    for name in shapes:
        part = name.split(".")[2] if name.startswith("model.layers.") else "ends"
        shards.setdefault(part, []).append(name)
    weight_map = {}
    for part, names in shards.items():
        file = f"model-{part}.safetensors"
        tensors = {}
        for name in names:
            gen = torch.Generator().manual_seed(sum(map(ord, name)) * 7919 + len(name))
            if name.endswith("norm.weight"):
                tensors[name] = 1 + 0.1 * torch.randn(shapes[name], generator=gen)
            else:
                tensors[name] = 0.02 * torch.randn(shapes[name], generator=gen)
            weight_map[name] = file
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": size},
                                                                     "weight_map": weight_map}))
    config.save_pretrained(folder)
    marker.write_text(json.dumps(shape))
    return size


def child(folder: Path, placement: str, sparsity: float, samples: int, seq_len: int) -> dict:
    """One pruning of the checkpoint, placed ``placement``, and what it measured."""
    import re

    import torch

    from twossp.evaluate.perplexity import perplexity
    from twossp.families import adapter_for
    from twossp.prune.two_stage import prune_2ssp
    from twossp.runtime.loading import load_placed
    from twossp.spec import ModelSpec

    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    start = time.perf_counter()
    model, placed = load_placed(ModelSpec(path=str(folder)), torch.float32, placement, [cpu], "disk")
    loaded = time.perf_counter()
    adapter = adapter_for(model.config)
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, model.config.vocab_size, (samples + 2, seq_len), generator=gen)
    outcome = prune_2ssp(model, adapter, windows[:samples], sparsity, cpu, num_calibration_second_stage=1)
    pruned = time.perf_counter()
    ppl = perplexity(model, adapter, windows[samples:], cpu).perplexity
    done = time.perf_counter()
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"^VmHWM:\s+(\d+)", status, re.MULTILINE).group(1)) * 1024
    return {"placement": placed.describe(), "removed": outcome.removed_attention,
            "ffn_kept": [k.tolist() for k in outcome.kept_ffn], "perplexity": ppl,
            "seconds": {"load": loaded - start, "prune": pruned - loaded, "perplexity": done - pruned},
            "stage 1": outcome.timings["stage 1"], "stage 2": outcome.timings["stage 2"],
            "peak_rss_bytes": peak, "max_resident_blocks": placed.max_resident}


def run_child(args: argparse.Namespace, placement: str, limit: int | None) -> dict:
    def cap() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    command = [sys.executable, __file__, "--child", placement, "--folder", str(args.folder),
               "--sparsity", str(args.sparsity), "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    begin = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, preexec_fn=cap if limit else None)
    if out.returncode != 0:
        raise SystemExit(f"the {placement} child failed (limit {limit}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - begin
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "twossp-big-random")
    parser.add_argument("--sparsity", type=float, default=0.25)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--limit-fraction", type=float, default=1 / 3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=["single", "stream"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.folder, args.child, args.sparsity, args.samples, args.seq_len)))
        return
    weights = build(args.folder, SHAPE)
    limit = int(weights * args.limit_fraction)
    stream = run_child(args, "stream", limit)
    single = run_child(args, "single", None)
    report = {"shape": SHAPE, "weights_bytes": weights, "limit_bytes": limit,
              "same_choices": stream["removed"] == single["removed"] and stream["ffn_kept"] == single["ffn_kept"],
              "perplexity_single": single["perplexity"], "perplexity_stream": stream["perplexity"],
              "single": {k: v for k, v in single.items() if k != "ffn_kept"},
              "stream": {k: v for k, v in stream.items() if k != "ffn_kept"}}
    if not args.json:
        print(f"weights {weights / 2**30:.2f} GiB; stream under RLIMIT_DATA {limit / 2**30:.2f} GiB "
              f"({args.limit_fraction:.2f} of the weights)")
        for name, r in (("single", single), ("stream", stream)):
            print(f"{name:>7}: removed {r['removed']}, perplexity {r['perplexity']:.4f}, peak RSS "
                  f"{r['peak_rss_bytes'] / 2**30:.2f} GiB, wall {r['wall_seconds']:.0f} s (load {r['seconds']['load']:.0f}, "
                  f"prune {r['seconds']['prune']:.0f}, perplexity {r['seconds']['perplexity']:.0f}), "
                  f"max resident blocks {r['max_resident_blocks']}")
        print(f"same choices: {report['same_choices']}")
    print(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
