"""The pruning methods a sweep can name, as a registry: method name -> how to prune in place.
The worker asks this module; it never branches on method names itself."""

from __future__ import annotations

import importlib
import time
from typing import Callable

import torch
from torch import nn

from twossp.errors import BudgetError
from twossp.families.base import FamilyAdapter
from twossp.prune.blocks import block_influence, last_token_states, shortgpt_blocks
from twossp.prune.blocks import window_blocks, window_similarity
from twossp.prune.budget import blocks_to_remove
from twossp.prune.two_stage import PruneOutcome, prune_2ssp
from twossp.spec import Strict

Progress = Callable[[str, int, int], None]
Runner = Callable[[nn.Module, FamilyAdapter, torch.Tensor, float, Strict, torch.device, "Progress | None"],
                  PruneOutcome]


def _two_ssp(model, adapter, calibration, sparsity, method, device, progress) -> PruneOutcome:  # noqa: ANN001
    return prune_2ssp(model, adapter, calibration, sparsity, device, alpha=method.alpha,
                      num_calibration_second_stage=method.num_calibration_second_stage, progress=progress)


def _whole_blocks(select: Callable[[torch.Tensor, int], list[int]],
                  scores: Callable[[torch.Tensor, int], torch.Tensor]) -> Runner:
    def run(model, adapter, calibration, sparsity, method, device, progress) -> PruneOutcome:  # noqa: ANN001
        n = len(adapter.layers(model))
        count = blocks_to_remove(n, sparsity)
        if count >= n:
            raise BudgetError(f"sparsity {sparsity} removes {count} of {n} blocks: nothing would be left")
        start = time.perf_counter()
        states = last_token_states(model, adapter, calibration, device, progress)
        blocks = select(states, count)
        adapter.remove_blocks(model, blocks)
        return PruneOutcome(
            kept_ffn=None, removed_attention=[], removed_blocks=blocks,
            timings={"prune": time.perf_counter() - start},
            details={"removed_blocks": blocks, "blocks_removed": count,
                     "scores": [round(float(v), 6) for v in scores(states, count)]},
        )
    return run


def _lazy(path: str) -> Runner:
    """A runner defined in its own module, imported on first use."""
    def run(*args, **kwargs) -> PruneOutcome:  # noqa: ANN002, ANN003
        module, name = path.split(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    return run


RUNNERS: dict[str, Runner] = {
    "2ssp": _two_ssp,
    "shortgpt": _whole_blocks(shortgpt_blocks, lambda states, count: block_influence(states)),
    "window": _whole_blocks(window_blocks, window_similarity),
    "blockpruner": _lazy("twossp.prune.blockpruner:run"),
    "evopress": _lazy("twossp.prune.evopress:run"),
    "slicegpt": _lazy("twossp.prune.slicegpt:run"),
}


def prune(model: nn.Module, adapter: FamilyAdapter, calibration: torch.Tensor, sparsity: float, method: Strict,
          device: torch.device, progress: Progress | None = None) -> PruneOutcome:
    """Prune ``model`` in place with the sweep method ``method`` (see ``RUNNERS``)."""
    if method.name not in RUNNERS:
        raise BudgetError(f"method {method.name!r} does not prune; known: {', '.join(RUNNERS)}")
    return RUNNERS[method.name](model, adapter, calibration, sparsity, method, device, progress)
