"""Saving and reloading pruned models.

A pruned model is saved with ``save_pretrained``; its config records the blocks whose attention was
removed (``twossp_removed_attention``) and its uniform FFN width (``intermediate_size``). Where no
attention was removed the directory is a plain Hugging Face checkpoint that any stock loader (and
so any serving engine) reads. ``load_pruned`` replays the removals and then proves that every
weight the model owns came from the checkpoint: transformers silently re-initialises weights a
checkpoint lacks, which must never reach a user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twossp.errors import TwosspError

if TYPE_CHECKING:
    import torch
    from torch import nn

REMOVED_KEY = "twossp_removed_attention"
REMOVED_FFN_KEY = "twossp_removed_ffn"


class CheckpointError(TwosspError):
    """A pruned checkpoint does not match what its config says (missing or extra weights)."""


@dataclass(frozen=True)
class SavedCheckpoint:
    directory: Path
    stock: bool                  # loadable by plain AutoModelForCausalLM.from_pretrained
    removed_attention: list[int]
    removed_ffn: list[int] = ()  # type: ignore[assignment]

    @property
    def note(self) -> str:
        if self.stock:
            return ("a plain Hugging Face checkpoint: AutoModelForCausalLM.from_pretrained (and serving engines) "
                    "load it as it is")
        gone = [f"attention removed in blocks {self.removed_attention}"] if self.removed_attention else []
        gone += [f"FFN removed in blocks {list(self.removed_ffn)}"] if self.removed_ffn else []
        return f"{' and '.join(gone)}, which a stock config cannot express: load it with twossp.load_pruned(DIR)"


def save_pruned(model: "nn.Module", tokenizer: Any, directory: str | Path) -> SavedCheckpoint:
    """Save ``model`` (pruned in place by twossp) and its tokenizer to ``directory``."""
    from twossp.families import adapter_for
    from twossp.prune import slicegpt

    directory = Path(directory)
    if slicegpt.is_sliced(model.config):  # rotated and sliced: shortcut matrices, not masks
        return slicegpt.save_sliced(model, tokenizer, directory)
    adapter = adapter_for(model.config)
    layers = adapter.layers(model)
    removed = [i for i, layer in enumerate(layers) if not adapter.is_attention_present(layer)]
    removed_ffn = [i for i, layer in enumerate(layers) if not adapter.is_ffn_present(layer)]
    widths = {adapter.ffn_width(layer) for layer in layers if adapter.is_ffn_present(layer)}
    if len(widths) > 1:
        raise CheckpointError(f"FFN widths differ between blocks ({sorted(widths)}); a config cannot express that")
    for key, blocks in ((REMOVED_KEY, removed), (REMOVED_FFN_KEY, removed_ffn)):
        if blocks:
            setattr(model.config, key, blocks)
        elif hasattr(model.config, key):
            delattr(model.config, key)  # nothing non-standard left of this kind
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return SavedCheckpoint(directory, stock=not removed and not removed_ffn, removed_attention=removed,
                           removed_ffn=removed_ffn)


def load_pruned(directory: str | Path, dtype: "torch.dtype | None" = None,
                device: "torch.device | str" = "cpu") -> "nn.Module":
    """Reload a model saved by ``save_pruned`` to identical logits; raise ``CheckpointError`` if any
    weight it keeps is not in the checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from twossp.families import adapter_for
    from twossp.prune import slicegpt

    config = AutoConfig.from_pretrained(directory)
    if slicegpt.is_sliced(config):  # rotated and sliced: rebuilt from config.twossp_slicegpt
        return slicegpt.load_sliced(directory, config, dtype).to(device).eval()
    removed = list(getattr(config, REMOVED_KEY, None) or [])
    removed_ffn = list(getattr(config, REMOVED_FFN_KEY, None) or [])
    adapter = adapter_for(config)
    log = logging.getLogger("transformers.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)  # the removed attentions are reported missing; checked below instead
    try:
        model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or "auto",
                                                           output_loading_info=True)
    finally:
        log.setLevel(level)
    layer_prefix = _layer_prefix(model, adapter)
    removable = {f"{layer_prefix}.{i}.{attr}." for i in removed
                 for attr in (adapter.attention_attr, *adapter.attention_norm_attrs)}
    removable |= {f"{layer_prefix}.{i}.{attr}." for i in removed_ffn
                  for attr in (adapter.ffn_attr, *adapter.ffn_norm_attrs)}
    for i in removed:
        adapter.remove_attention(model, i)
    for i in removed_ffn:
        adapter.remove_ffn(model, i)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(tuple(removable)))
    unexpected = sorted(info.get("unexpected_keys", ()))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{directory} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"mismatched {mismatched[:5]}; refusing a model with re-initialised weights"
        )
    return model.to(device).eval()


def _layer_prefix(model: "nn.Module", adapter: Any) -> str:
    layers = adapter.layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def export_run(db: Any, key: str, directory: str | Path, device: "torch.device | str" = "cpu") -> SavedCheckpoint:
    """Rebuild a completed run's pruned model from the dense weights and the masks stored in the
    database alone, and save it with ``save_pruned``. ``key`` may be a unique prefix."""
    import torch
    from sqlalchemy import select

    from twossp.db.models import Run
    from twossp.families import adapter_for
    from twossp.plan import RunSpec
    from twossp.prune.masks import LayerMask, apply_masks
    from twossp.runtime.device import DTYPES
    from twossp.runtime.loading import load_model

    with db.session() as session:
        rows = list(session.scalars(select(Run).where(Run.key.startswith(key)).limit(2)))
        if len(rows) != 1:
            raise CheckpointError(f"{'no run' if not rows else 'more than one run'} with a key starting {key!r}")
        run = rows[0]
        if run.status != "completed":
            raise CheckpointError(f"run {run.key} is {run.status}, not completed: nothing to export")
        spec = RunSpec.model_validate(run.spec)
        if spec.method.name == "slicegpt":
            raise CheckpointError(
                f"run {run.key} is a slicegpt run: its PCA rotations are not layer masks and are not stored in the "
                "database, so it cannot be rebuilt from there: a sliced model is saved while it runs, with "
                "`save_to: DIR` in the sweep"
            )
        masks = [LayerMask(m.layer, m.attention_kept, m.ffn_width, m.ffn_mask) for m in run.layer_masks]
    model, tokenizer = load_model(spec.model, DTYPES[spec.runtime.dtype], torch.device(device))
    apply_masks(model, adapter_for(model.config), masks)
    return save_pruned(model, tokenizer, directory)
