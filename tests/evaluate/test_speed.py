"""Speed measurement: prefill time, greedy KV-cache decode, peak memory (no timing assertions: the
numbers depend on the machine; only their form and the decoded tokens are checked)."""

from __future__ import annotations

import math

import pytest
import torch

from twossp.device import elapsed, peak_memory, reset_peak_memory
from twossp.evaluate.speed import measure_speed
from twossp.families import adapter_for
from twossp.methods import TwoSSPMethod
from twossp.prune import PruneContext, prune

NEW_TOKENS = 8


def greedy_reference(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    out = model.generate(prompt[None], max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, prompt.numel():]


def test_scores_are_positive_and_named(tiny, cpu):
    model = tiny.model("llama", num_layers=2)
    speed = measure_speed(model, tiny.tokens(1, 32)[0], tiny.tokens(1, 5, seed=2)[0], NEW_TOKENS,
                          warmup=1, repeats=3, device=cpu)
    rows = speed.scores()
    assert all(group == "speed" for group, _, _ in rows)
    values = {metric: value for _, metric, value in rows}
    assert set(values) == {"prefill_seconds", "prefill_seconds_sd", "prefill_tokens_per_second",
                           "decode_tokens_per_second", "decode_tokens_per_second_sd", speed.memory[0]}
    assert speed.memory[0] in {"peak_rss_bytes", "peak_rss_lifetime_bytes"}
    for metric, value in values.items():
        assert math.isfinite(value), metric
        assert value > 0 or (metric.endswith("_sd") and value >= 0), metric
    assert speed.prefill_tokens == 32 and speed.new_tokens == NEW_TOKENS
    assert values["prefill_tokens_per_second"] == pytest.approx(32 / speed.prefill_seconds)


def test_one_repeat_has_no_sd(tiny, cpu):
    model = tiny.model("llama", num_layers=1)
    speed = measure_speed(model, tiny.tokens(1, 8)[0], tiny.tokens(1, 3)[0], 1, warmup=0, repeats=1, device=cpu)
    assert speed.prefill_seconds_sd is None and speed.decode_tokens_per_second_sd is None
    metrics = [metric for _, metric, _ in speed.scores()]
    assert "prefill_seconds_sd" not in metrics and "decode_tokens_per_second_sd" not in metrics
    assert speed.tokens.shape == (1,)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_decode_tokens_equal_greedy_generate(tiny, cpu, family):
    model = tiny.model(family, num_layers=2)
    prompt = tiny.tokens(1, 6, seed=3)[0]
    speed = measure_speed(model, tiny.tokens(1, 16)[0], prompt, NEW_TOKENS, warmup=1, repeats=2, device=cpu)
    assert speed.tokens.shape == (NEW_TOKENS,)
    assert torch.equal(speed.tokens, greedy_reference(model, prompt, NEW_TOKENS))


def test_pruned_model_decodes_like_generate(tiny, cpu):
    model = tiny.model("llama", num_layers=4)
    adapter = adapter_for(model.config)
    outcome = prune(PruneContext(model=model, adapter=adapter, calibration=tiny.tokens(2, 16, seed=5), sparsity=0.5,
                                 method=TwoSSPMethod(), device=cpu))
    assert outcome.removed_attention  # some block really lost its attention
    layers = adapter.layers(model)
    assert not all(adapter.is_attention_present(layer) for layer in layers)

    prompt = tiny.tokens(1, 6, seed=4)[0]
    speed = measure_speed(model, tiny.tokens(1, 16)[0], prompt, NEW_TOKENS, warmup=0, repeats=2, device=cpu)
    assert torch.equal(speed.tokens, greedy_reference(model, prompt, NEW_TOKENS))
    assert all(value > 0 for _, metric, value in speed.scores() if not metric.endswith("_sd"))


@pytest.mark.parametrize("change, message", [
    ({"warmup": -1}, "warmup"),
    ({"repeats": 0}, "repeats"),
    ({"new_tokens": 0}, "new_tokens"),
    ({"window": torch.tensor([], dtype=torch.long)}, "window"),
    ({"prompt": torch.tensor([], dtype=torch.long)}, "prompt"),
    ({"window": torch.zeros(2, 4, dtype=torch.long)}, "window"),
])
def test_bad_arguments_raise(tiny, cpu, change, message):
    model = tiny.model("llama", num_layers=1)
    args = {"window": tiny.tokens(1, 8)[0], "prompt": tiny.tokens(1, 3)[0], "new_tokens": 2, "warmup": 0, "repeats": 1}
    with pytest.raises(ValueError, match=message):
        measure_speed(model, device=cpu, **{**args, **change})


def test_peak_memory_on_cpu(cpu):
    reset_peak_memory(cpu)
    block = torch.ones(4 * 1024 * 1024)  # 16 MiB touched, so the resident set really holds it
    name, value = peak_memory(cpu)
    assert name in {"peak_rss_bytes", "peak_rss_lifetime_bytes"}
    assert isinstance(value, int) and value >= block.numel() * block.element_size()


def test_elapsed_is_a_non_negative_float(cpu):
    calls = []
    seconds = elapsed(cpu, lambda: calls.append(sum(range(1000))))
    assert isinstance(seconds, float) and seconds >= 0
    assert calls == [sum(range(1000))]


def test_peak_memory_is_none_on_mps():
    assert peak_memory(torch.device("mps")) is None


def test_peak_memory_falls_back_to_lifetime_peak(cpu, monkeypatch):
    import twossp.device as device_module

    def refuse(path, *args, **kwargs):
        raise PermissionError(path)

    monkeypatch.setattr(device_module, "open", refuse, raising=False)  # module globals shadow builtins
    reset_peak_memory(cpu)
    monkeypatch.undo()
    name, value = peak_memory(cpu)
    assert name == "peak_rss_lifetime_bytes" and value > 0
    reset_peak_memory(cpu)  # later measurements in this process get the real reset back
    assert peak_memory(cpu)[0] in {"peak_rss_bytes", "peak_rss_lifetime_bytes"}
