"""Planning: grid expansion, and run keys that change exactly when a run's numbers can change."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import Any, Callable

import pytest
import yaml

from twossp.plan import RunSpec, plan_sweep
from twossp.methods import DenseMethod, TwoSSPMethod
from twossp.spec import parse_sweep

BASE: dict[str, Any] = {
    "name": "base",
    "models": [{"hub": "HuggingFaceTB/SmolLM2-135M"}],
    "methods": ["dense", "2ssp"],
    "sparsities": [0.5],
    "calibration": {"source": "lee-calibration", "samples": [8], "seq_len": 128},
    "seeds": [0],
    "evaluation": {"perplexity": ["lee-evaluation"]},
}


def plan(doc: dict[str, Any]) -> list[RunSpec]:
    return plan_sweep(parse_sweep(yaml.safe_dump(doc, sort_keys=False), "test.yaml", check_files=False))


def keys_by_method(doc: dict[str, Any]) -> dict[str, str]:
    """Key of the dense run and of the single 2SSP run of a one-model, one-cell sweep."""
    runs = plan(doc)
    assert len(runs) == 2
    return {run.method.name: run.key for run in runs}


def mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    change(doc)
    return doc


# --------------------------------------------------------------------------------------------
# Grid expansion
# --------------------------------------------------------------------------------------------


def test_grid_expansion_counts() -> None:
    doc = mutated(lambda d: d.update(
        models=[{"hub": "HuggingFaceTB/SmolLM2-135M"}, {"hub": "HuggingFaceTB/SmolLM2-360M"}],
        methods=["dense", "2ssp", {"name": "2ssp", "alpha": 2.0}],
        sparsities=[0.25, 0.375, 0.5],
        calibration={"source": "lee-calibration", "samples": [8, 32], "seq_len": 128},
        seeds=[0, 1],
    ))
    runs = plan(doc)
    # models x (dense 1 + 2ssp variants x sparsities x calibration sizes x seeds)
    assert len(runs) == 2 * (1 + 2 * 3 * 2 * 2) == 50
    assert sum(isinstance(r.method, DenseMethod) for r in runs) == 2
    assert sum(isinstance(r.method, TwoSSPMethod) for r in runs) == 48
    cells = {(r.model.hub, r.method.alpha, r.sparsity, r.calibration.samples, r.calibration.seed)
             for r in runs if isinstance(r.method, TwoSSPMethod)}
    assert len(cells) == 48


def test_dense_only_plan_has_one_run_per_model() -> None:
    doc = mutated(lambda d: d.update(
        models=[{"hub": "a/one"}, {"hub": "a/two"}, {"builtin": "smollm2-135m-instruct"}],
        methods=["dense"], sparsities=[], seeds=[0, 1, 2]))
    runs = plan(doc)
    assert len(runs) == 3
    assert all(r.sparsity is None and r.calibration is None for r in runs)


def test_pruned_runs_carry_their_cell() -> None:
    runs = plan(mutated(lambda d: d.update(sparsities=[0.25, 0.5], seeds=[3])))
    dense, *pruned = runs
    assert dense.sparsity is None and dense.calibration is None
    assert [r.sparsity for r in pruned] == [0.25, 0.5]
    assert all(r.calibration.model_dump() == {"source": "lee-calibration", "samples": 8, "seq_len": 128, "seed": 3}
               for r in pruned)
    assert pruned[0].label == "HuggingFaceTB/SmolLM2-135M 2ssp s=0.25 n=8 seed=3"
    assert dense.label == "HuggingFaceTB/SmolLM2-135M dense"


def test_evaluation_seq_len_defaults_to_calibration_seq_len() -> None:
    runs = plan(BASE)
    assert {r.evaluation.seq_len for r in runs} == {128}
    runs = plan(mutated(lambda d: d["evaluation"].update(seq_len=256)))
    assert {r.evaluation.seq_len for r in runs} == {256}


# --------------------------------------------------------------------------------------------
# Run keys
# --------------------------------------------------------------------------------------------


def test_keys_are_unique_within_a_plan() -> None:
    doc = mutated(lambda d: d.update(
        models=[{"hub": "a/one"}, {"hub": "a/one", "revision": "v2", "name": "one-v2"}],
        methods=["dense", "2ssp", {"name": "2ssp", "alpha": 1.0}],
        sparsities=[0.25, 0.5],
        calibration={"source": "lee-calibration", "samples": [8, 16], "seq_len": 128},
        seeds=[0, 1],
    ))
    keys = [r.key for r in plan(doc)]
    assert len(keys) == 2 * (1 + 2 * 2 * 2 * 2)
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in keys)


def test_keys_are_stable_within_and_across_processes() -> None:
    keys = [r.key for r in plan(BASE)]
    assert [r.key for r in plan(BASE)] == keys
    code = (
        "import json, sys, yaml; from twossp.spec import parse_sweep; from twossp.plan import plan_sweep; "
        "doc = json.loads(sys.argv[1]); "
        "print(json.dumps([r.key for r in plan_sweep(parse_sweep(yaml.safe_dump(doc), check_files=False))]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a key must not depend on hash()
    result = subprocess.run([sys.executable, "-c", code, json.dumps(BASE)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == keys


def test_key_survives_a_json_round_trip() -> None:
    # runs travel to Ray workers and the database as JSON
    doc = mutated(lambda d: d.update(
        calibration={"source": {"path": "train.jsonl", "text_field": "body"}, "samples": [8], "seq_len": 128}))
    for run in plan(doc):
        again = RunSpec.model_validate_json(run.model_dump_json())
        assert again == run and again.key == run.key


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return change


@pytest.mark.parametrize(
    "change",
    [
        _set("name", "another-sweep"),
        _set("description", "same cells, other words"),
        _set("models.0.name", "smol"),
        _set("models.0.gpus", 1),
        _set("models.0.cpus", 4),
        _set("models.0.revision", "main"),  # the default revision, spelled out
        _set("runtime", {"device": "cpu"}),
        _set("runtime", {"device": "cuda", "threads": 8}),
        _set("runtime", {"threads": 2}),
        _set("methods", ["dense", {"name": "2ssp", "alpha": 1.5}]),  # the default alpha, spelled out
        _set("methods", ["2ssp", "dense"]),  # order of the grid
    ],
    ids=["sweep-name", "description", "model-label", "gpus", "cpus", "revision-main", "device-cpu",
         "device-cuda-threads", "threads", "alpha-default", "method-order"],
)
def test_key_ignores_what_does_not_affect_results(change: Callable[[dict[str, Any]], None]) -> None:
    assert keys_by_method(mutated(change)) == keys_by_method(BASE)


@pytest.mark.parametrize(
    ("change", "changed"),
    [
        (_set("sparsities", [0.25]), {"2ssp"}),
        (_set("methods", ["dense", {"name": "2ssp", "alpha": 2.0}]), {"2ssp"}),
        (_set("methods", ["dense", {"name": "2ssp", "num_calibration_second_stage": 4}]), {"2ssp"}),
        (_set("seeds", [1]), {"2ssp"}),
        (_set("calibration.samples", [16]), {"2ssp"}),
        (_set("calibration.source", "c4-train"), {"2ssp"}),
        (_set("calibration.seq_len", 256), {"dense", "2ssp"}),  # evaluation windows follow it
        (_set("evaluation.perplexity", ["wikitext2"]), {"dense", "2ssp"}),
        (_set("evaluation.perplexity", ["lee-evaluation", "wikitext2"]), {"dense", "2ssp"}),
        (_set("evaluation.seq_len", 64), {"dense", "2ssp"}),
        (_set("evaluation.max_windows", 10), {"dense", "2ssp"}),
        (_set("runtime", {"dtype": "bfloat16"}), {"dense", "2ssp"}),
        (_set("models.0.revision", "v1.0"), {"dense", "2ssp"}),
        (_set("models.0.hub", "HuggingFaceTB/SmolLM2-360M"), {"dense", "2ssp"}),
        (_set("models.0.trust_remote_code", True), {"dense", "2ssp"}),
    ],
    ids=["sparsity", "alpha", "second-stage-samples", "seed", "calibration-samples", "calibration-source",
         "calibration-seq-len", "eval-dataset", "eval-extra-dataset", "eval-seq-len", "eval-max-windows",
         "dtype", "revision", "hub-id", "trust-remote-code"],
)
def test_key_changes_with_what_affects_results(change: Callable[[dict[str, Any]], None], changed: set[str]) -> None:
    before, after = keys_by_method(BASE), keys_by_method(mutated(change))
    assert {method for method in before if before[method] != after[method]} == changed


def test_calibration_seq_len_leaves_dense_alone_when_evaluation_seq_len_is_fixed() -> None:
    fixed = mutated(lambda d: d["evaluation"].update(seq_len=128))
    longer = copy.deepcopy(fixed)
    longer["calibration"]["seq_len"] = 256
    before, after = keys_by_method(fixed), keys_by_method(longer)
    assert before["dense"] == after["dense"] and before["2ssp"] != after["2ssp"]


@pytest.mark.parametrize(
    "source_change",
    [{"text_field": "body"}, {"max_documents": 50}, {"format": "text"}, {"path": "other.jsonl"}],
    ids=["text-field", "max-documents", "format", "path"],
)
def test_key_changes_with_how_a_file_source_is_read(source_change: dict[str, Any]) -> None:
    base = mutated(_set("calibration.source", {"path": "train.jsonl"}))
    other = mutated(_set("calibration.source", {"path": "train.jsonl", **source_change}))
    assert keys_by_method(base)["2ssp"] != keys_by_method(other)["2ssp"]


def test_file_source_format_spelled_out_keeps_the_key() -> None:
    inferred = mutated(_set("calibration.source", {"path": "train.jsonl"}))
    explicit = mutated(_set("calibration.source", {"path": "train.jsonl", "format": "jsonl", "text_field": "text"}))
    assert keys_by_method(inferred) == keys_by_method(explicit)


def test_same_cell_in_two_sweeps_has_the_same_key() -> None:
    small = plan(BASE)
    big = plan(mutated(lambda d: d.update(name="bigger", sparsities=[0.25, 0.5], seeds=[0, 1])))
    assert {r.key for r in small} <= {r.key for r in big}


def test_the_order_of_evaluation_datasets_does_not_change_keys() -> None:
    from twossp.spec import parse_sweep

    def keys(datasets: str) -> list[str]:
        spec = parse_sweep("name: s\nmodels: [{hub: org/m}]\nmethods: [dense, 2ssp]\nsparsities: [0.5]\n"
                           f"calibration: {{source: lee-calibration}}\nevaluation: {{perplexity: {datasets}}}\n",
                           check_files=False)
        runs = plan_sweep(spec)
        # the leaderboard pairs a method with its dense baseline by evaluation key: one identity
        assert len({r.evaluation_key for r in runs}) == 1
        return [r.key for r in runs] + [runs[0].evaluation_key]

    assert keys("[wikitext2, c4, {path: /d/x.txt}]") == keys("[{path: /d/x.txt}, c4, wikitext2]")
    assert keys("[wikitext2, c4]") != keys("[wikitext2]")
