"""``sweep plan``'s memory column: the placement and peak per device each run takes, from a config.json
alone (sweeps/llama70b.yaml: a Llama-3-70B-shaped model with no weights), on one GPU or on four
(``--gpus``), and exit code 2 with the settings that would fit for a run that fits nowhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_commands import _NO_TORCH
from tests.support.consoles import fixed_terminal, invoke

REPO = Path(__file__).resolve().parents[2]
LLAMA70B = REPO / "sweeps" / "llama70b.yaml"
GiB = 1 << 30


@pytest.fixture(autouse=True)
def planning_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine of 64 GiB and 16 CPUs, whatever this one is: the plan reads its memory."""
    monkeypatch.setattr("twossp.runtime.executors.this_machine", lambda: {"CPU": 16.0, "memory": float(64 * GiB)})


def memory_cells(output: str) -> dict[str, str]:
    """Method and sparsity -> the memory cell of the runs table."""
    cells = {}
    for line in output.splitlines():
        cols = [c.strip() for c in line.split("│")]
        if len(cols) == 13 and cols[2] == "llama3-70b":
            cells[f"{cols[3]} {cols[4]}"] = cols[10]
    return cells


def test_llama70b_streams_on_one_80gib_gpu(tmp_path: Path) -> None:
    with fixed_terminal(250):
        result = invoke("sweep", "plan", LLAMA70B, "--db", tmp_path / "none.db")
    assert result.exit_code == 0, result.output
    assert memory_cells(result.output) == {"2ssp 0.25": "stream 1x 23.6 GiB", "2ssp 0.5": "stream 1x 23.6 GiB",
                                           "shortgpt 0.25": "stream 1x 21.6 GiB", "shortgpt 0.5": "stream 1x 21.6 GiB"}


def test_llama70b_splits_over_four_gpus(tmp_path: Path) -> None:
    with fixed_terminal(250):
        result = invoke("sweep", "plan", LLAMA70B, "--gpus", "4", "--db", tmp_path / "none.db")
    assert result.exit_code == 0, result.output
    assert memory_cells(result.output) == {"2ssp 0.25": "split 4x 52.3 GiB", "2ssp 0.5": "split 4x 52.3 GiB",
                                           "shortgpt 0.25": "split 4x 50.3 GiB", "shortgpt 0.5": "split 4x 50.3 GiB"}


def test_the_sweep_file_states_its_commands() -> None:
    head = LLAMA70B.read_text().splitlines()[:2]
    assert head[0].startswith("# twossp sweep plan sweeps/llama70b.yaml ")
    assert head[1].startswith("# twossp sweep plan sweeps/llama70b.yaml --gpus 4 ")


def test_a_run_that_fits_no_placement_exits_2_and_says_what_would_fit(tmp_path: Path) -> None:
    text = LLAMA70B.read_text().replace("path: models/llama3-70b", f"path: {LLAMA70B.parent / 'models/llama3-70b'}")
    sweep = tmp_path / "small-gpu.yaml"
    sweep.write_text(text.replace("gpu_memory: 80GiB", "gpu_memory: 16GiB").replace("dtype: bfloat16",
                                                                                     "dtype: float32"))
    with fixed_terminal(250):
        result = invoke("sweep", "plan", sweep, "--db", tmp_path / "none.db")
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert ("cannot succeed llama3-70b shortgpt s=0.5 n=32 seed=0: does not fit even placed `stream`: needs 33.7 GiB "
            "on one GPU (weights 14.2 GiB, walk 4.0 GiB, candidates 3.7 GiB, evaluation 19.0 GiB, overhead 0.5 GiB), "
            "more than the 16.0 GiB there; it fits with `runtime.dtype: bfloat16` and `runtime.batch: 1` "
            "(stream 1x 12.4 GiB)") in flat
    assert ("cannot succeed llama3-70b 2ssp s=0.25 n=32 seed=0: does not fit even placed `stream`: needs 37.7 GiB "
            "on one GPU (weights 14.2 GiB, walk 4.0 GiB, candidates 19.0 GiB, evaluation 19.0 GiB, overhead 0.5 GiB; "
            "its states in host memory), more than the 16.0 GiB there;") in flat
    assert "4 run problem(s) found; nothing was run or stored" in flat
    assert not (tmp_path / "none.db").exists()


def test_without_gpu_memory_the_estimate_is_singles_and_says_so(tmp_path: Path) -> None:
    text = LLAMA70B.read_text().replace("path: models/llama3-70b", f"path: {LLAMA70B.parent / 'models/llama3-70b'}")
    sweep = tmp_path / "unknown.yaml"
    sweep.write_text(text.replace("    gpu_memory: 80GiB\n", ""))
    with fixed_terminal(250):
        result = invoke("sweep", "plan", sweep, "--db", tmp_path / "none.db")
    assert result.exit_code == 0, result.output
    assert set(memory_cells(result.output).values()) == {"single 1x 153.4 GiB?", "single 1x 145.9 GiB?"}
    assert "give the model `gpu_memory:`" in " ".join(result.output.split())


def test_plan_of_llama70b_does_not_import_torch(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, "sweep", "plan", str(LLAMA70B), "--gpus", "4",
                             "--db", str(tmp_path / "none.db")], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0 and "exit" not in result.stdout, result.stdout + result.stderr
