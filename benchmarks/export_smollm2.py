"""SmolLM2-135M-Instruct pruned with 2SSP, exported as a Hugging Face checkpoint, and loaded where
twossp is not: does the export compute what the run computed?

For each sparsity (2SSP with C4 calibration, as ``prune_smollm2.py``):
- twossp's own WikiText-2 perplexity (PyTorch, fp32) on the first w windows of L tokens;
- the portable export (``twossp.checkpoint.save_pruned``: Nemotron-NAS where blocks differ) and the
  ``hf-stock`` one, each loaded in a fresh Python process in which importing twossp fails
  (transformers and torch only; ``trust_remote_code=True`` for Nemotron-NAS): its perplexity on the
  same windows and the relative difference, the largest logit difference on the first window,
  whether cached greedy generation equals uncached, what a load without ``trust_remote_code`` did,
  the class built and the folder's size;
- ``twossp check`` on the portable folder (the engines' loading rules, offline).

Needs the reference data (``--data-dir`` or ``TWOSSP_BENCH_DATA``). Run it alone on the machine.

    .venv/bin/python benchmarks/export_smollm2.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(folder: str, inputs: str) -> None:
    """In the fresh process: twossp unimportable, the folder loaded as a user without it would."""

    class Unimportable:
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name.split(".")[0] == "twossp":
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Unimportable())
    import torch
    from torch.nn import functional as F
    from transformers import AutoModelForCausalLM

    data = torch.load(inputs)
    out: dict[str, Any] = {}
    try:
        AutoModelForCausalLM.from_pretrained(folder)
        out["plain_load"] = "loaded"
    except Exception as exc:  # noqa: BLE001 - what a user would see is the point
        out["plain_load"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    out["class"] = type(model).__name__
    total, count = 0.0, 0
    with torch.no_grad():
        for k, window in enumerate(data["windows"]):
            logits = model(window[None]).logits[0].float()
            if k == 0:
                out["max_logit_diff"] = (logits - data["first_logits"]).abs().max().item()
            total += F.cross_entropy(logits[:-1], window[1:], reduction="sum").double().item()
            count += window.numel() - 1
        prompt = data["windows"][0][None, :32]
        kwargs = dict(do_sample=False, max_new_tokens=24, min_new_tokens=24)
        out["cached_equals_uncached"] = bool(torch.equal(model.generate(prompt, use_cache=True, **kwargs),
                                                         model.generate(prompt, use_cache=False, **kwargs)))
    out["perplexity"] = float(torch.tensor(total / count).exp())
    out["twossp_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "twossp")
    print("\n" + json.dumps(out))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from prune_smollm2 import window_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    window_arguments(p)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5])
    p.add_argument("--keep", type=Path, default=None, help="keep the exports in this folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    from prune_smollm2 import Log, pruned_2ssp
    from twossp.checkpoint import save_pruned
    from twossp.serve.check import check_folder

    args = parse_args(argv)
    log = Log()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="twossp-hf-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for sparsity in args.sparsities:
        model, tokenizer, _, evaluation, own = pruned_2ssp(args, log, sparsity)
        inputs = folder / f"inputs-{sparsity:g}.pt"
        with torch.no_grad():
            first = model(evaluation[:1]).logits[0].float()
        torch.save({"windows": evaluation, "first_logits": first}, inputs)
        for save_format in ("safetensors", "hf-stock"):
            out = folder / f"smollm2-2ssp-{sparsity:g}-{save_format}"
            saved = save_pruned(model, tokenizer, out, save_format)
            done = subprocess.run([sys.executable, __file__, "--child", str(out), str(inputs)],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=folder)
            if done.returncode:
                log(f"  {save_format}: the fresh process failed:\n{done.stderr[-2000:]}")
                return 1
            seen = json.loads(done.stdout.strip().splitlines()[-1])
            row = {"sparsity": sparsity, "format": save_format, "layout": saved.layout, **seen,
                   "twossp_perplexity": own, "relative_difference": seen["perplexity"] / own - 1,
                   "size_mib": saved.size / 2**20, "rewrites": saved.rewrites}
            rows.append(row)
            log(f"  {save_format} ({saved.layout}, {row['size_mib']:.1f} MiB): {seen['class']} without twossp, "
                f"perplexity {seen['perplexity']:.4f} ({row['relative_difference']:+.5%}), max logit diff "
                f"{seen['max_logit_diff']:.2e}, cached == uncached {seen['cached_equals_uncached']}, "
                f"plain load: {seen['plain_load']}")
            if save_format == "safetensors":
                report = check_folder(out)
                print(report.render())
    print("\n| sparsity | format | layout | class (no twossp) | twossp ppl | export ppl | rel. diff | max logit diff "
          "| cached = uncached | MiB |")
    print("|---|---|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['sparsity']:g} | {r['format']} | {r['layout']} | {r['class']} | {r['twossp_perplexity']:.4f} | "
              f"{r['perplexity']:.4f} | {r['relative_difference']:+.5%} | {r['max_logit_diff']:.2e} | "
              f"{r['cached_equals_uncached']} | {r['size_mib']:.1f} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
