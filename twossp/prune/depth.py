"""Stage 2 of 2SSP: iterative removal of attention submodules (paper Sec. 3.2; docs/method.md,
Stage 2).

Each step removes the attention whose removal gives the lowest calibration perplexity. The naive
search runs the whole model for every candidate; here candidates are scored by
``calibration.BlockInputs``, which runs a candidate at block i only from block i on: identical
choices, about half the layer forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from twossp.contracts import Progress
from twossp.families.base import FamilyAdapter
from twossp.errors import BudgetError
from twossp.prune.calibration import BlockInputs


@dataclass
class DepthSearch:
    removed: list[int] = field(default_factory=list)              # in order of removal
    calibration_perplexity: list[float] = field(default_factory=list)  # after each removal
    layer_forwards: int = 0
    naive_layer_forwards: int = 0


def naive_layer_forwards(num_layers: int, steps: int) -> int:
    """Decoder-layer forwards of the naive search on one window: sum_{k<steps} (N - k) full passes of
    N layers."""
    return sum(num_layers - k for k in range(steps)) * num_layers


@torch.no_grad()
def remove_attention_greedy(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, steps: int,
                            device: torch.device, progress: Progress | None = None, batch: int = 1) -> DepthSearch:
    """Remove ``steps`` attention submodules, one at a time, each the one whose removal gives the
    lowest perplexity on ``windows`` (ties: the lowest block index). ``batch`` > 1: candidates are
    scored that many at a time (``BlockInputs.score_batched``), and the winner's suffix is run once
    more alone for the next step's block inputs, so the state is the one-at-a-time search's."""
    layers = adapter.layers(model)
    n = len(layers)
    state = BlockInputs(model, adapter, windows, device)
    # both counts cover every calibration window (the naive search runs each candidate on all of them)
    result = DepthSearch(layer_forwards=n * len(windows),
                         naive_layer_forwards=naive_layer_forwards(n, steps) * len(windows))
    total_candidates = sum(n - k for k in range(steps))
    evaluated = 0

    def scored(count: int) -> None:
        nonlocal evaluated
        evaluated += count
        if progress:
            progress("stage 2", evaluated, total_candidates)

    for _ in range(steps):
        pool = [i for i in range(n) if adapter.is_attention_present(layers[i])]
        best_index, best_nll, best_inputs, forwards = state.choose(
            pool, lambda i: i, lambda i: adapter.attention_bypassed(layers[i]), batch, scored)
        result.layer_forwards += forwards
        if best_index is None:
            raise BudgetError("every candidate attention removal gave a non-finite calibration perplexity")
        adapter.remove_attention(model, best_index)
        state.adopt(best_index, best_inputs)
        result.removed.append(best_index)
        result.calibration_perplexity.append(math.exp(best_nll / state.tokens))
    return result
