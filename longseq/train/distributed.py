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
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

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


def shutdown() -> None:
    """Leave the process group (each rank, once its work is done; a rank exiting without it may abort)."""
    if dist.is_available() and dist.is_initialized():
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
