"""GGUF from a real sweep: ``save_to: {format: gguf}`` and ``twossp export --format gguf`` write a
file whose perplexity in llama.cpp, on the windows twossp evaluated, is the one the run stored; its
model card and metadata say which run it is. Refusals come before any work, with their reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from twossp import cli
from twossp.db.models import Run
from twossp.db.database import Database
from twossp.spec import parse_sweep

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'twossp[gguf]'; it builds "
                                        "llama.cpp from source): the GGUF engine tests need it")
from twossp.serve.engine import Engine


def _windows(spec, model_dir: Path):
    from transformers import AutoTokenizer

    from twossp.data.tokens import token_stream
    from twossp.evaluate.perplexity import make_windows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stream = token_stream(tokenizer, spec.evaluation.perplexity[0])
    return make_windows(stream, spec.eval_seq_len, spec.evaluation.max_windows).numpy()


def _runs(db_url: str) -> dict[str, Run]:
    with Database(db_url) as db, db.session() as session:
        rows = session.scalars(select(Run)).all()
        for r in rows:
            _ = r.scores, r.layer_masks
        return {r.method: r for r in rows}


def _gguf_field(path: Path, key: str):
    import gguf

    field = gguf.GGUFReader(path).fields[key]
    return bytes(field.parts[field.data[0]]).decode()


@pytest.fixture(scope="module")
def swept(tiny_checkpoint, tmp_path_factory):
    """dense, 2SSP and ShortGPT at 0.5, every pruned run saved as an f32 GGUF by the sweep."""
    root = tmp_path_factory.mktemp("gguf-sweep")
    sweep = tiny_checkpoint.write_sweep(root / "tiny.yaml", "gguf-save", methods=["dense", "2ssp", "shortgpt"],
                                        sparsities=[0.5], save_to={"path": "saved", "format": "gguf", "type": "f32"})
    db_url = f"sqlite:///{root / 'results.db'}"
    result = CliRunner().invoke(cli.main, ["sweep", "run", str(sweep), "--db", db_url, "--executor", "local"])
    assert result.exit_code == 0, result.output
    spec = parse_sweep(sweep.read_text(), str(sweep), base_dir=root)
    return root, db_url, spec


def test_a_sweep_saves_gguf_files_that_llama_cpp_scores_as_twossp_did(swept, tiny_checkpoint) -> None:
    root, db_url, spec = swept
    runs = _runs(db_url)
    windows = _windows(spec, tiny_checkpoint.model_dir)
    for method in ("2ssp", "shortgpt"):
        run = runs[method]
        folder = root / "saved" / run.key
        assert run.details["saved_to"] == str(folder)
        files = sorted(p.name for p in folder.iterdir())
        assert files == sorted([run.details["saved_gguf"], "README.md"]) and run.details["saved_gguf"].endswith(".f32.gguf")
        with Engine(folder / run.details["saved_gguf"], spec.eval_seq_len, f32_cache=True) as engine:
            measured = engine.perplexity(windows)
        stored = next(s.value for s in run.scores if s.metric == "perplexity")
        assert math.isclose(measured.perplexity, stored, rel_tol=1e-4), (method, measured.perplexity, stored)
        card = (folder / "README.md").read_text()
        assert run.key in card and f"{run.achieved_sparsity:.4f}" in card and f"pruned with {method}" in card
        assert _gguf_field(folder / run.details["saved_gguf"], "twossp.run_key") == run.key
    assert not (root / "saved" / runs["dense"].key).exists()  # nothing pruned, nothing saved


def test_export_writes_a_quantised_gguf_and_its_card(swept, tiny_checkpoint, tmp_path) -> None:
    root, db_url, spec = swept
    run = _runs(db_url)["2ssp"]
    out = tmp_path / "export"
    result = CliRunner().invoke(cli.main, ["export", run.key[:10], str(out), "--db", db_url, "--format", "gguf",
                                           "--type", "q8_0"])
    assert result.exit_code == 0, result.output
    assert "llama.cpp architecture deci" in result.output and "README.md" in result.output
    (path,) = out.glob("*.gguf")
    assert path.name.endswith("-2ssp-0.5.q8_0.gguf")
    card = (out / "README.md").read_text()
    removed = [m.layer for m in run.layer_masks if not m.attention_kept]
    assert f"| attention removed | {', '.join(map(str, removed))} ({len(removed)} of 4) |" in card
    assert "| sparsity target | 0.5 |" in card and "Q8_0" in card and run.key in card
    for score in run.scores:
        assert f"| {score.dataset} | {score.metric} | {score.value:.6g} |" in card
    assert json.loads(_gguf_field(path, "twossp.method"))["name"] == "2ssp"
    with Engine(path, spec.eval_seq_len) as engine:
        quantised = engine.perplexity(_windows(spec, tiny_checkpoint.model_dir)).perplexity
    stored = next(s.value for s in run.scores if s.metric == "perplexity")
    assert math.isclose(quantised, stored, rel_tol=0.05), (quantised, stored)  # q8_0 costs little


def test_export_flags_that_do_not_fit_are_refused(swept, tmp_path) -> None:
    root, db_url, _ = swept
    key = _runs(db_url)["2ssp"].key
    runner = CliRunner()
    typed = runner.invoke(cli.main, ["export", key, str(tmp_path / "a"), "--db", db_url, "--type", "q8_0"])
    assert typed.exit_code == 2 and "--type is for a GGUF file" in typed.output
    unknown = runner.invoke(cli.main, ["export", key, str(tmp_path / "b"), "--db", db_url, "--format", "gguf",
                                       "--type", "iq2_xs"])
    assert unknown.exit_code == 2 and "q8_0" in unknown.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_sweep_that_asks_for_gguf_of_slicegpt_is_refused_before_any_work(tiny_checkpoint, tmp_path) -> None:
    sweep = tiny_checkpoint.write_sweep(tmp_path / "tiny.yaml", "gguf-slicegpt", methods=["2ssp", "slicegpt"],
                                        sparsities=[0.25], save_to={"path": "saved", "format": "gguf"})
    db_url = f"sqlite:///{tmp_path / 'results.db'}"
    result = CliRunner().invoke(cli.main, ["sweep", "run", str(sweep), "--db", db_url, "--executor", "local"])
    assert result.exit_code == 2, result.output
    assert "slicegpt" in result.output and "shortcut matrix" in result.output and "format: safetensors" in result.output
    assert not (tmp_path / "saved").exists() and not (tmp_path / "results.db").exists()


def test_a_tensor_type_without_gguf_is_a_sweep_file_error(tiny_checkpoint, tmp_path) -> None:
    sweep = tiny_checkpoint.write_sweep(tmp_path / "tiny.yaml", "typed", save_to={"path": "saved", "type": "q8_0"})
    result = CliRunner().invoke(cli.main, ["sweep", "validate", str(sweep)])
    assert result.exit_code == 2
    assert "tiny.yaml" in result.output and "`type` is the tensor type of a GGUF file" in result.output
    bad = tiny_checkpoint.write_sweep(tmp_path / "bad.yaml", "typed", save_to={"path": "saved", "format": "gguf",
                                                                               "type": "q3_k"})
    result = CliRunner().invoke(cli.main, ["sweep", "validate", str(bad)])
    assert result.exit_code == 2 and "save_to.type" in result.output and "q8_0" in result.output


def test_export_evaluate_stores_what_llama_cpp_measured_beside_the_run(swept, tmp_path) -> None:
    from twossp.db.models import Export

    root, db_url, _ = swept
    run = _runs(db_url)["2ssp"]
    out = tmp_path / "evaluated"
    result = CliRunner().invoke(cli.main, ["export", run.key, str(out), "--db", db_url, "--format", "gguf",
                                           "--type", "f32", "--evaluate"])
    assert result.exit_code == 0, result.output
    assert "llama.cpp perplexity (eval.txt)" in result.output and "generation tokens per second" in result.output
    plain = CliRunner().invoke(cli.main, ["export", run.key, str(tmp_path / "hf"), "--db", db_url])
    assert plain.exit_code == 0, plain.output

    with Database(db_url) as db, db.session() as session:
        exports = session.scalars(select(Export).where(Export.run_id == run.id).order_by(Export.id)).all()
        rows = [(e.format, e.tensor_type, e.architecture, e.path, e.size_bytes, e.sha256, e.engine,
                 {(s.dataset, s.metric): s.value for s in e.scores}) for e in exports]
    gguf_row, hf_row = rows[-2:]
    (path,) = out.glob("*.gguf")
    import hashlib

    assert gguf_row[:5] == ("gguf", "f32", "deci", str(path), path.stat().st_size)
    assert gguf_row[5] == hashlib.sha256(path.read_bytes()).hexdigest() and gguf_row[6].startswith("llama-cpp-python")
    measured = gguf_row[7]
    stored = next(s.value for s in run.scores if s.metric == "perplexity")
    # llama.cpp's own f16 KV cache: within 1% of twossp's fp32 figure on the same windows
    assert math.isclose(measured[("eval.txt", "perplexity")], stored, rel_tol=1e-2), (measured, stored)
    assert measured[("speed", "prompt_tokens_per_second")] > 0 and measured[("speed", "generation_tokens_per_second")] > 0
    assert hf_row[:2] == ("safetensors", None) and hf_row[3] == str(tmp_path / "hf") and not hf_row[7]
    card = (out / "README.md").read_text()
    assert "## Measured in llama.cpp" in card and "perplexity (eval.txt)" in card

    shown = CliRunner().invoke(cli.main, ["show", run.key, "--db", db_url, "--format", "json"])
    assert shown.exit_code == 0, shown.output
    listed = json.loads(shown.output)["frames"]["exports"]
    assert [(e["format"], e["type"], e["path"]) for e in listed][-2:] == [("gguf", "f32", str(path)),
                                                                          ("safetensors", None, str(tmp_path / "hf"))]
    assert listed[-2]["perplexity"] == measured[("eval.txt", "perplexity")]

    no_gguf = CliRunner().invoke(cli.main, ["export", run.key, str(tmp_path / "x"), "--db", db_url, "--evaluate"])
    assert no_gguf.exit_code == 2 and "--evaluate is for a GGUF file" in no_gguf.output
