"""Hugging Face checkpoints of pruned models that load anywhere, and never with a random weight.

Three layouts, one writer (``write_checkpoint``):

- ``plain``: every block whole (attention and FFN present, one FFN width): the family's own
  checkpoint, which any tool loads as it is.
- ``nas``: blocks that differ, in the Nemotron-NAS ("DeciLM") schema that vLLM and SGLang serve:
  ``architectures: ["DeciLMForCausalLM"]``, ``model_type: "nemotron-nas"``, one ``block_configs``
  entry per block, Llama tensor names, and twossp's own configuration and modelling files
  (``serve/hf_files``, named by ``auto_map``) so that transformers builds it with
  ``trust_remote_code=True``. A plain loader refuses the unknown model type instead of guessing.
  The schema's rules, applied exactly: an FFN width is a multiple of 256 (zero neurons pad it; they
  add exactly 0); a removed attention or FFN has no tensors, its norm included; the first block
  keeps an attention (all-zero weights where it was removed: it adds exactly 0), since the engines
  read the head layout and the cached length from there.
- ``stock``: the family's plain architecture with every removed attention present as zeros and
  every FFN widened with zero neurons to the widest one (a removed FFN: all zero neurons), for the
  tools that accept only stock checkpoints. The FFN and whole-block savings stay; the attention's go.

In every layout a block with neither attention nor FFN (an identity) is left out and the blocks
after it renumbered. ``config.json`` keeps a ``twossp_pruned`` record of what the file holds
(dense block numbers, FFN widths before padding, zero-filled attentions), from which
``checkpoint.load_pruned`` rebuilds the pruned model exactly.

Families and methods a layout cannot express are refused before anything is written, with what to
use instead (``refusal``, torch-free, asked by the planner for ``save_to:``).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from twossp.contracts import SLICEGPT_CONFIG_KEY
from twossp.errors import ExportUnsupported

#: the formats of a Hugging Face export: portable (plain or Nemotron-NAS) and stock (zero-filled)
PORTABLE, STOCK = "safetensors", "hf-stock"
NAS_ARCHITECTURE, NAS_MODEL_TYPE = "DeciLMForCausalLM", "nemotron-nas"
RECORD_KEY = "twossp_pruned"
FFN_MULTIPLE = 256
#: families whose blocks the Nemotron-NAS schema (a Llama block) expresses
NAS_FAMILIES = ("LlamaForCausalLM", "MistralForCausalLM")
#: the most bytes of tensors in one safetensors shard
SHARD_BYTES = 5 * 2**30


def _get(config: Any, key: str, default: Any = None) -> Any:
    value = config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)
    return default if value is None else value


# ---------------------------------------------------------------------------- what can be written
def refusal(config: Any, save_format: str, pruned: bool = True) -> str | None:
    """Why a pruned model of ``config`` (a transformers config or a parsed config.json) cannot be
    written as ``save_format``, naming what to use instead; None when it can. ``pruned`` False: the
    model's blocks are known to stay whole (a plain checkpoint), which every family can be."""
    arch = (_get(config, "architectures", None) or ["?"])[0]
    if _get(config, SLICEGPT_CONFIG_KEY, None):  # saved in twossp's own layout (``checkpoint.save_sliced``)
        return ("a SliceGPT model has no stock architecture; use `--format safetensors` (twossp's own SliceGPT "
                "checkpoint, loaded with twossp.load_pruned)") if save_format == STOCK else None
    if save_format == STOCK or not pruned:
        return None
    if arch not in NAS_FAMILIES:
        return (f"{arch}: a block without attention or FFN has no portable architecture for this family (the "
                f"Nemotron-NAS schema that vLLM and SGLang serve is a Llama block; portable: "
                f"{', '.join(NAS_FAMILIES)}); use `--format hf-stock` (`format: hf-stock`: the stock architecture, "
                "removed parts as exact zeros) or, where llama.cpp runs the family, `--format gguf`")
    window = _get(config, "sliding_window", None)
    if window and window < _get(config, "max_position_embeddings", 0):
        return (f"{arch} with a sliding window of {window} tokens: the Nemotron-NAS schema attends to every "
                "token; use `--format hf-stock` (`format: hf-stock`)")
    return None


# ---------------------------------------------------------------------------- what was written
@dataclass(frozen=True)
class HfCheckpoint:
    """A Hugging Face checkpoint twossp wrote, for the model card, the database and the caller."""

    directory: Path
    layout: str                        # plain | nas | stock | sliced
    architecture: str                  # config.architectures[0]
    blocks: int                        # blocks in the file
    attention_blocks: int              # of which with a (live) attention
    ffn_widths: list[int] = field(default_factory=list)   # per block in the file, as written
    rewrites: list[str] = field(default_factory=list)     # exact rewrites, in words
    size: int = 0                      # bytes of the folder

    @property
    def stock(self) -> bool:
        """Loadable by plain ``AutoModelForCausalLM.from_pretrained`` without remote code."""
        return self.layout in ("plain", "stock")

    @property
    def note(self) -> str:
        return {
            "plain": "a plain Hugging Face checkpoint: AutoModelForCausalLM.from_pretrained (and serving "
                     "engines) load it as it is",
            "nas": f"blocks that differ ({self.attention_blocks} of {self.blocks} with attention), in the Nemotron-NAS "
                   "schema: AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True), or vLLM / SGLang "
                   "with --trust-remote-code",
            "stock": f"the stock architecture with removed parts as exact zeros ({self.blocks} blocks): "
                     "AutoModelForCausalLM.from_pretrained loads it as it is",
            "sliced": "SliceGPT: shortcut matrices on every residual connection, which no stock or portable "
                      "architecture expresses: load it with twossp.load_pruned(DIR)",
        }[self.layout]


# ---------------------------------------------------------------------------- the writer
@dataclass
class _Planned:
    """Every tensor of the file (name -> (shape, dtype, make)) and the config's block entries."""

    tensors: dict[str, tuple[tuple[int, ...], Any, Callable[[], Any]]] = field(default_factory=dict)
    block_configs: list[dict[str, Any]] = field(default_factory=list)
    dense_blocks: list[int] = field(default_factory=list)
    ffn_widths: list[int | None] = field(default_factory=list)   # before padding; None: no FFN
    written_widths: list[int] = field(default_factory=list)
    zero_attention: list[int] = field(default_factory=list)      # blocks of the file
    zero_ffn: list[int] = field(default_factory=list)            # blocks of the file
    padded: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (width, padded) -> dense blocks
    dropped: list[int] = field(default_factory=list)             # dense blocks left out
    live_attention: int = 0                                      # blocks with a kept attention


def write_checkpoint(model: Any, tokenizer: Any, folder: Path, save_format: str = PORTABLE) -> HfCheckpoint:
    """Write ``model`` (pruned in place by twossp) to ``folder`` as ``save_format`` (``PORTABLE``: plain
    where every block is whole, Nemotron-NAS otherwise; ``STOCK``: zero-filled). Raises
    ``ExportUnsupported`` (naming what to use instead) before writing anything it cannot express."""
    from twossp.families import adapter_for

    folder = Path(folder)
    if save_format not in (PORTABLE, STOCK):
        raise ExportUnsupported(f"unknown Hugging Face format {save_format!r} (formats: {PORTABLE}, {STOCK})")
    adapter = adapter_for(model.config)
    layers = adapter.layers(model)
    attention = [adapter.is_attention_present(layer) for layer in layers]
    widths = [adapter.ffn_width(layer) if adapter.is_ffn_present(layer) else None for layer in layers]
    whole = all(attention) and None not in widths and len(set(widths)) == 1
    reason = refusal(model.config, save_format, pruned=not whole)
    if reason:
        raise ExportUnsupported(f"cannot write a Hugging Face checkpoint: {reason}")
    layout = "plain" if whole else ("nas" if save_format == PORTABLE else "stock")
    planned = _plan(model, adapter, layout)
    config = _config(model, layout, planned)
    folder.mkdir(parents=True, exist_ok=True)
    _write_tensors(planned, folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if layout == "nas":
        from twossp.serve.hf_files import file_paths

        for path in file_paths():
            shutil.copyfile(path, folder / path.name)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return HfCheckpoint(folder, layout, config["architectures"][0], len(planned.dense_blocks), planned.live_attention,
                        planned.written_widths, _rewrites(planned, layout), folder_size(folder))


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _plan(model: Any, adapter: Any, layout: str) -> _Planned:
    """The file's tensors, block by block (see the module docstring for the rules of each layout)."""
    from twossp.placement import blocks_prefix

    layers = adapter.layers(model)
    prefix = blocks_prefix(model, adapter)  # "model.layers."
    planned = _Planned()
    for name, tensor in model.state_dict().items():
        if not name.startswith(prefix):
            planned.tensors[name] = _of(tensor)
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embedding.weight:  # tied: the embedding is the head
        head_name = next(name for name, module in model.named_modules() if module is head)
        planned.tensors.pop(f"{head_name}.weight", None)
    present = [(i, layer, adapter.is_attention_present(layer), adapter.is_ffn_present(layer))
               for i, layer in enumerate(layers)]
    kept = [p for p in present if p[2] or p[3]]
    planned.dropped = [p[0] for p in present if not (p[2] or p[3])]
    stock_width = max((adapter.ffn_width(p[1]) for p in kept if p[3]), default=model.config.intermediate_size)
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    for n, (i, layer, has_attention, has_ffn) in enumerate(kept):
        own = layer.state_dict()
        tensors: dict[str, Any] = {}
        zero_attention = not has_attention and (layout == "stock" or n == 0)
        if has_attention:
            tensors |= {k: _of(t) for k, t in own.items() if _part_of(k, adapter.attention_parts)}
        elif zero_attention:
            tensors |= _zeros_of(_dense_layer(model, layer, i, stock_width), adapter.attention_parts)
            planned.zero_attention.append(n)
        width = adapter.ffn_width(layer) if has_ffn else None
        if layout == "stock":
            target = stock_width
        elif layout == "plain":
            target = width
        elif width:
            target = _nas_width(width)
        else:  # llama.cpp's converter would drop the attention of a block without FFN: zero neurons
            target = FFN_MULTIPLE if has_attention or zero_attention else None
        if has_ffn:
            norms = {k: _of(t) for k, t in own.items() if _part_of(k, adapter.ffn_norm_attrs)}
            if target == width:
                tensors |= {k: _of(t) for k, t in own.items() if _part_of(k, (adapter.ffn_attr,))} | norms
            else:
                tensors |= {k: _of(t) for k, t in adapter.padded_ffn(layer, target).items()} | norms
                planned.padded.setdefault((width, target), []).append(i)
        elif target:
            tensors |= _zeros_of(_dense_layer(model, layer, i, target), adapter.ffn_parts)
            planned.zero_ffn.append(n)
        missed = sorted(set(own) - set(tensors))
        if missed:  # every weight the pruned block owns goes into the file
            raise ExportUnsupported(f"block {i}: twossp cannot place {missed[:3]} in a checkpoint")
        planned.tensors |= {f"{prefix}{n}.{k}": v for k, v in sorted(tensors.items())}
        planned.dense_blocks.append(i)
        planned.ffn_widths.append(width)
        planned.written_widths.append(target or 0)
        if layout == "nas":
            planned.block_configs.append(_block_config(model.config, has_attention or zero_attention, heads,
                                                       kv_heads, target))
        planned.live_attention += has_attention
    return planned


def _part_of(name: str, attrs: tuple[str, ...]) -> bool:
    return name.split(".", 1)[0] in attrs


def _of(tensor: Any) -> tuple[tuple[int, ...], Any, Callable[[], Any]]:
    """A tensor of the model as the writer takes it: copied to host memory only when its shard is
    written (a model on an accelerator is never copied whole)."""
    return tuple(tensor.shape), tensor.dtype, lambda: tensor.detach().to("cpu").contiguous()


def _zeros_of(dense: Any, attrs: tuple[str, ...]) -> dict[str, Any]:
    """Zero tensors for the parts ``attrs`` of ``dense`` (a dense block built on the meta device)."""
    import torch

    return {k: (tuple(t.shape), t.dtype, lambda t=t: torch.zeros(t.shape, dtype=t.dtype))
            for k, t in dense.state_dict().items() if _part_of(k, attrs)}


def _dense_layer(model: Any, layer: Any, index: int, ffn_width: int) -> Any:
    """A dense block like ``layer`` (its class, the model's config, ``ffn_width`` neurons), on the meta
    device: it owns no memory and says which tensors, of which shapes, a whole block holds."""
    import torch

    config = copy.deepcopy(model.config)
    config.intermediate_size = ffn_width
    with torch.device("meta"):
        return type(layer)(config, index).to(model.get_input_embeddings().weight.dtype)


def _nas_width(width: int) -> int:
    return -(-width // FFN_MULTIPLE) * FFN_MULTIPLE


def nas_ffn_mult(width: int, hidden: int) -> float:
    """The ``ffn_mult`` whose width (``configuration_twossp_nas.ffn_width``) is ``width``, a multiple of
    256; checked here, so that no engine reads another width than the tensors have."""
    from twossp.serve.hf_files.configuration_twossp_nas import ffn_width

    mult = round(1.5 * width / hidden, 6)
    if ffn_width(hidden, mult) != width:
        raise ExportUnsupported(f"FFN width {width} has no ffn_mult for hidden size {hidden}")
    return mult


def _block_config(config: Any, has_attention: bool, heads: int, kv_heads: int, width: int | None) -> dict[str, Any]:
    """One ``block_configs`` entry: a no-op part says so and has null sizes, as the engines and
    llama.cpp's converter key on."""
    return {
        "attention": {"no_op": not has_attention, "replace_with_linear": False,
                      "n_heads_in_group": heads // kv_heads if has_attention else None},
        "ffn": {"no_op": width is None, "replace_with_linear": False,
                "ffn_mult": nas_ffn_mult(width, config.hidden_size) if width else None,
                "intermediate_size": width},
    }


def _config(model: Any, layout: str, planned: _Planned) -> dict[str, Any]:
    """config.json of the file: the model's own, the blocks renumbered, the twossp record; for
    ``nas`` the schema's keys and ``auto_map``."""
    config = model.config.to_dict()
    config["dtype"] = config.get("dtype") or str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")
    family = {"architecture": config["architectures"][0], "model_type": config["model_type"]}
    for key in ("twossp_removed_attention", "twossp_removed_ffn", "_name_or_path"):
        config.pop(key, None)
    kept = planned.dense_blocks
    config["num_hidden_layers"] = len(kept)
    if config.get("layer_types"):
        config["layer_types"] = [config["layer_types"][i] for i in kept]
    written = [w for w in planned.written_widths if w]
    config["intermediate_size"] = max(written, default=config.get("intermediate_size"))
    if layout == "plain":
        return config
    config = _with_rope_keys(config)
    config[RECORD_KEY] = {"dense_blocks": len(planned.dense_blocks) + len(planned.dropped), "blocks": kept,
                          "ffn_widths": planned.ffn_widths, "zero_attention": planned.zero_attention,
                          "zero_ffn": planned.zero_ffn, "layout": layout, **family}
    if layout == "nas":
        config.pop("layer_types", None)
        config.pop("sliding_window", None)
        config |= {"architectures": [NAS_ARCHITECTURE], "model_type": NAS_MODEL_TYPE,
                   "block_configs": planned.block_configs,
                   "auto_map": {"AutoConfig": "configuration_twossp_nas.TwosspNasConfig",
                                "AutoModelForCausalLM": "modeling_twossp_nas.TwosspNasForCausalLM"}}
    return config


def _with_rope_keys(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with RoPE also in the top-level keys older readers look at (SGLang reads
    ``rope_theta``, llama.cpp ``rope_scaling``) and the dtype under its older name too."""
    from twossp.serve.gguf import rope_settings

    rope = rope_settings(config)
    config = {**config, "rope_theta": rope["rope_theta"]}
    if rope["rope_type"] != "default":
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    config["torch_dtype"] = config["dtype"]  # set by ``_config``; older readers take this name
    return config


def _rewrites(planned: _Planned, layout: str) -> list[str]:
    """The exact rewrites the file took, in words (the model card lists them)."""
    def blocks(indices: list[int]) -> str:
        return f"block{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))}"

    dense = planned.dense_blocks
    why = ("the widest block's" if layout == "stock" else f"a multiple of {FFN_MULTIPLE}, as the Nemotron-NAS "
           "schema requires")
    rewrites = [f"{blocks(b)}: FFN width {w} padded to {p} with zero neurons ({why}; they add exactly 0)"
                for (w, p), b in planned.padded.items()]
    if planned.zero_attention:
        where = [dense[n] for n in planned.zero_attention]
        rewrites.append(
            f"{blocks(where)}: attention removed, written as an attention whose weights are all zero "
            "(it adds exactly 0)" + (" because the first block must hold one: the engines read the head layout "
                                     "and the cached length there" if layout == "nas" else
                                     ", so that the stock architecture holds them; its compute and KV cache stay"))
    if planned.zero_ffn:
        rewrites.append(f"{blocks([dense[n] for n in planned.zero_ffn])} FFN removed, written as zero "
                        "neurons (they add exactly 0)")
    if planned.dropped:
        rewrites.append(f"{blocks(planned.dropped)} had neither attention nor FFN: left out, the blocks after "
                        "them renumbered")
    return rewrites


def _write_tensors(planned: _Planned, folder: Path) -> None:
    """The tensors in safetensors shards of at most ``SHARD_BYTES`` (one file where they fit), each
    shard's tensors made only while it is written; an index names every tensor's shard."""
    from safetensors.torch import save_file

    shards: list[list[str]] = [[]]
    size = 0
    total = 0
    for name, (shape, dtype, _) in planned.tensors.items():
        nbytes = math.prod(shape) * dtype.itemsize
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
        total += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    for file, shard in zip(names, shards):
        save_file({name: planned.tensors[name][2]() for name in shard}, str(folder / file), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {name: file for file, shard in zip(names, shards) for name in shard}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
