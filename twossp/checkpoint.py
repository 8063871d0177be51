"""Saving and reloading pruned models.

A pruned model is saved with ``save_pretrained``; its config records the blocks whose attention was
removed (``twossp_removed_attention``) and its uniform FFN width (``intermediate_size``). Where no
attention was removed the directory is a plain Hugging Face checkpoint that any stock loader (and
so any serving engine) reads. ``load_pruned`` replays the removals and then proves that every
weight the model owns came from the checkpoint: transformers silently re-initialises weights a
checkpoint lacks, which must never reach a user.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from twossp.errors import CheckpointError
from twossp.families import adapter_for
from twossp.families.base import FamilyAdapter
from twossp.prune.slicegpt import CONFIG_KEY, READS_ATTENTION, READS_MLP, WRITES_ATTENTION, WRITES_MLP
from twossp.prune.slicegpt import RMSNormalize, SlicedDecoderLayer, child_name, stream_linears

REMOVED_KEY = "twossp_removed_attention"
REMOVED_FFN_KEY = "twossp_removed_ffn"


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


def save_pruned(model: nn.Module, tokenizer: Any, directory: str | Path) -> SavedCheckpoint:
    """Save ``model`` (pruned in place by twossp) and its tokenizer to ``directory``."""
    directory = Path(directory)
    if is_sliced(model.config):  # rotated and sliced: shortcut matrices, not masks
        return save_sliced(model, tokenizer, directory)
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


def written_atomically(directory: Path, write: Callable[[Path], Any]) -> Any:
    """``write(folder)`` into a sibling temporary folder, then rename it to ``directory``: a run
    killed while saving never leaves a half-written model under its final name; a re-run replaces
    the previous one. Returns what ``write`` returned."""
    partial = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        result = write(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return result


def save_atomically(model: Any, tokenizer: Any, directory: Path) -> Any:
    """``save_pruned`` through ``written_atomically``."""
    saved = written_atomically(directory, lambda folder: save_pruned(model, tokenizer, folder))
    return dataclasses.replace(saved, directory=directory)


def load_pruned(directory: str | Path, dtype: torch.dtype | None = None,
                device: torch.device | str = "cpu") -> nn.Module:
    """Reload a model saved by ``save_pruned`` to identical logits; raise ``CheckpointError`` if any
    weight it keeps is not in the checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory)
    if is_sliced(config):  # rotated and sliced: rebuilt from config.twossp_slicegpt
        return load_sliced(directory, config, dtype).to(device).eval()
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


def _layer_prefix(model: nn.Module, adapter: FamilyAdapter) -> str:
    layers = adapter.layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


# --- SliceGPT checkpoints: rotations and shortcut matrices, rebuilt from config.twossp_slicegpt ----
def is_sliced(config: Any) -> bool:
    return bool(getattr(config, CONFIG_KEY, None))


@torch.no_grad()
def rebuild_sliced(model: nn.Module, adapter: FamilyAdapter) -> None:
    """Reshape a freshly built dense model (of a config written by ``slice_model``) into the sliced
    architecture. The new tensors are uninitialised: load every weight into them afterwards."""
    record = getattr(model.config, CONFIG_KEY)
    width, head_width, eps = record["sliced_hidden_size"], record["head_hidden_size"], record["rms_norm_eps"]
    dense_width = model.get_input_embeddings().embedding_dim
    if dense_width != record["hidden_size"]:
        raise CheckpointError(f"{CONFIG_KEY} says hidden size {record['hidden_size']}, the model has {dense_width}")

    def empty(linear: nn.Linear, in_features: int | None = None, out_features: int | None = None) -> nn.Linear:
        return nn.Linear(in_features or linear.in_features, out_features or linear.out_features,
                         bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)

    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    model.set_input_embeddings(nn.Embedding(embed.num_embeddings, width, padding_idx=embed.padding_idx,
                                            device=embed.weight.device, dtype=embed.weight.dtype))
    model.set_output_embeddings(empty(head, in_features=head_width))
    decoder = adapter.decoder(model)
    setattr(decoder, child_name(decoder, adapter.final_norm(model)), RMSNormalize(dense_width, eps))
    layers = adapter.layers(model)
    for i, layer in enumerate(layers):
        attn, mlp = adapter.attention(layer), adapter.mlp(layer)
        d_out = head_width if i == len(layers) - 1 else width
        for module, reads, writes, d_write in ((attn, READS_ATTENTION, WRITES_ATTENTION, width),
                                               (mlp, READS_MLP, WRITES_MLP, d_out)):
            names, out_name = stream_linears(module, reads, writes, dense_width, f"block {i}")
            for name in names:
                setattr(module, name, empty(getattr(module, name), in_features=width))
            setattr(module, out_name, empty(getattr(module, out_name), out_features=d_write))
        like = getattr(attn, WRITES_ATTENTION)
        layers[i] = SlicedDecoderLayer(
            attn, mlp, RMSNormalize(dense_width, eps), RMSNormalize(dense_width, eps),
            nn.Linear(width, width, bias=False, device=like.weight.device, dtype=like.weight.dtype),
            nn.Linear(width, d_out, bias=False, device=like.weight.device, dtype=like.weight.dtype),
            getattr(layer, "attention_type", None))


@dataclass(frozen=True)
class SlicedCheckpoint(SavedCheckpoint):
    width: int = 0
    dense_width: int = 0

    @property
    def note(self) -> str:
        return (f"SliceGPT: hidden width {self.width} of {self.dense_width}, with shortcut matrices on every residual "
                "connection, which a stock config cannot express: load it with twossp.load_pruned(DIR)")


def save_sliced(model: nn.Module, tokenizer: Any, directory: Path) -> SlicedCheckpoint:
    """``save_pretrained``; ``config.twossp_slicegpt`` tells ``load_sliced`` how to rebuild."""
    record = getattr(model.config, CONFIG_KEY)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return SlicedCheckpoint(Path(directory), stock=False, removed_attention=[],
                            width=record["sliced_hidden_size"], dense_width=record["hidden_size"])


def _checkpoint_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{directory} has no model.safetensors (or index)")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(directory / name))
    return tensors


def load_sliced(directory: str | Path, config: Any, dtype: torch.dtype | None = None) -> nn.Module:
    """Build the dense architecture of ``config`` without initialising it, reshape it with
    ``rebuild_sliced``, and load every weight from the checkpoint; any missing, unexpected or
    mis-shaped tensor raises ``CheckpointError``."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    directory = Path(directory)
    if dtype is None:
        saved = getattr(config, "dtype", None) or torch.float32
        dtype = getattr(torch, saved) if isinstance(saved, str) else saved
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    adapter = adapter_for(config)
    rebuild_sliced(model, adapter)
    tensors = _checkpoint_tensors(directory)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{directory} does not match its SliceGPT config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"mismatched {mismatched[:5]}; refusing a model with re-initialised weights")
    model.load_state_dict(tensors, strict=True)
    return model.eval()
