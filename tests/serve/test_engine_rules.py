"""The serving engines' loading rules (``twossp.serve.check``) on real exports and on tampered ones.

One tiny Llama is pruned the way the Nemotron-NAS layout exists for (block 0's attention removed,
FFN widths of 200 that 256 does not divide, an FFN removed, a block removed whole) and written once
in each layout: the NAS, stock and plain exports pass every rule. Copies of the NAS export are then
tampered with, one thing at a time (config.json rewritten, model.safetensors re-saved), and each
fails the rule that concerns it, with a detail that names what is wrong.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.support.models import tiny_model
from tests.support.tiny_checkpoint import build_tokenizer
from twossp.checkpoint import save_pruned
from twossp.errors import CheckpointError
from twossp.families import adapter_for
from twossp.prune.width import prune_width, top_neurons
from twossp.serve.check import Report, check_folder

LAYERS, WIDTH, KEPT = 6, 300, 200


def _pruned(blocks_differ: bool = True) -> torch.nn.Module:
    """The tiny Llama, every FFN narrowed to 200 neurons; with ``blocks_differ``: block 0's and 3's
    attention removed, block 4's FFN removed, block 5 removed whole (attention and FFN)."""
    model = tiny_model("llama", num_layers=LAYERS, intermediate_size=WIDTH).eval()
    model.config.dtype = torch.float32  # as from_pretrained leaves it; a model built from a config has none
    adapter = adapter_for(model.config)
    scores = torch.Generator().manual_seed(3)
    prune_width(model, adapter, [top_neurons(torch.rand(WIDTH, generator=scores), KEPT) for _ in range(LAYERS)])
    if blocks_differ:
        for index in (0, 3, 5):
            adapter.remove_attention(model, index)
        for index in (4, 5):
            adapter.remove_ffn(model, index)
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The NAS (with a tokenizer), stock and plain exports, written once for the module."""
    root = tmp_path_factory.mktemp("exports")
    tokenizer = build_tokenizer(root / "tokenizer")
    folders = {"nas": root / "nas", "stock": root / "stock", "plain": root / "plain"}
    assert save_pruned(_pruned(), tokenizer, folders["nas"], "safetensors").layout == "nas"
    assert save_pruned(_pruned(), None, folders["stock"], "hf-stock").layout == "stock"
    assert save_pruned(_pruned(blocks_differ=False), None, folders["plain"], "safetensors").layout == "plain"
    return folders


@pytest.fixture
def nas_copy(exports: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the NAS export for a test to tamper with."""
    return Path(shutil.copytree(exports["nas"], tmp_path / "nas"))


def _failing(report: Report) -> set[str]:
    return {f.rule for f in report.findings if not f.ok}


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _edit_tensors(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


# ---------------------------------------------------------------------------- real exports pass
def test_the_nas_export_passes_every_rule(exports):
    report = check_folder(exports["nas"])
    assert report.schema == "nemotron-nas" and report.architecture == "DeciLMForCausalLM"
    assert report.ok and _failing(report) == set(), report.render()
    assert len(report.findings) == 15 and {f.status for f in report.findings} == {"ok"}
    config = json.loads((exports["nas"] / "config.json").read_text())
    # what the rules saw: block 0's attention kept (as zeros), 200 padded to 256, the FFN-less block with
    # an FFN of zero neurons, the whole-removed block gone
    assert config["num_hidden_layers"] == 5 and not config["block_configs"][0]["attention"]["no_op"]
    assert {b["ffn"]["intermediate_size"] for b in config["block_configs"]} == {256}
    assert "all 43 expected" in report.finding("tensors").detail


@pytest.mark.parametrize("layout", ["stock", "plain"])
def test_stock_and_plain_exports_pass(exports, layout):
    report = check_folder(exports[layout])
    assert report.schema == "stock" and report.architecture == "LlamaForCausalLM"
    assert report.ok and _failing(report) == {"tokenizer"}, report.render()  # saved without a tokenizer
    assert report.finding("tokenizer").level == "warning"
    assert "shapes match" in report.finding("tensors").detail


def test_a_family_not_in_llama_layout_is_informational(tmp_path):
    model = tiny_model("qwen3", num_layers=2)
    save_pruned(model, None, tmp_path / "qwen3", "safetensors")
    finding = check_folder(tmp_path / "qwen3").finding("tensors")
    assert finding.ok and finding.status == "info" and "shapes not derived" in finding.detail


def test_a_sharded_export_passes_and_an_index_naming_a_missing_shard_fails(nas_copy):
    tensors = load_file(nas_copy / "model.safetensors")
    (nas_copy / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, shard in shards.items():
        save_file({name: tensors[name] for name in shard}, nas_copy / file)
    weight_map = {name: file for file, shard in shards.items() for name in shard}
    (nas_copy / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert check_folder(nas_copy).ok

    (nas_copy / "model-00002-of-00002.safetensors").unlink()
    report = check_folder(nas_copy)
    assert "weight-files" in _failing(report)
    assert "names model-00002-of-00002.safetensors, which is not in the folder" in report.finding("weight-files").detail


# ---------------------------------------------------------------------------- tampered exports fail
def test_an_extra_tensor_fails_the_tensor_rule(nas_copy):
    _edit_tensors(nas_copy, lambda t: t.update({"model.layers.4.mlp.extra.weight": torch.zeros(2, 2)}))
    report = check_folder(nas_copy)
    assert _failing(report) == {"tensors"}
    assert "1 unexpected: model.layers.4.mlp.extra.weight" in report.finding("tensors").detail
    assert "KeyError" in report.finding("tensors").detail


def test_a_removed_tensor_fails_the_tensor_rule(nas_copy):
    _edit_tensors(nas_copy, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    report = check_folder(nas_copy)
    assert _failing(report) == {"tensors"}
    assert "1 missing: model.layers.1.mlp.down_proj.weight" in report.finding("tensors").detail


def test_a_no_op_attention_in_block_0_fails(nas_copy):
    def no_attention(config):
        config["block_configs"][0]["attention"] |= {"no_op": True, "n_heads_in_group": None}

    _edit_config(nas_copy, no_attention)
    report = check_folder(nas_copy)
    # the file still holds block 0's attention, which the config now says has none
    assert _failing(report) == {"first-attention", "tensors"}
    assert "block 0's attention is a no-op" in report.finding("first-attention").detail
    assert "unexpected: model.layers.0.input_layernorm.weight" in report.finding("tensors").detail


def test_an_integer_ffn_mult_fails(nas_copy):
    _edit_config(nas_copy, lambda c: c["block_configs"][1]["ffn"].update(ffn_mult=6))
    assert '"ffn_mult": 6,' in (nas_copy / "config.json").read_text()
    report = check_folder(nas_copy)
    assert _failing(report) == {"ffn-widths"}
    assert "block 1: ffn_mult 6 is not a float" in report.finding("ffn-widths").detail


def test_differing_attention_groups_fail(nas_copy):
    _edit_config(nas_copy, lambda c: c["block_configs"][1]["attention"].update(n_heads_in_group=4))
    report = check_folder(nas_copy)
    # and block 1's k/v projections no longer have the shape its one KV head would give them
    assert _failing(report) == {"attention-groups", "tensors"}
    assert "n_heads_in_group differ: [2, 4]" in report.finding("attention-groups").detail
    assert "mis-shaped: model.layers.1.self_attn.k_proj.weight [32, 64], expected [16, 64]" \
        in report.finding("tensors").detail


def test_a_float_attention_group_fails(nas_copy):
    _edit_config(nas_copy, lambda c: c["block_configs"][2]["attention"].update(n_heads_in_group=2.0))
    report = check_folder(nas_copy)
    assert _failing(report) == {"attention-groups"}
    assert "block 2: n_heads_in_group 2.0 is not an integer" in report.finding("attention-groups").detail


def test_a_width_not_a_multiple_of_256_fails(nas_copy):
    _edit_config(nas_copy, lambda c: c["block_configs"][2]["ffn"].update(intermediate_size=200))
    report = check_folder(nas_copy)
    assert _failing(report) == {"ffn-widths"}
    detail = report.finding("ffn-widths").detail
    assert "block 2: intermediate_size 200 is not a multiple of 256" in detail
    assert "intermediate_size 200 differs from the width 256 the engines derive from ffn_mult 6.0" in detail


def test_config_level_rules_fail_with_their_reason(nas_copy):
    def broken(config):
        config["head_dim"] = 32
        config["attention_bias"] = True
        del config["rope_theta"]
        del config["block_configs"][3]["ffn"]["replace_with_linear"]
        config["block_configs"][4]["attention"]["replace_with_linear"] = True
        config["auto_map"]["AutoConfig"] = "configuration_other.OtherConfig"

    _edit_config(nas_copy, broken)
    report = check_folder(nas_copy)
    assert _failing(report) == {"architecture", "config-fields", "head-dim", "bias", "block-keys",
                                "linear-replacement"}
    assert "configuration_other.py, which is not in the folder" in report.finding("architecture").detail
    assert "rope_theta is missing" in report.finding("config-fields").detail
    assert "head_dim 32 differs from hidden_size // num_attention_heads = 16" in report.finding("head-dim").detail
    assert "block 3 ffn lacks replace_with_linear" in report.finding("block-keys").detail


def test_a_missing_dtype_is_a_warning(nas_copy):
    _edit_config(nas_copy, lambda c: c.update(dtype=None, torch_dtype=None))
    report = check_folder(nas_copy)
    assert report.ok and _failing(report) == {"dtype"} and report.finding("dtype").status == "warn"
    assert "the tensors are F32" in report.finding("dtype").detail


def test_an_attention_without_ffn_and_a_miscounted_block_list_fail(nas_copy):
    def edit(config):
        config["block_configs"][4]["ffn"] |= {"no_op": True, "ffn_mult": None, "intermediate_size": None}
        config["num_hidden_layers"] = 6

    _edit_config(nas_copy, edit)
    report = check_folder(nas_copy)
    assert {"attention-without-ffn", "block-count"} <= _failing(report)
    assert "block 4 has an attention and a no-op FFN" in report.finding("attention-without-ffn").detail
    assert "5 block_configs entries for num_hidden_layers 6" in report.finding("block-count").detail


# ---------------------------------------------------------------------------- the report
def test_render_is_a_table_of_every_rule(exports):
    report = check_folder(exports["nas"])
    lines = report.lines()
    assert lines[0].endswith("(nemotron-nas, DeciLMForCausalLM): every rule passes")
    assert lines[1].split() == ["rule", "engines", "status", "detail"]
    assert len(lines) == 3 + len(report.findings) and report.render() == "\n".join(lines)
    assert lines[3].startswith("architecture ") and " ok " in lines[3]


def test_a_folder_without_config_fails_and_a_missing_folder_raises(tmp_path):
    report = check_folder(tmp_path)
    assert not report.ok and report.findings[0].rule == "config"
    with pytest.raises(CheckpointError):
        check_folder(tmp_path / "absent")


def test_the_checker_imports_no_torch():
    code = "import sys, twossp.serve.check; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
