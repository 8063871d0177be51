"""Configuration of a pruned decoder whose blocks differ, in the Nemotron-NAS ("DeciLM") schema:
``block_configs`` holds one entry per block, ``attention: {no_op, n_heads_in_group}`` and
``ffn: {no_op, ffn_mult, intermediate_size}``; everything else is a Llama configuration.

Written by twossp beside a pruned checkpoint; it imports transformers only. vLLM and SGLang read
this schema with model code of their own (they need this file only to build the configuration);
transformers builds the model from ``modeling_twossp_nas.py`` beside it."""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig

#: An FFN width in this schema is a multiple of this (``ffn_width``).
FFN_MULTIPLE = 256


def ffn_width(hidden_size: int, ffn_mult: float) -> int:
    """The FFN width the schema gives ``ffn_mult``: two thirds of ``ffn_mult * hidden_size``, rounded
    up to a multiple of ``FFN_MULTIPLE`` (the rule the serving engines apply)."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return -(-width // FFN_MULTIPLE) * FFN_MULTIPLE


class BlockSection(dict):
    """One block's ``attention`` or ``ffn`` entry (or the block's whole entry): a plain JSON object in
    config.json, readable as attributes (``block.attention.no_op``) as the engines read it."""

    def __init__(self, values: Any = (), **more: Any) -> None:
        super().__init__(values, **more)
        for key, value in self.items():
            if isinstance(value, dict) and not isinstance(value, BlockSection):
                self[key] = BlockSection(value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class TwosspNasConfig(LlamaConfig):
    """A Llama configuration plus ``block_configs`` (one ``BlockSection`` per block)."""

    model_type = "nemotron-nas"

    def __init__(self, block_configs: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        self.block_configs = [BlockSection(block) for block in block_configs or []]
        super().__init__(**kwargs)
        if self.block_configs and len(self.block_configs) != self.num_hidden_layers:
            raise ValueError(f"block_configs has {len(self.block_configs)} entries for "
                             f"{self.num_hidden_layers} hidden layers")

    def has_attention(self, index: int) -> bool:
        return not self.block_configs[index].attention.get("no_op", False)

    def block_ffn_width(self, index: int) -> int | None:
        """Block ``index``'s FFN width, or None where it has no FFN."""
        ffn = self.block_configs[index].ffn
        if ffn.get("no_op", False):
            return None
        return int(ffn.get("intermediate_size") or ffn_width(self.hidden_size, ffn["ffn_mult"]))


__all__ = ["TwosspNasConfig"]
