"""BlockPruner (Zhong et al., arXiv 2406.10594): depth pruning at the grain of residual submodules.

Every decoder block is two "minimal residual blocks" (paper Sec. 3.1): its attention and its FFN,
each with the norm that only feeds it, so the model is a sequence of 2N removable submodules. Each
step measures, for every remaining submodule, the calibration perplexity of the current model with
that submodule removed, and removes for good the one with the lowest (Sec. 3.2-3.3; docs/method.md:
scores on one calibration window). As in the authors' search, the candidates are listed attention
first, then FFN, each in block order, and the first of equal perplexities wins.

The search stops as soon as the removed parameters (counted on the actual modules, norms included)
reach ``sparsity`` x P_layers: the sparsity is rounded up to whole submodules, and the achieved
figure recorded. A block that has lost both submodules is then deleted whole.

Candidates are scored as in 2SSP's stage 2, by ``calibration.BlockInputs``: a candidate at block i
(attention or FFN, the other half of the block still runs) runs only blocks i..N-1, and the
winner's recomputed block inputs carry over to the next step. The choices are those of the naive
search (the same operations on the same tensors); the layer forwards are about half.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ContextManager

import torch
from torch import nn

from twossp.budget import ceil_share
from twossp.contracts import Progress, PruneOutcome
from twossp.errors import BudgetError
from twossp.families.base import FamilyAdapter, count
from twossp.prune.calibration import BlockInputs
from twossp.prune.context import ModelContext, PruneContext


ATTENTION, FFN = "attention", "ffn"
Submodule = tuple[str, int]  # (ATTENTION | FFN, dense block index)


@dataclass
class BlockPrunerSearch:
    removed: list[Submodule] = field(default_factory=list)               # in order of removal
    calibration_perplexity: list[float] = field(default_factory=list)   # after each removal
    removed_params: list[int] = field(default_factory=list)             # cumulative, after each removal
    seconds: list[float] = field(default_factory=list)                  # since the search began, after each removal
    target_params: int = 0
    layer_forwards: int = 0
    naive_layer_forwards: int = 0


def target_params(layer_params: int, sparsity: float) -> int:
    """Parameters to remove: ceil(s * P_layers), the rounding of every whole-unit method."""
    return ceil_share(sparsity, layer_params)


def _bypassed(adapter: FamilyAdapter, layer: nn.Module, kind: str) -> ContextManager[None]:
    return adapter.attention_bypassed(layer) if kind == ATTENTION else adapter.ffn_bypassed(layer)


def _present(adapter: FamilyAdapter, layer: nn.Module, kind: str) -> bool:
    return adapter.is_attention_present(layer) if kind == ATTENTION else adapter.is_ffn_present(layer)


def submodule_params(adapter: FamilyAdapter, layer: nn.Module, kind: str) -> int:
    """Parameters that removing ``kind`` from ``layer`` takes away: the submodule and the norms that
    go with it, measured as the layer's count with and without it."""
    with_it = count(layer)
    with _bypassed(adapter, layer, kind):
        return with_it - count(layer)


def candidates(adapter: FamilyAdapter, layers: nn.ModuleList) -> list[Submodule]:
    """The submodules still present, attention first, then FFN, each in block order (the authors'
    candidate order, which decides ties)."""
    return [(kind, i) for kind in (ATTENTION, FFN) for i, layer in enumerate(layers) if _present(adapter, layer, kind)]


@torch.no_grad()
def remove_submodules_greedy(model: nn.Module, adapter: FamilyAdapter, windows: torch.Tensor, sparsity: float,
                             device: torch.device, progress: Progress | None = None,
                             batch: int = 1) -> BlockPrunerSearch:
    """Remove attention and FFN submodules, one at a time, each the one whose removal gives the
    lowest perplexity on ``windows``, until at least ``sparsity`` x P_layers parameters are gone.
    Submodules are replaced by weightless stand-ins (``adapter.remove_attention``/``remove_ffn``);
    blocks are not deleted here, so every index stays a dense one. ``batch``: candidates scored per
    forward (``BlockInputs.choose``)."""
    layers = adapter.layers(model)
    n = len(layers)
    dense_params = count(layers)
    sizes = {(kind, i): submodule_params(adapter, layers[i], kind) for kind, i in candidates(adapter, layers)}
    result = BlockPrunerSearch(target_params=target_params(dense_params, sparsity))
    if sum(sizes.values()) - min(sizes.values(), default=0) < result.target_params:
        raise BudgetError(f"sparsity {sparsity} needs {result.target_params:,} of {dense_params:,} decoder parameters "
                          "removed: every attention and FFN would go, nothing would be left")

    start = time.perf_counter()
    state = BlockInputs(model, adapter, windows, device)
    result.layer_forwards = n * len(windows)
    removed = 0
    while removed < result.target_params:
        pool = candidates(adapter, layers)
        if len(pool) <= 1:
            raise BudgetError(f"sparsity {sparsity}: the search would remove every submodule")
        best, best_nll, best_inputs, forwards = state.choose(
            pool, lambda candidate: candidate[1],
            lambda candidate: _bypassed(adapter, layers[candidate[1]], candidate[0]), batch)
        result.layer_forwards += forwards
        result.naive_layer_forwards += len(pool) * n * len(windows)
        if best is None:  # every candidate gave a non-finite perplexity
            raise BudgetError("every candidate removal gave a non-finite calibration perplexity")
        kind, i = best
        (adapter.remove_attention if kind == ATTENTION else adapter.remove_ffn)(model, i)
        state.adopt(i, best_inputs)
        removed += sizes[best]
        result.removed.append(best)
        result.removed_params.append(removed)
        result.calibration_perplexity.append(math.exp(best_nll / state.tokens))
        result.seconds.append(time.perf_counter() - start)
        if progress:
            progress("blockpruner", min(removed, result.target_params), result.target_params)
    return result


def steps_for(removed_params: list[int], layer_params: int, sparsity: float) -> int:
    """How many removals a search stopping at ``sparsity`` makes, given the cumulative removed
    parameters of a search run further. The greedy path does not depend on the target, so a search
    run to a higher sparsity holds every lower one's as a prefix."""
    target = target_params(layer_params, sparsity)
    for step, removed in enumerate(removed_params, start=1):
        if removed >= target:
            return step
    raise BudgetError(f"the search stopped at {removed_params[-1] if removed_params else 0:,} "
                      f"removed parameters, short of sparsity {sparsity} ({target:,})")


def split_removals(removed: list[Submodule]) -> tuple[list[int], list[int], list[int]]:
    """A search's removals as the removed attentions and FFNs (of blocks that keep their other half,
    in order of removal) and the whole blocks (both gone), in dense indices: what ``layer_masks``
    takes to rebuild the pruned model from the dense one."""
    attention = {i for kind, i in removed if kind == ATTENTION}
    ffn = {i for kind, i in removed if kind == FFN}
    return ([i for kind, i in removed if kind == ATTENTION and i not in ffn],
            [i for kind, i in removed if kind == FFN and i not in attention], sorted(attention & ffn))


def shared_path(context: ModelContext, params: dict) -> dict:
    """The ``blockpruner path`` shared step: the greedy search up to the highest sparsity of the runs
    it feeds (``params["sparsity"]``); each takes its prefix (``steps_for``). A search that cannot
    reach it gives an empty path, and each run then searches alone (and fails as it would alone)."""
    try:
        search = remove_submodules_greedy(context.model, context.adapter,
                                          context.calibration[:params["num_calibration"]], params["sparsity"],
                                          context.device, context.progress, context.batch)
    except BudgetError as exc:
        return {"removed": [], "removed_params": [], "calibration_perplexity": [], "seconds": [], "error": str(exc)}
    return {"removed": [[kind, i] for kind, i in search.removed], "removed_params": search.removed_params,
            "calibration_perplexity": search.calibration_perplexity, "seconds": search.seconds,
            "layer_forwards": search.layer_forwards, "naive_layer_forwards": search.naive_layer_forwards}


def _taken_from(path: dict, model: nn.Module, adapter: FamilyAdapter, sparsity: float) -> BlockPrunerSearch | None:
    """The prefix of a shared path a search to ``sparsity`` would have made, its removals applied
    (in the order the search made them); None when the path stops short of ``sparsity``."""
    layers = adapter.layers(model)
    dense_params = count(layers)
    try:
        steps = steps_for(path["removed_params"], dense_params, sparsity)
    except BudgetError:
        return None
    removed = [(kind, i) for kind, i in path["removed"][:steps]]
    for kind, i in removed:
        (adapter.remove_attention if kind == ATTENTION else adapter.remove_ffn)(model, i)
    return BlockPrunerSearch(removed=removed, calibration_perplexity=path["calibration_perplexity"][:steps],
                             removed_params=path["removed_params"][:steps], seconds=path["seconds"][:steps],
                             target_params=target_params(dense_params, sparsity),
                             layer_forwards=path["layer_forwards"], naive_layer_forwards=path["naive_layer_forwards"])


def run(context: PruneContext) -> PruneOutcome:
    """The ``blockpruner`` sweep method: the greedy search on the first ``method.num_calibration``
    windows (or its prefix of ``context.shared``, the ``blockpruner path`` step's result), then blocks
    without attention and FFN deleted whole (``adapter.remove_blocks``). The outcome's lists are in
    dense block indices; the layer forwards of a shared path are the whole path's."""
    model, adapter, sparsity = context.model, context.adapter, context.sparsity
    dense_params = adapter.block_counts(model).layer_params
    start = time.perf_counter()
    search = _taken_from(context.shared, model, adapter, sparsity) if context.shared else None
    if search is None:
        search = remove_submodules_greedy(model, adapter, context.calibration[:context.method.num_calibration],
                                          sparsity, context.device, context.progress, context.batch)
    attention, ffn, blocks = split_removals(search.removed)
    if blocks:
        adapter.remove_blocks(model, blocks)
    elapsed = time.perf_counter() - start
    achieved = 1 - adapter.block_counts(model).layer_params / dense_params
    return PruneOutcome(
        kept_ffn=None,
        removed_attention=attention,
        removed_ffn=ffn,
        removed_blocks=blocks,
        timings={"prune": elapsed},
        removal_order=list(search.removed),
        calibration_perplexity=search.calibration_perplexity,
        layer_forwards=search.layer_forwards,
        naive_layer_forwards=search.naive_layer_forwards,
        details={
            "removed_params_after_each_removal": search.removed_params,
            "seconds_after_each_removal": search.seconds,
            "target_params": search.target_params,
            "achieved_sparsity": achieved,
            "removed_blocks": blocks,
        },
    )
