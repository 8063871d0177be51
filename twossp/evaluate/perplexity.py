"""Perplexity as the evaluation protocol defines it (docs/evaluation.md, Perplexity): non-overlapping
windows (the short tail dropped), each window its own sequence (no padding, no cross-window
attention), perplexity = exp(token-weighted mean next-token NLL). Windows are run ``batch`` at a
time (an accelerator's setting; equal windows need no padding), the NLLs summed in window order."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from twossp.contracts import Progress
from twossp.families.base import FamilyAdapter, nll_sum


def make_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut a 1-D token stream into consecutive windows of ``seq_len``; the incomplete tail is dropped."""
    n = tokens.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return tokens[: n * seq_len].view(n, seq_len)


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    nll_sum: float
    tokens: int
    windows: int


@torch.no_grad()
def perplexity(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, device: torch.device,
               progress: Progress | None = None, phase: str = "evaluate", batch: int = 1) -> Perplexity:
    if windows.shape[0] == 0:
        raise ValueError("no complete window to evaluate: the text is shorter than one window")
    decoder = adapter.decoder(model)
    total, tokens = 0.0, 0
    for start in range(0, windows.shape[0], batch):
        ids = windows[start:start + batch].to(device)
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
        for row in range(ids.shape[0]):
            total += float(nll_sum(adapter, model, hidden[row:row + 1], ids[row]))
            tokens += ids.shape[1] - 1
        if progress:
            progress(phase, start + ids.shape[0], windows.shape[0])
    return Perplexity(math.exp(total / tokens), total, tokens, windows.shape[0])
