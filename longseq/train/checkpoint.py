"""Checkpoints that resume exactly: weights and optimizer tensors in safetensors, everything else in JSON.

A checkpoint is one directory holding

- ``model.safetensors``: the model's ``state_dict`` (tied weights stored once, via ``safetensors.torch``);
- ``optimizer.safetensors``: the optimizer's per-parameter state tensors under the keys
  ``state.<param index>.<name>`` (the param index is the one ``optimizer.state_dict()`` uses);
- ``extra.safetensors``, only when the caller passes ``extra_tensors``: tensors the training state needs beyond
  the model and optimizer (the trainer's best-on-validation weights, ``TrainConfig.select_on``), read back by
  ``read_extra_tensors``;
- ``state.json``: the step, the caller's config and extra data (metrics so far, run id, ...), the optimizer's
  param_groups and non-tensor state, the scheduler's state, the python/numpy/torch RNG states, the size
  and SHA-256 of the tensor files (``files``), the longseq version that wrote it (``longseq_version``) and the
  SHA-256 of its own content (``state_sha256``).

Every file is written to a temporary file in the same directory and moved into place with ``os.replace``;
an existing ``state.json`` is removed first and the new one is written last, so a directory is a complete
checkpoint iff its ``state.json`` exists, and the recorded checksums catch tensor files that do not belong
to it.

**Integrity.** Loading verifies everything before it modifies anything, and each problem is one line
(``CheckpointError``) naming what differs: a tensor file whose size or SHA-256 is not the recorded one (one flipped
byte is enough), a ``state.json`` whose content hash is not the recorded one, tensors that do not fit the model
(names, shapes, dtypes) or the optimizer, a config other than the one the caller expects (``load_checkpoint(...,
config=)``: ``config.model.d_model: checkpoint 16, now 32``), and a format this code cannot read. ``state_sha256``
hashes the canonical JSON (sorted keys, compact) of every entry but itself, of ``files`` only the names: the
digests recorded there are checked against the files themselves, so damage to one is caught as a tensor file that
does not match it, and a tensor file may be re-recorded by rewriting its digest alone. So any changed byte of a
checkpoint (but JSON whitespace) is an error.

**Compatibility.** ``version`` is the format, not the longseq release: this code reads formats 1 to
``FORMAT_VERSION``, whichever longseq wrote them, and refuses a newer format naming the longseq version that wrote
it and the one reading it. Format 1 (longseq 0.1.0 before integrity hashes) has no ``longseq_version`` nor
``state_sha256``: such a checkpoint loads without those checks. From format 2 on both are required, so a checkpoint
stripped of its hash is refused rather than trusted. A field a format adds later is optional in the older formats
and required from its own on; fields are never removed within a format.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from longseq import __version__
from longseq.train.distributed import is_dtensor
from longseq.userinput import short_repr

FORMAT = "longseq-checkpoint"
FORMAT_VERSION = 2  # 2: longseq_version and state_sha256 added (format 1 still read)
READABLE_VERSIONS = range(1, FORMAT_VERSION + 1)
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
EXTRA_TENSORS_FILE = "extra.safetensors"
STATE_FILE = "state.json"


class CheckpointError(ValueError):
    """No checkpoint where one was expected, or a checkpoint that is corrupt or does not fit the model."""


# ----------------------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    config: dict[str, Any],
    extra: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
    model_state: Mapping[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint of the training state after ``step`` updates into ``directory``.

    ``config`` and ``extra`` must be JSON-able; ``extra_tensors`` (name -> tensor, none sharing memory) go to
    ``extra.safetensors``. Returns the directory. The RNG states saved are the current ones, so call this between
    steps, where an uninterrupted run would continue from exactly this state.

    ``model_state``, ``optimizer_state``: what to write instead of ``model.state_dict()`` and
    ``optimizer.state_dict()`` (under FSDP, the whole state gathered from the shards: ``distributed.full_state``),
    in the same form; ``model`` still tells which names share a tensor, so a tied weight is stored once as for an
    unsharded model.
    """
    directory = Path(directory)
    optimizer_tensors, optimizer_json = _split_optimizer_state(
        optimizer.state_dict() if optimizer_state is None else optimizer_state)
    state = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "longseq_version": __version__,
        "step": step,
        "config": config,
        "extra": extra,
        "optimizer": optimizer_json,
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
    }
    try:  # before touching the directory, so that a non-JSON-able value leaves an existing checkpoint intact
        json.dumps(state)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint config/extra/optimizer/scheduler state must be JSON-able: {error}") from None

    directory.mkdir(parents=True, exist_ok=True)
    # From here until the new state.json lands the directory is not a checkpoint, never a mixed one.
    (directory / STATE_FILE).unlink(missing_ok=True)
    if model_state is None:
        _atomic_write(directory / MODEL_FILE, lambda tmp: safetensors.torch.save_model(model, str(tmp)))
    else:
        _atomic_write(directory / MODEL_FILE, lambda tmp: _save_model_state(model, model_state, tmp))
    _atomic_write(directory / OPTIMIZER_FILE, lambda tmp: safetensors.torch.save_file(optimizer_tensors, str(tmp)))
    files = [MODEL_FILE, OPTIMIZER_FILE]
    if extra_tensors is not None:
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in extra_tensors.items()}
        _atomic_write(directory / EXTRA_TENSORS_FILE, lambda tmp: safetensors.torch.save_file(tensors, str(tmp)))
        files.append(EXTRA_TENSORS_FILE)
    else:  # a file left by an earlier checkpoint in this directory is not part of this one
        (directory / EXTRA_TENSORS_FILE).unlink(missing_ok=True)
    state["files"] = {name: _file_digest(directory / name) for name in files}
    state["state_sha256"] = _state_digest(state)
    text = json.dumps(state, indent=1)
    _atomic_write(directory / STATE_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return directory


def _save_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``state`` (``model``'s state dict, one tensor per name) written as ``safetensors.torch.save_model`` writes an
    unsharded model: names that hold one tensor in ``model`` (a tied weight) stored once, under the first in sorted
    order, each other recorded in the metadata as an alias of it."""
    holders: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():  # keep_vars: a tied weight is one object
        holders.setdefault(id(tensor), []).append(name)
    aliases = {}
    for names in holders.values():
        kept, *others = sorted(names)
        aliases.update(dict.fromkeys(others, kept))
    tensors = {name: tensor.contiguous() for name, tensor in state.items() if name not in aliases}
    safetensors.torch.save_file(tensors, str(path), metadata=aliases or None)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Run ``write(tmp)`` on a temporary file next to ``path``, flush it to disk, then rename it to ``path``."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of ``state``'s canonical JSON without ``state_sha256`` and with only the names of the ``files``
    (module docstring). Hashed as JSON reads it back (tuples become lists, integer keys strings, which sort
    differently), so the digest of the loaded state equals the digest of the state saved."""
    content = {key: value for key, value in json.loads(json.dumps(state)).items() if key != "state_sha256"}
    files = content.get("files")
    content["files"] = sorted(files) if isinstance(files, dict) else files
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state -> (flat tensors keyed ``state.<index>.<name>``, the JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        plain_state[str(index)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                plain_state[str(index)][name] = value
    groups = [{key: list(v) if isinstance(v, tuple) else v for key, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "state": plain_state, "tensor_keys": sorted(tensors)}


# ----------------------------------------------------------------------------------------------------------
# RNG state as JSON


def _encode_bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def _decode_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng_state() -> dict[str, Any]:
    """The python, numpy (global legacy generator), torch CPU and (if initialised) CUDA RNG states, JSON-able."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _encode_bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_encode_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_decode_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_decode_bytes(s) for s in state["cuda"]])


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block without disturbing the global RNG streams (so an evaluation never shifts training)."""
    saved = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(saved)


# ----------------------------------------------------------------------------------------------------------
# Loading


def read_checkpoint_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed and verified ``state.json`` of the checkpoint in ``directory``, without touching any model.

    Raises ``CheckpointError`` "no checkpoint at <path>" when the directory or its ``state.json`` is missing, and
    one naming the file and the problem when the JSON is malformed, is not a longseq checkpoint, is of a format this
    code cannot read, misses entries, or does not match its recorded ``state_sha256`` (module docstring).
    """
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory} (missing {STATE_FILE})")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a longseq checkpoint (format {short_repr(found)}, expected {FORMAT!r})")
    version = state.get("version")
    if not isinstance(version, int) or version not in READABLE_VERSIONS:
        writer = state.get("longseq_version", "an unknown version")
        raise CheckpointError(
            f"{path}: written by longseq {writer} (format {short_repr(version)}), this is longseq {__version__} "
            f"(format {FORMAT_VERSION}), which reads formats {READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}; "
            "load it with the longseq that wrote it, or a newer one"
        )
    required = ["step", "config", "extra", "optimizer", "scheduler", "rng", "files"]
    if version >= 2:
        required += ["longseq_version", "state_sha256"]
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path}: missing entries {missing} (format {version})")
    # Whenever recorded (not only from format 2 on), so that damage to "version" itself cannot skip the check.
    if "state_sha256" in state and _state_digest(state) != state["state_sha256"]:
        raise CheckpointError(
            f"{path}: sha256 of its content {_state_digest(state)[:12]} != recorded "
            f"{str(state['state_sha256'])[:12]}; the file was edited or damaged"
        )
    return state


def config_differences(then: Any, now: Any, path: str) -> list[str]:
    """``"<path>.<key>...: checkpoint <then>, now <now>"`` for each leaf where two JSON-able configs differ, dicts
    compared key by key (a key on one side only shows as ``<absent>``); [] when they are equal. Both are compared
    as JSON reads them back, so a tuple equals the list a checkpoint stored."""
    return _differences(json.loads(json.dumps(then)), json.loads(json.dumps(now)), path)


_ABSENT = object()


def _differences(then: Any, now: Any, path: str) -> list[str]:
    if isinstance(then, dict) and isinstance(now, dict):
        found = []
        for key in [*then, *(key for key in now if key not in then)]:
            found += _differences(then.get(key, _ABSENT), now.get(key, _ABSENT), f"{path}.{key}")
        return found
    if then == now:
        return []
    shown = ["<absent>" if value is _ABSENT else short_repr(value) for value in (then, now)]
    return [f"{path}: checkpoint {shown[0]}, now {shown[1]}"]


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any] | None = None,
    restore: Callable[[dict[str, torch.Tensor], dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Restore model weights, optimizer, scheduler and RNG states from ``directory``; return its state.json.

    ``config``: when given, the config the checkpoint must have been saved with (``save_checkpoint``'s), compared
    leaf by leaf. Everything is checked before anything is modified, so a ``CheckpointError`` (missing checkpoint,
    bad JSON, unreadable format, checksum mismatch, another config, missing/unexpected/misshapen tensors, parameter
    groups that do not fit) leaves the model and optimizer as they were. ``restore(weights, optimizer_state)``
    loads the checked weights and optimizer state (``optimizer.state_dict()``'s form) instead of
    ``model.load_state_dict`` and ``optimizer.load_state_dict`` (under FSDP: ``distributed.load_full_state``).
    """
    directory = Path(directory)
    state = read_checkpoint_state(directory)
    if config is not None:
        differences = config_differences(state["config"], config, "config")
        if differences:
            raise CheckpointError(f"{directory}: config differs: " + "; ".join(differences))
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        _verify_file(directory / name, state["files"].get(name))
    weights = _read_tensors(directory / MODEL_FILE)
    _check_model_tensors(directory / MODEL_FILE, model, weights)
    optimizer_state = _assemble_optimizer_state(
        directory / OPTIMIZER_FILE, _read_tensors(directory / OPTIMIZER_FILE), state["optimizer"], optimizer
    )

    if restore is None:
        model.load_state_dict(weights, strict=False)  # strictness already checked, allowing for tied weights
    try:
        if restore is None:
            optimizer.load_state_dict(optimizer_state)
        else:
            restore(weights, optimizer_state)
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{directory / STATE_FILE}: cannot restore optimizer/scheduler/RNG: {error}") from None
    return state


def read_extra_tensors(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor] | None:
    """The ``extra_tensors`` saved with the checkpoint in ``directory`` (checksum verified), or None when it was
    saved without them."""
    directory = Path(directory)
    recorded = read_checkpoint_state(directory)["files"].get(EXTRA_TENSORS_FILE)
    if recorded is None:
        return None
    _verify_file(directory / EXTRA_TENSORS_FILE, recorded)
    return _read_tensors(directory / EXTRA_TENSORS_FILE)


def _verify_file(path: Path, recorded: dict[str, Any] | None) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint's {STATE_FILE} names it)")
    if recorded is None:
        raise CheckpointError(f"{path.parent / STATE_FILE}: does not record {path.name}")
    actual = _file_digest(path)
    if actual != recorded:
        raise CheckpointError(
            f"{path}: does not match {STATE_FILE} (size/sha256 {actual['bytes']}/{actual['sha256'][:12]} vs "
            f"recorded {recorded.get('bytes')}/{str(recorded.get('sha256'))[:12]}); the file was modified or "
            "belongs to another checkpoint"
        )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(error).__name__}: {error})") from None


def _tensor_identity(tensor: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    if is_dtensor(tensor):  # an FSDP shard has no storage of its own: a tied weight is one parameter object
        return id(tensor), 0, tuple(tensor.shape)
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)


def _check_model_tensors(path: Path, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Keys, shapes and dtypes of ``weights`` against the model; a tied tensor may be stored under one name."""
    expected = model.state_dict(keep_vars=True)
    problems = []
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    stored = {_tensor_identity(expected[name]) for name in weights if name in expected}
    missing = sorted(
        name for name in expected if name not in weights and _tensor_identity(expected[name]) not in stored
    )
    if missing:
        problems.append(f"missing tensors {missing}")
    for name, tensor in weights.items():
        if name in expected and (tensor.shape != expected[name].shape or tensor.dtype != expected[name].dtype):
            problems.append(
                f"{name}: file has {tuple(tensor.shape)} {tensor.dtype}, "
                f"model has {tuple(expected[name].shape)} {expected[name].dtype}"
            )
    if problems:
        raise CheckpointError(f"{path}: does not fit {type(model).__name__}: " + "; ".join(problems))


def _assemble_optimizer_state(
    path: Path, tensors: dict[str, torch.Tensor], saved: dict[str, Any], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Rebuild ``optimizer.state_dict()`` form from the tensor file and JSON, checking it fits ``optimizer``.

    The shape check assumes per-parameter state tensors are either scalars or shaped like their parameter,
    which holds for the optimizers the trainer uses (the Adam family, SGD).
    """
    groups = saved.get("param_groups")
    current_groups = optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(current_groups):
        raise CheckpointError(
            f"{path.parent / STATE_FILE}: optimizer has {len(current_groups)} parameter groups, checkpoint has "
            f"{len(groups) if isinstance(groups, list) else groups!r}"
        )
    params_by_index: dict[int, torch.Tensor] = {}
    restored_groups = []
    for number, (group, current) in enumerate(zip(groups, current_groups, strict=True)):
        if len(group.get("params", [])) != len(current["params"]):
            raise CheckpointError(
                f"{path.parent / STATE_FILE}: parameter group {number} has {len(current['params'])} parameters "
                f"in the optimizer, {len(group.get('params', []))} in the checkpoint"
            )
        params_by_index.update(zip(group["params"], current["params"], strict=True))
        # JSON turned tuples (betas) into lists; give them back the optimizer's own types.
        restored_groups.append(
            {key: tuple(v) if isinstance(current.get(key), tuple) else v for key, v in group.items()}
        )

    state: dict[int, dict[str, Any]] = {int(index): dict(entries) for index, entries in saved["state"].items()}
    problems = []
    missing = sorted(set(saved.get("tensor_keys", [])) - set(tensors))
    if missing:
        problems.append(f"missing tensors {missing}")
    for key, tensor in tensors.items():
        prefix, _, rest = key.partition(".")
        index_text, _, name = rest.partition(".")
        if prefix != "state" or not index_text.isdigit() or not name:
            problems.append(f"unexpected tensor {key!r}")
            continue
        index = int(index_text)
        if index not in params_by_index:
            problems.append(f"{key}: no parameter with index {index}")
            continue
        shape = params_by_index[index].shape
        if tensor.dim() > 0 and tensor.shape != shape:
            problems.append(f"{key}: shape {tuple(tensor.shape)}, parameter has {tuple(shape)}")
        state.setdefault(index, {})[name] = tensor
    unknown = sorted(index for index in state if index not in params_by_index)
    if unknown:
        problems.append(f"state for unknown parameter indices {unknown}")
    unrecorded = sorted(set(tensors) - set(saved.get("tensor_keys", [])))
    if unrecorded:
        problems.append(f"tensors not recorded in {STATE_FILE}: {unrecorded}")
    if problems:
        raise CheckpointError(f"{path}: does not fit the optimizer: " + "; ".join(problems))
    return {"state": state, "param_groups": restored_groups}
