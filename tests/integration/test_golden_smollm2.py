"""Golden numbers on the real SmolLM2-135M with the quickstart's settings (sweeps/quickstart.yaml:
Lee calibration, 16 windows of 256 tokens; 32 Lee evaluation windows of 256), through the worker
in-process: 2SSP's removal order, its FFN width and the perplexities, pinned. A change anywhere in
the real path (tokenising, loading, stage 1, stage 2, surgery, perplexity) fails here, not only on
the tiny models.

The figures were measured once on the 2-core CPU (fp32) and agree with the quickstart's leaderboard;
the perplexity tolerance (relative 1e-3) absorbs float reordering across BLAS builds, not a change
of method."""

from __future__ import annotations

from pathlib import Path

import pytest

from twossp.contracts import RunStatus
from twossp.plan import plan_sweep
from twossp.runtime.worker import execute_run
from twossp.spec import load_sweep

pytestmark = pytest.mark.slow

QUICKSTART = Path(__file__).resolve().parents[2] / "sweeps" / "quickstart.yaml"

#: sparsity -> (attentions removed, in order; FFN width kept; perplexity on lee-evaluation)
GOLDEN = {
    None: ([], 1536, 30.4370),
    0.25: ([4, 20], 1058, 68.9211),
    0.375: ([4, 7, 14, 12], 836, 119.332),
    0.5: ([20, 5, 29, 13, 26, 19, 8, 15], 648, 226.603),
}


@pytest.fixture(scope="module")
def results():
    spec = load_sweep(QUICKSTART)
    runs = [r for r in plan_sweep(spec) if r.method.name in ("dense", "2ssp")]
    return {run.sparsity: execute_run(run.model_copy(update={"runtime": run.runtime.model_copy(
        update={"threads": 2, "device": "cpu"})})) for run in runs}


@pytest.mark.parametrize("sparsity", list(GOLDEN))
def test_2ssp_on_smollm2_matches_the_golden_run(results, sparsity):
    result = results[sparsity]
    assert result.status == RunStatus.COMPLETED, result.error
    order, width, ppl = GOLDEN[sparsity]
    removed = result.details.get("removed_attention_order", [])
    assert removed == order
    assert {m.ffn_kept for m in result.masks} == {width}
    [(dataset, metric, value)] = result.scores
    assert (dataset, metric) == ("lee-evaluation", "perplexity")
    assert value == pytest.approx(ppl, rel=1e-3)
