"""The base class of every model a user's YAML file is validated as (sweep files, view files,
method specs): one strictness for all of them.

Torch-free and at the bottom of the layers, so ``twossp.methods``, ``twossp.spec`` and
``twossp.dash`` share it without importing each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Sweep-file models: unknown keys, type coercions (``yes`` for a number, ``"1"`` for a flag)
    and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
