"""A Hugging Face tokenizer embedded in a GGUF file, so that llama.cpp splits text into the same
tokens. Two kinds of tokenizer, told apart by their ``tokenizer.json``:

- Byte-level BPE (SmolLM2, Llama 3, Qwen2, GPT-2 style) is written as llama.cpp's ``gpt2``
  tokenizer: the vocabulary strings in id order, the merges, the special token ids, the chat
  template. What llama.cpp cannot read from those is how text is cut into pieces before BPE: it
  names its pre-tokenizers, so the tokenizer's own pre-tokenizer is matched against the ones whose
  llama.cpp counterpart splits text the same way (``PRE_TOKENIZERS``). A tokenizer that matches
  none is refused rather than written with a guess: a wrong split changes the tokens silently.
- SentencePiece-style BPE (Llama 2, Mistral v0.1-v0.3: spaces as "\u2581", a leading one added,
  unknown characters as byte tokens ``<0xNN>``) is written as llama.cpp's ``llama`` tokenizer,
  which merges by token score, the highest first, where Hugging Face merges by the rank of the
  merge rule, the lowest first: each token's score is minus the rank of the first merge that makes
  it, so both merge in the same order.

Token types: an added token marked special is a control token (llama.cpp then never produces it
from plain text), another added token user-defined; a ``<0xNN>`` token of a SentencePiece-style
tokenizer is a byte, its unknown token unknown; ids the model has beyond the tokenizer's vocabulary
are padding, unused.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twossp.errors import ExportUnsupported

#: Pieces of a pre-tokenizer (see ``_pieces``) -> llama.cpp's pre-tokenizer that splits text alike.
#: Llama 3 and Qwen2 cut text with one regular expression each (digits in runs of up to three for
#: Llama 3, one by one for Qwen2) before byte-level encoding.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[tuple, str] = {
    (("byte_level", True),): "gpt-2",                                         # GPT-2's own regex
    (("digits", True), ("byte_level", True)): "smollm",                       # SmolLM: digits one by one first
    (("split", _LLAMA3_SPLIT, "Isolated"), ("byte_level", False)): "llama-bpe",
    (("split", _QWEN2_SPLIT, "Isolated"), ("byte_level", False)): "qwen2",
}

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf.TokenType values
SPACE = "\u2581"  # SentencePiece's visible space


def _pieces(pre: dict[str, Any] | None) -> tuple:
    """A pre-tokenizer as a tuple of what each step does, the options that change no split left out."""
    if pre is None:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(p for step in pre.get("pretokenizers", []) for p in _pieces(step))
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            return (("byte_level with a prefix space",),)
        return (("byte_level", bool(pre.get("use_regex", True))),)
    if kind == "Digits":
        return (("digits", bool(pre.get("individual_digits"))),)
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return (("split", pattern.get("Regex", pattern.get("String")), pre.get("behavior")),)
    return ((str(kind),),)


def tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportUnsupported(f"cannot write GGUF: the tokenizer ({type(tokenizer).__name__}) is not a fast "
                                "(tokenizer.json) tokenizer")
    return json.loads(backend.to_str())


def _sentencepiece_prefix(spec: dict[str, Any]) -> bool | None:
    """For a SentencePiece-style tokenizer, whether it adds a leading space; None for any other."""
    model, decoder = spec.get("model", {}), spec.get("decoder") or {}
    steps = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    if not any(step.get("type") in ("ByteFallback", "Metaspace") for step in steps):
        return None
    normalizer, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    norms = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    kinds = [n.get("type") for n in norms if n]
    if kinds == ["Prepend", "Replace"] and norms[0].get("prepend") == SPACE and not pre:  # Llama 2's own form
        return True
    if pre.get("type") == "Metaspace":
        raise ExportUnsupported(
            "cannot write GGUF: the tokenizer marks spaces with a Metaspace pre-tokenizer, which adds no leading "
            "space to a text that starts with one, where llama.cpp always adds it; the form Llama 2's and "
            "Mistral's tokenizer.json have (a Prepend and Replace normalizer) is exported")
    return None


def pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer of ``spec`` (a parsed tokenizer.json), or
    ``"sentencepiece"`` for a SentencePiece-style tokenizer."""
    model = spec.get("model", {})
    decoder = (spec.get("decoder") or {}).get("type")
    if _sentencepiece_prefix(spec) is not None:
        return "sentencepiece"
    if model.get("type") != "BPE" or decoder != "ByteLevel":
        raise ExportUnsupported(
            f"cannot write GGUF: the tokenizer is a {model.get('type')} model with a {decoder} decoder; twossp embeds "
            "byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2, GPT-2 style) and SentencePiece-style BPE ones "
            "(Llama 2, Mistral) in the forms their tokenizer.json has")
    if (spec.get("normalizer") or {}).get("type") not in (None, "NFC"):
        raise ExportUnsupported(f"cannot write GGUF: llama.cpp does not apply the tokenizer's normalizer "
                                f"({spec['normalizer'].get('type')})")
    pieces = _pieces(spec.get("pre_tokenizer"))
    if pieces not in PRE_TOKENIZERS:
        raise ExportUnsupported(
            f"cannot write GGUF: no llama.cpp pre-tokenizer is known to split text as this tokenizer's does "
            f"({json.dumps(spec.get('pre_tokenizer'))[:200]}); known: {', '.join(PRE_TOKENIZERS.values())}")
    return PRE_TOKENIZERS[pieces]


def _adds(tokenizer: Any, token_id: int | None, position: int) -> bool:
    """Whether the tokenizer puts ``token_id`` at ``position`` (0 or -1) of every encoded text."""
    if token_id is None:
        return False
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    return len(full) > len(plain) and full[position] == token_id


def _merge_scores(merges: list[str], vocab: dict[str, int]) -> dict[int, float]:
    """Token id -> minus the rank of the first merge that makes it (SentencePiece-style scores)."""
    scores: dict[int, float] = {}
    for rank, merge in enumerate(merges):
        token = vocab.get(merge.replace(" ", "", 1)) if " " in merge else None
        if token is not None and token not in scores:
            scores[token] = -float(rank)
    return scores


def add_tokenizer(writer: Any, tokenizer: Any, n_vocab: int) -> None:
    """Write ``tokenizer`` into ``writer`` for a model with ``n_vocab`` embeddings."""
    spec = tokenizer_json(tokenizer)
    pre = pre_tokenizer(spec)
    sentencepiece = pre == "sentencepiece"
    vocab: dict[str, int] = spec["model"]["vocab"]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    text = {i: s for s, i in vocab.items()} | {i: t["content"] for i, t in added.items()}
    if max(text) >= n_vocab:
        raise ExportUnsupported(f"cannot write GGUF: the tokenizer has ids up to {max(text)}, the model only "
                                f"{n_vocab} embeddings")
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    unknown = vocab.get(spec["model"].get("unk_token") or "", -1)
    tokens, types = [], []
    for i in range(n_vocab):
        token = text.get(i)
        if sentencepiece and token is not None and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            types.append(BYTE)
        elif sentencepiece and i == unknown:
            types.append(UNKNOWN)
        elif i in added:
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            types.append(NORMAL if token is not None else UNUSED)
        tokens.append(token if token is not None else f"[PAD{i}]")
    if sentencepiece:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        # tokens no merge makes are never merged into, as in Hugging Face's BPE
        ranks = _merge_scores(merges, vocab)
        lowest = -float(len(merges) + n_vocab)
        writer.add_token_scores([ranks.get(i, 0.0 if len(tokens[i]) == 1 or types[i] != NORMAL else lowest)
                                 for i in range(n_vocab)])
        writer.add_add_space_prefix(bool(_sentencepiece_prefix(spec)))
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_merges(merges)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for name, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                           ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(int(token_id))
    writer.add_add_bos_token(_adds(tokenizer, tokenizer.bos_token_id, 0))
    writer.add_add_eos_token(_adds(tokenizer, tokenizer.eos_token_id, -1))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
