"""The memory plan (``twossp.memory``): each part of a device's peak on a small config against numbers
computed by hand, and the placement ``choose_placement`` takes for the memory it is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twossp.families import config_block_counts
from twossp.memory import (RUNTIME_OVERHEAD, GiB, ModelShape, block_workspace, candidates_bytes, choose_placement,
                           device_memory, evaluation_bytes, memory_inputs, states_bytes)
from twossp.methods import ShortGPTMethod, TwoSSPMethod
from twossp.plan import CalibrationRun, RunSpec
from twossp.spec import EvaluationSpec, ModelSpec, RuntimeSpec

REPO = Path(__file__).resolve().parents[1]

#: d = 64, d_ff = 128, N = 4, 4 heads of 16, 2 KV heads, a vocabulary of 1,000, untied
SMALL = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}
BLOCK = (64 * 64 + 2 * 64 * 32 + 64 * 64) + 3 * 64 * 128 + 2 * 64   # q, k, v, o + gate, up, down + two norms
ENDS = 2 * 1000 * 64 + 64                                               # embeddings, LM head, final norm


def run_spec(method=None, dtype: str = "float32", batch: int | str = 2) -> RunSpec:
    """2SSP (stage 2 on 2 of 4 windows of 32 tokens), perplexity at 16 tokens, ``batch`` per forward."""
    return RunSpec(sweep="t", model=ModelSpec(builtin="smollm2-135m-instruct"),
                   method=method or TwoSSPMethod(num_calibration_second_stage=2), sparsity=0.25,
                   calibration=CalibrationRun(source="lee-calibration", samples=4, seq_len=32, seed=0),
                   evaluation=EvaluationSpec(perplexity=["lee-evaluation"], seq_len=16),
                   runtime=RuntimeSpec(dtype=dtype, batch=batch))


def inputs(**kwargs):
    return memory_inputs(SMALL, config_block_counts(SMALL), run_spec(**kwargs))


def test_the_shape_comes_from_the_config_and_the_family_counts() -> None:
    shape = ModelShape.of(SMALL, config_block_counts(SMALL))
    assert (shape.block_params, shape.end_params, shape.head_dim, shape.kv_heads) == (BLOCK, ENDS, 16, 2)
    assert shape.params == ENDS + 4 * BLOCK == 276_032
    tied = ModelShape.of({**SMALL, "tie_word_embeddings": True}, config_block_counts(SMALL))
    assert tied.end_params == 1000 * 64 + 64


def test_each_part_against_hand_computed_numbers() -> None:
    small = inputs()
    # per token: 4 bytes x (6 x 64 + 2 x (4 + 2 x 2) x 16 + 3 x 128) and 4 x 4 heads x L float32 scores
    assert block_workspace(small, 1, 32) == 32 * (4 * 1024 + 16 * 32)
    # 2 candidates x 32 tokens through a block, and the logits of 32 positions (float32 run: 4 + 8 bytes)
    assert candidates_bytes(small) == 2 * 32 * 4608 + 32 * 1000 * 12 == 678_912
    # perplexity: 2 windows of 16 tokens, 16 positions of logits; no task, no speed test
    assert evaluation_bytes(small) == 2 * 16 * (4096 + 16 * 16) + 16 * 1000 * 12 == 331_264
    # three copies of 2 windows x 4 blocks of 32 x 64 floats; the walk: 4 windows in and out
    assert states_bytes(small) == 3 * 2 * 4 * 32 * 64 * 4 == 196_608
    assert states_bytes(small, small.walked) == 8 * 32 * 64 * 4 == 65_536
    [single] = device_memory(small, "single")
    assert (single.weights, single.states, single.walk) == (276_032 * 4, 196_608, 65_536)
    assert single.peak == RUNTIME_OVERHEAD + 276_032 * 4 + 196_608 + 678_912
    [stream] = device_memory(small, "stream")
    assert stream.weights == (ENDS + 2 * BLOCK) * 4
    first, second = device_memory(small, "split", 2)
    assert (first.weights, second.weights) == ((ENDS + 2 * BLOCK) * 4, 2 * BLOCK * 4)
    assert first.states == second.states == 196_608 // 2


def test_the_method_and_the_dtype_change_the_parts() -> None:
    shortgpt = inputs(method=ShortGPTMethod())
    assert shortgpt.states == 0 and shortgpt.candidates == 1   # no kept states, one window per forward
    half = inputs(dtype="bfloat16")
    assert device_memory(half, "single")[0].weights == 276_032 * 2
    assert states_bytes(half) == 196_608 // 2
    auto = memory_inputs(SMALL, config_block_counts(SMALL), run_spec(batch="auto"), "cpu")
    assert (auto.candidates, auto.eval_batch) == (1, 1)
    assert memory_inputs(SMALL, config_block_counts(SMALL), run_spec(batch="auto"), "cuda").candidates == 8


def peak(placement: str, devices: int = 1, **kwargs) -> int:
    return max(part.peak for part in device_memory(inputs(**kwargs), placement, devices))


def test_a_run_that_fits_one_device_takes_single() -> None:
    choice = choose_placement(inputs(), "auto", 1, [GiB], 64 * GiB)
    assert (choice.placement, choice.devices, choice.fits, choice.advice) == ("single", 1, True, None)
    assert choice.peak == peak("single") and choice.summary() == "single 1x 0.5 GiB"
    host = choose_placement(inputs(), "auto", 0, [], GiB)
    assert (host.placement, host.on_gpu, host.summary()) == ("single", False, "single host 0.5 GiB")


def test_a_run_too_large_for_one_of_several_gpus_is_split() -> None:
    free = peak("single") - 1
    assert peak("split", 2) <= free
    choice = choose_placement(inputs(), "auto", 2, [free, free], 64 * GiB)
    assert (choice.placement, choice.devices, choice.fits) == ("split", 2, True)


def test_a_run_too_large_for_its_one_gpu_is_streamed() -> None:
    free = peak("single") - 1
    choice = choose_placement(inputs(), "auto", 1, [free], 64 * GiB)
    assert (choice.placement, choice.offload, choice.fits) == ("stream", "host", True)
    # the states wait in host memory (placement.Stream.keep), beside the weights
    assert not choice.states_on_device and choice.memory[0].states == 0
    assert choice.peak == RUNTIME_OVERHEAD + (ENDS + 2 * BLOCK) * 4 + 65_536 + 678_912
    assert choice.host_need == 276_032 * 4 + 196_608
    # the weights (1.1 MB) are more than half of the host's memory: streamed from disk
    assert choose_placement(inputs(), "auto", 1, [free], 2_000_000).offload == "disk"
    # on the host, streamed from disk, the states stay where the blocks compute
    host = choose_placement(inputs(), "stream", 0, [], GiB)
    assert (host.offload, host.states_on_device, host.peak) == ("disk", True, peak("stream"))


def test_a_run_that_fits_nowhere_says_which_settings_would_make_it_fit() -> None:
    free = peak("stream") - 200_000   # the f32 stream, its states in host memory, does not fit either
    choice = choose_placement(inputs(), "auto", 1, [free], 64 * GiB)
    assert not choice.fits and choice.placement == "stream"
    assert choice.advice == ("it fits with `runtime.dtype: bfloat16` (single 1x 0.5 GiB) or `runtime.batch: 1` "
                             "(stream 1x 0.5 GiB) or `gpus: 4` (split 4x 0.5 GiB)")
    assert choice.problem().startswith("does not fit even placed `stream`: needs 0.5 GiB on one GPU (weights ")
    asked = choose_placement(inputs(), "single", 1, [peak("single") - 1], 64 * GiB)
    assert not asked.fits and asked.advice.startswith("it fits with `runtime.placement: auto` (stream 1x")
    one = choose_placement(inputs(), "split", 1, [peak("split", 2)], 64 * GiB)
    assert not one.fits and "`gpus: 2`" in one.advice


def test_the_llama3_70b_config_streams_on_one_80gib_gpu_and_splits_over_four() -> None:
    config = json.loads((REPO / "sweeps" / "models" / "llama3-70b" / "config.json").read_text())
    counts = config_block_counts(config)
    run = run_spec(dtype="bfloat16", batch="auto").model_copy(update={
        "calibration": CalibrationRun(source="c4-train", samples=32, seq_len=2048, seed=0),
        "evaluation": EvaluationSpec(seq_len=2048), "method": TwoSSPMethod()})
    large = memory_inputs(config, counts, run)
    assert large.model.params * 2 == pytest.approx(141.1e9, rel=1e-3)   # 70.6B parameters in bfloat16
    assert choose_placement(large, "auto", 1, [80 * GiB], 64 * GiB).summary() == "stream 1x 23.6 GiB"
    assert choose_placement(large, "auto", 4, [80 * GiB] * 4, 64 * GiB).summary() == "split 4x 52.3 GiB"
    assert not choose_placement(large, "single", 1, [80 * GiB], 64 * GiB).fits
