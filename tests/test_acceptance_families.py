"""Every family x every pruning method x 0.25 and 0.5 on its tiny model, through the method registry
as a sweep runs it: the pruned model runs forward, generates the same with and without its KV cache,
saves and reloads to identical logits, and the sparsity counted from the pruned tensors is the one a
run records (the worker's figure: decoder-layer parameters after / before).
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.support.models import FAMILIES, hf_format, layer_numel, tiny_model
from twossp.checkpoint import load_pruned, save_pruned
from twossp.errors import UnsupportedArchitecture
from twossp.families import adapter_for
from twossp.prune import PruneContext, prune
from twossp.methods import METHODS

#: each method with settings small enough for 6-block models (EvoPress: a short search)
SPECS = {name: METHODS[name].spec(**({"generations": 4, "offspring": 4, "initial_candidates": 4}
                                 if name == "evopress" else {}))
         for name in METHODS if name != "dense"}


@pytest.fixture(scope="module")
def dense_models(request):
    return {family: tiny_model(family, num_layers=6) for family in FAMILIES}


@pytest.mark.parametrize("sparsity", [0.25, 0.5])
@pytest.mark.parametrize("method", sorted(SPECS))
@pytest.mark.parametrize("family", FAMILIES)
def test_prune_generate_save_reload(dense_models, tiny, cpu, tmp_path, family, method, sparsity) -> None:
    model = copy.deepcopy(dense_models[family])
    adapter = adapter_for(model.config)
    dense_params = adapter.block_counts(model).layer_params
    dense_numel = layer_numel(model)
    calibration = tiny.tokens(4, 24, seed=11)
    if method == "slicegpt" and family.startswith("gemma"):
        with pytest.raises(UnsupportedArchitecture):
            prune(PruneContext(model=model, adapter=adapter, calibration=calibration, sparsity=sparsity,
                               method=SPECS[method], device=cpu))
        return
    prune(PruneContext(model=model, adapter=adapter, calibration=calibration, sparsity=sparsity, method=SPECS[method],
                       device=cpu))

    recorded = 1 - adapter.block_counts(model).layer_params / dense_params  # what the worker stores
    assert recorded == pytest.approx(1 - layer_numel(model) / dense_numel, abs=1e-12)
    assert recorded >= sparsity - 0.02, recorded  # methods meet the target (2SSP to within a rounding)

    tokens = tiny.tokens(2, 12, seed=5)
    with torch.no_grad():
        logits = model(tokens).logits
    assert torch.isfinite(logits).all()
    prompt = tokens[:1, :6]
    kwargs = dict(do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, use_cache=True, **kwargs),
                           model.generate(prompt, use_cache=False, **kwargs))

    save_pruned(model, None, tmp_path, "safetensors" if method == "slicegpt" else hf_format(family))
    reloaded = load_pruned(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, logits, rtol=0, atol=0)
