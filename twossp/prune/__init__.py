"""Pruning methods: the budget rule (pure maths), stage 1 (width) and stage 2 (depth)."""


def prune(model, adapter, calibration, sparsity, method, device, progress=None):  # noqa: ANN001, ANN201
    """Prune ``model`` in place with the sweep method ``method`` (its registry entry's runner, see
    ``twossp.methods``); returns the ``contracts.PruneOutcome``."""
    from twossp.errors import BudgetError
    from twossp.methods import method_of

    entry = method_of(method)
    if not entry.prunes:
        raise BudgetError(f"method {entry.name!r} does not prune")
    return entry.run.load()(model, adapter, calibration, sparsity, method, device, progress)
