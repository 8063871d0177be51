"""SliceGPT (arXiv 2401.15024): exact rotations, the parameter budget with shortcut matrices counted,
PCA on the calibration data, KV-cache generation, and checkpoints that reload to identical logits."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

from tests.support.models import logits
from twossp.checkpoint import load_pruned, save_pruned
from twossp.errors import CheckpointError
from twossp.data.tokens import token_stream
from twossp.errors import BudgetError, UnsupportedArchitecture
from twossp.evaluate.perplexity import make_windows, perplexity
from twossp.families import adapter_for
from twossp.families.llama import LlamaAdapter
from twossp.plan import plan_sweep
from twossp.prune import PruneContext, prune
from twossp.prune.slicegpt import CONFIG_KEY, SlicedDecoderLayer, choose_width, slice_model, sliced_layer_params
from twossp.runtime.worker import execute_run
from twossp.methods import SliceGPTMethod
from twossp.spec import parse_sweep

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
HIDDEN = 64  # the tiny models' hidden size (tests/support/models.py)


def layer_state_params(model) -> int:
    """P_layers from the state dict's shapes alone (no module counting)."""
    return sum(t.numel() for k, t in model.state_dict().items() if k.startswith("model.layers."))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("slice_head", [False, True])
def test_rotation_without_slicing_computes_the_dense_function(tiny, cpu, family, slice_head) -> None:
    model = tiny.model(family)
    tokens = tiny.tokens(2, 20, seed=7)
    dense = logits(model, tokens)
    report = slice_model(model, adapter_for(model.config), tiny.tokens(4, 32), HIDDEN, cpu, slice_head=slice_head)
    assert report.width == report.dense_width == HIDDEN
    assert all(isinstance(layer, SlicedDecoderLayer) for layer in model.model.layers)
    fused = [k for k in model.state_dict() if k.endswith(("layernorm.weight", "model.norm.weight"))]
    assert fused == []  # every norm scale now lives in the linears that follow it
    torch.testing.assert_close(logits(model, tokens), dense, rtol=1e-4, atol=1e-4 * float(dense.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_sliced_model_meets_the_sparsity_with_shortcuts_counted(tiny, cpu, family, sparsity) -> None:
    model = tiny.model(family)
    adapter = adapter_for(model.config)
    dense = adapter.block_counts(model).layer_params
    assert layer_state_params(model) == dense
    target = (1 - sparsity) * dense
    width = choose_width(model, adapter, sparsity, 8)
    assert width % 8 == 0 and sliced_layer_params(model, adapter, width) <= target
    assert sliced_layer_params(model, adapter, width + 8) > target  # the widest that fits

    outcome = prune(PruneContext(model=model, adapter=adapter, calibration=tiny.tokens(4, 32), sparsity=sparsity,
                                 method=SliceGPTMethod(), device=cpu))  # the sweep's registry
    details = outcome.details
    assert details["sliced_width"] == details["hidden_size_sliced"] == width < HIDDEN == details["hidden_size_dense"]
    assert outcome.kept_ffn is None and outcome.removed_attention == [] and outcome.removed_blocks == []

    state = model.state_dict()
    shortcuts = [t for k, t in state.items() if k.endswith(("attn_shortcut.weight", "mlp_shortcut.weight"))]
    assert len(shortcuts) == 2 * 4
    assert details["shortcut_params"] == sum(t.numel() for t in shortcuts) > 0
    counted = adapter.block_counts(model).layer_params
    assert layer_state_params(model) == counted == details["layer_params"] == sliced_layer_params(
        tiny.model(family), adapter, width)
    assert 1 - counted / dense >= sparsity
    # the stream is sliced, the model's own shapes are not
    assert state["model.embed_tokens.weight"].shape == (128, width)
    assert state["model.layers.0.attn_shortcut.weight"].shape == (width, width)
    assert state["model.layers.3.mlp_shortcut.weight"].shape == (HIDDEN, width)  # the last block feeds the head
    assert state["lm_head.weight"].shape == (128, HIDDEN)
    assert model.config.hidden_size == HIDDEN and getattr(model.config, CONFIG_KEY)["sliced_hidden_size"] == width

    tokens = tiny.tokens(1, 5, seed=7)
    assert torch.isfinite(logits(model, tokens)).all()
    cached = model.generate(tokens, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(tokens, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_pca_keeps_the_top_principal_directions_of_the_calibration_data(tiny, cpu) -> None:
    """Block 0's attention reads the embedding output; its rotation is the eigenbasis of X^T X over
    the calibration tokens, by decreasing eigenvalue, computed here by hand."""
    model = tiny.model("llama")
    calibration = tiny.tokens(4, 32)
    embedding = model.model.embed_tokens.weight.detach().double().clone()
    q_proj = model.model.layers[0].self_attn.q_proj.weight.detach().double().clone()
    scale = model.model.layers[0].input_layernorm.weight.detach().double().clone()
    x = embedding[calibration.reshape(-1)]
    values, vectors = torch.linalg.eigh(x.T @ x)
    width = 24
    top = vectors[:, values.argsort(descending=True)[:width]]

    slice_model(model, adapter_for(model.config), calibration, width, cpu)
    sliced_embedding = model.model.embed_tokens.weight.double()
    expected = embedding @ top
    signs = torch.sign((sliced_embedding * expected).sum(dim=0))  # eigenvectors are defined up to sign
    torch.testing.assert_close(sliced_embedding, expected * signs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.model.layers[0].self_attn.q_proj.weight.double(),
                               (q_proj * scale) @ top * signs, rtol=1e-4, atol=1e-5)
    # and not any other subspace: other calibration data gives another rotation
    other = tiny.model("llama")
    slice_model(other, adapter_for(other.config), tiny.tokens(4, 32, seed=5), width, cpu)
    assert not torch.allclose(other.model.embed_tokens.weight.abs(), model.model.embed_tokens.weight.abs(), atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_sliced_checkpoint_reloads_to_identical_logits(tiny, cpu, tmp_path, family) -> None:
    model = tiny.model(family, tie_word_embeddings=family == "llama")  # SmolLM2 ties its embeddings
    prune(PruneContext(model=model, adapter=adapter_for(model.config), calibration=tiny.tokens(4, 32), sparsity=0.25,
                       method=SliceGPTMethod(), device=cpu))
    saved = save_pruned(model, None, tmp_path)
    assert not saved.stock and "shortcut" in saved.note and "load_pruned" in saved.note
    assert json.loads((tmp_path / "config.json").read_text())[CONFIG_KEY]["sliced_hidden_size"] == 40

    reloaded = load_pruned(tmp_path)
    tokens = tiny.tokens(2, 20, seed=7)
    torch.testing.assert_close(logits(reloaded, tokens), logits(model, tokens), rtol=0, atol=0)
    original, again = model.state_dict(), reloaded.state_dict()
    assert original.keys() == again.keys()
    for name in original:  # every weight came from the checkpoint
        assert torch.equal(original[name], again[name]), name
    cached = reloaded.generate(tokens[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(cached, model.generate(tokens[:1, :5], max_new_tokens=6, do_sample=False, use_cache=False))


def test_a_sliced_checkpoint_missing_a_weight_is_refused(tiny, cpu, tmp_path) -> None:
    model = tiny.model("qwen2")
    prune(PruneContext(model=model, adapter=adapter_for(model.config), calibration=tiny.tokens(4, 32), sparsity=0.25,
                       method=SliceGPTMethod(), device=cpu))
    save_pruned(model, None, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    gone = "model.layers.2.mlp_shortcut.weight"
    del weights[gone]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="re-initialised") as info:
        load_pruned(tmp_path)
    assert gone in str(info.value)


def test_an_unreachable_sparsity_is_a_budget_error(tiny, cpu) -> None:
    model = tiny.model("llama")
    with pytest.raises(BudgetError, match="smallest width"):
        prune(PruneContext(model=model, adapter=adapter_for(model.config), calibration=tiny.tokens(2, 16), sparsity=0.9,
                           method=SliceGPTMethod(), device=cpu))


def test_unsupported_architectures_are_refused_before_any_work(tiny, cpu) -> None:
    config = Gemma2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, vocab_size=128, num_hidden_layers=2)
    config.architectures = ["Gemma2ForCausalLM"]
    gemma = Gemma2ForCausalLM(config).eval()  # scaled embedding, (1 + w) norms, sandwich norms
    with pytest.raises(UnsupportedArchitecture, match="Gemma2ForCausalLM.*supported: LlamaForCausalLM"):
        prune(PruneContext(model=gemma, adapter=LlamaAdapter(), calibration=tiny.tokens(2, 16), sparsity=0.25,
                           method=SliceGPTMethod(), device=cpu))

    model = tiny.model("llama")
    adapter = adapter_for(model.config)
    adapter.remove_attention(model, 1)
    with pytest.raises(UnsupportedArchitecture, match="block 1"):
        prune(PruneContext(model=model, adapter=adapter, calibration=tiny.tokens(2, 16), sparsity=0.25,
                           method=SliceGPTMethod(), device=cpu))


def test_blocks_with_different_masks_get_their_own(tiny, cpu) -> None:
    """Qwen2 with sliding-window layers above ``max_window_layers``: each block is calibrated with
    the mask the decoder gives it. Unsliced, the calibration signals are the dense model's, so the
    rotation at block 3 (sliding) is the eigenbasis of its dense mid-block signal, computed by hand."""
    model = tiny.model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    assert model.config.layer_types[3] != model.config.layer_types[0]
    adapter = adapter_for(model.config)
    try:
        adapter.check_supported(model.config)
    except UnsupportedArchitecture:
        pytest.skip("this adapter does not handle mixed layer types yet")
    calibration, tokens = tiny.tokens(4, 32), tiny.tokens(2, 20, seed=7)
    dense = logits(model, tokens)
    block = model.model.layers[3]
    mids = []
    handle = block.post_attention_layernorm.register_forward_pre_hook(lambda m, args: mids.append(args[0]))
    try:
        logits(model, calibration)
    finally:
        handle.remove()
    x = torch.cat(mids).reshape(-1, HIDDEN).double()
    values, vectors = torch.linalg.eigh(x.T @ x)
    top = vectors[:, values.argsort(descending=True)[:8]]
    o_proj = block.self_attn.o_proj.weight.detach().double().clone()

    slice_model(model, adapter, calibration, HIDDEN, cpu)
    rotated = model.model.layers[3].self_attn.o_proj.weight.double()[:8]
    expected = top.T @ o_proj
    signs = torch.sign((rotated * expected).sum(dim=1, keepdim=True))
    torch.testing.assert_close(rotated, expected * signs, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(logits(model, tokens), dense, rtol=1e-4, atol=1e-4 * float(dense.abs().max()))


def _projected_dense_logits(model, calibration, tokens, width, slice_head=False):
    """SliceGPT written the other way round, from the paper's Sec. 3: the *dense* model with the
    residual stream projected onto its top-``width`` principal subspace at every place it is read
    (embedding output, after each attention, after each FFN but the last unless the head is
    sliced), each projection computed in turn from the calibration signal of the model projected
    so far. Slicing in a rotated basis computes exactly this (RMS norms see ||P x|| = ||Q_d^T x||)."""
    decoder = model.model
    projections: list[torch.Tensor] = []

    def forward(ids, collect=None):
        h = decoder.embed_tokens(ids)
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        rotary = decoder.rotary_emb(h, positions)
        point = 0

        def project(h):
            nonlocal point
            if point < len(projections):
                h = (h.double() @ projections[point]).float()
            elif collect is not None and point == len(projections):
                collect.append(h.reshape(-1, h.shape[-1]).double())
            point += 1
            return h

        h = project(h)
        for i, layer in enumerate(decoder.layers):
            attn, _ = layer.self_attn(hidden_states=layer.input_layernorm(h), attention_mask=None,
                                      position_embeddings=rotary, position_ids=positions)
            h = project(h + attn)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
            if i < len(decoder.layers) - 1 or slice_head:
                h = project(h)
        return model.lm_head(decoder.norm(h))

    with torch.no_grad():
        for _ in range(2 * len(decoder.layers) + slice_head):
            signals: list[torch.Tensor] = []
            for window in calibration:
                forward(window.unsqueeze(0), collect=signals)
            x = torch.cat(signals)
            values, vectors = torch.linalg.eigh(x.T @ x)
            top = vectors[:, values.argsort(descending=True)[:width]]
            projections.append(top @ top.T)
        return forward(tokens)


@pytest.mark.parametrize("family,slice_head", [("llama", False), ("llama", True), ("qwen2", False), ("phi3", False)])
def test_sliced_model_equals_the_dense_model_with_projected_residuals(tiny, cpu, family, slice_head) -> None:
    model = tiny.model(family)
    calibration, tokens = tiny.tokens(4, 32), tiny.tokens(1, 20, seed=7)
    expected = _projected_dense_logits(model, calibration, tokens, 40, slice_head)
    slice_model(model, adapter_for(model.config), calibration, 40, cpu, slice_head=slice_head)
    torch.testing.assert_close(logits(model, tokens), expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def test_a_sweep_run_slices_saves_and_reloads_to_its_perplexity(tiny_checkpoint, tmp_path) -> None:
    """The worker end to end: the registry runner, P_layers with the shortcuts, the saved checkpoint."""
    doc = tiny_checkpoint.sweep("slicegpt", methods=["slicegpt"], sparsities=[0.25], save_to=str(tmp_path / "saved"))
    [run] = plan_sweep(parse_sweep(yaml.safe_dump(doc)))
    result = execute_run(run)
    assert result.status == "completed", result.error
    assert result.achieved_sparsity >= 0.25 and result.params_pruned == result.details["layer_params"]
    assert result.details["saved_stock_checkpoint"] is False
    reloaded = load_pruned(result.details["saved_to"])
    [(_, _, stored)] = result.scores
    tokenizer = AutoTokenizer.from_pretrained(result.details["saved_to"])
    windows = make_windows(token_stream(tokenizer, run.evaluation.perplexity[0]), 16, 4)
    again = perplexity(reloaded, adapter_for(reloaded.config), windows, torch.device("cpu")).perplexity
    assert again == pytest.approx(stored, rel=1e-6)
