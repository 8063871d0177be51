"""The paper's ablation (calibration sizes x seeds) through the grid: for every method that
calibrates, each seed draws other calibration windows, and the run records which."""

from __future__ import annotations

import yaml

from twossp.contracts import RunStatus
from twossp.methods import METHODS, method_of
from twossp.plan import plan_sweep
from twossp.runtime.worker import execute_run
from twossp.spec import parse_sweep


def test_every_method_draws_other_calibration_windows_per_seed(tiny_checkpoint) -> None:
    methods = [{"name": name, **({"generations": 1, "offspring": 1, "initial_candidates": 2}
                                 if name == "evopress" else {})}
               for name, entry in METHODS.items() if entry.prunes]
    spec = parse_sweep(yaml.safe_dump(tiny_checkpoint.sweep("ablation", methods=methods, sparsities=[0.25],
                                                            seeds=[0, 1, 2])), "ablation.yaml")
    runs = plan_sweep(spec)
    assert len(runs) == len(methods) * 3
    windows: dict[str, dict[int, str]] = {}
    for run in runs:
        result = execute_run(run)
        assert result.status == RunStatus.COMPLETED, result.error
        windows.setdefault(run.method.name, {})[run.calibration.seed] = result.calibration_sha256
    for method, by_seed in windows.items():
        assert method_of(next(r.method for r in runs if r.method.name == method)).prunes
        assert len(set(by_seed.values())) == 3, (method, by_seed)
    # the same seed draws the same windows whatever the method
    assert len({by_seed[1] for by_seed in windows.values()}) == 1
