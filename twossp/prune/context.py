"""The pruning contract: what every method's runner receives and returns.

A runner (``Runner``) takes one ``PruneContext`` and prunes its model in place, returning a
``contracts.PruneOutcome``. A shared step's computation (``StepComputation``) takes a
``ModelContext``, the part of a run's context that does not depend on its target, and the method
parameters that change its result. Everything a run's pruning needs reaches a method through these
two types, so a new runtime concern (where blocks live, a recovery step) is a field here, not a new
parameter of every runner.

The registry (``twossp.methods``) names each runner lazily; ``prune`` looks it up.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

from twossp.contracts import Progress, PruneOutcome

if TYPE_CHECKING:
    import torch
    from torch import nn

    from twossp.families.base import FamilyAdapter
    from twossp.methods import MethodSpec


@dataclass(frozen=True, kw_only=True)
class ModelContext:
    """A loaded model and the calibration windows a method reads."""

    model: nn.Module
    adapter: FamilyAdapter
    calibration: torch.Tensor   # (n, L) token windows
    #: where the token ids go in (the embeddings, the final norm and the LM head live there); where
    #: each decoder block lives and computes is the model's placement (``placement.placement_of``)
    device: torch.device
    progress: Progress | None = None
    #: candidate removals scored per forward by the methods that search (same choices at any value)
    batch: int = 1

    def pruning(self, *, sparsity: float, method: MethodSpec, shared: Any = None) -> PruneContext:
        """This context, for one run's pruning to ``sparsity`` with ``method``."""
        loaded = {field.name: getattr(self, field.name) for field in fields(ModelContext)}
        return PruneContext(**loaded, sparsity=sparsity, method=method, shared=shared)


@dataclass(frozen=True, kw_only=True)
class PruneContext(ModelContext):
    """One run's pruning: the model, its target and method, and what its shared step computed."""

    sparsity: float
    method: MethodSpec
    #: the result of the method's shared step (``methods.SHARED_STEPS``), which the runner then
    #: takes instead of computing it; None: the runner computes everything itself
    shared: Any = None


class Runner(Protocol):
    """A method's runner: prunes ``context.model`` in place and says what it removed."""

    def __call__(self, context: PruneContext) -> PruneOutcome: ...


class StepComputation(Protocol):
    """A shared step's computation: its result (tensors on the CPU, lists and numbers), which each
    run of the step takes as ``PruneContext.shared``."""

    def __call__(self, context: ModelContext, params: dict[str, Any]) -> Any: ...


def prune(context: PruneContext) -> PruneOutcome:
    """Prune ``context.model`` in place with its method's registered runner."""
    from twossp.errors import BudgetError
    from twossp.methods import method_of

    entry = method_of(context.method)
    if not entry.prunes:
        raise BudgetError(f"method {entry.name!r} does not prune")
    runner: Runner = entry.run.load()
    return runner(context)
