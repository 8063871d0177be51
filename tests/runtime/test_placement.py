"""Whether a run's Ray resources fit on some node: one run is placed on one node, so a cluster's
totals are not enough (two 1-GPU machines cannot hold a 2-GPU run)."""

from __future__ import annotations

import os

import yaml

from twossp.plan import plan_sweep
from twossp.runtime.executors import LocalExecutor, this_machine, unplaceable, unsatisfiable
from twossp.spec import parse_sweep

GiB = 1024 ** 3


def test_a_run_is_placed_on_one_node_not_on_the_cluster_total() -> None:
    nodes = [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}]
    assert unsatisfiable({"CPU": 1, "GPU": 1}, nodes) is None
    assert unsatisfiable({"CPU": 1, "GPU": 0.5}, nodes) is None  # fractional GPUs share a device
    reason = unsatisfiable({"CPU": 1, "GPU": 2}, nodes)
    assert reason is not None and "needs 1 CPU, 2 GPU on one node" in reason and "closest has 8 CPU, 1 GPU" in reason


def test_custom_resources_memory_and_an_empty_cluster() -> None:
    nodes = [{"CPU": 4, "memory": 16 * GiB}, {"CPU": 2, "memory": 64 * GiB, "a100": 1}]
    assert unsatisfiable({"CPU": 2, "memory": 48 * GiB, "a100": 1}, nodes) is None
    assert "1 h100" in unsatisfiable({"CPU": 1, "h100": 1}, nodes)
    assert unsatisfiable({"CPU": 4, "memory": 48 * GiB}, nodes) is not None  # each half fits a different node
    assert "no alive node" in unsatisfiable({"CPU": 1}, [])


def test_unplaceable_names_each_run_that_cannot_be_placed(tiny_checkpoint) -> None:
    data = tiny_checkpoint.sweep("placement", models=[
        {"path": str(tiny_checkpoint.model_dir), "cpus": 1},
        {"path": str(tiny_checkpoint.model_dir.parent), "cpus": 1, "memory": "100000GiB"},
    ])
    runs = plan_sweep(parse_sweep(yaml.safe_dump(data), "placement.yaml", check_files=False))
    machine = this_machine()
    assert machine["CPU"] == os.cpu_count() and machine["memory"] > 0
    reasons = unplaceable(runs, [machine])
    assert set(reasons) == {r.key for r in runs if r.model.memory}
    assert all("memory" in reason for reason in reasons.values())
    gpu_runs = [r.model_copy(update={"model": r.model.model_copy(update={"gpus": 1})}) for r in runs]
    assert set(unplaceable(gpu_runs, [machine])) == {r.key for r in runs}  # this_machine() lists no GPU
    assert set(unplaceable(gpu_runs, [machine], ignore=("GPU",))) == set(reasons)
    assert LocalExecutor().unplaceable(runs) == {}  # in-process: the resources do not apply
