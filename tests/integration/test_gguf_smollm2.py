"""The real SmolLM2-135M, pruned by 2SSP at 0.5 in a sweep that saves it as an f16 GGUF: in
llama.cpp its perplexity on the run's own windows is within 0.5% of the one twossp stored, a q8_0
export of the same run stays close, and llama.cpp tokenises real text (a WikiText-2 passage when
the reference data is there, the Lee corpus otherwise) exactly as the Hugging Face tokenizer does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, selectinload

from twossp.data.tokens import token_stream
from twossp.db.models import Run
from twossp.evaluate.perplexity import make_windows
from twossp.runtime.loading import load_model
from twossp.spec import ModelSpec

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'twossp[gguf]')")
from twossp.serve.engine import Engine  # noqa: E402

TWOSSP = str(Path(sys.executable).with_name("twossp"))
WIKITEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
SWEEP = """
name: smollm2-gguf
models: [{builtin: smollm2-135m-instruct}]
methods: [2ssp]
sparsities: [0.5]
calibration: {source: lee-calibration, samples: [4], seq_len: 64}
evaluation: {perplexity: [lee-evaluation], seq_len: 128, max_windows: 6}
save_to: {path: saved, format: gguf, type: f16}
runtime: {threads: 2}
"""


def _twossp(*args: str, cwd: Path) -> str:
    done = subprocess.run([TWOSSP, *args], cwd=cwd, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_smollm2_2ssp_gguf_in_llama_cpp_scores_as_twossp_did(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    db = f"sqlite:///{tmp_path / 'results.db'}"
    _twossp("sweep", "run", "sweep.yaml", "--db", db, "--executor", "local", cwd=tmp_path)
    engine = create_engine(db)
    with Session(engine) as s:
        run = s.scalars(select(Run).where(Run.method == "2ssp").options(selectinload(Run.scores))).one()
    engine.dispose()
    stored = next(x.value for x in run.scores if x.metric == "perplexity")
    saved = tmp_path / "saved" / run.key / run.details["saved_gguf"]

    _, tokenizer = load_model(ModelSpec(builtin="smollm2-135m-instruct"), torch.float32, torch.device("cpu"))
    windows = make_windows(token_stream(tokenizer, "lee-evaluation"), 128, 6).numpy()
    with Engine(saved, 128) as llama:
        f16 = llama.perplexity(windows).perplexity
        passage = (WIKITEXT.read_text(encoding="utf-8").replace("\r", "")[:20000] if WIKITEXT.is_file()
                   else tokenizer.decode(token_stream(tokenizer, "lee-evaluation")[:4000]))
        assert llama.tokenize(passage) == tokenizer(passage, add_special_tokens=False)["input_ids"]
    assert abs(f16 / stored - 1) < 0.005, (f16, stored)

    _twossp("export", run.key, "q8", "--db", db, "--format", "gguf", "--type", "q8_0", cwd=tmp_path)
    (q8_file,) = (tmp_path / "q8").glob("*.q8_0.gguf")
    with Engine(q8_file, 128) as llama:
        q8 = llama.perplexity(windows).perplexity
    print(f"SmolLM2 2SSP 0.5 perplexity: twossp {stored:.3f}, llama.cpp f16 {f16:.3f}, q8_0 {q8:.3f}")
    assert abs(q8 / stored - 1) < 0.05, (q8, stored)
    assert q8_file.stat().st_size < 0.6 * saved.stat().st_size
