"""GGUF exports run in llama.cpp itself (llama-cpp-python) as they run in twossp.

Every exportable family's tiny model, pruned for real (2SSP: attentions removed and FFNs narrowed;
ShortGPT: whole blocks) and by hand through layer masks (block 0's attention removed, an FFN
removed, a whole block gone, FFN widths that differ per block), is written as GGUF and loaded by
llama.cpp: for f32 its logits on a fixed token sequence match twossp's within 1e-4 of the largest
logit, and greedy generation of 20 tokens is the same. Quantised types load and stay close; the
families, methods, RoPE variants and tokenizers llama.cpp cannot run as pruned are refused with
their reason.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from twossp.contracts import LayerMask, pack_indices
from twossp.errors import ExportUnsupported
from twossp.families import adapter_for
from twossp.methods import METHODS
from twossp.prune import PruneContext, prune
from twossp.prune.masks import apply_masks
from twossp.serve import gguf as gguf_export
from twossp.serve.gguf import refusal, write_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'twossp[gguf]'; it builds "
                                        "llama.cpp from source): the GGUF engine tests need it")
from twossp.serve.engine import Engine

EXPORTABLE = ("llama", "mistral", "qwen2", "phi3")
TEXT = ("The river opened the small garden slowly. A teacher carried the letter again! "
        "Every old engine crossed that bridge before dawn?")
TOLERANCE = 1e-4  # f32: max |llama.cpp - twossp| / max |twossp| logit (measured about 1e-6)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.support.tiny_checkpoint import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _model(tiny, family: str, layers: int = 6, **overrides):
    return tiny.model(family, num_layers=layers, vocab_size=320, **overrides)


def _pruned(tiny, cpu, family: str, method: str):
    """The family's tiny model pruned to 0.5 with ``method`` on fixed calibration tokens, and its outcome."""
    model = _model(tiny, family)
    outcome = prune(PruneContext(model=model, adapter=adapter_for(model.config),
                                 calibration=tiny.tokens(4, 24, vocab=320, seed=11), sparsity=0.5,
                                 method=METHODS[method].spec(), device=cpu))
    return model, outcome


def _greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    """twossp's greedy continuation: the full forward at every step, argmax, no stop token."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def _check_in_llama_cpp(model, tokenizer, path: Path, tensor_type: str = "f32") -> tuple[float, Engine]:
    """Write, load, compare tokens, logits and 20 greedy tokens; returns the relative logit error."""
    write_gguf(model, tokenizer, path, tensor_type)
    ids = tokenizer(TEXT)["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    with Engine(path, 128, f32_cache=True) as engine:
        assert engine.tokenize(TEXT) == ids
        got = engine.logits(ids)
        error = float(np.abs(got - expected).max() / np.abs(expected).max())
        if tensor_type == "f32":
            assert error < TOLERANCE, error
            assert engine.generate(ids[:6], 20) == _greedy(model, ids[:6], 20)
    return error


def _tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, tuple(int(n) for n in t.shape)) for t in reader.tensors}


def _field(path: Path, key: str):
    import gguf

    field = gguf.GGUFReader(path).fields[key]
    values = [field.parts[i].tolist() for i in field.data]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode()
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [v[0] if isinstance(v, list) else v for v in values]
    return values[0][0] if isinstance(values[0], list) else values[0]


@pytest.mark.parametrize("family", EXPORTABLE)
def test_2ssp_pruned_model_runs_in_llama_cpp_as_in_twossp(tiny, cpu, tokenizer, tmp_path, family) -> None:
    model, outcome = _pruned(tiny, cpu, family, "2ssp")
    assert outcome.removed_attention and model.config.intermediate_size < 128  # attention gone, FFN narrowed
    path = tmp_path / "m.gguf"
    _check_in_llama_cpp(model, tokenizer, path)

    assert _field(path, "general.architecture") == "deci"
    heads = _field(path, "deci.attention.head_count_kv")
    tensors = _tensors(path)
    for block in range(6):
        removed = block in outcome.removed_attention
        assert (heads[block] == 0) == removed
        if removed:  # no weights for a removed attention (block 0: the zero linear attention only)
            assert f"blk.{block}.attn_q.weight" not in tensors and f"blk.{block}.attn_k.weight" not in tensors
        padded = -(-model.config.intermediate_size // 32) * 32  # zero neurons to whole blocks of 32
        assert tensors[f"blk.{block}.ffn_down.weight"][1] == (padded, 64)  # ggml order: (in, out)


@pytest.mark.parametrize("family", EXPORTABLE)
def test_whole_blocks_removed_is_the_plain_architecture(tiny, cpu, tokenizer, tmp_path, family) -> None:
    model, outcome = _pruned(tiny, cpu, family, "shortgpt")
    path = tmp_path / "m.gguf"
    _check_in_llama_cpp(model, tokenizer, path)
    arch = "qwen2" if family == "qwen2" else "llama"
    assert _field(path, "general.architecture") == arch
    assert _field(path, f"{arch}.block_count") == 6 - len(outcome.removed_blocks)


@pytest.mark.parametrize("family", EXPORTABLE)
def test_block_0_attention_an_ffn_and_a_whole_block_removed(tiny, tokenizer, tmp_path, family) -> None:
    model = _model(tiny, family)
    width = model.config.intermediate_size
    rng = np.random.default_rng(3)

    def keep(n: int) -> bytes:
        return pack_indices(np.sort(rng.choice(width, n, replace=False)), width)

    masks = [LayerMask(0, False, width, keep(40)),        # block 0: attention removed, FFN narrowed
             LayerMask(1, True, width, keep(64)),
             LayerMask(2, True, width, pack_indices([], width)),   # attention kept, FFN removed
             LayerMask(3, False, width, pack_indices([], width)),  # the whole block removed
             LayerMask(4, False, width, keep(96)),
             LayerMask(5, True, width, keep(128))]
    apply_masks(model, adapter_for(model.config), masks)
    path = tmp_path / "m.gguf"
    _check_in_llama_cpp(model, tokenizer, path)

    tensors = _tensors(path)
    assert _field(path, "deci.block_count") == 5  # block 3 left out
    assert _field(path, "deci.attention.head_count") == [4, 4, 4, 0, 4]  # block 0: the zero linear attention
    assert _field(path, "deci.attention.head_count_kv") == [0, 2, 2, 0, 2]
    assert _field(path, "deci.feed_forward_length") == [64, 64, 32, 96, 128]  # 40 padded; block 2: a zero FFN
    assert not np.any(_tensor(path, "blk.0.attn_output.weight")) and "blk.0.attn_q.weight" not in tensors
    assert not np.any(_tensor(path, "blk.2.ffn_down.weight"))
    assert not any(name.startswith("blk.3.attn") for name in tensors)


def _tensor(path: Path, name: str) -> np.ndarray:
    import gguf

    return next(np.asarray(t.data) for t in gguf.GGUFReader(path).tensors if t.name == name)


def test_llama3_rope_scaling_is_carried_as_frequency_factors(tiny, tokenizer, tmp_path) -> None:
    """Llama 3's scaling bends every frequency of these 16-wide heads (original length 16)."""
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    model = _model(tiny, "llama", rope_parameters=rope)
    path = tmp_path / "m.gguf"
    _check_in_llama_cpp(model, tokenizer, path)
    assert "rope_freqs.weight" in _tensors(path)


@pytest.fixture(scope="module")
def pruned_llama(tokenizer):
    from tests.support.models import random_tokens, tiny_model

    model = tiny_model("llama", num_layers=6, vocab_size=320)
    prune(PruneContext(model=model, adapter=adapter_for(model.config),
                       calibration=random_tokens(4, 24, vocab=320, seed=11), sparsity=0.5,
                       method=METHODS["2ssp"].spec(), device=torch.device("cpu")))
    return model


def _rounded(model, kind):
    """``model`` with every matrix rounded through ``kind`` and back by the gguf package (the FFN
    padding included): what llama.cpp should compute from a file of that type."""
    import gguf

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.ndim == 2:
                a = p.numpy()
                padded = np.pad(a, ((0, 0), (0, -a.shape[1] % kind.block)))
                back = gguf.quants.dequantize(gguf.quants.quantize(padded, kind.quantization), kind.quantization)
                p.copy_(torch.from_numpy(np.ascontiguousarray(back[:, :a.shape[1]])))
    return rounded


#: max |llama.cpp - rounded model| / max |logit|, measured on this model: f16 2e-3, bf16 2e-2 (llama.cpp
#: multiplies in bf16), block types 4e-2 to 7e-2 (llama.cpp quantises the activations to 8 bits too)
BOUNDS = {"f16": 0.01, "bf16": 0.05, "q8_0": 0.1, "q5_1": 0.12, "q5_0": 0.12, "q4_1": 0.12, "q4_0": 0.12}


@pytest.mark.parametrize("tensor_type", sorted(BOUNDS))
def test_every_tensor_type_computes_what_its_rounded_weights_compute(pruned_llama, tokenizer, tmp_path,
                                                                     tensor_type) -> None:
    kind = gguf_export.TENSOR_TYPES[tensor_type]
    path = tmp_path / f"m.{tensor_type}.gguf"
    write_gguf(pruned_llama, tokenizer, path, tensor_type)
    ids = tokenizer(TEXT)["input_ids"]
    with torch.no_grad():
        expected = _rounded(pruned_llama, kind)(torch.tensor([ids])).logits[0].numpy()
    with Engine(path, 128, f32_cache=True) as engine:
        error = float(np.abs(engine.logits(ids) - expected).max() / np.abs(expected).max())
    assert error < BOUNDS[tensor_type], error
    tensors = _tensors(path)
    width = pruned_llama.config.intermediate_size
    padded = -(-width // 32) * 32  # zero neurons pad the FFN to whole blocks
    assert tensors["blk.1.ffn_down.weight"] == (kind.ggml, (padded, 64))
    assert tensors["blk.1.ffn_norm.weight"][0] == "F32"  # norms stay f32
    assert tensors["token_embd.weight"][0] == kind.ggml


def test_k_quants_are_made_by_llama_cpp_and_lose_less_than_the_legacy_types(tiny, cpu, tokenizer, tmp_path) -> None:
    """Rows of 256 (hidden 256), so that the K-quants really apply, and the FFN padded to 256. On
    this random model every bit counts (measured max logit error / max logit: q8_0 0.15, q6_k 0.36,
    q5_k_m 0.54, q5_0 0.76, q4_k_m 0.94, q4_0 1.05, q2_k 1.40): fewer bits lose more, and a K-quant
    less than the legacy type of its size."""
    model = tiny.model("llama", num_layers=4, vocab_size=320, hidden_size=256, intermediate_size=512)
    prune(PruneContext(model=model, adapter=adapter_for(model.config),
                       calibration=tiny.tokens(4, 24, vocab=320, seed=11), sparsity=0.5, method=METHODS["2ssp"].spec(),
                       device=cpu))
    ids = tokenizer(TEXT)["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    errors, sizes = {}, {}
    for tensor_type in ("q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "q2_k"):
        path = tmp_path / f"m.{tensor_type}.gguf"
        written = write_gguf(model, tokenizer, path, tensor_type, {"twossp.run_key": "abc"})
        with Engine(path, 128) as engine:
            errors[tensor_type] = float(np.abs(engine.logits(ids) - expected).max() / np.abs(expected).max())
        sizes[tensor_type] = path.stat().st_size
        if gguf_export.TENSOR_TYPES[tensor_type].by_llama_cpp:
            assert written.types.get(gguf_export.TENSOR_TYPES[tensor_type].ggml), written.types
            assert "llama.cpp's own quantiser" in written.rewrites[-1]
            assert _field(path, "twossp.run_key") == "abc"  # the metadata survives the quantiser
            padded = -(-model.config.intermediate_size // 256) * 256
            assert _tensors(path)["blk.1.ffn_down.weight"][1] == (padded, 256)
    assert not list(tmp_path.glob(".*"))  # no intermediate f16 file left behind
    order = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q2_k"]
    assert [errors[t] for t in order] == sorted(errors[t] for t in order), errors
    assert errors["q5_k_m"] < errors["q5_0"] and errors["q4_k_m"] < errors["q4_0"], errors
    assert [sizes[t] for t in order] == sorted((sizes[t] for t in order), reverse=True), sizes


def test_smaller_types_make_smaller_files(pruned_llama, tokenizer, tmp_path) -> None:
    sizes = {t: write_gguf(pruned_llama, tokenizer, tmp_path / f"{t}.gguf", t).size
             for t in ("f32", "f16", "q8_0", "q4_0")}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"], sizes


@pytest.mark.parametrize(("family", "reason"), [("qwen3", "q/k norms"), ("gemma2", "Gemma"), ("gemma3", "Gemma")])
def test_families_llama_cpp_cannot_run_pruned_are_refused(tiny, tokenizer, tmp_path, family, reason) -> None:
    model = _model(tiny, family, layers=2)
    assert reason in refusal(model.config)
    assert reason in refusal(json.loads(model.config.to_json_string()))  # from a config.json alone
    with pytest.raises(ExportUnsupported, match=reason) as raised:
        write_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert "--format safetensors" in str(raised.value)
    assert not (tmp_path / "m.gguf").exists()


def test_a_slicegpt_model_is_refused(tiny, cpu, tokenizer, tmp_path) -> None:
    model = _model(tiny, "llama", layers=4)
    prune(PruneContext(model=model, adapter=adapter_for(model.config), calibration=tiny.tokens(4, 24, vocab=320),
                       sparsity=0.25, method=METHODS["slicegpt"].spec(), device=cpu))
    with pytest.raises(ExportUnsupported, match="SliceGPT.*shortcut"):
        write_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert METHODS["slicegpt"].gguf_refusal and all(m.gguf_refusal is None for n, m in METHODS.items()
                                                    if n != "slicegpt")


@pytest.mark.parametrize(("change", "reason"), [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "yarn"),
    ({"partial_rotary_factor": 0.5}, "part of each head"),
])
def test_rope_variants_llama_cpp_layouts_lack_are_refused(tiny, change, reason) -> None:
    config = copy.deepcopy(_model(tiny, "phi3" if "partial" in str(change) else "llama", layers=1).config)
    for key, value in change.items():
        setattr(config, key, value)
    assert reason in refusal(config)


PRE_VOCAB = 600  # tokens of the tokenizers trained below (their model has as many embeddings)


def _bpe_tokenizer(directory: Path, pre_tokenizer, decoder=None, model_kwargs=None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.support.tiny_checkpoint import EOS, paragraphs

    tok = Tokenizer(models.BPE(**(model_kwargs or {})))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder or decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=PRE_VOCAB, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # numbers, spaces, case and contractions often enough that merges across the pieces the
    # pre-tokenizers cut differently are learnt: a wrong pre-tokenizer then changes the tokens
    rng = np.random.default_rng(0)
    drills = [f"In {rng.integers(0, 10**rng.integers(1, 7))}  the  {rng.integers(0, 999)} DIDN'T, I'LL... "
              f"don't\n\n  {rng.integers(0, 99)}%\t caf\u00e9 \u6771\u4eac" for _ in range(300)]
    tok.train_from_iterator([*paragraphs(30, seed=5), *drills], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def _pre_tokenizer(name: str):
    from tokenizers import Regex, pre_tokenizers

    split = {"llama-bpe": gguf_export_vocab()._LLAMA3_SPLIT, "qwen2": gguf_export_vocab()._QWEN2_SPLIT}
    if name == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if name == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split[name]), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def gguf_export_vocab():
    from twossp.serve import vocab

    return vocab


HARD_TEXT = ("In 2024, the 12,345 bridges cost $1.5M (about 7%)... Didn't they? I'LL say: yes!\n\n"
             "  Two  spaces,\ttabs,\r\nand   more;   caf\u00e9 na\u00efve \u00fcber \u2014 \u6771\u4eac 123456789.")


@pytest.mark.parametrize("name", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_each_known_pre_tokenizer_splits_text_as_the_tokenizer_does(tiny, tmp_path, name) -> None:
    tokenizer = _bpe_tokenizer(tmp_path, _pre_tokenizer(name))
    assert gguf_export_vocab().pre_tokenizer(json.loads(tokenizer.backend_tokenizer.to_str())) == name
    path = tmp_path / "m.gguf"
    write_gguf(tiny.model("llama", num_layers=1, vocab_size=PRE_VOCAB), tokenizer, path, "f16")
    with Engine(path, 64) as engine:
        for text in (HARD_TEXT, TEXT, " leading space", "trailing  ", "x\n\n\ny"):
            assert engine.tokenize(text) == tokenizer(text, add_special_tokens=False)["input_ids"], text


def _sentencepiece_tokenizer(form: str = "normalizer"):
    """A Llama-2-style tokenizer trained on the tiny corpus: BPE over "\u2581"-spaced text, the 256
    byte tokens for what the vocabulary lacks, <unk> <s> </s>, BOS added. ``form``: "normalizer"
    (Llama 2's own tokenizer.json) or "metaspace" (the newer one)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.support.tiny_checkpoint import paragraphs

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    space = "\u2581"
    if form == "normalizer":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(space), normalizers.Replace(" ", space)])
        tok.decoder = decoders.Sequence([decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=space, prepend_scheme="first", split=False)
        tok.decoder = decoders.Metaspace(replacement=space, prepend_scheme="first", split=False)
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=PRE_VOCAB, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([*paragraphs(30, seed=5), "In 2024 it cost 12,345 didn't  it?\nYes."], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_a_sentencepiece_style_tokenizer_tokenises_as_in_hugging_face(tiny, tmp_path) -> None:
    tokenizer = _sentencepiece_tokenizer()
    path = tmp_path / "m.gguf"
    write_gguf(tiny.model("llama", num_layers=1, vocab_size=PRE_VOCAB), tokenizer, path, "f16")
    assert _field(path, "tokenizer.ggml.model") == "llama" and _field(path, "tokenizer.ggml.add_bos_token")
    with Engine(path, 64) as engine:
        for text in (HARD_TEXT, TEXT, " leading space", "trailing  ", "x\n\n\ny", "Hello"):
            assert engine.tokenize(text) == tokenizer(text, add_special_tokens=False)["input_ids"], text
        ids = tokenizer(TEXT)["input_ids"]
        assert ids[0] == 1 and engine.llm.tokenize(TEXT.encode(), add_bos=True, special=False) == ids


def test_tokenizers_llama_cpp_would_split_differently_are_refused(tiny, tmp_path) -> None:
    from tokenizers import decoders, pre_tokenizers

    model = _model(tiny, "llama", layers=1)
    whitespace = _bpe_tokenizer(tmp_path, pre_tokenizers.Whitespace())
    with pytest.raises(ExportUnsupported, match="no llama.cpp pre-tokenizer is known.*known: gpt-2, smollm"):
        write_gguf(model, whitespace, tmp_path / "m.gguf")
    with pytest.raises(ExportUnsupported, match="Metaspace.*llama.cpp always adds it"):
        write_gguf(model, _sentencepiece_tokenizer("metaspace"), tmp_path / "m.gguf")  # " x": no second space
    wordpiece = _bpe_tokenizer(tmp_path, pre_tokenizers.Whitespace(), decoders.WordPiece())
    with pytest.raises(ExportUnsupported, match="WordPiece decoder"):
        write_gguf(model, wordpiece, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
