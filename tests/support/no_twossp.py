"""Load an exported folder as someone without twossp would, in a fresh Python process where importing
twossp (or these tests) fails: transformers and torch only. Run as a script:

    python tests/support/no_twossp.py FOLDER INPUTS.pt

INPUTS.pt holds ``tokens`` (1 x L or B x L) and ``logits`` (the pruned model's, to compare with).
Prints one JSON object: how a plain load (no ``trust_remote_code``) ended, the class built with
``trust_remote_code=True``, the largest logit difference, whether cached greedy generation equals
uncached, the warnings transformers logged and what it printed while loading, and the twossp modules imported (none)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys


class _Unimportable:
    """A finder that refuses twossp and the test package: the folder must not need them."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in ("twossp", "tests"):
            raise ImportError(f"{name} is not installed here")
        return None


def main(folder: str, inputs: str) -> dict[str, object]:
    sys.meta_path.insert(0, _Unimportable())
    import torch
    from transformers import AutoModelForCausalLM

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage())

    logging.getLogger("transformers").addHandler(Keep())
    data = torch.load(inputs)
    out: dict[str, object] = {}
    try:
        AutoModelForCausalLM.from_pretrained(folder)
        out["plain"] = "loaded"
    except Exception as exc:  # noqa: BLE001 - what a user would see is the point
        out["plain"] = f"{type(exc).__name__}: {exc}"
    records.clear()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    out["warnings"] = list(records)
    out["printed"] = printed.getvalue()
    out["class"] = type(model).__name__
    tokens = data["tokens"]
    with torch.no_grad():
        logits = model(tokens).logits
        out["max_logit_diff"] = (logits - data["logits"]).abs().max().item()
        prompt = tokens[:1, :6]
        kwargs = dict(do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    out["cached_equals_uncached"] = bool(torch.equal(cached, uncached))
    out["twossp_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("twossp", "tests"))
    return out


if __name__ == "__main__":
    print("\n" + json.dumps(main(sys.argv[1], sys.argv[2])))  # after any prompt transformers printed
