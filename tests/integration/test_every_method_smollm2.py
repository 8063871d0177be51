"""Every pruning method on the real SmolLM2-135M inside one sweep (`twossp sweep run`, local Ray,
SQLite): each run lands completed with its masks, meets its target sparsity, and the model it saved
(`save_to:`) reloads to the perplexity stored in the database. Short windows keep it to minutes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, selectinload

from twossp.checkpoint import load_pruned
from twossp.data.tokens import token_stream
from twossp.db.models import Run
from twossp.evaluate.perplexity import make_windows, perplexity
from twossp.families import adapter_for
from twossp.runtime.loading import load_model
from twossp.spec import ModelSpec

pytestmark = pytest.mark.slow

TWOSSP = str(Path(sys.executable).with_name("twossp"))
SWEEP = """
name: smollm2-every-method
models:
  - builtin: smollm2-135m-instruct
    cpus: 1
methods:
  - dense
  - 2ssp
  - shortgpt
  - window
  - blockpruner
  - {name: evopress, generations: 6, offspring: 4, initial_candidates: 8}
  - slicegpt
sparsities: [0.25]
calibration: {source: lee-calibration, samples: [2], seq_len: 32}
evaluation: {perplexity: [lee-evaluation], seq_len: 32, max_windows: 4}
save_to: saved
runtime: {threads: 1}
"""


def test_every_method_lands_in_the_database_and_reloads_to_its_score(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    db = f"sqlite:///{tmp_path / 'results.db'}"
    done = subprocess.run([TWOSSP, "sweep", "run", "sweep.yaml", "--db", db], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1800, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 completed, 0 failed" in done.stdout, done.stdout

    engine = create_engine(db)
    with Session(engine) as s:
        runs = {r.method: r for r in s.scalars(select(Run).options(selectinload(Run.scores),
                                                                   selectinload(Run.layer_masks)))}
    engine.dispose()
    assert set(runs) == {"dense", "2ssp", "shortgpt", "window", "blockpruner", "evopress", "slicegpt"}
    for method, run in runs.items():
        assert run.status == "completed" and len(run.layer_masks) == 30, method
        assert run.scores[0].tokens_sha256 and (method == "dense") == (run.calibration_sha256 is None)  # provenance
        if method != "dense":
            assert run.achieved_sparsity >= 0.25 - 1e-3, (method, run.achieved_sparsity)
    blocks = lambda r: sum(not m.attention_kept and m.ffn_kept == 0 for m in r.layer_masks)  # noqa: E731
    assert blocks(runs["shortgpt"]) == blocks(runs["window"]) == blocks(runs["evopress"]) == 8  # ceil(.25*30)
    assert sum(not m.attention_kept for m in runs["2ssp"].layer_masks) == 2
    bp = runs["blockpruner"]
    assert any(not m.attention_kept or m.ffn_kept == 0 for m in bp.layer_masks)
    assert runs["slicegpt"].details["sliced_width"] < 576

    _, tokenizer = load_model(ModelSpec(builtin="smollm2-135m-instruct"), torch.float32, torch.device("cpu"))
    windows = make_windows(token_stream(tokenizer, "lee-evaluation"), 32, 4)
    for method, run in runs.items():
        if method == "dense":
            continue
        model = load_pruned(tmp_path / "saved" / run.key)
        with torch.no_grad():
            ppl = perplexity(model, adapter_for(model.config), windows, torch.device("cpu")).perplexity
        assert math.isclose(ppl, run.scores[0].value, rel_tol=1e-4), (method, ppl, run.scores[0].value)
