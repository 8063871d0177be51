"""The paper's grid as files: ``sweeps/paper.yaml`` validates and plans from the four models'
configs alone (no weights, no hub: the configs sit in a local hub cache), and
``sweeps/smollm2-paper.yaml`` validates and plans here (its task data is checked where it exists)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twossp.plan import plan_sweep
from twossp.spec import load_sweep

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
TWOSSP = str(Path(sys.executable).with_name("twossp"))

#: The shapes of the paper's four models, as their config.json files on the hub give them.
CONFIGS = {
    "meta-llama/Llama-2-7b-hf": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096,
                                     intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                                     num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "mistralai/Mistral-7B-v0.3": dict(architectures=["MistralForCausalLM"], model_type="mistral", hidden_size=4096,
                                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, vocab_size=32768, max_position_embeddings=32768),
    "Qwen/Qwen2.5-7B": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=3584,
                            intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                            num_key_value_heads=4, vocab_size=152064, max_position_embeddings=131072),
    "microsoft/Phi-3-medium-128k-instruct": dict(architectures=["Phi3ForCausalLM"], model_type="phi3",
                                                 hidden_size=5120, intermediate_size=17920, num_hidden_layers=40,
                                                 num_attention_heads=40, num_key_value_heads=10, vocab_size=32064,
                                                 max_position_embeddings=131072),
}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root: Path) -> Path:
    for repo, config in CONFIGS.items():
        folder = root / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(COMMIT)
        (folder / "snapshots" / COMMIT).mkdir(parents=True)
        (folder / "snapshots" / COMMIT / "config.json").write_text(json.dumps(config))
    return root


def test_the_paper_grid_plans_from_configs_alone(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_CACHE": str(_hub_cache(tmp_path / "hub")), "HF_HUB_OFFLINE": "1",
           "COLUMNS": "250", "TWOSSP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([TWOSSP, "sweep", "plan", str(SWEEPS / "paper.yaml"), "--db",
                           f"sqlite:///{tmp_path / 'none.db'}"], capture_output=True, text=True, env=env, timeout=300)
    out = done.stdout
    assert "sweep paper: 76 runs" in out, out + done.stderr
    runs_table = out.split("shared steps, each computed once")[0]  # the steps' table follows the runs'
    rows = [line for line in runs_table.splitlines() if line.startswith("│") and COMMIT not in line]
    planned = [r for r in rows if any(m in r for m in ("2ssp", "shortgpt", "window", "blockpruner", "evopress",
                                                       "slicegpt"))]
    assert len(planned) == 72 and not any(" ? " in r or "cannot succeed" in r for r in planned), out
    assert "12 shared steps" in out  # per model: stage 1, block states, the BlockPruner path
    # offline, the six tasks' hub datasets are flagged; the 4-CPU runs do not fit this machine's Ray
    assert "read the harness's datasets from the Hugging Face hub, which cannot be reached" in done.stderr
    assert done.returncode in (0, 2), done.stderr
    if done.returncode == 2:
        assert "can never be placed on this machine" in out + done.stderr


def test_the_smollm2_paper_grid_plans_here() -> None:
    spec = load_sweep(SWEEPS / "smollm2-paper.yaml", check_files=False)
    runs = plan_sweep(spec)
    assert len(runs) == 19
    assert {t.name for t in spec.evaluation.tasks} == {"arc_easy", "piqa", "winogrande", "mmlu"}
    assert spec.evaluation.task_data == str(SWEEPS / "task-data")
