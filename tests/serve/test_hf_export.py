"""Hugging Face exports that load anywhere: without twossp (Nemotron-NAS with our own modelling
files, or the stock architecture), exactly, and never with a newly initialised weight."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from click.testing import CliRunner
from sqlalchemy import select
from transformers import AutoModelForCausalLM

from tests.support.models import logits
from twossp import cli
from twossp.db.database import Database
from twossp.db.models import Export, Run
from twossp.checkpoint import load_pruned, save_pruned
from twossp.errors import CheckpointError, ExportUnsupported
from twossp.families import adapter_for
from twossp.prune.two_stage import prune_2ssp
from twossp.runtime.export import export_refusal
from twossp.serve.check import check_folder
from twossp.methods import ShortGPTMethod, SliceGPTMethod, TwoSSPMethod

NO_TWOSSP = Path(__file__).parents[1] / "support" / "no_twossp.py"

#: SmolLM2's shape in small: tied embeddings, 9 query heads sharing 3 key/value heads
SMOLLM2_SHAPED = dict(hidden_size=144, num_attention_heads=9, num_key_value_heads=3, intermediate_size=384,
                      tie_word_embeddings=True)


def pruned(tiny, family: str, **overrides) -> torch.nn.Module:
    """2SSP at 0.5, block 0's attention removed, then one block removed whole (what ShortGPT does):
    every rule of the export in one model (the FFN width is no multiple of 256)."""
    model = tiny.model(family, num_layers=6, **overrides).eval()
    adapter = adapter_for(model.config)
    prune_2ssp(model, adapter, tiny.tokens(3, 24), 0.5, torch.device("cpu"))
    if adapter.is_attention_present(adapter.layers(model)[0]):
        adapter.remove_attention(model, 0)
    adapter.remove_blocks(model, [4])
    adapter.remove_ffn(model, 2)
    return model


def without_twossp(folder: Path, model: torch.nn.Module, tokens: torch.Tensor, tmp_path: Path) -> dict:
    inputs = tmp_path / "inputs.pt"
    torch.save({"tokens": tokens, "logits": logits(model, tokens)}, inputs)
    done = subprocess.run([sys.executable, str(NO_TWOSSP), str(folder), str(inputs)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family, overrides", [("llama", {}), ("mistral", {"sliding_window": None}),
                                               ("llama", SMOLLM2_SHAPED)], ids=["llama", "mistral", "smollm2"])
def test_a_pruned_model_loads_without_twossp_with_identical_logits(tiny, tmp_path, family, overrides) -> None:
    model = pruned(tiny, family, **overrides)
    saved = save_pruned(model, None, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved.layout == "nas" and config["architectures"] == ["DeciLMForCausalLM"]
    assert config["model_type"] == "nemotron-nas" and config["block_configs"][0]["attention"]["no_op"] is False
    assert any(b["attention"]["no_op"] for b in config["block_configs"])
    assert {b["ffn"]["intermediate_size"] % 256 for b in config["block_configs"]} == {0}

    tokens = tiny.tokens(2, 20, seed=7, vocab=model.config.vocab_size)
    seen = without_twossp(tmp_path / "out", model, tokens, tmp_path)
    assert seen["twossp_modules"] == []
    assert seen["class"] == "TwosspNasForCausalLM"
    assert seen["max_logit_diff"] <= 1e-5
    assert seen["cached_equals_uncached"]
    assert seen["plain"].startswith("ValueError") and "trust_remote_code" in seen["plain"]
    report = check_folder(tmp_path / "out")  # vLLM's and SGLang's loading rules, read offline
    assert report.ok, report.render()
    assert seen["warnings"] == [] and "MISSING" not in seen["printed"] and "newly initialized" not in seen["printed"]

    back = load_pruned(tmp_path / "out")  # twossp reads it back into the pruned model itself
    assert back.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "phi3"])
def test_hf_stock_loads_as_the_stock_class_with_no_warning(tiny, tmp_path, family, caplog, capfd) -> None:
    model = pruned(tiny, family)
    saved = save_pruned(model, None, tmp_path, "hf-stock")
    assert saved.layout == "stock" and saved.stock
    assert check_folder(tmp_path).ok
    capfd.readouterr()
    with caplog.at_level(logging.WARNING), _no_warnings():
        stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(stock).__name__ == type(model).__name__
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    printed = capfd.readouterr()
    assert "MISSING" not in printed.out + printed.err and "newly initialized" not in printed.out + printed.err
    tokens = tiny.tokens(2, 20, seed=7)
    torch.testing.assert_close(logits(stock, tokens), logits(model, tokens), rtol=0, atol=1e-5)
    assert torch.equal(logits(load_pruned(tmp_path), tokens), logits(model, tokens))


class _no_warnings:
    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.seen = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)
        assert [str(w.message) for w in self.seen] == []


def _methods(tiny, family: str) -> dict[str, torch.nn.Module]:
    """One pruned model per kind of removal twossp makes."""
    from twossp.prune.context import PruneContext, prune

    dense = tiny.model(family, num_layers=5).eval()
    adapter = adapter_for(dense.config)
    models = {"2ssp": pruned(tiny, family)}
    shortgpt = copy.deepcopy(dense)
    adapter.remove_blocks(shortgpt, [1, 3])
    models["shortgpt"] = shortgpt
    blockpruner = copy.deepcopy(dense)
    adapter.remove_attention(blockpruner, 1)
    adapter.remove_ffn(blockpruner, 3)
    adapter.remove_attention(blockpruner, 4)
    adapter.remove_ffn(blockpruner, 4)
    models["blockpruner"] = blockpruner
    if not family.startswith("gemma"):  # SliceGPT's rotation is exact for pre-norm blocks only
        sliced = copy.deepcopy(dense)
        prune(PruneContext(model=sliced, adapter=adapter, calibration=tiny.tokens(4, 32), sparsity=0.25,
                           method=SliceGPTMethod(), device=torch.device("cpu")))
        models["slicegpt"] = sliced
    return models


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_plain_transformers_never_loads_an_export_with_new_weights(tiny, tmp_path, family) -> None:
    """The random-weights trap, over every format and kind of removal: loading an export with plain
    transformers (no trust_remote_code) either fails loudly or gives exactly the pruned model."""
    tokens = tiny.tokens(2, 16, seed=3)
    tried = 0
    for method, model in _methods(tiny, family).items():
        for save_format in ("safetensors", "hf-stock"):
            folder = tmp_path / f"{method}-{save_format}"
            try:
                save_pruned(model, None, folder, save_format)
            except ExportUnsupported as exc:
                assert "use" in str(exc)  # a refusal names what to use instead
                continue
            tried += 1
            assert check_folder(folder).ok or method == "slicegpt", check_folder(folder).render()
            try:
                plain, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
            except (ValueError, RuntimeError, OSError) as exc:  # refused: fine, it is loud
                assert str(exc)
                continue
            assert not info["missing_keys"] and not info["mismatched_keys"], (method, save_format, info)
            torch.testing.assert_close(logits(plain.eval(), tokens), logits(model, tokens), rtol=0, atol=1e-5,
                                       msg=f"{method} {save_format}")
    assert tried >= 4


@pytest.mark.parametrize("family, refused", [("llama", False), ("gemma2", True), ("qwen3", True), ("phi3", True),
                                             ("qwen2", True)])
def test_families_the_schema_cannot_express_are_refused_with_what_to_use(tiny, tmp_path, family, refused) -> None:
    model = pruned(tiny, family)
    config = model.config.to_dict()
    why = export_refusal(tiny.config(family).to_dict(), TwoSSPMethod(), "safetensors")
    assert bool(why) == refused
    if refused:
        assert "hf-stock" in why
        with pytest.raises(ExportUnsupported, match="hf-stock"):
            save_pruned(model, None, tmp_path)
        assert not (tmp_path / "config.json").exists()
    assert config  # the model was pruned either way
    assert export_refusal(tiny.config(family).to_dict(), ShortGPTMethod(), "safetensors") is None  # plain
    assert export_refusal(tiny.config(family).to_dict(), SliceGPTMethod(), "hf-stock")
    assert export_refusal(tiny.config(family).to_dict(), SliceGPTMethod(), "safetensors") is None


def test_a_sliding_window_mistral_is_refused_for_the_portable_schema(tiny) -> None:
    config = tiny.config("mistral", sliding_window=16).to_dict()
    assert "sliding window" in export_refusal(config, TwoSSPMethod(), "safetensors")
    assert export_refusal(config, TwoSSPMethod(), "hf-stock") is None


def test_load_pruned_refuses_a_zero_part_that_is_no_longer_zero(tiny, tmp_path) -> None:
    model = pruned(tiny, "llama")
    save_pruned(model, None, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.0.self_attn.o_proj.weight"][0, 0] = 1.0  # the zero attention written for block 0
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="all zero"):
        load_pruned(tmp_path)


def test_load_pruned_refuses_padding_that_is_no_longer_zero(tiny, tmp_path) -> None:
    model = pruned(tiny, "llama")
    save_pruned(model, None, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][:, -1] = 0.5  # a padding neuron
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="zero padding"):
        load_pruned(tmp_path)


def test_an_older_twossp_folder_still_loads(tiny, cpu, tmp_path) -> None:
    """What twossp wrote before this layout: a Llama config listing the removed attentions."""
    model = tiny.model("llama", num_layers=4).eval()
    adapter = adapter_for(model.config)
    adapter.remove_attention(model, 1)
    model.save_pretrained(tmp_path)  # config.twossp_removed_attention == [1], no tensors for it
    assert json.loads((tmp_path / "config.json").read_text())["twossp_removed_attention"] == [1]
    tokens = tiny.tokens(2, 12, seed=2)
    assert torch.equal(logits(load_pruned(tmp_path), tokens), logits(model, tokens))


def test_a_sweep_saves_portable_checkpoints_with_cards_and_exports_rows(tiny_checkpoint, tmp_path) -> None:
    sweep = tiny_checkpoint.write_sweep(tmp_path / "tiny.yaml", "hf-save", methods=["dense", "2ssp", "shortgpt"],
                                        sparsities=[0.5], save_to={"path": "saved"})
    db_url = f"sqlite:///{tmp_path / 'results.db'}"
    runner = CliRunner()
    result = runner.invoke(cli.main, ["sweep", "run", str(sweep), "--db", db_url, "--executor", "local"])
    assert result.exit_code == 0, result.output
    with Database(db_url) as db, db.session() as session:
        rows = {run.method: [(e.format, e.path, e.architecture, e.details["layout"]) for e in run.exports]
                for run in session.scalars(select(Run)).all()}
        assert session.scalar(select(Export).where(Export.path.like("%saved%"))) is not None
    assert rows["dense"] == []  # nothing pruned, nothing saved
    (fmt, path, arch, layout), = rows["2ssp"]
    assert fmt == "safetensors" and arch == "DeciLMForCausalLM" and layout == "nas"
    assert rows["shortgpt"][0][3] == "plain"  # whole blocks removed: the family's own checkpoint
    card = (Path(path) / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "pipeline_tag: text-generation" in card
    assert "trust_remote_code=True" in card and "vllm serve" in card and "nemotron-nas" in card
    checked = runner.invoke(cli.main, ["check", path])
    assert checked.exit_code == 0 and "every rule passes" in checked.output, checked.output
    config = Path(path) / "config.json"
    broken = json.loads(config.read_text())
    broken["block_configs"][0]["attention"]["no_op"] = True
    config.write_text(json.dumps(broken))
    failed = runner.invoke(cli.main, ["check", path])
    assert failed.exit_code == 1 and "first-attention" in failed.output


def test_save_to_a_format_the_family_cannot_take_is_refused_before_any_work(tiny, tiny_checkpoint, tmp_path) -> None:
    gemma = tmp_path / "tiny-gemma2"
    tiny.config("gemma2").save_pretrained(gemma)  # the plan reads config.json alone
    for name, methods, save_to, said in (
            ("gemma-portable", ["2ssp"], {"path": "saved"}, "hf-stock"),
            ("slicegpt-stock", ["slicegpt"], {"path": "saved", "format": "hf-stock"}, "format: safetensors")):
        models = [{"path": str(gemma)}] if name.startswith("gemma") else [{"path": str(tiny_checkpoint.model_dir)}]
        sweep = tiny_checkpoint.write_sweep(tmp_path / f"{name}.yaml", name, methods=methods, sparsities=[0.25],
                                            models=models, save_to=save_to)
        result = CliRunner().invoke(cli.main, ["sweep", "validate", str(sweep)])
        assert result.exit_code == 2, result.output
        assert "`save_to` asks for" in result.output and said in result.output
        assert not (tmp_path / "saved").exists()
