"""Loading a sweep's model: from the hub, a local directory, a GGUF file (dequantised once into a
cached safetensors directory) or the builtin offline SmolLM2. The architecture is checked against
the family registry before any weights are read. Importing this module does not import torch."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from filelock import FileLock

from twossp.cache import cache_dir
from twossp.data.hub import unavailable, unreachable_reason
from twossp.data.registry_wheels import SMOLLM2_GGUF
from twossp.errors import DataUnavailable
from twossp.families import adapter_for
from twossp.spec import ModelSpec

if TYPE_CHECKING:
    import torch

BUILTIN_DIR = "smollm2-135m-instruct"


def _converted_gguf_dir(gguf: Path) -> Path:
    """The cache directory a GGUF file is dequantised into, keyed by its path, size and mtime."""
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir("models") / f"{gguf.stem}-{tag}"


def model_directory(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Where ``from_pretrained`` should look, and the extra arguments it needs."""
    if spec.hub:
        return spec.hub, {"revision": spec.revision}
    if spec.path:
        if not Path(spec.path).is_dir():
            raise DataUnavailable(f"model directory not found: {spec.path}")
        return spec.path, {}
    if spec.gguf:
        gguf = Path(spec.gguf)
        if not gguf.is_file():
            raise DataUnavailable(f"GGUF file not found: {gguf}")
        return str(convert_gguf(gguf, _converted_gguf_dir(gguf))), {}
    return str(convert_gguf(SMOLLM2_GGUF.extract(), cache_dir("models") / BUILTIN_DIR)), {}


def config_path(spec: ModelSpec) -> Path | None:
    """The model's ``config.json`` if it can be read without downloading or converting anything
    (a local directory, an already converted GGUF or builtin, a hub model in the local cache)."""
    if spec.hub:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.hub, "config.json", revision=spec.revision)
        path = Path(found) if isinstance(found, str) else None
    elif spec.path:
        path = Path(spec.path) / "config.json"
    elif spec.gguf:
        path = _converted_gguf_dir(Path(spec.gguf)) / "config.json" if Path(spec.gguf).is_file() else None
    else:
        path = cache_dir("models") / BUILTIN_DIR / "config.json"
    return path if path is not None and path.is_file() else None


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint once (~35 s for SmolLM2-135M) into a plain safetensors directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        tmp = target.with_name(target.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain fp32 tensors by now; the GGUF marker only blocks serialisation.
        model.config.quantization_config = None
        del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    return target


def _hub_error(spec: ModelSpec, reason: str) -> DataUnavailable:
    return unavailable(f"model {spec.hub!r}", reason, "Download it where the hub is reachable and give its "
                       "directory as `path:` in the sweep (or `gguf:` for a GGUF file).")


def _from_hub_or_cache(spec: ModelSpec, load: Callable[..., Any]) -> Any:
    """``load(local_files_only=...)`` from the local cache first, then from the hub if reachable."""
    if not spec.hub:
        return load()
    try:
        return load(local_files_only=True)
    except OSError:
        pass
    reason = unreachable_reason()
    if reason:
        raise _hub_error(spec, reason)
    try:
        return load()
    except OSError as exc:
        raise _hub_error(spec, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


def load_config(spec: ModelSpec) -> Any:
    from transformers import AutoConfig

    where, extra = model_directory(spec)
    try:
        return _from_hub_or_cache(
            spec, lambda **kw: AutoConfig.from_pretrained(where, trust_remote_code=spec.trust_remote_code, **extra, **kw))
    except OSError as exc:
        raise DataUnavailable(f"cannot read a model config from {where}: {exc}") from None


def load_model(spec: ModelSpec, dtype: "torch.dtype", device: "torch.device") -> tuple[Any, Any]:
    """(model in eval mode on ``device``, tokenizer). Unsupported architectures fail before weights load."""
    return _load_on_host(spec, dtype).to(device), load_tokenizer(spec)


def _load_on_host(spec: ModelSpec, dtype: "torch.dtype") -> Any:
    """The model in eval mode in host memory, its architecture checked before any weight is read."""
    from transformers import AutoModelForCausalLM

    config = load_config(spec)
    adapter_for(config).check_supported(config)
    where, extra = model_directory(spec)
    common = dict(trust_remote_code=spec.trust_remote_code, **extra)
    model = _from_hub_or_cache(
        spec, lambda **kw: AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **common, **kw))
    return model.eval()


def load_tokenizer(spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    where, extra = model_directory(spec)
    return _from_hub_or_cache(spec, lambda **kw: AutoTokenizer.from_pretrained(
        where, trust_remote_code=spec.trust_remote_code, **extra, **kw))


def load_placed(spec: ModelSpec, dtype: "torch.dtype", placement: str, devices: list["torch.device"],
                offload: str = "disk") -> tuple[Any, Any]:
    """(model in eval mode, ``twossp.placement.Placement`` installed on it) for a
    ``placement`` already chosen (``single``, ``split`` or ``stream``; never ``auto``):

    - ``single``: the whole model on ``devices[0]``;
    - ``split``: loaded in host memory, then each block moved to its share of ``devices``;
    - ``stream`` from ``host``: loaded in host memory, the blocks handed to a ``HostHome``;
    - ``stream`` from ``disk``: no block is ever read whole: a skeleton without weights is built,
      the embeddings, final norm and LM head read from the checkpoint's safetensors shards onto
      ``devices[0]``, and the blocks left in the shards (``DiskHome``)."""
    from twossp import placement as placed
    from twossp.device import return_freed_host_memory

    if placement == "stream":
        return_freed_host_memory()  # an evicted block's memory goes back to the system, not to the heap
    if placement == "stream" and offload == "disk":
        return _load_streamed_from_disk(spec, dtype, devices[0])
    model = _load_on_host(spec, dtype)
    adapter = adapter_for(model.config)
    if placement == "single":
        return model.to(devices[0]), placed.Placement(devices[0])
    if placement == "split":
        chosen: Any = placed.Split(devices)
    else:
        chosen = placed.Stream(devices[0], placed.HostHome(pin=devices[0].type != "cpu"))
    chosen.install(model, adapter)
    placed.move_ends(model, adapter, devices[0])
    return model, chosen


def checkpoint_files(spec: ModelSpec) -> Path:
    """The local folder of the model's safetensors shards (a hub model's downloaded snapshot)."""
    if spec.hub:
        from huggingface_hub import snapshot_download

        return Path(_from_hub_or_cache(spec, lambda **kw: snapshot_download(
            spec.hub, revision=spec.revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"], **kw)))
    return Path(model_directory(spec)[0])


def _load_streamed_from_disk(spec: ModelSpec, dtype: "torch.dtype", device: "torch.device") -> tuple[Any, Any]:
    import tempfile

    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, GenerationConfig

    from twossp import placement as placed

    config = load_config(spec)
    adapter = adapter_for(config)
    adapter.check_supported(config)
    folder = checkpoint_files(spec)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    try:
        model.generation_config = GenerationConfig.from_pretrained(folder)
    except OSError:
        pass  # no generation_config.json: the config's defaults, as from_pretrained leaves them
    keys = placed.safetensors_keys(folder)
    prefix = placed.blocks_prefix(model, adapter)
    placed.load_ends(model, adapter, keys, prefix, device)
    scratch = Path(tempfile.mkdtemp(prefix="twossp-stream-", dir=cache_dir("stream")))
    stream = placed.Stream(device, placed.DiskHome(keys, prefix, scratch))
    stream.install(model, adapter)
    return model.eval(), stream


def resolve_revisions(spec: Any) -> Any:
    """The sweep with every hub model's branch or tag replaced by the commit it names now, so that
    run keys name the weights: from the local cache's refs, or the hub when it is reachable. A
    model neither knows (offline, never downloaded) keeps its revision; its runs then fail to load
    with that reason. Torch-free."""
    models = [_resolved_revision(m) if m.hub else m for m in spec.models]
    return spec.model_copy(update={"models": models})


def _resolved_revision(model: ModelSpec) -> ModelSpec:
    import re

    revision = model.revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return model
    commit = _cached_commit(model.hub, revision)
    if commit is None and unreachable_reason() is None:
        from huggingface_hub import HfApi

        try:
            commit = HfApi().model_info(model.hub, revision=revision).sha
        except Exception:  # noqa: BLE001 - not found, gated, ...: loading reports it with its reason
            commit = None
    return model.model_copy(update={"revision": commit}) if commit else model


def _cached_commit(repo: str, revision: str, cache: Path | None = None) -> str | None:
    """The commit a branch or tag pointed to when the model was last downloaded into the hub cache."""
    if cache is None:
        from huggingface_hub.constants import HF_HUB_CACHE

        cache = Path(HF_HUB_CACHE)
    ref = cache / f"models--{repo.replace('/', '--')}" / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return commit if len(commit) == 40 else None
