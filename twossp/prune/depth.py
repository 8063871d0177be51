"""Stage 2 of 2SSP: iterative removal of attention submodules (paper Sec. 3.2; PROTOCOL.md, stage 2).

Each step removes the attention whose removal gives the lowest calibration perplexity. The naive
search runs the whole model for every candidate. The hidden state entering block i does not depend
on anything at blocks >= i, so here every block's input is kept from one pass, a candidate i runs
only blocks i..N-1, and the winner's freshly computed block inputs become the state for the next
step: identical choices (the same operations on the same tensors), about half the layer forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from twossp.evaluate.perplexity import nll_sum
from twossp.families.base import FamilyAdapter, layer_output

Progress = Callable[[str, int, int], None]


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


class BlockInputs:
    """Every block's input and call arguments for each calibration window, from one real forward."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, device: torch.device):
        layers = adapter.layers(model)
        self.inputs: list[list[torch.Tensor]] = []
        self.kwargs: list[list[dict[str, Any]]] = []
        for window in windows:
            inputs: list[torch.Tensor] = [None] * len(layers)  # type: ignore[list-item]
            kwargs: list[dict[str, Any]] = [{}] * len(layers)

            def capture(i: int):
                def hook(module: nn.Module, args: tuple, kw: dict[str, Any]) -> None:
                    inputs[i] = args[0] if args else kw["hidden_states"]
                    kwargs[i] = {k: v for k, v in kw.items() if k != "hidden_states"}
                return hook

            handles = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
            try:
                adapter.decoder(model)(input_ids=window.view(1, -1).to(device), use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            self.inputs.append(inputs)
            self.kwargs.append(kwargs)


@torch.no_grad()
def remove_attention_greedy(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, steps: int,
                            device: torch.device, progress: Progress | None = None) -> DepthSearch:
    """Remove ``steps`` attention submodules, one at a time, each the one whose removal gives the
    lowest perplexity on ``windows`` (ties: the lowest block index)."""
    layers = adapter.layers(model)
    n = len(layers)
    norm = adapter.final_norm(model)
    state = BlockInputs(model, adapter, windows, device)
    # both counts cover every calibration window (the naive search runs each candidate on all of them)
    result = DepthSearch(layer_forwards=n * len(windows),
                         naive_layer_forwards=naive_layer_forwards(n, steps) * len(windows))
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    total_candidates = sum(n - k for k in range(steps))
    evaluated = 0

    for _ in range(steps):
        best_nll, best_index, best_inputs = math.inf, -1, None
        for i in (i for i in range(n) if adapter.is_attention_present(layers[i])):
            nll = 0.0
            produced: list[list[torch.Tensor]] = []
            with adapter.attention_bypassed(layers[i]):
                for w in range(len(windows)):
                    h, outs = state.inputs[w][i], []
                    for j in range(i, n):
                        h = layer_output(layers[j](h, **state.kwargs[w][j]))
                        outs.append(h)
                    result.layer_forwards += n - i
                    nll += float(nll_sum(adapter, model, norm(outs.pop()), windows[w]))
                    produced.append(outs)
            if nll < best_nll:
                best_nll, best_index, best_inputs = nll, i, produced
            evaluated += 1
            if progress:
                progress("stage 2", evaluated, total_candidates)
        adapter.remove_attention(model, best_index)
        for w, outs in enumerate(best_inputs or []):
            state.inputs[w][best_index + 1:] = outs
        result.removed.append(best_index)
        result.calibration_perplexity.append(math.exp(best_nll / tokens))
    return result
