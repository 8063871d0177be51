"""Sweep files: YAML validated by Pydantic v2 models (``extra="forbid"``, strict types).

``load_sweep`` reports every problem of a file at once, each with its file and line, and never
imports torch, so ``twossp sweep validate`` stays instant. No input makes it raise anything but
``SpecError``: hostile YAML (alias bombs, deep nesting, values PyYAML cannot construct) is
measured and refused before any Python object is built.

One concern a module:

- ``schema``: the models of a sweep file (``SweepSpec`` and its sections) and its text sources;
- ``yaml_file``: any YAML file read with its line numbers (sweep files, and the view files of
  ``twossp.dash.views``), hostile YAML refused, Pydantic errors mapped to lines; no schema in it;
- ``fields``: Pydantic models read through their annotations (what validates of an invalid file);
- ``rules``: the checks that span sections, each a named rule;
- ``sweep_file``: ``parse_sweep`` and ``load_sweep``, which put these together.
"""

from __future__ import annotations

from twossp.spec.schema import (
    BUILTIN_MODELS,
    NAMED_SOURCES,
    AnyMethod,
    CalibrationSpec,
    EvaluationSpec,
    FileSource,
    GenerateSpec,
    LoraSpec,
    ModelSpec,
    RecoverySpec,
    RuntimeSpec,
    SaveSpec,
    SpeedSpec,
    SweepSpec,
    TaskSpec,
    TextSource,
    source_identity,
    source_key,
    source_label,
)
from twossp.spec.sweep_file import load_sweep, parse_sweep
from twossp.spec.yaml_file import MAX_DEPTH, MAX_NODES

__all__ = [
    "BUILTIN_MODELS", "MAX_DEPTH", "MAX_NODES", "NAMED_SOURCES", "AnyMethod", "CalibrationSpec", "EvaluationSpec",
    "FileSource", "GenerateSpec", "LoraSpec", "ModelSpec", "RecoverySpec", "RuntimeSpec", "SaveSpec", "SpeedSpec", "SweepSpec", "TaskSpec",
    "TextSource", "load_sweep", "parse_sweep", "source_identity", "source_key", "source_label",
]
