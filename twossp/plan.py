"""Pure planning: a validated sweep expands into runs, each keyed by a hash of its normalised spec.

The key covers everything that determines a run's numbers (weights, method and its parameters,
sparsity, calibration, evaluation, dtype) and nothing that does not (sweep name, model label,
resources, device, thread count), so the same cell in two sweep files is computed once.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import Field

from twossp.spec import (
    DenseMethod,
    EvaluationSpec,
    MethodSpec,
    ModelSpec,
    RuntimeSpec,
    Strict,
    SweepSpec,
    TextSource,
    TwoSSPMethod,
    source_key,
)

if TYPE_CHECKING:
    from twossp.prune.budget import Budget


class CalibrationRun(Strict):
    source: TextSource
    samples: int = Field(ge=1)
    seq_len: int
    seed: int


class RunSpec(Strict):
    """Everything a worker needs to execute one run; JSON-serialisable for Ray and the database."""

    sweep: str
    model: ModelSpec
    method: MethodSpec
    sparsity: float | None = None
    calibration: CalibrationRun | None = None
    evaluation: EvaluationSpec
    runtime: RuntimeSpec
    save_to: str | None = None  # where the pruned model goes (not in the key: it changes no number)

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "model": self.model.identity,
            "trust_remote_code": self.model.trust_remote_code,
            "method": self.method.model_dump(),
            "sparsity": self.sparsity,
            "dtype": self.runtime.dtype,
            "evaluation": {
                # the order datasets are listed in changes no score
                "perplexity": sorted((source_key(s) for s in self.evaluation.perplexity),
                                     key=lambda k: json.dumps(k, sort_keys=True)),
                "seq_len": self.evaluation.seq_len,
                "max_windows": self.evaluation.max_windows,
            },
        }
        if self.calibration:
            ident["calibration"] = {**self.calibration.model_dump(), "source": source_key(self.calibration.source)}
        return ident

    @property
    def key(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        parts = [self.model.label, self.method.name]
        if self.sparsity is not None:
            parts.append(f"s={self.sparsity:g}")
        if self.calibration:
            parts.append(f"n={self.calibration.samples}")
            parts.append(f"seed={self.calibration.seed}")
        return " ".join(parts)


def plan_sweep(spec: SweepSpec) -> list[RunSpec]:
    """Expand the grid. Dense runs take no sparsity, calibration or seed: one per model."""
    evaluation = spec.evaluation.model_copy(update={"seq_len": spec.eval_seq_len})
    runs: list[RunSpec] = []
    for model in spec.models:
        for method in spec.methods:
            common = dict(sweep=spec.name, model=model, method=method, evaluation=evaluation, runtime=spec.runtime,
                          save_to=spec.save_to)
            if isinstance(method, DenseMethod):
                runs.append(RunSpec(**common))
                continue
            for sparsity in spec.sparsities:
                for samples in spec.calibration.samples:
                    for seed in spec.seeds:
                        calib = CalibrationRun(source=spec.calibration.source, samples=samples,
                                               seq_len=spec.calibration.seq_len, seed=seed)
                        runs.append(RunSpec(**common, sparsity=sparsity, calibration=calib))
    return runs


__all__ = ["CalibrationRun", "MethodSpec", "RunSpec", "plan_sweep"]


def expected_budget(run: RunSpec, config: Any) -> "Budget | None":
    """What a 2SSP run will remove, from the model's config alone (Eq. 5); None for other methods.
    Raises ``BudgetError`` or ``UnsupportedArchitecture`` exactly as the run itself would."""
    from twossp.families import config_block_counts
    from twossp.prune.budget import two_stage_budget

    if not isinstance(run.method, TwoSSPMethod) or run.sparsity is None:
        return None
    return two_stage_budget(config_block_counts(config), run.sparsity, run.method.alpha)


def expected_blocks(run: RunSpec, config: Any) -> int | None:
    """Whole blocks a depth baseline will remove (ceil(s * N)), from the config alone."""
    from twossp.families import config_block_counts
    from twossp.prune.budget import blocks_to_remove

    if not getattr(run.method, "whole_blocks", False) or run.sparsity is None:
        return None
    return blocks_to_remove(config_block_counts(config).num_layers, run.sparsity)
