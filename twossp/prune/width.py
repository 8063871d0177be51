"""Stage 1 of 2SSP: width pruning of every FFN (paper Sec. 3.1; docs/method.md, Stage 1)."""

from __future__ import annotations

import torch
from torch import nn

from twossp.contracts import Progress
from twossp.families.base import FamilyAdapter
from twossp.placement import placement_of
from twossp.prune.calibration import block_calls, hooked, walk
from twossp.prune.context import ModelContext


@torch.no_grad()
def neuron_scores(model: nn.Module, adapter: FamilyAdapter, samples: torch.Tensor, device: torch.device,
                  progress: Progress | None = None) -> list[torch.Tensor]:
    """Score of neuron j in every block: the L2 norm over the L tokens of its intermediate activation
    (the input of the down projection), averaged over the calibration samples.

    Every sample through the decoder stack, blocks outside and samples inside (``walk``), all
    blocks captured at once; the LM head is never run because no logits are needed."""
    layers = adapter.layers(model)
    placement = placement_of(model)
    sums = [torch.zeros(adapter.ffn_width(layer), dtype=torch.float32, device=placement.device_of(layer))
            for layer in layers]

    def accumulate(i: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        activation = args[0] if args else kwargs["input"]
        sums[i] += activation.float().norm(dim=-2).sum(dim=0).to(sums[i].device)  # (batch, L, d_ff) -> (d_ff,)

    def advanced(j: int, states: list[torch.Tensor]) -> None:
        if progress and j:
            progress("stage 1", j, len(layers))

    firsts, kwargs = block_calls(model, adapter, samples, device)
    with hooked([adapter.ffn_down(layer) for layer in layers], accumulate):
        walk(layers, [placement.keep(h) for h in firsts], kwargs, visit=advanced)
    return [s / samples.shape[0] for s in sums]


def shared_scores(context: ModelContext, params: dict) -> dict:
    """The ``ffn scores`` shared step: every 2SSP run of this model and calibration ranks these."""
    scores = neuron_scores(context.model, context.adapter, context.calibration, context.device, context.progress)
    return {"scores": [s.cpu() for s in scores]}


def top_neurons(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the ``keep`` highest-scored neurons."""
    return torch.topk(scores, keep).indices.sort().values.cpu()


def prune_width(model: nn.Module, adapter: FamilyAdapter, keep_per_layer: list[torch.Tensor | None]) -> None:
    """Physically remove the unkept neurons: rows of gate/up, columns of down; config updated.
    ``None`` leaves a block alone (e.g. one whose FFN is removed whole)."""
    placement = placement_of(model)
    for layer, keep in zip(adapter.layers(model), keep_per_layer):
        if keep is not None:
            with placement.resident(layer):
                adapter.prune_ffn(layer, keep)
    widths = {len(k) for k in keep_per_layer if k is not None}
    if len(widths) == 1:
        adapter.set_uniform_ffn_width(model, widths.pop())
