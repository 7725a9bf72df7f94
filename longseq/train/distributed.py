"""Data-parallel training on PyTorch's distributed runtime: the process group, each rank's share of a batch, the
collectives the trainer needs, and the ``torchrun`` launcher behind ``longseq train --nproc N``.

One process per rank, started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...). The
backend is gloo on CPU and NCCL on CUDA. The rules that keep a run reproducible carry over from one process:

- **The global batch is the config's ``batch_size``**, whatever the number of ranks. The batch of update ``s`` is
  the one a single process would train on (``trainer.batch_indices``); rank ``r`` of ``W`` takes its ``r``-th
  contiguous block of ``batch_size / W`` examples, cut into ``grad_accum`` micro-batches. So each rank's data is a
  function of (seed, step, rank).
- **The gradient is the single process's**: each micro-batch's mean loss is weighted by its share of the global
  batch's supervised positions (one all-reduce of the counts per update), and DDP averages over ranks. Ranks and
  accumulation only change the order of floating-point sums, so W ranks follow the one-process trajectory up to
  rounding (a test holds 2 ranks to 1 process in float64), and a run may resume with another number of ranks or
  another ``grad_accum``.
- **Only rank 0 writes** (checkpoints, ``metrics.jsonl``, the results store, the console). Every rank reads the
  same checkpoint to resume, so the out_dir must be on a filesystem all ranks see.

A rank that dies takes the run down: ``torchrun`` stops the others, and every collective has a timeout
(``LONGSEQ_DIST_TIMEOUT_S``, default 300 s) so that a lost peer ends in an error, never a hang. Workers ask the
kernel for SIGTERM when their parent dies, so ``kill -9`` of the launcher leaves no orphan training; the run then
resumes from its last checkpoint with ``--resume``.

**FSDP** (``TrainConfig.fsdp``): instead of a whole copy per rank (DDP), each rank holds a shard of every parameter,
gradient and optimizer moment (PyTorch's FSDP2, ``fully_shard``: ``shard_model``); the rules above hold unchanged
(FSDP2's reduce-scatter averages over the ranks as DDP's all-reduce does). A forward is then a collective, so every
rank runs the same number of them (``evaluation_share`` pads a rank's share of an evaluation). Checkpoints stay the
single-process state: ``full_state`` gathers it onto rank 0 to write, ``load_full_state`` shards it back, so a run
resumes with or without FSDP and with any number of ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from longseq.modules.optim import optim_settings, set_optim
from longseq.modules.param_cache import ParamCache

TIMEOUT_ENV = "LONGSEQ_DIST_TIMEOUT_S"
_PARENT_POLL_S = 0.5


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world_size`` (0 of 1 without a process group)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a multi-process run (torchrun sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device | str = "cpu") -> Ranks:
    """Join the process group torchrun describes in the environment (once) and return this process's ranks;
    ``Ranks()`` when not launched by torchrun. gloo for a CPU ``device``, NCCL for CUDA."""
    if not launched_by_torchrun():
        return Ranks()
    if not dist.is_initialized():
        _exit_with_parent()
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "300")))
        dist.init_process_group(backend=backend, timeout=timeout)
    return current()


def shutdown(*, wait: bool = True) -> None:
    """Leave the process group (each rank, once its work is done; a rank exiting without it may abort). ``wait``: a
    barrier first, after a run that ended normally: a rank that tears its gloo connections down while a slower peer
    (rank 0 writing the last checkpoint) still holds them makes that peer's transport thread throw at exit
    ("terminate called without an active exception"). After an error, no barrier: the peers may be gone."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def current() -> Ranks:
    """The ranks of the initialized process group, or ``Ranks()`` without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size())


def _exit_with_parent() -> None:
    """End this rank when the launcher dies (``kill -9`` of it), so that no rank trains on as an orphan.

    A daemon thread polls the parent pid: Linux's PR_SET_PDEATHSIG would fire when the launcher's *thread* that
    started the rank ends, which torchrun's agent does while the rank still runs.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        print(f"longseq: rank {os.environ.get('RANK', '?')}: the launcher (pid {parent}) is gone; stopping. Resume "
              "from the last checkpoint with --resume.", file=sys.stderr, flush=True)
        os._exit(1)  # checkpoints are written atomically: nothing half-written survives

    threading.Thread(target=watch, name="longseq-parent-watch", daemon=True).start()


def rank_micro_batches(indices: np.ndarray, ranks: Ranks, grad_accum: int) -> list[np.ndarray]:
    """indices: (batch_size,) the update's global batch -> this rank's ``grad_accum`` micro-batches, each
    ``(batch_size / (world_size * grad_accum),)``: rank ``r`` takes the ``r``-th contiguous block."""
    parts = ranks.world_size * grad_accum
    if len(indices) % parts:
        raise ValueError(
            f"batch_size={len(indices)} is not divisible by world_size x grad_accum = {ranks.world_size} x "
            f"{grad_accum} = {parts}; allowed: a batch_size that is a multiple of {parts}"
        )
    per_rank = len(indices) // ranks.world_size
    block = indices[ranks.rank * per_rank : (ranks.rank + 1) * per_rank]
    return list(np.split(block, grad_accum))


def all_reduce_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (nothing to do in one process); returns it."""
    if ranks.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def agree(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (a decision such as 'over the time budget' must be taken once)."""
    if not ranks.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def data_parallel(model: nn.Module, ranks: Ranks) -> nn.Module:
    """The module to train: ``model`` itself in one process, else DDP around it (rank 0's weights broadcast on
    construction). Unused parameters are allowed (a router may leave a branch idle for a batch)."""
    if not ranks.distributed:
        return model
    device = next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def gradient_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager[None]:
    """A context in which the backward reduces the gradients over the ranks only when ``sync`` (the last
    micro-batch of an update; the others accumulate locally): DDP's ``no_sync``, FSDP2's
    ``set_requires_gradient_sync``; nothing to do for a module trained in one process."""
    if _is_fsdp(module):
        module.set_requires_gradient_sync(sync)
    elif not sync and isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


def evaluation_share(num_batches: int, ranks: Ranks, *, same_count: bool) -> list[tuple[int, bool]]:
    """This rank's batches of an evaluation of ``num_batches``: ``(batch number, counted)`` for every
    ``world_size``-th batch from ``rank``. ``same_count`` (FSDP, whose forwards are collectives that every rank must
    join): padded with batch 0, not counted, up to the share of the rank with the most, so that no rank waits for a
    forward another will never run."""
    share = [(number, True) for number in range(ranks.rank, num_batches, ranks.world_size)]
    if same_count:
        most = -(-num_batches // ranks.world_size)
        share += [(0, False)] * (most - len(share))
    return share


def shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model`` over the process group's ranks with FSDP2, in place, and return it.

    Each block of every ``Backbone`` in ``model`` is its own unit (its parameters are gathered for its forward and
    backward, then freed), and the root holds the rest (embeddings, heads, final norms: a tied weight stays tied
    there). The root frees its gathered parameters after the forward too, so that outside a forward every
    parameter is this rank's shard (a ``DTensor``), which ``full_state`` and the optimizer see. Each parameter
    keeps its optimizer settings (``set_optim``), which sharding would drop: build the optimizer afterwards.
    Refuses a device other than CPU (gloo) and CUDA (NCCL), the pairs PyTorch's FSDP2 runs on.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from longseq.models.backbone import Backbone

    device = next(model.parameters()).device
    backend = dist.get_backend()
    if (device.type, backend) not in (("cpu", "gloo"), ("cuda", "nccl")):
        raise ValueError(f"fsdp=True on device {device.type!r} with backend {backend!r}: allowed: cpu with gloo, "
                         "cuda with nccl (PyTorch's FSDP2)")
    # The model's device, not torch's default accelerator: a CPU run on a machine with a GPU shards on the CPU.
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    settings = {name: optim_settings(parameter) for name, parameter in model.named_parameters()}
    for module in list(model.modules()):
        if isinstance(module, Backbone):
            for block in module.blocks:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    for name, parameter in model.named_parameters():
        if settings[name]:
            set_optim(parameter, **settings[name])
    return model


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The whole state of a sharded ``model`` (and ``optimizer``) gathered onto rank 0's CPU: ``(weights,
    optimizer state or None)``, empty dicts on the other ranks. A collective: every rank calls it.

    ``weights`` has ``model.state_dict()``'s names, a tied weight once per name as an unsharded model's state dict
    has it. The optimizer state is in ``optimizer.state_dict()``'s form: torch.distributed.checkpoint gives it keyed
    by parameter name; it is numbered back as ``optimizer.state_dict()`` numbers parameters, in the order of
    ``optimizer.param_groups`` (``trainer.parameter_groups``'), so it is what one process would checkpoint. The
    tensors are copies (on CPU the gather would hand back the live buffers and step counts).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = _copies(get_model_state_dict(model, options=options), model.state_dict().values())
    if optimizer is None:
        return weights, None
    gathered = get_optimizer_state_dict(model, optimizer, options=options)
    if not gathered:  # not rank 0
        return weights, {}
    live = [tensor for entries in optimizer.state.values() for tensor in entries.values()
            if isinstance(tensor, torch.Tensor)]
    index = {name: number for number, name in enumerate(_parameter_names(model, optimizer))}
    state = {index[name]: _copies(entries, live) for name, entries in gathered["state"].items()}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in gathered["param_groups"]]
    return weights, {"state": dict(sorted(state.items())), "param_groups": groups}


def load_full_state(model: nn.Module, weights: Mapping[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | None = None,
                    optimizer_state: dict[str, Any] | None = None) -> None:
    """The inverse of ``full_state``: load rank 0's whole ``weights`` (and ``optimizer_state``, in
    ``optimizer.state_dict()``'s form) into the sharded ``model`` (and ``optimizer``); each rank keeps its shard.
    A collective: every rank calls it; only rank 0's dicts are read (the others may pass empty ones).

    A tied weight may come under one of its names (a checkpoint stores it once). Rank 0 sends the whole state,
    rather than every rank reading it, because the weights that ``select_on="val"`` keeps exist on rank 0 only.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, dict(weights), options=options)
    drop_param_caches(model)
    if optimizer is None:
        return
    names = _parameter_names(model, optimizer)
    by_name: dict[str, Any] = {}
    if optimizer_state:
        by_name = {
            "state": {names[int(number)]: entries for number, entries in optimizer_state["state"].items()},
            "param_groups": [{**group, "params": [names[number] for number in group["params"]]}
                             for group in optimizer_state["param_groups"]],
        }
    tuples = [{key for key, value in group.items() if isinstance(value, tuple)} for group in optimizer.param_groups]
    set_optimizer_state_dict(model, optimizer, by_name, options=options)
    # The broadcast turns tuples (betas) into lists: give them back the optimizer's own types.
    for group, keys in zip(optimizer.param_groups, tuples, strict=True):
        group.update({key: tuple(group[key]) for key in keys})


def drop_param_caches(model: nn.Module) -> None:
    """Empty every ``ParamCache`` in ``model``. FSDP2 refills a gathered parameter in place without bumping its
    version, so a cache keyed on (data pointer, version) could return a value of older weights: call this whenever
    the weights of a sharded model change (an optimizer step, a load)."""
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, ParamCache):
                setattr(module, name, ParamCache())


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (an FSDP shard), without importing ``torch.distributed.tensor`` (a second
    or more) when nothing has: no DTensor can exist before that."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """This rank's part of a ``DTensor``; any other tensor (or None) as it is."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a ``DTensor`` (a collective where it is sharded or partial, such as the norm of sharded
    gradients); any other tensor as it is."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def _is_fsdp(module: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each of ``optimizer``'s parameters, in ``optimizer.state_dict()``'s numbering (a tied weight
    under its first name, as torch.distributed.checkpoint names it)."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


def _copies(tensors: Mapping[str, Any], live: Iterable[torch.Tensor]) -> dict[str, Any]:
    """``tensors`` with each one that shares memory with a ``live`` tensor (a shard's local part) copied."""
    shared = {local(tensor).untyped_storage().data_ptr() for tensor in live}
    shared.discard(0)  # empty tensors
    return {name: value.clone() if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in shared
            else value for name, value in tensors.items()}


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m longseq.cli <argv>`` as ``nproc`` ranks under torchrun (in this process, so that killing it
    stops the ranks) on this machine; return the exit code, with a message naming the failed rank."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise ValueError(f"nproc={nproc}: allowed: 1 or more processes")
    # torchrun would set OMP_NUM_THREADS=1 with a banner saying so; the trainer's --threads sets torch's own.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # DDP warns at every start that find_unused_parameters may cost time (see data_parallel): errors only.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "longseq.cli", *argv]
    )
    try:
        run(args)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        print(f"longseq: rank {rank} of {nproc} failed (exit code {failure.exitcode}); the other ranks were stopped. "
              "Resume from the last checkpoint with --resume.", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
