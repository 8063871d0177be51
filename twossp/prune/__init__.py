"""Pruning: the methods' runners (2SSP's two stages, the depth baselines, BlockPruner, EvoPress,
SliceGPT), the search machinery they share (``calibration``), layer masks, and the contract every
runner follows (``context``: one ``PruneContext`` in, one ``contracts.PruneOutcome`` out)."""

from twossp.prune.context import ModelContext, PruneContext, Runner, StepComputation, prune

__all__ = ["ModelContext", "PruneContext", "Runner", "StepComputation", "prune"]
