"""Where a model's decoder blocks live while a run computes on them (README, Placements).

- ``Single``: the whole model on one device, as ``from_pretrained(...).to(device)`` leaves it. No
  hook is installed: nothing changes for a model that fits.
- ``Split``: each block on one of several devices (a node's GPUs); the embeddings, final norm and
  LM head on the first. A hook before each block moves its inputs to the block's device.
- ``Stream``: the blocks' weights stay at a ``Home`` (host memory, or the checkpoint's own
  safetensors shards on disk with rewritten blocks in a scratch folder); a block is brought to the
  compute device just before it runs (``resident``) and its tensors given back to the home when
  it is evicted, at most ``capacity`` blocks at once: the one running and the next one, which a
  background thread reads meanwhile.

Why our own block loop rather than accelerate's offload: with accelerate an offloaded weight is a
``meta`` tensor outside its forward, and pruning code that slices it, or builds a new ``Linear``
from it, gets a shape error or, worse, wrong logits with no error. Here an evicted block's weights
are ``meta`` too, but (1) any forward makes the block resident first, (2) pruning code edits a
block only inside ``resident(block)``, where its weights are real, (3) ``families.base.new_linear``
refuses a ``meta`` weight, and (4) an evicted block whose tensors changed (new modules, new shapes,
in-place edits) is written back to its home before its memory is freed, so the next forward, the
evaluation and the export read the pruned weights.

Loops that visit every block for every calibration window run blocks outside and windows inside
(``prune.calibration.walk``), so a streamed pass brings each block to the device once.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from twossp.device import Copier
from twossp.errors import PlacementError
from twossp.families.base import FamilyAdapter

Tensors = dict[str, torch.Tensor]


def move(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (in tuples, lists and dicts too) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(move(v, device) for v in value)
    if isinstance(value, list):
        return [move(v, device) for v in value]
    if isinstance(value, dict):
        return {k: move(v, device) for k, v in value.items()}
    return value


def block_tensors(block: nn.Module) -> Tensors:
    """A block's parameters and persistent buffers by their names inside the block: what its home keeps."""
    return dict(block.state_dict(keep_vars=True))


def _assign(block: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = block.get_submodule(owner) if owner else block
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[leaf] = tensor


def _fingerprint(block: nn.Module) -> dict[str, tuple]:
    """What tells whether a resident block's tensors changed: a new tensor object, new storage, a
    new shape, an in-place edit (torch's version counter) or a tensor added or gone."""
    return {name: (id(t), t.data_ptr(), tuple(t.shape), None if t.is_inference() else t._version)
            for name, t in block_tensors(block).items()}


#: The placement each placed model follows (a model not in it is on one device: ``Placement``).
_PLACED: "weakref.WeakKeyDictionary[nn.Module, Placement]" = weakref.WeakKeyDictionary()


def placement_of(model: nn.Module) -> "Placement":
    """Where ``model``'s blocks live: the placement installed on it, else one device (its first parameter's)."""
    placed = _PLACED.get(model)
    if placed is not None:
        return placed
    first = next(model.parameters(), None)
    return Placement(first.device if first is not None else torch.device("cpu"))


class Placement:
    """``Single``: every block on ``device``, which is also where the embeddings, the final norm and
    the LM head live, and where the token ids go in."""

    kind = "single"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._handles: dict[Any, Any] = {}
        self._model: nn.Module | None = None

    def describe(self) -> str:
        return self.kind

    @property
    def devices(self) -> list[torch.device]:
        """Every device a block computes on (one peak-memory measurement each)."""
        return [self.device]

    def device_of(self, block: nn.Module) -> torch.device:
        return self.device

    def keep(self, state: torch.Tensor) -> torch.Tensor:
        """Where a cached block input stays between uses (``Stream`` on an accelerator: host memory)."""
        return state

    @contextmanager
    def resident(self, block: nn.Module) -> Iterator[torch.device]:
        """The body runs with ``block``'s weights real on its device (pruning code edits a block only here)."""
        yield self.device_of(block)

    @property
    def max_resident(self) -> int | None:
        """The most blocks a streamed model ever had on the device at once (None: not streamed)."""
        return None

    #: whether a pass over many sequences should run blocks outside and sequences inside
    #: (``prune.calibration.walk``) rather than one forward per sequence: what a streamed model needs
    blockwise = False

    def install(self, model: nn.Module, adapter: FamilyAdapter) -> None:
        """Hooks that make every forward, ours or a library's, follow the placement."""

    def replace(self, old: nn.Module, new: nn.Module) -> None:
        """``new`` (built while ``old`` was resident, on its device) takes block ``old``'s place."""

    def gather(self, device: torch.device | None = None) -> None:
        """Make the model whole in memory for what needs every weight at once (an export): a no-op
        unless streamed."""

    def close(self) -> None:
        """Remove the hooks; a streamed model's scratch files go."""
        for handle in self._handles.values():
            handle.remove()
        self._handles = {}
        if self._model is not None:
            _PLACED.pop(self._model, None)

    def _hook_blocks(self, model: nn.Module, adapter: FamilyAdapter) -> None:
        """Before each block: ``enter`` it and move its inputs to its device; before the final norm:
        bring the hidden state back to the first device, where the LM head is."""
        def before_norm(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
            return move(args, self.device), move(kwargs, self.device)

        for block in adapter.layers(model):
            self._hook(block)
        norm = adapter.final_norm(model)
        self._handles[norm] = norm.register_forward_pre_hook(before_norm, with_kwargs=True)
        self._model = model
        _PLACED[model] = self

    def _hook(self, block: nn.Module) -> None:
        def before_block(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
            device = self.enter(module)
            return move(args, device), move(kwargs, device)

        self._handles[block] = block.register_forward_pre_hook(before_block, with_kwargs=True)

    def _unhook(self, block: nn.Module) -> None:
        handle = self._handles.pop(block, None)
        if handle is not None:
            handle.remove()

    def enter(self, block: nn.Module) -> torch.device:
        return self.device_of(block)


class Split(Placement):
    """Each block on one of ``devices`` (contiguous runs of blocks, in order); the rest on the first."""

    kind = "split"

    def __init__(self, devices: list[torch.device]) -> None:
        super().__init__(devices[0])
        self._devices = devices
        self._where: dict[nn.Module, torch.device] = {}

    def describe(self) -> str:
        return f"split {len(self._devices)}x {self.device.type}"

    @property
    def devices(self) -> list[torch.device]:
        return list(dict.fromkeys(self._devices))

    def assignment(self, blocks: int) -> list[torch.device]:
        """Block i's device: ``blocks`` shared out in equal contiguous runs over the devices."""
        return [self._devices[i * len(self._devices) // blocks] for i in range(blocks)]

    def device_of(self, block: nn.Module) -> torch.device:
        return self._where.get(block, self.device)

    def replace(self, old: nn.Module, new: nn.Module) -> None:
        self._where[new] = self._where.pop(old, self.device)
        self._unhook(old)
        self._hook(new)

    def install(self, model: nn.Module, adapter: FamilyAdapter) -> None:
        """Every block moved to its device (a no-op for one loaded there), then the hooks."""
        layers = adapter.layers(model)
        for block, device in zip(layers, self.assignment(len(layers))):
            self._where[block] = device
            block.to(device)
        self._hook_blocks(model, adapter)


class Home(Protocol):
    """Where a streamed block's tensors are while it is not on the device."""

    def read(self, block: int, names: list[str]) -> Tensors: ...

    def write(self, block: int, tensors: Tensors) -> None:
        """Keep ``tensors`` as the block's (replacing those of the same names; the others stay)."""

    def close(self) -> None: ...


class HostHome:
    """Host memory: each block's tensors as CPU tensors (page-locked when ``pin``, so that copies
    to an accelerator run asynchronously)."""

    where = "host"

    def __init__(self, pin: bool = False) -> None:
        self.pin = pin
        self.blocks: dict[int, Tensors] = {}

    def read(self, block: int, names: list[str]) -> Tensors:
        kept = self.blocks[block]
        return {name: kept[name] for name in names}

    def write(self, block: int, tensors: Tensors) -> None:
        host = {name: t.detach().to("cpu") for name, t in tensors.items()}
        kept = self.blocks.setdefault(block, {})
        kept.update({name: t.pin_memory() if self.pin else t for name, t in host.items()})

    def close(self) -> None:
        self.blocks.clear()


class DiskHome:
    """The checkpoint's own safetensors shards (read through memory maps, so unmodified weights
    never count as the process's memory), and a scratch folder where a block whose tensors changed
    is written whole, one file per block."""

    where = "disk"

    def __init__(self, keys: dict[str, Path], prefix: str, scratch: Path) -> None:
        self.keys, self.prefix, self.scratch = keys, prefix, scratch
        self.rewritten: set[int] = set()
        self._lock = threading.Lock()
        self._headers: dict[Path, tuple[dict[str, Any], int]] = {}  # the checkpoint's: its files never change

    def _file(self, block: int) -> Path:
        return self.scratch / f"block-{block}.safetensors"

    def read(self, block: int, names: list[str]) -> Tensors:
        if block in self.rewritten:
            return {name: read_tensor(self._file(block), name) for name in names}
        found: Tensors = {}
        for name in names:
            key = f"{self.prefix}{block}.{name}"
            if key not in self.keys:
                raise PlacementError(f"the checkpoint has no tensor {key!r}: stream it from host memory "
                                     "(`runtime.offload: host`) or load it whole (`runtime.placement: single`)")
            path = self.keys[key]
            if path not in self._headers:
                self._headers[path] = _header(path)
            found[name] = read_tensor(path, key, self._headers[path])
        return found

    def names(self, block: int) -> list[str]:
        """The names of the tensors the home has of ``block``."""
        if block in self.rewritten:
            return list(_header(self._file(block))[0])
        own = f"{self.prefix}{block}."
        return [key[len(own):] for key in self.keys if key.startswith(own)]

    def write(self, block: int, tensors: Tensors) -> None:
        """The block's file rewritten whole: ``tensors``, and what the home had of the others."""
        from safetensors.torch import save_file

        with self._lock:
            others = [name for name in self.names(block) if name not in tensors]
            whole = {**self.read(block, others), **{name: t.detach().to("cpu") for name, t in tensors.items()}}
            self.scratch.mkdir(parents=True, exist_ok=True)
            save_file({name: t.contiguous() for name, t in whole.items()}, str(self._file(block)))
            self.rewritten.add(block)

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.scratch, ignore_errors=True)


@dataclass
class _Slot:
    """One streamed block: its number at its home, and while resident, what it looked like on arrival."""

    index: int
    loaded: dict[str, tuple] | None = None
    pinned: int = 0
    prefetch: Future | None = field(default=None, repr=False)


class Stream(Placement):
    """Blocks brought to ``device`` one at a time from ``home`` (module docstring)."""

    kind = "stream"
    blockwise = True

    def __init__(self, device: torch.device, home: Home, capacity: int = 2) -> None:
        super().__init__(device)
        self.home, self.capacity = home, capacity
        self._slots: dict[nn.Module, _Slot] = {}
        self._order: list[nn.Module] = []          # the blocks as installed (a replaced one: its successor)
        self._layers: Callable[[], Sequence[nn.Module]] = lambda: self._order  # the model's blocks now
        self._resident: OrderedDict[nn.Module, None] = OrderedDict()  # least recently entered first
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twossp-prefetch")
        self._copier = Copier(device)
        self._most = 0
        self.loads = 0

    def describe(self) -> str:
        return f"stream from {getattr(self.home, 'where', 'home')}"

    @property
    def max_resident(self) -> int:
        return self._most

    def keep(self, state: torch.Tensor) -> torch.Tensor:
        return state if self.device.type == "cpu" else state.to("cpu")

    def install(self, model: nn.Module, adapter: FamilyAdapter) -> None:
        """Take over the model's blocks: those with real weights give them to the home; every block
        is then evicted (``meta``) until its first forward."""
        self._layers = lambda: adapter.layers(model)
        for index, block in enumerate(adapter.layers(model)):
            self._slots[block] = _Slot(index)
            self._order.append(block)
            tensors = block_tensors(block)
            if any(not t.is_meta for t in tensors.values()):
                self.home.write(index, tensors)
            self._evict_tensors(block)
        self._hook_blocks(model, adapter)

    def replace(self, old: nn.Module, new: nn.Module) -> None:
        """``new`` takes ``old``'s slot; it arrived resident and is written home when evicted."""
        slot = self._slot(old)
        if slot.prefetch is not None:
            slot.prefetch.result()
            slot.prefetch = None
        self._slots[new] = self._slots.pop(old)
        self._order[slot.index] = new
        self._resident.pop(old, None)
        self._resident[new] = None
        slot.loaded = {}  # never what it was: written home on eviction
        self._unhook(old)
        self._hook(new)

    def enter(self, block: nn.Module) -> torch.device:
        self._arrive(block)
        self._prefetch_after(block)
        return self.device

    @contextmanager
    def resident(self, block: nn.Module) -> Iterator[torch.device]:
        slot = self._slot(block)
        self._arrive(block)
        slot.pinned += 1
        try:
            yield self.device
        finally:
            slot.pinned -= 1

    def _slot(self, block: nn.Module) -> _Slot:
        slot = self._slots.get(block)
        if slot is None:
            raise PlacementError("this block is not one of the streamed model's")
        return slot

    def _arrive(self, block: nn.Module) -> None:
        """Make ``block`` resident (from its prefetch when one was started), evicting the least
        recently entered unpinned blocks beyond ``capacity``."""
        slot = self._slot(block)
        if block in self._resident:
            self._resident.move_to_end(block)
            self._complete(block)
            return
        self._make_room(0 if slot.prefetch else 1, protect=block)
        tensors = self._copier.take(*slot.prefetch.result()) if slot.prefetch else None
        slot.prefetch = None
        if tensors is None or set(tensors) != set(block_tensors(block)):  # its modules changed meanwhile
            tensors = self._copier.take(*self._fetch(block))
        for name, tensor in tensors.items():
            _assign(block, name, tensor)
        slot.loaded = _fingerprint(block)
        self._resident[block] = None
        self._most = max(self._most, len(self._resident))
        self.loads += 1

    def _complete(self, block: nn.Module) -> None:
        """A resident block's submodules put back since it arrived (a bypass undone) brought in too:
        their tensors read from the home, as they were when the block arrived."""
        missing = [name for name, tensor in block_tensors(block).items() if tensor.is_meta]
        if missing:
            for name, tensor in self._copier.take(*self._fetch(block, missing)).items():
                _assign(block, name, tensor)
            slot, now = self._slots[block], _fingerprint(block)
            slot.loaded = {**(slot.loaded or {}), **{name: now[name] for name in missing}}

    def _fetch(self, block: nn.Module, names: list[str] | None = None) -> tuple[Tensors, Any]:
        """The block's tensors (or those ``names``) read from its home and copied to the device, in
        the dtypes its placeholders have (with the copy's fence: ``Copier.take`` waits for it)."""
        slot = self._slots[block]
        wanted = {name: t for name, t in block_tensors(block).items() if names is None or name in names}
        with torch.inference_mode(False):  # ordinary tensors, even when a forward under inference mode asks
            read = self.home.read(slot.index, list(wanted))
            return self._copier.copy({name: read[name].to(wanted[name].dtype) for name in wanted})

    def _prefetch_after(self, block: nn.Module) -> None:
        """Start reading the block after ``block`` in the model as it is now (whole blocks may have
        been removed) while ``block`` computes, when there is room for it."""
        layers = list(self._layers())
        at = next((i + 1 for i, layer in enumerate(layers) if layer is block), len(layers))
        if at >= len(layers):
            return
        following = layers[at]
        slot = self._slots.get(following)
        if slot is None or following in self._resident or slot.prefetch is not None:
            return
        if self._make_room(1, protect=block):
            slot.prefetch = self._pool.submit(self._fetch, following)

    def _make_room(self, needed: int, protect: nn.Module) -> bool:
        """Evict unpinned blocks other than ``protect``, least recently entered first, until
        ``needed`` more fit within ``capacity`` (a prefetch under way counts as resident). False
        if the pinned ones leave no room."""
        pending = sum(1 for s in self._slots.values() if s.prefetch is not None)
        while len(self._resident) + pending + needed > self.capacity:
            victim = next((b for b in self._resident if b is not protect and self._slots[b].pinned == 0), None)
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _evict(self, block: nn.Module) -> None:
        """Give ``block`` back: its tensors that changed since it arrived written to its home first
        (a submodule set aside meanwhile, as a bypass does, is not a change: what the home has of it
        stays), then freed."""
        slot, tensors = self._slots[block], block_tensors(block)
        loaded, now = slot.loaded or {}, _fingerprint(block)
        # a submodule put back after the block arrived and never run since is not a change: its
        # tensors are still placeholders, and the home has them as they were
        changed = {name for name, mark in now.items()
                   if loaded.get(name) != mark and not (tensors[name].is_meta and name not in loaded)}
        if changed:
            if any(tensors[name].is_meta for name in changed):
                raise PlacementError(f"block {slot.index} was changed with weights that are not real "
                                     "(edited outside `Placement.resident`)")
            self.home.write(slot.index, {name: tensors[name] for name in changed})
        self._evict_tensors(block)
        slot.loaded = None
        del self._resident[block]

    @staticmethod
    def _evict_tensors(block: nn.Module) -> None:
        for name, tensor in block_tensors(block).items():
            _assign(block, name, torch.empty_like(tensor, device="meta"))

    def gather(self, device: torch.device | None = None) -> None:
        """Bring every block's weights back for good, onto ``device`` (default: the compute device),
        and stop streaming: the model becomes an ordinary one, for what needs it whole (an export)."""
        for block in self._order:
            if block in self._slots:
                self._arrive(block)
                del self._resident[block]  # kept for good: never evicted
                for name, tensor in block_tensors(block).items():
                    _assign(block, name, tensor.to(device or self.device))
        self._slots.clear()
        self.close()

    def close(self) -> None:
        super().close()
        self._pool.shutdown(wait=True)
        self.home.close()


# --- the parts of a model that are not blocks ("the ends": embeddings, final norm, LM head) -----

def blocks_prefix(model: nn.Module, adapter: FamilyAdapter) -> str:
    """The state-dict prefix of block i's tensors, less the i: ``model.layers.``."""
    layers = adapter.layers(model)
    name = next(name for name, module in model.named_modules() if module is layers)
    return f"{name}."


def _ends(model: nn.Module, adapter: FamilyAdapter) -> list[nn.Module]:
    """Every module of ``model`` that is not inside a block."""
    inside = {id(m) for block in adapter.layers(model) for m in block.modules()} | {id(adapter.layers(model))}
    return [m for m in model.modules() if id(m) not in inside]


def move_ends(model: nn.Module, adapter: FamilyAdapter, device: torch.device) -> None:
    """The tensors of every module outside the blocks moved to ``device`` (ties kept: each tensor once)."""
    moved: dict[int, torch.Tensor] = {}
    for module in _ends(model, adapter):
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is not None:
                    if id(tensor) not in moved:
                        moved[id(tensor)] = (nn.Parameter(tensor.data.to(device), requires_grad=False)
                                             if isinstance(tensor, nn.Parameter) else tensor.to(device))
                    store[name] = moved[id(tensor)]


#: safetensors' dtype names
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (name -> dtype, shape, data offsets) and where its data starts."""
    import json

    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def read_tensor(path: Path, name: str, header: tuple[dict[str, Any], int] | None = None) -> torch.Tensor:
    """One tensor of a safetensors file, read into memory of its own with plain reads. (The library's
    loader maps the whole file copy-on-write, which counts the file's size as the process's private
    memory: a kernel memory limit then refuses a 500 MB shard to read one 30 MB tensor.) ``header``:
    the file's ``_header`` where the caller keeps it."""
    entries, start = header or _header(path)
    entry = entries[name]
    begin, end = entry["data_offsets"]
    data = torch.empty(end - begin, dtype=torch.uint8)
    with open(path, "rb") as f:
        f.seek(start + begin)
        if f.readinto(memoryview(data.numpy())) != end - begin:
            raise PlacementError(f"{path} is shorter than its header says ({name})")
    return data.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def safetensors_keys(folder: Path) -> dict[str, Path]:
    """Every tensor name in the folder's ``*.safetensors`` files, and its file (headers read only)."""
    keys: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        keys.update({key: file for key in _header(file)[0]})
    if not keys:
        raise PlacementError(f"{folder} has no safetensors weights to stream from; use `runtime.offload: host`")
    return keys


def load_ends(model: nn.Module, adapter: FamilyAdapter, keys: dict[str, Path], prefix: str,
              device: torch.device) -> None:
    """A skeleton's (``meta``) tensors outside the blocks read from the checkpoint onto ``device``,
    in the skeleton's dtypes; tied weights tied again. A tensor the checkpoint lacks is an error."""
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.startswith(prefix) or not tensor.is_meta or name not in keys:
            continue
        _assign(model, name, read_tensor(keys[name], name).to(device, tensor.dtype))
    model.tie_weights()
    move_ends(model, adapter, device)  # the buffers the skeleton built on the host (rotary frequencies)
    missing = [name for name, t in model.state_dict(keep_vars=True).items() if t.is_meta and not name.startswith(prefix)]
    if missing:
        raise PlacementError(f"the checkpoint lacks {', '.join(missing[:5])}: it cannot be streamed")
