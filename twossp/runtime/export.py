"""``twossp export``: a completed run's pruned model rebuilt from the dense weights and the layer
masks stored in the database alone, then saved with ``checkpoint.save_pruned``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twossp.contracts import LayerMask, RunStatus
from twossp.db import store
from twossp.errors import CheckpointError
from twossp.methods import method_of
from twossp.plan import RunSpec


def find_run(db: Any, key: str) -> tuple[RunSpec, list[LayerMask]]:
    """The completed run whose key is ``key`` or starts with it, and its masks."""
    with db.session() as session:
        rows = store.runs_with_prefix(session, key, 2)
        if len(rows) != 1:
            raise CheckpointError(f"{'no run' if not rows else 'more than one run'} with a key starting {key!r}")
        run = rows[0]
        if run.status != RunStatus.COMPLETED:
            raise CheckpointError(f"run {run.key} is {run.status}, not completed: nothing to export")
        spec = RunSpec.model_validate(run.spec)
        if spec.weights_changed() or (spec.weights is None and spec.key != run.key):  # other weights now
            raise CheckpointError(
                f"run {run.key} was computed from other weights than {spec.model.label} holds now "
                f"({spec.model.path or spec.model.gguf or spec.model.hub}): its masks would be applied to weights "
                "they were not chosen for; run the sweep again to prune the current weights")
        refusal = method_of(spec.method).export_refusal
        if refusal:
            raise CheckpointError(f"run {run.key} is a {spec.method.name} run: {refusal}")
        return spec, [LayerMask(m.layer, m.attention_kept, m.ffn_width, m.ffn_mask) for m in run.layer_masks]


def export_run(db: Any, key: str, directory: str | Path, device: str = "cpu", overwrite: bool = False) -> Any:
    """Rebuild a completed run's pruned model from the dense weights and its stored masks and save
    it to ``directory`` (a ``checkpoint.SavedCheckpoint``). ``key`` may be a unique prefix.

    ``directory`` must be new or empty unless ``overwrite``: files of an earlier checkpoint (an old
    shard index beside new weights) would otherwise be mistaken for part of this one. The model is
    written to a sibling folder and renamed into place, so a failed export leaves nothing behind."""
    import torch

    from twossp.checkpoint import save_atomically
    from twossp.families import adapter_for
    from twossp.prune.masks import apply_masks
    from twossp.device import DTYPES
    from twossp.runtime.loading import load_model

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise CheckpointError(f"{directory} is not empty; export into a new or empty directory, or pass "
                              "--overwrite to replace what it holds")
    spec, masks = find_run(db, key)
    model, tokenizer = load_model(spec.model, DTYPES[spec.runtime.dtype], torch.device(device))
    apply_masks(model, adapter_for(model.config), masks)
    return save_atomically(model, tokenizer, directory)
