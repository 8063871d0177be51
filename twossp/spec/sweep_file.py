"""A sweep file read, validated and checked: ``load_sweep`` reports every problem of a file at once,
each with its file and line, and never imports torch, so ``twossp sweep validate`` stays instant.
No input makes it raise anything but ``SpecError``."""

from __future__ import annotations

from pathlib import Path

from twossp.errors import SpecError, SpecProblem
from twossp.spec.fields import partial
from twossp.spec.rules import cross_checks
from twossp.spec.schema import UNION_TAGS, SweepSpec
from twossp.spec.yaml_file import MAX_DEPTH, Located, finished, read_text, read_yaml, validated

#: The smallest valid values of the required top-level keys: one field of a sweep is validated
#: alone (with all its validators and constraints) by validating it next to these.
_SWEEP_STUB = {"name": "stub", "models": [{"hub": "stub/stub"}], "methods": ["dense"]}


def parse_sweep(text: str, file: str = "<sweep>", base_dir: str | Path | None = None, *,
                check_files: bool = True) -> SweepSpec:
    """Parse and validate sweep YAML; raise ``SpecError`` listing every problem with its line.
    Relative paths in it are taken relative to ``base_dir`` (the sweep file's folder) when given.
    ``check_files``: also report local models and text files that do not exist on this machine."""
    try:
        problems, spec = _parse(text, file, base_dir, check_files)
    except RecursionError:  # a last resort: the reader refuses deep nesting before anything recurses
        problems, spec = [SpecProblem(file, None, "", f"the YAML is nested more than {MAX_DEPTH} levels deep")], None
    if problems or spec is None:
        raise SpecError(finished(problems))
    return spec


def load_sweep(path: str | Path, *, check_files: bool = True) -> SweepSpec:
    """A sweep file (see ``parse_sweep``), its relative paths taken from its folder."""
    path = Path(path)
    return parse_sweep(read_text(path, "sweep"), str(path), base_dir=path.resolve().parent, check_files=check_files)


def _parse(text: str, file: str, base_dir: str | Path | None,
           check_files: bool) -> tuple[list[SpecProblem], SweepSpec | None]:
    """The problems of a sweep text, and its spec when there are none. On an invalid sweep the
    cross-section rules run on what validates of it, in the same round as its type errors."""
    problems, data, node = read_yaml(text, file, "a sweep file is a YAML mapping (name:, models:, methods:, ...)")
    if data is None:
        return problems, None
    context = {"base_dir": str(base_dir) if base_dir else None}
    errors, spec = validated(SweepSpec, data, node, file, context, UNION_TAGS)
    tree = Located(node)
    if spec is None:
        valid_parts = partial(SweepSpec, data, context, _SWEEP_STUB)
        return problems + errors + cross_checks(valid_parts, tree, file, check_files), None
    return problems + cross_checks(spec, tree, file, check_files), spec
