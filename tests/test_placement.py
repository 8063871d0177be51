"""Placements change where blocks live, never a number: every family x every pruning method, split
over several devices, streamed from disk and streamed from host memory, chooses what it chooses on
one device, to logits within float tolerance; a streamed pass holds at most two blocks; a weight is
never silently wrong (a block edited outside ``resident`` is refused, an edited block is written
back, accelerate's offload is never what twossp prunes through)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.support.models import FAMILIES, logits, random_tokens, tiny_model
from tests.support.placements import PLACEMENTS, SPECS, compare, placed
from twossp.errors import PlacementError, UnsupportedArchitecture
from twossp.families import adapter_for
from twossp.families.base import slice_rows
from twossp.placement import DiskHome, HostHome, Stream, placement_of
from twossp.prune.calibration import block_calls, walk
from twossp.prune.two_stage import prune_2ssp


@pytest.fixture(scope="module")
def dense_models():
    return {family: tiny_model(family, num_layers=6) for family in FAMILIES}


@pytest.mark.parametrize("how", PLACEMENTS)
@pytest.mark.parametrize("method", sorted(SPECS))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_chooses_the_same_placed(dense_models, tmp_path, family, method, how) -> None:
    if method == "slicegpt" and family.startswith("gemma"):
        with pytest.raises(UnsupportedArchitecture):
            compare(dense_models[family], method, how, tmp_path)
        return
    result = compare(dense_models[family], method, how, tmp_path)
    assert result.same_choices, (result.single.removal_order, result.other.removal_order)
    assert result.max_logit_difference <= 1e-5
    if how.startswith("stream"):
        assert result.max_resident is not None and result.max_resident <= 2


@pytest.mark.parametrize("how", ["single", *PLACEMENTS])
def test_the_dense_model_placed_computes_the_same_logits_and_generations(dense_models, tmp_path, how) -> None:
    model = dense_models["gemma3"]  # sliding and full attention layers: per-layer masks and rotary tables
    ids = random_tokens(2, 16)
    copy_, placement = placed(model, how, tmp_path)
    torch.testing.assert_close(logits(copy_, ids), logits(model, ids), rtol=0, atol=1e-6)
    kwargs = dict(do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(copy_.generate(ids[:1, :5], **kwargs), model.generate(ids[:1, :5], **kwargs))
    placement.close()


def test_a_streamed_pass_holds_at_most_two_blocks(tmp_path) -> None:
    model = tiny_model("llama", num_layers=8)
    streamed, stream = placed(model, "stream from disk", tmp_path)
    assert stream.max_resident == 0  # nothing is read before the first forward
    prune_2ssp(streamed, adapter_for(streamed.config), random_tokens(4, 16, seed=3), 0.5, torch.device("cpu"),
               num_calibration_second_stage=2)
    assert 1 <= stream.max_resident <= 2
    resident = [b for b in adapter_for(streamed.config).layers(streamed)
                if not next(b.parameters()).is_meta]
    assert len(resident) <= 2
    stream.close()


def test_an_evicted_block_cannot_be_edited_and_an_edited_one_is_written_back(tmp_path) -> None:
    model = tiny_model("llama", num_layers=4)
    streamed, stream = placed(model, "stream from disk", tmp_path / "a")
    adapter = adapter_for(streamed.config)
    layers = adapter.layers(streamed)
    keep = torch.arange(0, 128, 2)
    with pytest.raises(PlacementError):
        slice_rows(adapter.mlp(layers[1]).up_proj, keep)  # evicted: its weight is not in memory
    with stream.resident(layers[1]):
        adapter.prune_ffn(layers[1], keep)
    reference = copy.deepcopy(model)
    adapter.prune_ffn(adapter.layers(reference)[1], keep)
    ids = random_tokens(2, 12)
    for _ in range(2):  # the second pass reads block 1 back from the scratch file
        torch.testing.assert_close(logits(streamed, ids), logits(reference, ids), rtol=0, atol=1e-6)
    assert isinstance(stream.home, DiskHome) and 1 in stream.home.rewritten
    stream.close()


def test_placement_of_a_model_nothing_placed_is_its_device() -> None:
    model = tiny_model("llama", num_layers=2)
    assert placement_of(model).kind == "single" and placement_of(model).device == torch.device("cpu")


def test_accelerates_offload_trap_never_reaches_a_pruned_weight(tmp_path) -> None:
    """A model dispatched with accelerate's CPU offload has ``meta`` weights outside its forward:
    building a pruned Linear from one is refused (a PlacementError), never a silently wrong model."""
    from accelerate import cpu_offload

    model = tiny_model("llama", num_layers=2)
    adapter = adapter_for(model.config)
    cpu_offload(model, execution_device=torch.device("cpu"))
    up = adapter.mlp(adapter.layers(model)[0]).up_proj
    assert up.weight.is_meta
    with pytest.raises(PlacementError):
        slice_rows(up, torch.arange(8))
    with pytest.raises(PlacementError):
        adapter.prune_ffn(adapter.layers(model)[0], torch.arange(8))


def test_streaming_from_host_memory_keeps_a_copy_per_block_and_pins_for_accelerators() -> None:
    model = tiny_model("llama", num_layers=3)
    stream = Stream(torch.device("cpu"), HostHome())
    stream.install(model, adapter_for(model.config))
    assert sorted(stream.home.blocks) == [0, 1, 2]
    assert all(p.is_meta for p in adapter_for(model.config).layers(model).parameters())
    stream.close()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_streamed_model_is_evaluated_block_by_block_to_the_same_perplexity(dense_models, tmp_path, family,
                                                                             batch) -> None:
    from twossp.evaluate.perplexity import perplexity

    model = dense_models[family]
    windows = random_tokens(5, 16, seed=9)
    cpu = torch.device("cpu")
    expected = perplexity(model, adapter_for(model.config), windows, cpu, batch=batch)
    streamed, stream = placed(model, "stream from disk", tmp_path)
    got = perplexity(streamed, adapter_for(streamed.config), windows, cpu, batch=batch)
    assert got.tokens == expected.tokens and got.windows == expected.windows
    assert got.nll_sum == pytest.approx(expected.nll_sum, rel=1e-6)
    assert stream.loads == len(adapter_for(streamed.config).layers(streamed))  # each block read once
    stream.close()


@pytest.mark.parametrize("how", ["stream from disk", "stream from host"])
@pytest.mark.parametrize("kind", ["attention", "ffn"])
def test_a_bypass_that_outlives_a_blocks_residency_loses_and_leaks_nothing(dense_models, tmp_path, how, kind) -> None:
    """BlockPruner and stage 2 run the blocks after a candidate with its submodule set aside: the
    block is evicted meanwhile, and its set-aside submodule comes back after. Nothing of it may be
    lost from the home, and the block must compute with real weights when it next runs."""
    model = dense_models["llama"]
    streamed, stream = placed(model, how, tmp_path)
    adapter = adapter_for(streamed.config)
    layers = adapter.layers(streamed)
    ids = random_tokens(2, 12)
    before = logits(streamed, ids)  # every block has been resident once
    bypass = adapter.attention_bypassed if kind == "attention" else adapter.ffn_bypassed
    for block in (layers[-1], layers[-2], layers[0]):  # resident when set aside (the last two), and not
        with bypass(block):
            logits(streamed, ids)  # the walk goes on past the block: it is evicted with its submodule aside
        torch.testing.assert_close(logits(streamed, ids), before, rtol=0, atol=0)
    assert stream.max_resident <= 2
    stream.close()


@pytest.mark.parametrize("how", ["stream from disk", "stream from host"])
def test_a_block_evicted_with_a_submodule_set_aside_keeps_it_at_home(dense_models, tmp_path, how) -> None:
    """Stage 2 runs blocks i..N-1 with block i's attention set aside: block i leaves the device
    before the attention is put back, and must find it at home when it next runs."""
    model = dense_models["llama"]
    streamed, stream = placed(model, how, tmp_path)
    adapter = adapter_for(streamed.config)
    layers = adapter.layers(streamed)
    ids = random_tokens(2, 12)
    hidden = torch.randn(1, 12, 64)
    firsts, kwargs = block_calls(streamed, adapter, ids[:1], torch.device("cpu"))
    expected = logits(model, ids)
    with torch.no_grad():
        layers[2](firsts[0], **kwargs[2])  # block 2 resident, its attention real
        with adapter.attention_bypassed(layers[2]):
            walk(layers, [hidden], kwargs, start=2)  # blocks 3, 4, 5 evict block 2 meanwhile
    torch.testing.assert_close(logits(streamed, ids), expected, rtol=0, atol=1e-6)
    stream.close()



@pytest.mark.parametrize("how", PLACEMENTS)
def test_stage_2_batched_chooses_the_same_placed(dense_models, tmp_path, how) -> None:
    """Candidates scored four to a pass (``runtime.batch``), placed, choose what one at a time does
    on one device."""
    model = dense_models["qwen2"]
    calibration = random_tokens(4, 16, seed=3)
    cpu = torch.device("cpu")
    reference = copy.deepcopy(model)
    expected = prune_2ssp(reference, adapter_for(reference.config), calibration, 0.5, cpu,
                          num_calibration_second_stage=2, batch=1)
    placed_model, placement = placed(model, how, tmp_path)
    got = prune_2ssp(placed_model, adapter_for(placed_model.config), calibration, 0.5, cpu,
                     num_calibration_second_stage=2, batch=4)
    assert got.removed_attention == expected.removed_attention
    assert got.calibration_perplexity == pytest.approx(expected.calibration_perplexity, rel=1e-6)
    torch.testing.assert_close(logits(placed_model, calibration), logits(reference, calibration), rtol=0, atol=1e-5)
    placement.close()
