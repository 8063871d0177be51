"""The 2SSP sparsity budget (paper Eq. 5, alpha from Sec. 4.3; docs/method.md) and the one rounding
rule of whole-unit methods: pure arithmetic on parameter counts, no torch."""

from __future__ import annotations

import math

from twossp.contracts import BlockCounts, Budget
from twossp.errors import BudgetError


def two_stage_budget(counts: BlockCounts, sparsity: float, alpha: float = 1.5) -> Budget:
    """Split sparsity ``s`` between attention removal and FFN width (paper Eq. 5).

    N_attn = round(N * s ** ((P_mlp / P_attn) / alpha)); m = round((round(s P_layers) - N_attn
    P_attn) / N); d_keep = round(d_ff (1 - m / P_mlp)). ``round`` is Python's (half to even),
    as in the reference. Requests the two stages cannot meet raise ``BudgetError``.
    """
    if not 0 < sparsity < 1:
        raise BudgetError(f"sparsity must be strictly between 0 and 1, got {sparsity}")
    if alpha <= 0:
        raise BudgetError(f"alpha must be positive, got {alpha}")
    n = counts.num_layers
    n_attn = round(n * sparsity ** ((counts.mlp_params / counts.attn_params) / alpha))
    target = round(sparsity * counts.layer_params)
    if n_attn * counts.attn_params > target:
        raise BudgetError(
            f"removing {n_attn} attention modules ({n_attn * counts.attn_params:,} parameters) exceeds the "
            f"budget of {target:,} parameters at sparsity {sparsity}; lower alpha"
        )
    if n_attn * counts.attn_params + n * counts.mlp_params < target:
        raise BudgetError(
            f"sparsity {sparsity} needs {target:,} parameters removed but {n_attn} attention modules and "
            f"every FFN neuron only hold {n_attn * counts.attn_params + n * counts.mlp_params:,}"
        )
    m = round((target - n_attn * counts.attn_params) / n)
    d_keep = round(counts.intermediate_size * (1 - m / counts.mlp_params))
    if d_keep < 1:
        raise BudgetError(f"sparsity {sparsity} leaves no FFN neuron in a block (d_keep={d_keep})")
    return Budget(sparsity, n_attn, m, d_keep)


def ceil_share(sparsity: float, total: int) -> int:
    """ceil(s * total), the count of whole units (blocks, parameters) a sparsity asks for, rounded
    up. The product is first taken down by a relative 1e-12, so float noise does not add a unit
    (0.3 * 10 is 3.0000000000000004) while any real fraction still does (at 10^11 units the guard
    is 0.1 of a unit)."""
    return math.ceil(sparsity * total * (1 - 1e-12))


def blocks_to_remove(num_layers: int, sparsity: float) -> int:
    """Whole-block methods remove ceil(s * N) blocks (docs/method.md, Baselines)."""
    return ceil_share(sparsity, num_layers)
