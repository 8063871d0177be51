"""twossp: structured pruning of LLMs with 2SSP (arXiv 2501.17771), run as declarative sweeps."""

__version__ = "0.1.0"
