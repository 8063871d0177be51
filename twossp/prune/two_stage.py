"""2SSP end to end: budget (Eq. 5), stage 1 (width), stage 2 (depth)."""

from __future__ import annotations

import time

import torch
from torch import nn

from twossp.budget import two_stage_budget
from twossp.contracts import STAGE2_KEYS, Progress, PruneOutcome
from twossp.families.base import FamilyAdapter
from twossp.methods import TwoSSPMethod
from twossp.prune.context import PruneContext
from twossp.prune.depth import remove_attention_greedy
from twossp.prune.width import neuron_scores, prune_width, top_neurons


def prune_2ssp(model: nn.Module, adapter: FamilyAdapter, calibration: torch.Tensor, sparsity: float,
               device: torch.device, alpha: float = 1.5, num_calibration_second_stage: int = 1,
               progress: Progress | None = None, scores: list[torch.Tensor] | None = None,
               batch: int = 1) -> PruneOutcome:
    """Prune ``model`` in place with 2SSP at target ``sparsity``.

    ``calibration`` is (n, L) token windows: all n feed stage 1, the first
    ``num_calibration_second_stage`` feed stage 2's perplexity. ``scores``: stage 1's neuron scores
    of this model and calibration, already computed (the ``ffn scores`` shared step). ``batch``:
    stage-2 candidates scored per forward (same choices)."""
    budget = two_stage_budget(adapter.block_counts(model), sparsity, alpha)
    start = time.perf_counter()
    if scores is None:
        scores = neuron_scores(model, adapter, calibration, device, progress)
    else:
        scores = [s.to(device) for s in scores]  # ranked where the run would have computed them
    kept = [top_neurons(s, budget.ffn_keep) for s in scores]
    prune_width(model, adapter, kept)
    stage1 = time.perf_counter()
    depth = remove_attention_greedy(model, adapter, calibration[:num_calibration_second_stage],
                                    budget.num_attention_removed, device, progress, batch)
    stage2 = time.perf_counter()
    return PruneOutcome(
        kept_ffn=kept,
        removed_attention=depth.removed,
        timings={"stage 1": stage1 - start, "stage 2": stage2 - stage1, "prune": stage2 - start},
        removal_order=[("attention", layer) for layer in depth.removed],
        calibration_perplexity=depth.calibration_perplexity,
        layer_forwards=depth.layer_forwards,
        naive_layer_forwards=depth.naive_layer_forwards,
        candidate_batch=batch,
        stored_as=STAGE2_KEYS,
        budget=budget,
        search=depth,
    )


def run(context: PruneContext) -> PruneOutcome:
    """The ``2ssp`` sweep method; ``context.shared``: the ``ffn scores`` step's result."""
    method: TwoSSPMethod = context.method
    return prune_2ssp(context.model, context.adapter, context.calibration, context.sparsity, context.device,
                      alpha=method.alpha, num_calibration_second_stage=method.num_calibration_second_stage,
                      progress=context.progress, scores=context.shared["scores"] if context.shared else None,
                      batch=context.batch)
