"""A tiny on-disk checkpoint, text files and sweep files, so a whole sweep runs in seconds on CPU.

The checkpoint is what ``path:`` models point at in real sweeps: a ``LlamaForCausalLM`` saved with
``save_pretrained`` (seeded weights) and, next to it, a real byte-level BPE tokenizer trained with
the ``tokenizers`` library on deterministic English-like text and saved through
``PreTrainedTokenizerFast``. Calibration (JSONL) and evaluation (plain text) files are drawn from
the same generator with different seeds, so they never share text.

``build`` makes them in a folder; the session fixture ``tiny_checkpoint`` (``tests/conftest.py``)
builds them once per session.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 64, 128, 4, 4, 2
TOKENIZER_VOCAB = 300
MODEL_VOCAB = 320  # >= the tokenizer's vocabulary (special token included)
EOS = "<|endoftext|>"

_WORDS = {
    "det": ["the", "a", "every", "one", "that"],
    "adj": ["small", "quiet", "green", "old", "bright", "heavy", "early", "late", "cold", "warm"],
    "noun": ["river", "teacher", "city", "garden", "engine", "market", "letter", "window", "farmer",
             "storm", "village", "student", "bridge", "kitchen", "doctor", "island"],
    "verb": ["opened", "watched", "carried", "found", "painted", "followed", "built", "crossed",
             "described", "repaired", "visited", "reached"],
    "adv": ["slowly", "again", "today", "carefully", "at noon", "before dawn", "in silence"],
}


def english_like(n_sentences: int, seed: int) -> list[str]:
    """Deterministic sentences with a little grammar, so a BPE tokenizer learns real merges."""
    rng = random.Random(seed)
    pick = lambda kind: rng.choice(_WORDS[kind])  # noqa: E731
    sentences = []
    for _ in range(n_sentences):
        s = f"{pick('det')} {pick('adj')} {pick('noun')} {pick('verb')} {pick('det')} {pick('noun')}"
        if rng.random() < 0.5:
            s += f" {pick('adv')}"
        sentences.append(s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?"]))
    return sentences


def paragraphs(n: int, seed: int, sentences_per_paragraph: int = 6) -> list[str]:
    sentences = english_like(n * sentences_per_paragraph, seed)
    step = sentences_per_paragraph
    return [" ".join(sentences[i:i + step]) for i in range(0, len(sentences), step)]


def build_tokenizer(directory: Path) -> Any:
    """Train a byte-level BPE on ~10 KB of generated text and save it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(paragraphs(60, seed=12345), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    fast.save_pretrained(directory)
    return fast


def build_model(directory: Path, eos_id: int, seed: int = 0) -> Any:
    """A 4-layer Llama (hidden 64, FFN 128, 4 heads, 2 KV heads) with seeded non-trivial weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=MODEL_VOCAB,
                         max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
                         bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=None)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(directory)
    return model


@dataclass(frozen=True)
class TinyCheckpoint:
    """Paths of the session's tiny checkpoint and text files, and a sweep-file writer."""

    model_dir: Path
    calibration: Path  # JSONL, one {"text": ...} per line
    evaluation: Path   # plain text
    tokenizer_size: int

    def sweep(self, name: str = "tiny", **overrides: Any) -> dict[str, Any]:
        """The tiny sweep as data: dense + 2SSP at 25% and 50%, 2 calibration windows of 16 tokens."""
        data: dict[str, Any] = {
            "name": name,
            "models": [{"path": str(self.model_dir)}],
            "methods": ["dense", "2ssp"],
            "sparsities": [0.25, 0.5],
            "calibration": {"source": {"path": str(self.calibration)}, "samples": [2], "seq_len": 16},
            "evaluation": {"perplexity": [{"path": str(self.evaluation)}], "seq_len": 16, "max_windows": 4},
            "runtime": {"device": "cpu", "dtype": "float32"},
        }
        data.update(overrides)
        return data

    def write_sweep(self, path: Path, name: str = "tiny", **overrides: Any) -> Path:
        path.write_text(yaml.safe_dump(self.sweep(name, **overrides), sort_keys=False), encoding="utf-8")
        return path


def build(root: Path) -> TinyCheckpoint:
    model_dir = root / "tiny-llama"
    model_dir.mkdir(parents=True)
    tokenizer = build_tokenizer(model_dir)
    build_model(model_dir, eos_id=tokenizer.convert_tokens_to_ids(EOS))
    calibration = root / "calib.jsonl"
    calibration.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs(8, seed=1)), encoding="utf-8")
    evaluation = root / "eval.txt"
    evaluation.write_text("\n\n".join(paragraphs(8, seed=2)) + "\n", encoding="utf-8")
    return TinyCheckpoint(model_dir, calibration, evaluation, len(tokenizer))
