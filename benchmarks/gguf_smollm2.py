"""SmolLM2-135M-Instruct, dense and pruned with 2SSP, exported as GGUF and measured in llama.cpp.

For the dense model and each sparsity (2SSP with C4 calibration, as ``prune_smollm2.py``):
- twossp's own WikiText-2 perplexity (PyTorch, fp32) on the first w windows of L tokens;
- per GGUF tensor type: llama.cpp's perplexity on the same windows (its default f16 KV cache), the
  relative difference, prompt processing tokens per second (one prompt of P WikiText-2 tokens in a
  single batch) and generation tokens per second (N greedy tokens after it), and the file size;
  each against the dense export of the same type. The speeds are measured once every file is
  written, in rounds that visit every file in turn (the machine's drift then falls on all of them
  alike), each figure the median over the rounds.
- once: llama.cpp's tokens of a WikiText-2 passage against the Hugging Face tokenizer's.

The load average is printed before and after: figures taken while another process held the cores
are slower than the machine (run this alone). Needs llama-cpp-python (``pip install
'twossp[gguf]'``) and the reference data (``--data-dir`` or ``TWOSSP_BENCH_DATA``).

    .venv/bin/python benchmarks/gguf_smollm2.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prune_smollm2 import Log, fail, read_texts, tokenize


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=os.environ.get("TWOSSP_BENCH_DATA"),
                   help="folder with wikitext-2-raw/wiki.test.raw and c4/c4_validation_2k.derived.jsonl")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--types", nargs="+", default=["f16", "q8_0"])
    p.add_argument("--seq-len", type=int, default=512, help="calibration and evaluation window length L")
    p.add_argument("--num-calibration", type=int, default=8, help="calibration windows for stage 1")
    p.add_argument("--eval-windows", type=int, default=8, help="WikiText-2 windows evaluated")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens P for prompt processing speed")
    p.add_argument("--new-tokens", type=int, default=128, help="greedy tokens N for generation speed")
    p.add_argument("--rounds", type=int, default=5, help="speed rounds over every file (median per file)")
    p.add_argument("--keep", type=Path, default=None, help="keep the GGUF files in this folder")
    p.add_argument("--json", action="store_true", help="also print every record as a JSON line")
    args = p.parse_args(argv)
    if args.data_dir is None:
        fail("give the reference data folder with --data-dir (or TWOSSP_BENCH_DATA)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = Log()
    calibration_text, evaluation_text = read_texts(args.data_dir)

    from twossp.errors import TwosspError
    from twossp.evaluate.perplexity import make_windows, perplexity
    from twossp.families import adapter_for
    from twossp.methods import METHODS
    from twossp.prune import PruneContext, prune
    from twossp.runtime.loading import load_model
    from twossp.serve.engine import Engine, engine_version, extra_buffers
    from twossp.serve.gguf import write_gguf
    from twossp.spec import ModelSpec

    torch.set_num_threads(2)
    device = torch.device("cpu")
    load_before = os.getloadavg()
    try:
        dense, tokenizer = load_model(ModelSpec(builtin="smollm2-135m-instruct"), torch.float32, device)
        engine_version()
    except TwosspError as exc:
        fail(str(exc))
    adapter = adapter_for(dense.config)
    stream = tokenize(tokenizer, evaluation_text)
    calibration = make_windows(tokenize(tokenizer, calibration_text), args.seq_len, args.num_calibration)
    evaluation = make_windows(stream, args.seq_len, args.eval_windows)
    prompt = stream[: args.prompt].tolist()
    context = max(args.seq_len, args.prompt + args.new_tokens)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="twossp-gguf-"))
    folder.mkdir(parents=True, exist_ok=True)
    log(f"windows: calibration {tuple(calibration.shape)}, evaluation {tuple(evaluation.shape)}; files in {folder}")

    records: list[dict[str, Any]] = []
    models = [("dense", 0.0)] + [("2ssp", s) for s in args.sparsities]
    for name, sparsity in models:
        model = dense if name == "dense" else copy.deepcopy(dense)
        removed: list[int] = []
        if name != "dense":
            outcome = prune(PruneContext(model=model, adapter=adapter, calibration=calibration, sparsity=sparsity,
                                         method=METHODS["2ssp"].spec(), device=device,
                                         progress=log.progress(f"2ssp {sparsity}")))
            removed = sorted(outcome.removed_attention)
        achieved = 1 - adapter.block_counts(model).layer_params / adapter.block_counts(dense).layer_params
        own = perplexity(model, adapter, evaluation, device).perplexity
        log(f"{name} {sparsity}: twossp perplexity {own:.3f}, attention removed {removed}, "
            f"FFN width {model.config.intermediate_size}")
        for kind in args.types:
            path = folder / f"smollm2-{name}-{sparsity:g}.{kind}.gguf"
            written = write_gguf(model, tokenizer, path, kind)
            with Engine(path, args.seq_len) as engine:
                if name == "dense" and kind == args.types[0]:
                    passage = evaluation_text[:20000]
                    tokens_equal = engine.tokenize(passage) == tokenizer(passage, add_special_tokens=False)["input_ids"]
                    log(f"llama.cpp tokens of a {len(passage):,}-character WikiText-2 passage equal the Hugging Face "
                        f"tokenizer's: {tokens_equal}")
                    if not tokens_equal:
                        fail("llama.cpp tokenises WikiText-2 differently from the Hugging Face tokenizer")
                engine_ppl = engine.perplexity(evaluation.numpy()).perplexity
            record = {"model": name, "sparsity": sparsity, "achieved": achieved, "type": kind,
                      "architecture": written.architecture, "attention_removed": removed,
                      "ffn_width": model.config.intermediate_size, "twossp_ppl": own, "llama_cpp_ppl": engine_ppl,
                      "ppl_diff": engine_ppl / own - 1, "size_mib": written.size / 2**20, "path": str(path)}
            records.append(record)
            log(f"  {kind}: llama.cpp perplexity {engine_ppl:.3f} ({record['ppl_diff']:+.3%}), "
                f"{record['size_mib']:.1f} MiB")
        del model
    speeds: dict[str, list[Any]] = {r["path"]: [] for r in records}
    for round_ in range(args.rounds):
        for r in records:
            with Engine(r["path"], context, all_logits=False) as engine:
                speeds[r["path"]].append(engine.speed(prompt, args.new_tokens, repeats=1))
        log(f"speed round {round_ + 1} of {args.rounds} done")
    for r in records:
        measured = speeds.pop(r["path"])
        r["prompt_tps"] = statistics.median(m.prompt_tokens_per_second for m in measured)
        r["gen_tps"] = statistics.median(m.generation_tokens_per_second for m in measured)
        r["threads"] = measured[0].threads
        if args.json:
            print(json.dumps(r), flush=True)
    load_after = os.getloadavg()
    print_table(records)
    print(f"\nllama-cpp-python {engine_version()}, {records[0]['threads']} threads, extra buffer types "
          f"{'on' if extra_buffers() else 'off'}; windows of {args.seq_len} tokens x {args.eval_windows}; prompt "
          f"{args.prompt} tokens, {args.new_tokens} generated, median of {args.rounds} rounds")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    return 0


def print_table(records: list[dict[str, Any]]) -> None:
    dense = {r["type"]: r for r in records if r["model"] == "dense"}
    head = ("model", "type", "arch", "achieved", "twossp ppl", "llama.cpp ppl", "diff", "prompt tok/s", "x dense",
            "gen tok/s", "x dense", "MiB", "x dense")
    print("\n| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
    for r in records:
        d = dense[r["type"]]
        label = "dense" if r["model"] == "dense" else f"2SSP {r['sparsity']:g}"
        print(f"| {label} | {r['type']} | {r['architecture']} | {r['achieved']:.3f} | {r['twossp_ppl']:.2f} | "
              f"{r['llama_cpp_ppl']:.2f} | {r['ppl_diff']:+.2%} | {r['prompt_tps']:.0f} | "
              f"{r['prompt_tps'] / d['prompt_tps']:.2f} | {r['gen_tps']:.1f} | {r['gen_tps'] / d['gen_tps']:.2f} | "
              f"{r['size_mib']:.1f} | {r['size_mib'] / d['size_mib']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
