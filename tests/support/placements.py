"""One tiny model pruned on one device and again placed otherwise (blocks split over several
devices, streamed from disk, streamed from host memory), through the method registry as a sweep runs
it; what the two prunings chose and how far their logits are apart. The placement tests assert on
it, and ``benchmarks/placement_equivalence.py`` prints it as a table.

On the CPU every "device" of a split is the CPU itself: the hooks, the per-block device table and
every move run as they would across GPUs, without a change of memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tests.support.models import random_tokens
from twossp.families import adapter_for
from twossp.methods import METHODS
from twossp.placement import HostHome, Placement, Split, Stream
from twossp.prune import PruneContext, prune
from twossp.runtime.loading import load_placed
from twossp.spec import ModelSpec

CPU = torch.device("cpu")
PLACEMENTS = ("split", "stream from disk", "stream from host")
#: each method with settings small enough for 6-block models (EvoPress: a short search)
SPECS = {name: METHODS[name].spec(**({"generations": 4, "offspring": 4, "initial_candidates": 4}
                                 if name == "evopress" else {}))
         for name in METHODS if name != "dense"}


def placed(model: torch.nn.Module, how: str, folder: Path) -> tuple[torch.nn.Module, Placement]:
    """A copy of ``model`` placed ``how`` (one of ``PLACEMENTS``, or ``single``); ``stream from
    disk`` saves it to ``folder`` and streams it from those shards, as a run of a local checkpoint does."""
    if how == "stream from disk":
        model.save_pretrained(folder)
        return load_placed(ModelSpec(path=str(folder)), torch.float32, "stream", [CPU], "disk")
    copied = copy.deepcopy(model)
    placement = {"single": lambda: Placement(CPU), "split": lambda: Split([CPU, CPU, CPU]),
                 "stream from host": lambda: Stream(CPU, HostHome())}[how]()
    placement.install(copied, adapter_for(copied.config))
    return copied, placement


@dataclass(frozen=True)
class Comparison:
    """One method on one model, on one device and placed."""

    same_choices: bool           # removals, their order and every FFN mask
    max_logit_difference: float  # between the two pruned models, on held-out tokens
    max_resident: int | None     # blocks a streamed model ever held at once
    single: Any                  # what each run chose (``PruneOutcome``)
    other: Any


def compare(model: torch.nn.Module, method: str, how: str, folder: Path, sparsity: float = 0.5) -> Comparison:
    """``model`` pruned with ``method`` on one device and placed ``how``, from the same calibration."""
    calibration = random_tokens(4, 24, seed=11)
    runs = []
    for where in ("single", how):
        copy_, placement = placed(model, where, folder)
        adapter = adapter_for(copy_.config)
        outcome = prune(PruneContext(model=copy_, adapter=adapter, calibration=calibration, sparsity=sparsity,
                                     method=SPECS[method], device=CPU))
        dense = adapter_for(model.config).block_counts(model)
        with torch.no_grad():
            logits = copy_(random_tokens(2, 12, seed=5)).logits
        runs.append((outcome, outcome.masks(dense.num_layers, dense.intermediate_size), logits, placement))
        placement.close()
    (first, masks_a, logits_a, _), (second, masks_b, logits_b, placement) = runs
    same = (masks_a == masks_b and first.removal_order == second.removal_order
            and first.removed_blocks == second.removed_blocks and first.removed_attention == second.removed_attention
            and first.removed_ffn == second.removed_ffn
            and torch.allclose(torch.tensor(first.calibration_perplexity or []),
                               torch.tensor(second.calibration_perplexity or []), rtol=1e-6))
    return Comparison(same, float((logits_a - logits_b).abs().max()), placement.max_resident, first, second)
