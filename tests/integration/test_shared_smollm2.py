"""Issue 12 on the real SmolLM2-135M-Instruct (slow, about a minute and a half on 2 cores): a sweep of 2SSP
and ShortGPT runs gives exactly the same numbers with its shared steps as without them, and stage 2
with its candidates batched makes the choices of one candidate at a time, at a short length
(BlockPruner's batched search: on the tiny models of every family, tests/prune/test_batched.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from sqlalchemy import select

from twossp.data.tokens import calibration_windows
from twossp.db.models import Run, SharedStepRow
from twossp.db.database import Database
from twossp.families import adapter_for
from twossp.prune.depth import remove_attention_greedy
from twossp.runtime.driver import run_sweep
from twossp.runtime.executors import LocalExecutor
from twossp.runtime.loading import load_model
from twossp.spec import ModelSpec, parse_sweep

pytestmark = pytest.mark.slow

SWEEP = {
    "name": "smollm2-shared",
    "models": [{"builtin": "smollm2-135m-instruct"}],
    "methods": ["2ssp", "shortgpt"],
    "sparsities": [0.25, 0.375],
    "calibration": {"source": "lee-calibration", "samples": [4], "seq_len": 64},
    "evaluation": {"perplexity": ["lee-evaluation"], "seq_len": 64, "max_windows": 4},
    "runtime": {"device": "cpu", "threads": 2},
}


def _numbers(db: Database) -> dict:
    with db.session() as session:
        return {r.key: (r.status, r.achieved_sparsity, [(s.dataset, s.metric, s.value) for s in r.scores],
                        [(m.layer, m.attention_kept, m.ffn_kept, bytes(m.ffn_mask)) for m in r.layer_masks],
                        (r.details or {}).get("removed_attention_order"), (r.details or {}).get("removed_blocks"),
                        (r.details or {}).get("calibration_perplexity_after_each_removal"),
                        (r.details or {}).get("scores"))
                for r in session.scalars(select(Run))}


def test_smollm2_runs_give_the_same_numbers_with_their_shared_steps(tmp_path) -> None:
    spec = parse_sweep(yaml.safe_dump(SWEEP), "smollm2-shared.yaml")
    with (Database(f"sqlite:///{tmp_path / 'alone.db'}") as alone,
          Database(f"sqlite:///{tmp_path / 'shared.db'}") as shared):
        unshared = run_sweep(spec, alone, LocalExecutor(), share=False)
        outcome = run_sweep(spec, shared, LocalExecutor())
        assert not unshared.failed and not outcome.failed and len(outcome.completed) == 4
        assert sorted(step.kind for step, _ in outcome.steps_computed) == ["block states", "ffn scores"]
        assert _numbers(shared) == _numbers(alone)
        with shared.session() as session:
            assert all(r.shared_step for r in session.scalars(select(Run)))
            assert len(session.scalars(select(SharedStepRow)).all()) == 2


def test_smollm2_batched_searches_make_the_one_at_a_time_choices() -> None:
    device = torch.device("cpu")
    dense, tokenizer = load_model(ModelSpec(builtin="smollm2-135m-instruct"), torch.float32, device)
    adapter = adapter_for(dense.config)
    window = calibration_windows(tokenizer, "lee-calibration", 1, 64, 0)
    searches = {}
    for batch in (1, 8):
        model = copy.deepcopy(dense)
        searches[batch] = remove_attention_greedy(model, adapter, window, 4, device, batch=batch)
    assert searches[8].removed == searches[1].removed
    assert searches[8].calibration_perplexity == searches[1].calibration_perplexity
