"""Saving and reloading pruned models.

``save_pruned`` writes a Hugging Face checkpoint that loads without twossp (``serve.hf``): the
family's plain checkpoint where every block is whole, the Nemotron-NAS schema with its own modelling
files where blocks differ, or (``hf-stock``) the stock architecture with removed parts as exact
zeros; a SliceGPT model keeps twossp's own layout (rotations and shortcut matrices). ``load_pruned``
reads every layout twossp has written, older ones included (a Llama config listing
``twossp_removed_attention``), back into the pruned model twossp computed, and proves that every
weight it keeps came from the checkpoint and that every part it drops was exactly zero:
transformers silently re-initialises weights a checkpoint lacks, which must never reach a user.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from twossp.errors import CheckpointError, ExportUnsupported
from twossp.families import adapter_for
from twossp.families.base import FamilyAdapter
from twossp.placement import blocks_prefix
from twossp.prune.slicegpt import CONFIG_KEY, READS_ATTENTION, READS_MLP, WRITES_ATTENTION, WRITES_MLP
from twossp.prune.slicegpt import RMSNormalize, SlicedDecoderLayer, child_name, stream_linears
from twossp.serve.hf import NAS_MODEL_TYPE, PORTABLE, RECORD_KEY, STOCK, HfCheckpoint, folder_size
from twossp.serve.hf import refusal, write_checkpoint

#: what older versions of twossp wrote instead of ``RECORD_KEY`` (still read)
REMOVED_KEY = "twossp_removed_attention"
REMOVED_FFN_KEY = "twossp_removed_ffn"
FORMATS = (PORTABLE, STOCK)


def save_pruned(model: nn.Module, tokenizer: Any, directory: str | Path, save_format: str = PORTABLE) -> HfCheckpoint:
    """Save ``model`` (pruned in place by twossp) and its tokenizer to ``directory`` as
    ``save_format`` (``serve.hf``); ``ExportUnsupported`` names what to use where it cannot."""
    directory = Path(directory)
    if is_sliced(model.config):  # rotated and sliced: shortcut matrices, not masks
        reason = refusal(model.config, save_format)
        if reason:
            raise ExportUnsupported(f"cannot write a Hugging Face checkpoint: {reason}")
        return save_sliced(model, tokenizer, directory)
    return write_checkpoint(model, tokenizer, directory, save_format)


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


def load_pruned(directory: str | Path, dtype: torch.dtype | None = None,
                device: torch.device | str = "cpu") -> nn.Module:
    """Reload a model saved by twossp to identical logits; raise ``CheckpointError`` if any weight
    it keeps is not in the checkpoint or any part it drops is not exactly zero."""
    from transformers import AutoConfig

    directory = Path(directory)
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{directory} has no readable config.json ({exc})") from None
    if raw.get("model_type") == NAS_MODEL_TYPE:
        return _load_nas(directory, raw, dtype).to(device).eval()
    config = AutoConfig.from_pretrained(directory)
    if is_sliced(config):  # rotated and sliced: rebuilt from config.twossp_slicegpt
        return load_sliced(directory, config, dtype).to(device).eval()
    return _load_stock(directory, config, dtype).to(device).eval()


def _quietly_loaded(directory: Path, dtype: torch.dtype | None) -> tuple[nn.Module, dict[str, Any]]:
    """``AutoModelForCausalLM.from_pretrained`` with its loading report (checked by the caller)."""
    from transformers import AutoModelForCausalLM

    log = logging.getLogger("transformers.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)  # an older layout's removed attentions are reported missing; checked instead
    try:
        return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or "auto", output_loading_info=True)
    finally:
        log.setLevel(level)


def _load_stock(directory: Path, config: Any, dtype: torch.dtype | None) -> nn.Module:
    """A plain or zero-filled stock checkpoint, or one of an older layout whose config lists the
    removed attentions and FFNs: loaded by transformers, then brought back to the pruned model."""
    model, info = _quietly_loaded(directory, dtype)
    adapter = adapter_for(config)
    removed = list(getattr(config, REMOVED_KEY, None) or [])
    removed_ffn = list(getattr(config, REMOVED_FFN_KEY, None) or [])
    prefix = blocks_prefix(model, adapter)
    removable = {f"{prefix}{i}.{attr}." for i in removed for attr in adapter.attention_parts}
    removable |= {f"{prefix}{i}.{attr}." for i in removed_ffn for attr in adapter.ffn_parts}
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
    record = getattr(config, RECORD_KEY, None)
    if record:
        _restore(model, adapter, record, directory)
    _forget_layout(model.config)
    return model


def _load_nas(directory: Path, raw: dict[str, Any], dtype: torch.dtype | None) -> nn.Module:
    """A Nemotron-NAS checkpoint twossp wrote: its family's model built without initialising, each
    block shaped as ``block_configs`` says, every tensor loaded strictly, then ``_restore``. The
    folder's own code is not run: twossp holds the same configuration class."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from twossp.serve.hf_files.configuration_twossp_nas import TwosspNasConfig

    record = raw.get(RECORD_KEY)
    if not record or "architecture" not in record:
        raise CheckpointError(f"{directory} is a Nemotron-NAS checkpoint twossp did not write (no {RECORD_KEY} "
                              "record): load it with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)")
    nas = TwosspNasConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "auto_map")})
    family = {k: v for k, v in raw.items()
              if k not in ("block_configs", "auto_map", "architectures", "model_type", RECORD_KEY)}
    config = AutoConfig.for_model(record["model_type"], **family)
    config.architectures = [record["architecture"]]
    saved = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or getattr(torch, saved))
    adapter = adapter_for(config)
    for n, layer in enumerate(adapter.layers(model)):
        if not nas.has_attention(n):
            adapter.remove_attention(model, n)
        width = nas.block_ffn_width(n)
        if width is None:
            adapter.remove_ffn(model, n)
        elif width != adapter.ffn_width(layer):
            adapter.prune_ffn(layer, torch.arange(width))  # its shape only: every weight is loaded below
    _load_every_tensor(model, directory, "its Nemotron-NAS config", bool(getattr(config, "tie_word_embeddings", False)))
    _restore(model, adapter, record, directory)
    _forget_layout(model.config)
    return model


def _load_every_tensor(model: nn.Module, directory: Path, what: str, tied_head: bool) -> None:
    """Load the checkpoint's tensors into ``model``; any missing (but the head where ``tied_head``:
    it is the embedding), unexpected or mis-shaped one raises ``CheckpointError``."""
    tensors = _checkpoint_tensors(directory)
    expected = model.state_dict()
    head = model.get_output_embeddings()
    tied = {f"{name}.weight" for name, module in model.named_modules() if tied_head and module is head}
    missing = sorted(set(expected) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{directory} does not match {what}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"mismatched {mismatched[:5]}; refusing a model with re-initialised weights")
    model.load_state_dict(tensors, strict=False)
    if tied:
        model.tie_weights()


def _restore(model: nn.Module, adapter: FamilyAdapter, record: dict[str, Any], directory: Path) -> None:
    """Undo what the writer added for the file's sake (``serve.hf``): zero-filled attentions and FFNs
    removed again, padded FFNs cut back to their width. Each part dropped must be exactly zero."""
    layers = adapter.layers(model)
    widths = record.get("ffn_widths") or []
    if len(widths) != len(layers):
        raise CheckpointError(f"{directory}: {RECORD_KEY} lists {len(widths)} blocks, the checkpoint has {len(layers)}")

    def dropped_is_zero(n: int, what: str, tensors: list[torch.Tensor]) -> None:
        if any(t.count_nonzero() for t in tensors):
            raise CheckpointError(f"{directory}: block {n}'s {what} should be all zero (twossp wrote it so) but is "
                                  "not; the checkpoint was changed after export")

    for n in record.get("zero_attention") or []:
        dropped_is_zero(n, "attention", list(adapter.attention(layers[n]).parameters()))
        adapter.remove_attention(model, n)
    for n, (layer, width) in enumerate(zip(layers, widths)):
        if width is None and adapter.is_ffn_present(layer):
            dropped_is_zero(n, "FFN", list(adapter.mlp(layer).parameters()))
            adapter.remove_ffn(model, n)
        elif width is not None and width != adapter.ffn_width(layer):
            full = adapter.ffn_width(layer)
            before = {f"{adapter.ffn_attr}.{k}": t.clone() for k, t in adapter.mlp(layer).state_dict().items()}
            adapter.prune_ffn(layer, torch.arange(width))
            again = adapter.padded_ffn(layer, full)  # the kept neurons, padded with zeros as written
            if any(not torch.equal(before[k], t) for k, t in again.items()):
                raise CheckpointError(f"{directory}: block {n}'s FFN neurons beyond {width} should be zero padding "
                                      "(twossp wrote them so) but are not; the checkpoint was changed after export")
    widths_left = {adapter.ffn_width(layer) for layer in layers if adapter.is_ffn_present(layer)}
    if len(widths_left) == 1:
        adapter.set_uniform_ffn_width(model, widths_left.pop())


def _forget_layout(config: Any) -> None:
    """The config of the model in memory, not of the file it came from."""
    if hasattr(config, RECORD_KEY):
        delattr(config, RECORD_KEY)


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


def save_sliced(model: nn.Module, tokenizer: Any, directory: Path) -> HfCheckpoint:
    """``save_pretrained``; ``config.twossp_slicegpt`` tells ``load_sliced`` how to rebuild. Its
    embedding is narrower than its config's ``hidden_size``, so a plain loader fails on it loudly."""
    record = getattr(model.config, CONFIG_KEY)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    layers = adapter_for(model.config).layers(model)
    return HfCheckpoint(Path(directory), "sliced", model.config.architectures[0], len(layers), len(layers),
                        rewrites=[f"hidden width sliced to {record['sliced_hidden_size']} of {record['hidden_size']}, "
                                  "PCA rotations fused into the weights, a shortcut matrix on every residual connection"],
                        size=folder_size(Path(directory)))


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
    _load_every_tensor(model, directory, "its SliceGPT config", tied_head=False)  # its head is its own
    return model.eval()
