"""Qualitative generations: what a (pruned) model writes after a few fixed prompts, stored per run so
that a perplexity figure can be read beside the text it stands for.

Greedy decoding, one prompt at a time: the output depends only on the weights and the prompt, never
on sampling, on beam settings or on how prompts would be padded together in a batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


@torch.inference_mode()
def generate_texts(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                   device: torch.device) -> list[tuple[str, str, int]]:
    """``(prompt, output, new tokens)`` per prompt, in order: the greedy continuation of each prompt
    (at most ``max_new_tokens``, fewer when the model ends it with EOS, which is counted), decoded
    without special tokens."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not prompts:
        raise ValueError("no prompt to generate from")
    # a tokenizer without a pad token (most causal LMs) would make generate warn; with one sequence
    # at a time nothing is ever padded, so EOS is as good as any
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    out = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        ids = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            # a checkpoint's generation_config may carry sampling settings, which greedy decoding
            # ignores with a warning
            temperature=None, top_p=None, top_k=None,
            pad_token_id=pad, eos_token_id=eos if eos is not None else tokenizer.eos_token_id)
        new = ids[0, inputs["input_ids"].shape[1]:]
        out.append((prompt, tokenizer.decode(new, skip_special_tokens=True), int(new.numel())))
    return out
