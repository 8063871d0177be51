"""Qualitative generations (twossp.evaluate.generate): greedy, one prompt at a time, new tokens only."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoTokenizer

from twossp.evaluate.generate import generate_texts

PROMPTS = ["The old teacher", "A green river crossed", "Every city"]


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    """The tiny checkpoint's real byte-level BPE; it has an EOS token and no pad token."""
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint.model_dir)
    assert tok.pad_token_id is None and tok.eos_token_id is not None
    return tok


@pytest.fixture
def model(tiny, tokenizer):
    eos = tokenizer.eos_token_id
    return tiny.model("llama", num_layers=2, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos,
                      pad_token_id=None)


def reference(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """Plain transformers greedy decoding of one prompt."""
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    new = ids[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), new.numel()


def test_generations_are_the_greedy_continuations_of_each_prompt(model, tokenizer, cpu) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pad-token or sampling-flag warnings
        first = generate_texts(model, tokenizer, PROMPTS, 6, cpu)
    assert first == generate_texts(model, tokenizer, PROMPTS, 6, cpu)  # deterministic
    assert [prompt for prompt, _, _ in first] == PROMPTS
    for prompt, output, new_tokens in first:
        assert (output, new_tokens) == reference(model, tokenizer, prompt, 6)
        assert output and not output.startswith(prompt)  # only what the model added


def test_sampling_settings_of_the_checkpoint_are_ignored(model, tokenizer, cpu) -> None:
    greedy = generate_texts(model, tokenizer, PROMPTS[:1], 6, cpu)
    model.generation_config.update(do_sample=True, temperature=5.0, top_k=3, top_p=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generate_texts(model, tokenizer, PROMPTS[:1], 6, cpu) == greedy


def test_generation_stops_at_eos_and_counts_what_was_produced(model, tokenizer, cpu) -> None:
    (_, _, produced), = generate_texts(model, tokenizer, PROMPTS[:1], 8, cpu)
    assert produced == 8
    # make the third generated token the model's EOS: generation ends at its first occurrence, counted
    inputs = tokenizer(PROMPTS[0], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    new = ids[0, inputs["input_ids"].shape[1]:].tolist()
    stop = new[2]
    model.generation_config.eos_token_id = stop
    (_, output, count), = generate_texts(model, tokenizer, PROMPTS[:1], 8, cpu)
    assert count == new.index(stop) + 1
    assert output == tokenizer.decode(new[:count], skip_special_tokens=True)


@pytest.mark.parametrize(("prompts", "max_new_tokens", "message"),
                         [(PROMPTS, 0, "max_new_tokens"), ([], 4, "no prompt")])
def test_invalid_arguments_are_refused(model, tokenizer, cpu, prompts, max_new_tokens, message) -> None:
    with pytest.raises(ValueError, match=message):
        generate_texts(model, tokenizer, prompts, max_new_tokens, cpu)
