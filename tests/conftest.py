"""Shared fixtures: tiny deterministic Llama-layout models built from real transformers configs.

Weights are re-drawn from a seeded generator after construction (norm scales and biases included),
so that every parameter is non-trivial: biases that transformers initialises to zero and norm
weights initialised to one would otherwise hide slicing or counting mistakes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3")

_CLASSES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "phi3": (Phi3Config, Phi3ForCausalLM),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM),
}

#: Gemma's defaults (head_dim 256, windows of 4096 tokens) are far too wide for these models. A window
#: of 4 makes the sliding layers really slide in short tests; caps of 3 (final) and 5 (attention,
#: Gemma 2) really bend the logits; Gemma 3 gets a full layer every 3rd (not 6th) so small models
#: mix both types.
_GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4, final_logit_softcapping=3.0)
_EXTRA = {"gemma2": {**_GEMMA, "attn_logit_softcapping": 5.0}, "gemma3": {**_GEMMA, "sliding_window_pattern": 3}}

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_config(family: str = "llama", num_layers: int = 4, **overrides):
    config_cls, model_cls = _CLASSES[family]
    kwargs = {**TINY, "num_hidden_layers": num_layers, **overrides}
    if family == "qwen3":
        kwargs.setdefault("head_dim", 16)  # Qwen3Config defaults to 128, far too wide for hidden 64
    kwargs = {**_EXTRA.get(family, {}), **kwargs}
    config = config_cls(**kwargs)
    config.architectures = [model_cls.__name__]
    return config


def tiny_model(family: str = "llama", num_layers: int = 4, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny fp32 model in eval mode whose weights depend only on ``seed``."""
    config = tiny_config(family, num_layers, **overrides)
    torch.manual_seed(seed)
    model = _CLASSES[family][1](config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                # larger than the usual 0.02 so that logits are far from uniform and the greedy
                # attention search has clear (non-tied) winners
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    return model


def random_tokens(n: int, length: int, vocab: int = TINY["vocab_size"], seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=gen)


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The helpers above, for test modules (which should not import ``conftest``)."""
    return SimpleNamespace(config=tiny_config, model=tiny_model, tokens=random_tokens, families=FAMILIES)


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# On-disk fixtures for the CLI, database and driver tests (appended; see tests/tiny_checkpoint.py)
# --------------------------------------------------------------------------------------------

from pg_server import (  # noqa: E402
    drop_database,
    new_database,
    password_unavailable_reason,
    postgres_password_server,
    postgres_server,
    unavailable_reason,
)
from tiny_checkpoint import tiny_checkpoint  # noqa: E402,F401  (session-scoped fixture)
from swept_views import views_db  # noqa: E402,F401  (session-scoped fixture: a real sweep for the views)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A throwaway PostgreSQL server on 127.0.0.1 for the whole session (see tests/pg_server.py)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_password_url() -> SimpleNamespace:
    """A throwaway PostgreSQL server that requires a password (scram-sha-256) of every connection,
    for the whole session (see tests/pg_server.py):

    - ``url``: its admin URL with the password in it
      (``postgresql+psycopg://twossp:PASSWORD@127.0.0.1:PORT/postgres``; the superuser),
    - ``password``: the password itself, to assert that no output contains it,
    - ``user``: the user name,
    - ``new_database()``: a fresh empty database on it; returns its URL (with the password).
      Dropped with the server at the end of the session.
    """
    reason = password_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from sqlalchemy.engine import make_url

    with postgres_password_server() as (url, password):
        created: list[str] = []

        def fresh() -> str:
            created.append(new_database(url))
            return created[-1]

        yield SimpleNamespace(url=url, password=password, user=make_url(url).username, new_database=fresh)
        for database in created:  # a server given by TWOSSP_TEST_POSTGRES outlives the session
            drop_database(url, database)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A URL of an empty database: a SQLite file in ``tmp_path``, or a fresh Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    url = new_database(admin_url)
    try:
        yield url
    finally:
        drop_database(admin_url, url)


@pytest.fixture
def db(db_url: str):  # noqa: ANN201 - a twossp.db.database.Database
    """An open ``Database`` on ``db_url`` (SQLite, and PostgreSQL where the test server runs)."""
    from twossp.db.database import Database

    with Database(db_url) as database:
        yield database
