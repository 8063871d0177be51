"""Run keys name the weights: a hub branch is resolved to its commit, a local checkpoint is
fingerprinted, and a run whose weights changed after planning is refused rather than computed on
other weights under the planned key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml

from twossp.contracts import RunStatus
from twossp.plan import plan_sweep
from twossp.runtime.loading import resolve_revisions
from twossp.runtime.worker import execute_run
from twossp.spec import parse_sweep

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def _hub_sweep(revision: str | None = None):
    model = {"hub": "org/model", **({"revision": revision} if revision else {})}
    text = yaml.safe_dump({"name": "hub", "models": [model], "methods": ["dense"],
                           "evaluation": {"perplexity": ["lee-evaluation"]}})
    return parse_sweep(text, "hub.yaml")


def _cache_ref(cache: Path, revision: str, commit: str) -> None:
    ref = cache / "models--org--model" / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


def test_a_hub_branch_is_resolved_to_the_commit_the_cache_knows(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _cache_ref(tmp_path, "main", COMMIT_A)
    first = resolve_revisions(_hub_sweep())
    assert first.models[0].revision == COMMIT_A
    _cache_ref(tmp_path, "main", COMMIT_B)  # the branch moved: new weights, new keys
    second = resolve_revisions(_hub_sweep())
    assert second.models[0].revision == COMMIT_B
    assert plan_sweep(first)[0].key != plan_sweep(second)[0].key
    pinned = resolve_revisions(_hub_sweep(COMMIT_A))
    assert pinned.models[0].revision == COMMIT_A
    assert plan_sweep(pinned)[0].key == plan_sweep(first)[0].key  # the commit, however it was named


def test_an_unknown_branch_offline_keeps_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_revisions(_hub_sweep("v2")).models[0].revision == "v2"


def test_a_run_whose_weights_changed_after_planning_is_refused(tiny_checkpoint, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint.model_dir, model)
    spec = parse_sweep(yaml.safe_dump(tiny_checkpoint.sweep("changed", models=[{"path": str(model)}],
                                                            methods=["dense"], sparsities=[])), "changed.yaml")
    [run] = plan_sweep(spec)
    key = run.key
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert run.key == key  # the planned key does not move under the run
    result = execute_run(run)
    assert result.status == RunStatus.FAILED
    assert "changed since the sweep was planned" in result.error and not result.scores
