"""The pruning contract (twossp.prune.context): every registered runner takes one PruneContext and
every shared step's computation a ModelContext and its parameters; what a runner's outcome says of
its removals is stored under the names each method always used and read back as it was."""

from __future__ import annotations

import inspect

import pytest

from twossp.contracts import STAGE2_KEYS, Budget, PruneOutcome, removal_record
from twossp.methods import METHODS, SHARED_STEPS, DenseMethod, TwoSSPMethod
from twossp.errors import BudgetError
from twossp.families import adapter_for
from twossp.prune import ModelContext, PruneContext, prune


@pytest.mark.parametrize("name", [name for name in METHODS if METHODS[name].prunes])
def test_every_runner_takes_one_context(name: str) -> None:
    parameters = list(inspect.signature(METHODS[name].run.load()).parameters.values())
    assert [p.name for p in parameters] == ["context"]


@pytest.mark.parametrize("kind", list(SHARED_STEPS))
def test_every_shared_step_takes_a_model_context_and_its_parameters(kind: str) -> None:
    parameters = inspect.signature(SHARED_STEPS[kind].compute.load()).parameters
    assert list(parameters) == ["context", "params"]


def test_a_model_context_becomes_a_run_s_without_copying_the_model(tiny, cpu) -> None:
    model = tiny.model("llama", num_layers=2)
    loaded = ModelContext(model=model, adapter=adapter_for(model.config), calibration=tiny.tokens(2, 8),
                          device=cpu, batch=3)
    context = loaded.pruning(sparsity=0.25, method=TwoSSPMethod(), shared={"scores": []})
    assert isinstance(context, PruneContext)
    assert context.model is model and context.calibration is loaded.calibration and context.batch == 3
    assert (context.sparsity, context.method, context.shared) == (0.25, TwoSSPMethod(), {"scores": []})


def test_the_dense_method_is_not_a_runner(tiny, cpu) -> None:
    model = tiny.model("llama", num_layers=2)
    with pytest.raises(BudgetError, match="does not prune"):
        prune(PruneContext(model=model, adapter=adapter_for(model.config), calibration=tiny.tokens(1, 8),
                           device=cpu, sparsity=0.5, method=DenseMethod()))


def test_a_search_is_stored_as_each_method_always_stored_it_and_read_back() -> None:
    # names and order as runs.details has always held them (a JSON column: the order is in its text)
    stage2 = PruneOutcome(kept_ffn=None, removed_attention=[3, 1], removal_order=[("attention", 3), ("attention", 1)],
                          calibration_perplexity=[12.5, 14.0], layer_forwards=7, naive_layer_forwards=12,
                          candidate_batch=4, stored_as=STAGE2_KEYS, budget=Budget(0.5, 2, 96, 4))
    assert list(stage2.stored_details().items()) == [
        ("budget", {"num_attention_removed": 2, "ffn_keep": 4, "ffn_params_cut_per_block": 96}),
        ("removed_attention_order", [3, 1]), ("calibration_perplexity_after_each_removal", [12.5, 14.0]),
        ("stage2_layer_forwards", 7), ("stage2_naive_layer_forwards", 12), ("stage2_candidate_batch", 4)]
    submodules = PruneOutcome(kept_ffn=None, removed_attention=[2], removed_ffn=[0],
                              removal_order=[("ffn", 0), ("attention", 2)], calibration_perplexity=[9.0, 9.5],
                              layer_forwards=5, naive_layer_forwards=8, details={"target_params": 40})
    assert list(submodules.stored_details().items()) == [
        ("removal_order", [["ffn", 0], ["attention", 2]]), ("calibration_perplexity_after_each_removal", [9.0, 9.5]),
        ("target_params", 40), ("layer_forwards", 5), ("naive_layer_forwards", 8)]
    for outcome in (stage2, submodules):
        record = removal_record(outcome.stored_details())
        assert (record.steps, record.ordered, record.calibration_perplexity) == (
            outcome.removal_order, True, outcome.calibration_perplexity)


def test_whole_blocks_are_read_back_without_an_order() -> None:
    blocks = PruneOutcome(kept_ffn=None, removed_attention=[], removed_blocks=[4, 5], layer_forwards=30,
                          details={"removed_blocks": [4, 5]})
    assert blocks.stored_details() == {"removed_blocks": [4, 5], "layer_forwards": 30}
    record = removal_record(blocks.stored_details())
    assert (record.steps, record.ordered) == ([("block", 4), ("block", 5)], False)
    assert removal_record(None) == removal_record({}) and not removal_record(None).steps
