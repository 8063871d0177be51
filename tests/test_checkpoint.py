"""Saving and reloading pruned models: identical logits, never a re-initialised weight."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from sqlalchemy import select
from transformers import AutoModelForCausalLM

from tests.support.models import hf_format, logits
from twossp import cli
from twossp.checkpoint import load_pruned, save_pruned
from twossp.serve.hf import RECORD_KEY
from twossp.errors import CheckpointError
from twossp.db.models import Run
from twossp.db.database import Database
from twossp.families import adapter_for
from twossp.contracts import LayerMask
from twossp.prune.masks import apply_masks
from twossp.prune.two_stage import prune_2ssp
from twossp.prune.width import prune_width, top_neurons


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "phi3"])
def test_pruned_model_round_trips_to_identical_logits_and_weights(tiny, cpu, tmp_path, family) -> None:
    model = tiny.model(family, num_layers=6)
    outcome = prune_2ssp(model, adapter_for(model.config), tiny.tokens(3, 24), 0.5, cpu)
    assert outcome.removed_attention  # the interesting case: attention really gone
    save_format = hf_format(family)
    saved = save_pruned(model, None, tmp_path, save_format)
    assert not saved.stock if save_format == "safetensors" else saved.layout == "stock"
    record = json.loads((tmp_path / "config.json").read_text())[RECORD_KEY]
    assert record["blocks"] == list(range(6))

    reloaded = load_pruned(tmp_path)
    tokens = tiny.tokens(2, 20, seed=7)
    torch.testing.assert_close(logits(reloaded, tokens), logits(model, tokens), rtol=0, atol=0)
    original, again = model.state_dict(), reloaded.state_dict()
    assert original.keys() == again.keys()
    for name in original:  # every weight came from the checkpoint, none re-initialised
        assert torch.equal(original[name], again[name]), name
    cached = reloaded.generate(tokens[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = reloaded.generate(tokens[:1, :5], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_width_only_pruning_exports_a_stock_checkpoint(tiny, cpu, tmp_path) -> None:
    model = tiny.model("qwen2", num_layers=4)
    adapter = adapter_for(model.config)
    gen = torch.Generator().manual_seed(3)
    prune_width(model, adapter, [top_neurons(torch.rand(128, generator=gen), 80) for _ in range(4)])
    saved = save_pruned(model, None, tmp_path)
    assert saved.stock and "AutoModelForCausalLM.from_pretrained" in saved.note
    assert RECORD_KEY not in json.loads((tmp_path / "config.json").read_text())

    stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # plain transformers, no twossp
    assert stock.config.intermediate_size == 80
    tokens = tiny.tokens(2, 16, seed=5)
    torch.testing.assert_close(logits(stock, tokens), logits(model, tokens), rtol=0, atol=0)


def test_a_checkpoint_missing_a_kept_weight_is_refused(tiny, cpu, tmp_path) -> None:
    model = tiny.model("llama", num_layers=6)
    prune_2ssp(model, adapter_for(model.config), tiny.tokens(3, 24), 0.5, cpu)
    save_pruned(model, None, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    kept = next(k for k in weights if ".mlp.down_proj." in k)
    del weights[kept]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="re-initialised") as info:
        load_pruned(tmp_path)
    assert kept in str(info.value)


def test_export_rebuilds_a_run_from_the_database_alone(tiny_checkpoint, tmp_path) -> None:
    sweep = tiny_checkpoint.write_sweep(tmp_path / "tiny.yaml", name="export")
    db_url = f"sqlite:///{tmp_path / 'results.db'}"
    runner = CliRunner()
    result = runner.invoke(cli.main, ["sweep", "run", str(sweep), "--db", db_url, "--executor", "local"])
    assert result.exit_code == 0, result.output
    with Database(db_url) as db, db.session() as session:
        run = session.scalars(select(Run).where(Run.target_sparsity == 0.5)).one()
        key, masks = run.key, [LayerMask(m.layer, m.attention_kept, m.ffn_width, m.ffn_mask) for m in run.layer_masks]
        dense_key = session.scalars(select(Run.key).where(Run.method == "dense")).one()

    out = tmp_path / "pruned"
    result = runner.invoke(cli.main, ["export", key[:8], str(out), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "trust_remote_code=True" in result.output and "Nemotron-NAS" in result.output

    expected = AutoModelForCausalLM.from_pretrained(tiny_checkpoint.model_dir).eval()
    apply_masks(expected, adapter_for(expected.config), masks)
    reloaded = load_pruned(out)
    assert (out / "tokenizer.json").exists()
    tokens = torch.randint(0, 200, (1, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(reloaded, tokens), logits(expected, tokens), rtol=0, atol=0)

    dense = runner.invoke(cli.main, ["export", dense_key, str(tmp_path / "dense"), "--db", db_url])
    assert dense.exit_code == 0 and "plain Hugging Face checkpoint" in dense.output
    missing = runner.invoke(cli.main, ["export", "ffffffff", str(tmp_path / "none"), "--db", db_url])
    assert missing.exit_code == 2 and "no run with a key starting 'ffffffff'" in missing.output


def test_export_refuses_a_slicegpt_run_and_says_how_to_keep_it(tiny_checkpoint, tmp_path) -> None:
    sweep = tiny_checkpoint.write_sweep(tmp_path / "tiny.yaml", name="export-slicegpt", methods=["slicegpt"],
                                        sparsities=[0.25])
    db_url = f"sqlite:///{tmp_path / 'results.db'}"
    runner = CliRunner()
    result = runner.invoke(cli.main, ["sweep", "run", str(sweep), "--db", db_url, "--executor", "local"])
    assert result.exit_code == 0, result.output
    with Database(db_url) as db, db.session() as session:
        key = session.scalars(select(Run.key).where(Run.method == "slicegpt")).one()
    refused = runner.invoke(cli.main, ["export", key, str(tmp_path / "out"), "--db", db_url])
    assert refused.exit_code == 2 and "save_to: DIR" in refused.output
    assert not (tmp_path / "out").exists()
