"""Recovery (issue 22) on tiny models: the loop lowers its loss, distillation of a model into itself
costs nothing, LoRA adapters sit only on what pruning left and merge exactly, the chunked objective
equals the whole one, and a seed repeats a recovery on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.support.models import logits, random_tokens, tiny_model
from twossp.errors import RecoveryFailed
from twossp.families import adapter_for
from twossp.recover import Objective, Windows, live_linear_layers, merged, recover, with_adapters
from twossp.spec import LoraSpec, RecoverySpec

CPU = torch.device("cpu")


def _pruned(family: str = "llama"):
    """A tiny model and its pruned copy: block 1 without attention, block 2 without FFN, block 3's FFN
    narrowed to 10 neurons, block 0 whole."""
    dense = tiny_model(family)
    adapter = adapter_for(dense.config)
    pruned = copy.deepcopy(dense)
    adapter.remove_attention(pruned, 1)
    adapter.remove_ffn(pruned, 2)
    adapter.prune_ffn(adapter.layers(pruned)[3], torch.arange(10))
    return dense, pruned, adapter


def _spec(**settings) -> RecoverySpec:
    return RecoverySpec(**{"steps": 12, "lr": 3e-3, "batch_size": 2, "seq_len": 16, "warmup": 0, **settings})


@pytest.mark.parametrize("loss", ["kd", "ce"])
@pytest.mark.parametrize("tune", ["full", "lora"])
def test_the_loss_decreases_on_a_fixed_batch(loss: str, tune: str) -> None:
    dense, pruned, adapter = _pruned()
    batch = random_tokens(2, 16).flatten()  # exactly one batch: every step sees the same windows
    spec = _spec(loss=loss, tune=tune, lr=1e-2 if tune == "lora" else 3e-3, schedule="constant")
    outcome = recover(pruned, dense, adapter, batch, spec, CPU, torch.float32)
    losses = [step.loss for step in outcome.curve]
    assert len(losses) == spec.steps
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(step.tokens == i * 2 * 16 for i, step in enumerate(outcome.curve, 1))
    assert (outcome.curve[0].kd_loss is not None) == (loss == "kd")
    assert all(step.ce_loss is not None and step.grad_norm is not None for step in outcome.curve)


def test_distilling_the_dense_model_into_itself_costs_nothing() -> None:
    dense = tiny_model("llama")
    adapter = adapter_for(dense.config)
    student = copy.deepcopy(dense)
    windows = random_tokens(3, 24)
    loss = Objective(adapter, "kd", temperature=2.0)(student, dense, windows)
    assert float(loss.objective.detach()) == 0.0
    assert loss.kd == 0.0 and loss.ce > 0 and loss.tokens == 3 * 23
    # and its gradient vanishes (to rounding: the softmax's sum is 1 to float precision)
    loss.objective.backward()
    assert max(p.grad.abs().max().item() for p in student.parameters() if p.grad is not None) < 1e-6


def test_the_objective_made_a_chunk_at_a_time_equals_the_whole() -> None:
    dense, pruned, adapter = _pruned()
    windows = random_tokens(2, 16)
    whole = Objective(adapter, "kd", 1.5, 0.3, chunk=10_000)(pruned, dense, windows)
    chunked_model = copy.deepcopy(pruned)
    chunked = Objective(adapter, "kd", 1.5, 0.3, chunk=7)(chunked_model, dense, windows)  # recomputed in backward
    assert float(chunked.objective.detach()) == pytest.approx(float(whole.objective.detach()), rel=1e-5)
    assert chunked.kd == pytest.approx(whole.kd, rel=1e-5) and chunked.ce == pytest.approx(whole.ce, rel=1e-5)
    whole.objective.backward()
    chunked.objective.backward()
    for (name, a), b in zip(pruned.named_parameters(), chunked_model.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "phi3"])
def test_lora_adapters_sit_only_on_live_linear_layers_and_merge_to_the_same_logits(family: str) -> None:
    _, pruned, adapter = _pruned(family)
    live = live_linear_layers(pruned, adapter)
    linears = {name: module for name, module in pruned.named_modules() if isinstance(module, nn.Linear)}
    assert set(live) == {name for name in linears if ".layers." in name}  # every block's, never the head
    assert not any(".layers.1.self_attn" in name or ".layers.2.mlp" in name for name in live)  # removed parts
    shapes = {name: (m.in_features, m.out_features) for name, m in linears.items()}
    torch.manual_seed(0)
    peft_model = with_adapters(pruned, adapter, LoraSpec(rank=4, alpha=8))
    adapted = {name.removeprefix("base_model.model."): module for name, module in peft_model.named_modules()
               if hasattr(module, "lora_A") and "default" in module.lora_A}
    assert sorted(adapted) == sorted(live)
    for name, module in adapted.items():  # each adapter from its layer's own shape (narrowed FFNs included)
        assert module.lora_A["default"].in_features == shapes[name][0]
        assert module.lora_B["default"].out_features == shapes[name][1]
        nn.init.normal_(module.lora_B["default"].weight, std=0.05)  # as after training: not zero
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    ids = random_tokens(2, 12)
    with torch.no_grad():
        adapted_logits = peft_model(input_ids=ids).logits
    plain = merged(peft_model)
    assert not any(hasattr(module, "lora_A") for module in plain.modules())
    assert torch.allclose(logits(plain, ids), adapted_logits, rtol=0, atol=1e-4)  # the merged sums round apart


def test_an_unknown_lora_target_is_named_with_what_the_blocks_have() -> None:
    _, pruned, adapter = _pruned()
    with pytest.raises(RecoveryFailed, match=r"'q_prj' is not a linear layer .* they have down_proj, gate_proj"):
        live_linear_layers(pruned, adapter, ["q_prj", "v_proj"])
    assert all(name.endswith("v_proj") for name in live_linear_layers(pruned, adapter, ["v_proj"]))


def test_a_seed_repeats_a_recovery_and_another_seed_does_not() -> None:
    def run(seed: int) -> list[float]:
        dense, pruned, adapter = _pruned()
        spec = _spec(steps=4, seed=seed, tune="lora", lr=1e-2)
        return [s.loss for s in recover(pruned, dense, adapter, random_tokens(8, 16).flatten(), spec, CPU,
                                        torch.float32).curve]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_the_best_held_out_step_is_kept_and_the_schedule_warms_up_then_decays() -> None:
    dense, pruned, adapter = _pruned()
    spec = _spec(steps=10, warmup=3, eval_every=2, eval_windows=2, lr=5e-2, schedule="cosine")
    outcome = recover(pruned, dense, adapter, random_tokens(10, 16).flatten(), spec, CPU, torch.float32)
    lrs = [s.lr for s in outcome.curve]
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == pytest.approx(5e-2) and lrs[-1] < lrs[4]
    measured = {s.step: s.heldout_perplexity for s in outcome.curve if s.heldout_perplexity is not None}
    assert sorted(measured) == [2, 4, 6, 8, 10]
    best = min(measured, key=measured.get)
    if measured[best] < outcome.heldout_before:
        assert outcome.best_step == (None if best == 10 else best)
    else:  # no step beat the pruned model: its weights are kept
        assert outcome.best_step == 0
    from twossp.recover import heldout_perplexity

    windows = Windows.cut(random_tokens(10, 16).flatten(), 16, 2, 2)
    kept = heldout_perplexity(outcome.model, adapter, windows.heldout, 2, CPU, torch.float32)
    assert kept == pytest.approx(min(measured[best], outcome.heldout_before), rel=1e-5)


def test_too_little_text_is_refused_with_what_to_change() -> None:
    dense, pruned, adapter = _pruned()
    with pytest.raises(RecoveryFailed, match="too few for 8 held-out windows and a batch of 2"):
        recover(pruned, dense, adapter, random_tokens(1, 50).flatten(), _spec(eval_every=1), CPU, torch.float32)
