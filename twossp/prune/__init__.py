"""Pruning methods: the budget rule (pure maths), stage 1 (width) and stage 2 (depth)."""


def prune(model, adapter, calibration, sparsity, method, device, progress=None, shared=None,  # noqa: ANN001, ANN201
          batch=1):  # noqa: ANN001
    """Prune ``model`` in place with the sweep method ``method`` (its registry entry's runner, see
    ``twossp.methods``); returns the ``contracts.PruneOutcome``. ``shared``: the result of the
    method's shared step, which the runner then takes instead of computing it; ``batch``: candidate
    removals scored per forward, for the methods that search (``Method.batched``)."""
    from twossp.errors import BudgetError
    from twossp.methods import method_of

    entry = method_of(method)
    if not entry.prunes:
        raise BudgetError(f"method {entry.name!r} does not prune")
    extra = {"shared": shared} if shared is not None else {}
    if entry.batched:
        extra["batch"] = batch
    return entry.run.load()(model, adapter, calibration, sparsity, method, device, progress, **extra)
