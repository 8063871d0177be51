"""twossp: structured pruning of LLMs with 2SSP (arXiv 2501.17771) and the methods it is compared
with, run as declarative sweeps whose results land in a database. This package root is the public
facade: ``load_pruned`` reloads a model twossp saved; ``twossp.cli`` is the command line."""

__version__ = "0.1.0"


def load_pruned(directory, dtype=None, device="cpu"):  # noqa: ANN001, ANN201 - see twossp.checkpoint
    """Reload a pruned model saved by twossp (``twossp export`` or ``save_pruned``); see
    ``twossp.checkpoint.load_pruned``."""
    from twossp.checkpoint import load_pruned as _load

    return _load(directory, dtype=dtype, device=device)
