"""The training loop: AdamW + warmup/cosine + clipping, periodic evaluation, early stop, exact resume.

Reproducibility rests on two rules:

- **Data is a function of (seed, step).** The batch of update ``s`` holds the examples at stream positions
  ``[s * B, (s + 1) * B)`` of an endless stream that walks, epoch after epoch, through a permutation of the
  training examples seeded by ``(seed, epoch)``. There is no data-loader state to save.
- **Everything else is in the checkpoint**: weights, optimizer and scheduler state, and the python/numpy/
  torch RNG states between two updates. Evaluations run with the RNG state saved and restored around them,
  so how often one evaluates never changes the training trajectory.

So a run interrupted after a checkpoint and resumed gives weights bit-identical to an uninterrupted run (same
device and thread count, and deterministic kernels), with or without dropout.

**Data parallel** (``longseq.train.distributed``): under torchrun every rank runs this loop on its share of each
update's batch (``grad_accum`` micro-batches), the gradients are those of the whole batch, evaluations are split
across the ranks and summed, and only rank 0 writes (checkpoints, metrics, the observer, the progress bar). With
``TrainConfig.fsdp`` the model is sharded over the ranks (FSDP2) instead of copied: forwards are then collectives,
so evaluations pad the ranks' shares to equal counts, and the weights kept or checkpointed are gathered onto rank 0
(the checkpoint is the single-process one either way).

**Checkpoint selection** (``TrainConfig.select_on``). With ``"test"`` (the default) the periodic evaluations score
the test split and the final metrics are the last weights' on the whole test split. With ``"val"`` (LRA's
protocol: test accuracy at the best validation checkpoint) they score the validation split, and so do the last
weights; each evaluation better than every earlier one keeps a copy of the weights (ties keep the earlier), saved
with every checkpoint (``extra.safetensors``) so that a resumed run selects exactly as an uninterrupted one. At the
end the kept weights are loaded, scored on the whole test split (and on ``extra_evals``), and checkpointed: the
final metrics are ``<metric>`` and ``loss`` on test, ``val_<metric>``, ``val_loss`` and ``selected_step`` of the
selected evaluation, and the final checkpoint (and the model object) hold the selected weights.

**Non-finite steps** (``TrainConfig.on_nonfinite``). Every step checks that its loss and gradient norm are finite
before the optimizer step: one host sync per step, and one scalar all-reduce under torchrun so that every rank takes
the same decision. ``"stop"`` (the default) raises ``TrainingDiverged`` naming the step and the first module whose
output was non-finite, found by running the failing micro-batch again with forward hooks (installed only then, so
the normal path pays nothing for them), and the weights and gradients that hold a non-finite value; the update is
not applied and nothing is checkpointed, so the latest checkpoint on disk is the last good one. ``"skip"`` drops the
update (the schedule and the data order still advance) and counts it as ``skipped_steps``. Whatever the mode, a
checkpoint is never written of parameters that hold a non-finite value.

Output layout under ``config.out_dir``: ``metrics.jsonl`` (one JSON object per line, ``"kind": "train"`` or
``"eval"``) and ``checkpoints/step-XXXXXXXX/`` (see ``longseq.train.checkpoint``). Anything else (a results
store) hears of the run through an observer (``longseq.train.events.TrainObserver``) and the returned result.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from longseq.modules.optim import optim_settings
from longseq.tasks.base import IGNORE_INDEX, Task, padding_mask, task_splits
from longseq.train import distributed
from longseq.train.checkpoint import (
    CheckpointError,
    config_differences,
    load_checkpoint,
    preserved_rng_state,
    read_checkpoint_state,
    read_extra_tensors,
    save_checkpoint,
)
from longseq.train.config import TRAJECTORY_FIELDS, TrainConfig
from longseq.train.events import RunStart, SessionEnd, TrainObserver, TrainResult
from longseq.train.nonfinite import first_nonfinite_module, listed, nonfinite_names
from longseq.train.schedule import warmup_cosine_scheduler
from longseq.train.tensorboard import TensorBoardLog

METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^step-(\d{8,})$")
_MODEL_OUTPUT_FIELDS = ("loss", "predictions", "targets", "example_index")


class TrainingDiverged(RuntimeError):
    """A training step's loss or gradient norm became NaN or infinite (``TrainConfig.on_nonfinite="stop"``), or the
    weights about to be checkpointed hold such a value.

    ``step``: the update that failed, counted as ``metrics.jsonl`` counts them (the first update is step 1);
    ``module``: the first module whose output was non-finite when the failing micro-batch ran again, as
    ``"'name' (Class)"``, or None when none was (only a gradient overflowed, or the rerun did not reproduce it).
    """

    def __init__(self, message: str, *, step: int, module: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.module = module


# ----------------------------------------------------------------------------------------------------------
# Data order


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(num_examples)
    order.flags.writeable = False  # shared through the cache
    return order


def batch_indices(*, seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
    """Training example indices ``(batch_size,)`` of update ``step``: a pure function of its arguments.

    Positions ``[step * batch_size, (step + 1) * batch_size)`` of the stream formed by concatenating, for
    epoch = 0, 1, ..., a permutation of ``range(num_examples)`` seeded by ``(seed, epoch)``; a batch may
    straddle an epoch boundary (and span several epochs when ``batch_size > num_examples``).
    """
    if num_examples < 1:
        raise ValueError(f"num_examples={num_examples}: the training split must hold at least one example")
    parts = []
    position = step * batch_size
    end = position + batch_size
    while position < end:
        epoch, offset = divmod(position, num_examples)
        take = min(end - position, num_examples - offset)
        parts.append(_epoch_permutation(seed, epoch, num_examples)[offset : offset + take])
        position += take
    return np.concatenate(parts)


# ----------------------------------------------------------------------------------------------------------
# Optimizer


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only, and a group for each per-parameter setting.

    Default rule: ``weight_decay`` on parameters with 2 or more dimensions; no decay on the others (biases, norm
    scales, per-channel scalars such as Mamba's ``D``) nor on ``nn.Embedding`` weights (decay would pull rare
    tokens' rows to zero). A weight tied to an embedding counts as the embedding.

    A parameter marked with ``longseq.modules.optim.set_optim`` uses its own ``weight_decay`` when set (else the
    default rule) and its own ``lr`` when set (its group then carries ``"lr"``; groups without one take the
    optimizer's ``lr``). Parameters with equal (lr, weight_decay) share a group. Group order is deterministic for a
    given model, so a saved optimizer state loads into a freshly built trainer: the default-lr groups first (decay,
    then no decay), then the others in the order their first parameter appears in ``model.parameters()``. Frozen
    parameters are left out; empty groups are omitted.
    """
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[float | None, float], list[nn.Parameter]] = {(None, weight_decay): [], (None, 0.0): []}
    for parameter in model.parameters():  # deduplicated, so a tied weight appears once
        if not parameter.requires_grad:
            continue
        settings = optim_settings(parameter)
        default_decay = 0.0 if parameter.dim() < 2 or id(parameter) in embedding_weights else weight_decay
        key = (settings.get("lr"), settings.get("weight_decay", default_decay))
        groups.setdefault(key, []).append(parameter)
    if not any(groups.values()):
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return [_group(params, lr, decay) for (lr, decay), params in groups.items() if params]


def _group(params: list[nn.Parameter], lr: float | None, weight_decay: float) -> dict[str, Any]:
    """One optimizer parameter group; ``"lr"`` only when the parameters have their own."""
    group: dict[str, Any] = {"params": params, "weight_decay": weight_decay}
    if lr is not None:
        group["lr"] = lr
    return group


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameter elements (a tied weight counted once)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# Output directory helpers


def checkpoint_dirs(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (their ``state.json`` exists) under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint under ``out_dir``, or None."""
    found = checkpoint_dirs(out_dir)
    return found[-1][1] if found else None


def _truncate_metrics_log(path: Path, step: int) -> None:
    """Keep only the lines of steps <= ``step``: what an uninterrupted run would have logged by then.

    Lines after the resumed checkpoint were written by the interrupted session and will be written again;
    an unparseable line can only be a write cut short by the interruption, and is dropped too.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", math.inf) <= step:
            kept.append(line)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    partial.replace(path)


# ----------------------------------------------------------------------------------------------------------
# Trainer


@dataclass
class _Progress:
    """The run's counters; saved in every checkpoint's ``extra``."""

    run_id: str | None = None
    step: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0  # of earlier sessions, up to their last checkpoint
    best_metric: float | None = None
    last_eval: dict[str, float] | None = None
    last_train_loss: float | None = None
    stopped_early: bool = False
    stopped_by: str | None = None  # one of STOP_REASONS once training has stopped
    final_metrics: dict[str, float] | None = None
    selected_step: int | None = None  # select_on="val": the step of the kept weights
    selected_metrics: dict[str, float] | None = None  # and their validation metrics, as "val_<name>"
    skipped_steps: int = 0  # on_nonfinite="skip": updates dropped for a non-finite loss or gradient


class _Window:
    """Sums of the training loss, auxiliary loss and gradient norm since the last log line, kept on the device.

    Accumulating on the device and reading once per log line keeps the per-step host sync to the one finiteness
    flag (``Trainer._finite_on_every_rank``) and the all-reduce of the losses to once per log line.
    """

    def __init__(self, device: torch.device, ranks: distributed.Ranks) -> None:
        self.ranks = ranks
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm = torch.zeros((), dtype=torch.float64, device=device)
        self.aux_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.has_aux = False
        self.steps = 0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, aux_loss: torch.Tensor | None) -> None:
        self.loss += loss
        self.grad_norm += grad_norm
        if aux_loss is not None:
            self.aux_loss += aux_loss
            self.has_aux = True
        self.steps += 1

    def pop(self) -> tuple[float | None, float | None, float | None]:
        """(mean loss, mean gradient norm, mean aux loss or None when the model has none) of the window's updates,
        which then starts afresh; all None when every step of the window was skipped (``on_nonfinite="skip"``:
        skipped steps are not added)."""
        # Each rank holds its share of every step's loss (the gradient norm is already the global one).
        # All ranks skip the same steps, so they agree on an empty window and all take part in the all-reduce.
        sums = distributed.all_reduce_sum(torch.stack([self.loss, self.aux_loss]), self.ranks)
        if self.steps == 0:
            means: tuple[float | None, float | None, float | None] = (None, None, None)
        else:
            aux = sums[1].item() / self.steps if self.has_aux else None
            means = (sums[0].item() / self.steps, self.grad_norm.item() / self.steps, aux)
        self.loss.zero_()
        self.grad_norm.zero_()
        self.aux_loss.zero_()
        self.has_aux = False
        self.steps = 0
        return means


class _StepResult(NamedTuple):
    """What one training step did: the task loss, auxiliary loss (None without one) and gradient norm before
    clipping (device tensors, not synced), the input token count, and whether the update was skipped."""

    loss: torch.Tensor
    aux_loss: torch.Tensor | None
    grad_norm: torch.Tensor
    tokens: int
    skipped: bool


class Trainer:
    """Trains ``model`` on ``task`` under ``config``, telling ``observer`` (if any) when a session starts and ends.

    model: called as ``out = model(inputs, labels=labels)`` with ``inputs: (B, L) int64`` and the task's labels
    (``(B, L)`` for a token task, ``(B,)`` class ids for a classification task: ``longseq.tasks.base``), plus
    ``mask=inputs != task.pad_id`` when the task declares a ``pad_id``; ``out`` has ``loss`` (scalar mean
    cross-entropy over supervised positions), and ``predictions``, ``targets``, ``example_index``: ``(N,)`` over
    the supervised positions (one per example for a classifier). An ``aux_loss`` on ``out`` (a scalar, or None; see
    ``longseq.modules.aux_loss``) is added to the loss that training back-propagates and logged as ``aux_loss``;
    ``loss`` (the logged train loss) and evaluation stay the task loss. The model stays on its device; batches are
    moved there. Parameters marked with ``longseq.modules.optim.set_optim`` get their own lr and weight decay
    (see ``parameter_groups``).

    extra_evals: name -> another task (the same generator at other parameters, e.g. 2x-16x the training length),
    on whose test split the final model is also scored (metrics ``"<metric>@<name>"``). observer: see
    ``TrainObserver``. model_config: JSON-able data saved in every checkpoint's config under
    ``"model"``, so that a checkpoint says how to rebuild its model. ``progress=False`` disables the progress bar.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: TrainConfig,
        *,
        observer: TrainObserver | None = None,
        model_config: dict[str, Any] | None = None,
        progress: bool = True,
        extra_evals: Mapping[str, Task] | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if config.select_on not in task_splits(task):
            raise ValueError(f"select_on={config.select_on!r}: task {task.name!r} has no such split (it has: "
                             f"{', '.join(task_splits(task))}); token tasks have no validation split")
        self.ranks = distributed.current()
        self._check_batch_split(config)
        self.model = model
        # Under torchrun: the model sharded in place (FSDP2, before the optimizer sees its parameters), or DDP
        # around it.
        self._sharded = config.fsdp and self.ranks.distributed
        self._trained = (distributed.shard_model(model) if self._sharded
                         else distributed.data_parallel(model, self.ranks))
        self.task = task
        self.config = config
        # Only rank 0 reports: the others train and evaluate in step with it.
        self.observer = observer if self.ranks.is_main else None
        self.model_config = dict(model_config or {})
        self.progress = progress and self.ranks.is_main
        self.extra_evals = dict(extra_evals or {})
        first = next(iter(model.parameters()), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = first.dtype if first is not None else torch.float32
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, config.weight_decay),
            lr=config.lr,
            betas=config.betas,
            eps=config.adam_eps,
        )
        self.scheduler = warmup_cosine_scheduler(
            self.optimizer,
            warmup_steps=config.warmup_steps,
            total_steps=config.steps,
            min_lr_ratio=config.min_lr_ratio,
        )
        self._trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._state = _Progress()
        self._selected: dict[str, torch.Tensor] | None = None  # select_on="val": the best weights so far (CPU)
        self._tensorboard: TensorBoardLog | None = None

    def _check_batch_split(self, config: TrainConfig) -> None:
        parts = self.ranks.world_size * config.grad_accum
        if config.batch_size % parts:
            raise ValueError(
                f"batch_size={config.batch_size} cannot be split over {self.ranks.world_size} rank(s) x grad_accum="
                f"{config.grad_accum}; allowed: a batch_size that is a multiple of {parts}"
            )

    # ----- public -----

    def train(self, resume: bool = False) -> TrainResult:
        """Train to ``config.steps`` (or the target metric, or the time budget), evaluate, checkpoint; return
        the result.

        ``resume=True`` continues from the latest checkpoint in ``out_dir`` (and the run id saved there, handed to
        the observer); resuming a finished run returns its result without training (and without telling the
        observer). A fresh run refuses an ``out_dir`` that already holds checkpoints. On an exception the observer
        hears ``"interrupted"`` (KeyboardInterrupt) or ``"failed"`` and the exception propagates; resume from the
        last checkpoint.
        """
        with self._threads(), self._tensorboard_log(resume):
            return self._train(resume)

    def _train(self, resume: bool) -> TrainResult:
        session_start = time.perf_counter()
        if resume:
            self._restore_latest()
            if self._state.final_metrics is not None:
                return self._result(self._state.wall_time_s)
        else:
            self._start_fresh()
        self._notify_start()
        try:
            self._run_loop(session_start)
            final = self._finish(session_start)
        except KeyboardInterrupt:
            self._notify_end("interrupted", self._result(self._elapsed(session_start)))
            raise
        except Exception:
            self._notify_end("failed", self._result(self._elapsed(session_start)))
            raise
        self._notify_end("completed", final)
        return final

    def evaluate(self, split: str = "test", num_examples: int | None = None) -> dict[str, float]:
        """``{<task metric>: mean per-example metric, "loss": mean loss per supervised position}``.

        Runs on examples ``0 .. num_examples - 1`` of ``split`` (None = all) in ``model.eval()`` under
        ``torch.no_grad()``, restoring the model's mode and the global RNG states afterwards. Under torchrun every
        rank must call it: the batches are dealt out to the ranks and the sums added up.
        """
        with self._threads():
            return self._evaluate(split, num_examples)

    def _evaluate(self, split: str, num_examples: int | None, task: Task | None = None) -> dict[str, float]:
        task = self.task if task is None else task
        available = task.num_examples(split)
        count = available if num_examples is None else num_examples
        if not 1 <= count <= available:
            raise ValueError(f"num_examples={num_examples} for split {split!r}: allowed 1..{available}")
        batch_size = self.config.effective_eval_batch_size
        was_training = self.model.training
        self.model.eval()
        metric_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        supervised = torch.zeros((), dtype=torch.float64, device=self.device)
        starts = range(0, count, batch_size)
        try:
            with torch.no_grad(), preserved_rng_state():
                for number, counted in distributed.evaluation_share(len(starts), self.ranks, same_count=self._sharded):
                    indices = np.arange(starts[number], min(count, starts[number] + batch_size))
                    # The bare model, not DDP: ranks may run different numbers of batches here (under FSDP, whose
                    # forwards are collectives, the same number: a padding batch is run and not counted).
                    out = self._forward(self.model, task, *task.batch(split, indices))
                    if not counted:
                        continue
                    scores = task.score(out.predictions, out.targets, out.example_index, len(indices))
                    metric_sum += torch.as_tensor(scores).to(device=self.device, dtype=torch.float64).sum()
                    loss_sum += out.loss.detach().double() * out.targets.numel()
                    supervised += out.targets.numel()
        finally:
            self.model.train(was_training)
        metric_total, loss_total, supervised_total = distributed.all_reduce_sum(
            torch.stack([metric_sum, loss_sum, supervised]), self.ranks).tolist()
        return {
            task.metric_name: metric_total / count,
            "loss": loss_total / supervised_total if supervised_total else math.nan,
        }

    def _extra_metrics(self) -> dict[str, Any]:
        """The final model on each of ``extra_evals``' test splits (e.g. the task at 2x-16x its training length):
        ``{"<metric>@<name>": value}``; a task the model refuses (a sequence past a mixer's max_len) gets None and
        ``"error@<name>"``: the refusal."""
        metrics: dict[str, Any] = {}
        for name, task in self.extra_evals.items():
            try:
                metrics[f"{task.metric_name}@{name}"] = self._evaluate("test", None, task)[task.metric_name]
            except ValueError as error:  # SequenceTooLong and the other refusals are ValueErrors
                metrics[f"{task.metric_name}@{name}"] = None
                metrics[f"error@{name}"] = str(error)
        return metrics

    # ----- setup -----

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """``torch.set_num_threads(config.threads)`` for the block, then torch's previous setting again."""
        previous = torch.get_num_threads()
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    @contextlib.contextmanager
    def _tensorboard_log(self, resume: bool) -> Iterator[None]:
        """Open the TensorBoard writer (rank 0, when ``tensorboard_dir`` is set) for the session."""
        directory = self.config.tensorboard_dir
        if directory is None or not self.ranks.is_main:
            yield
            return
        resume_step = None
        if resume and self.config.out_dir is not None:
            latest = latest_checkpoint(self.config.out_dir)
            resume_step = None if latest is None else read_checkpoint_state(latest)["step"] + 1
        self._tensorboard = TensorBoardLog(directory, resume_step=resume_step)
        try:
            yield
        finally:
            self._tensorboard.close()
            self._tensorboard = None

    def _start_fresh(self) -> None:
        out_dir = self.config.out_dir
        if out_dir is not None:
            existing = latest_checkpoint(out_dir)
            if existing is not None:
                raise ValueError(
                    f"out_dir={str(out_dir)!r} already holds a checkpoint ({existing.name}); pass resume=True to "
                    "continue that run, or choose another out_dir"
                )
            if self.ranks.is_main:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                (Path(out_dir) / METRICS_FILE).write_text("", encoding="utf-8")
        seed = self.config.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self._state = _Progress()
        self._selected = None

    def _restore_latest(self) -> None:
        if self.config.out_dir is None:
            raise ValueError("resume=True needs config.out_dir (where the checkpoints are)")
        directory = latest_checkpoint(self.config.out_dir)
        if directory is None:
            raise CheckpointError(f"no checkpoint at {Path(self.config.out_dir) / CHECKPOINTS_DIR}")
        saved = read_checkpoint_state(directory)
        self._check_resumable(directory, saved["config"])
        restore = None
        if self._sharded:  # the single-process state, sharded as it loads
            def restore(weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
                distributed.load_full_state(self.model, weights, self.optimizer, optimizer_state)
        load_checkpoint(directory, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        restore=restore)
        progress = saved["extra"].get("progress")
        if not isinstance(progress, dict):
            raise CheckpointError(f"{directory}: not a trainer checkpoint (no extra.progress in state.json)")
        self._state = _Progress(**progress)
        self._selected = read_extra_tensors(directory) if self._state.final_metrics is None else None
        if self._state.selected_step is not None and self._state.final_metrics is None and self._selected is None:
            raise CheckpointError(f"{directory}: records weights selected at step {self._state.selected_step} but "
                                  "holds none")
        if self.ranks.is_main:
            _truncate_metrics_log(Path(self.config.out_dir) / METRICS_FILE, self._state.step)

    def _checkpoint_config(self) -> dict[str, Any]:
        return {"train": self.config.to_json_dict(), "task": self.task.describe(), "model": self.model_config}

    def _check_resumable(self, directory: Path, saved: dict[str, Any]) -> None:
        """An exact resume needs the same task, the same model and the same trajectory-shaping training fields."""
        current = self._checkpoint_config()
        problems = []
        for field in (*TRAJECTORY_FIELDS, "select_on"):
            then, now = (TrainConfig.field_of(train, field) for train in (saved.get("train", {}), current["train"]))
            if then != now:
                problems.append(f"{field}: checkpoint {then!r}, now {now!r}")
        problems += config_differences(saved.get("task"), current["task"], "task")
        # A model field the checkpoint does not record was added to longseq after it was written (at a default that
        # keeps the earlier behaviour): not a difference.
        saved_model = saved.get("model") or {}
        problems += config_differences(saved_model, {k: v for k, v in current["model"].items() if k in saved_model},
                                       "model")
        if problems:
            raise CheckpointError(f"{directory}: cannot resume exactly with a different setup: " + "; ".join(problems))

    # ----- observer -----

    def _notify_start(self) -> None:
        if self.observer is None:
            return
        start = RunStart(
            run_id=self._state.run_id,
            task=self.task.name,
            train_config=self.config.to_json_dict(),
            n_params=count_parameters(self.model),
            dtype=str(self.dtype).removeprefix("torch."),
        )
        self._state.run_id = self.observer.on_start(start)

    def _notify_end(self, status: SessionEnd, result: TrainResult) -> None:
        if self.observer is not None:
            self.observer.on_end(status, result)

    # ----- the loop -----

    def _forward(self, model: nn.Module, task: Task, inputs: torch.Tensor, labels: torch.Tensor) -> Any:
        mask = padding_mask(task, inputs)
        # Only a padded task's model is handed a mask, so a model without the keyword trains on unpadded tasks.
        masks = {} if mask is None else {"mask": mask.to(self.device, non_blocking=True)}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16"):
            out = model(inputs.to(self.device, non_blocking=True), labels=labels.to(self.device, non_blocking=True),
                        **masks)
        missing = [name for name in _MODEL_OUTPUT_FIELDS if not hasattr(out, name)]
        if missing:
            raise TypeError(
                f"{type(self.model).__name__}(inputs, labels=labels) returned {type(out).__name__} without "
                f"{missing}; the trainer needs {', '.join(_MODEL_OUTPUT_FIELDS)}"
            )
        return out

    def _train_step(self, step: int) -> _StepResult:
        """One update (or, with ``on_nonfinite="skip"``, none when the step went non-finite): see ``_StepResult``.
        With ``on_nonfinite="stop"`` a non-finite step raises ``TrainingDiverged`` before the optimizer step."""
        config = self.config
        indices = batch_indices(
            seed=config.seed,
            step=step,
            batch_size=config.batch_size,
            num_examples=self.task.num_examples("train"),
        )
        micro_batches = [self.task.batch("train", part)
                         for part in distributed.rank_micro_batches(indices, self.ranks, config.grad_accum)]
        # Each micro-batch's mean loss counts by its share of the whole batch's supervised positions (its aux loss by
        # its share of the examples), times the ranks that DDP averages over: the update on the whole batch.
        counts = [float((labels != IGNORE_INDEX).sum()) for _, labels in micro_batches]
        total = distributed.all_reduce_sum(torch.tensor(sum(counts), dtype=torch.float64, device=self.device),
                                           self.ranks).item()
        if total == 0:
            raise ValueError(f"the batch of step {step} has no supervised position (every label is IGNORE_INDEX)")
        world = self.ranks.world_size
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        aux_loss = None
        for number, ((inputs, labels), count) in enumerate(zip(micro_batches, counts, strict=True)):
            # DDP (FSDP) all-reduces (reduce-scatters) the gradients in the backward of the last micro-batch only.
            with distributed.gradient_sync(self._trained, number == len(micro_batches) - 1):
                out = self._forward(self._trained, self.task, inputs, labels)
                objective = out.loss * (world * count / total)
                micro_aux = getattr(out, "aux_loss", None)
                if micro_aux is not None:
                    share = len(inputs) / config.batch_size
                    objective = objective + micro_aux * (world * share)
                    aux_loss = (0 if aux_loss is None else aux_loss) + micro_aux.detach().double() * share
                objective.backward()
            loss += out.loss.detach().double() * (count / total)
        grads = [p.grad.detach() for p in self._trainable if p.grad is not None]
        # What clip_grad_norm_ computes, taken apart so that a non-finite norm is seen before clipping smears it
        # over every gradient (the message then names the parameters whose gradient overflowed).
        # Under FSDP the gradients are shards and their norm a DTensor: its whole value, the same on every rank.
        grad_norm = (distributed.full(nn.utils.get_total_norm(grads)).to(self.device) if grads
                     else torch.zeros((), device=self.device))
        tokens = sum(inputs.numel() for inputs, _ in micro_batches) * world
        result = _StepResult(loss, aux_loss, grad_norm, tokens, skipped=False)
        if not self._finite_on_every_rank(loss, aux_loss, grad_norm):
            if config.on_nonfinite == "stop":
                raise self._diverged(step, result, micro_batches)
            self._skip_update()
            return result._replace(skipped=True)
        if config.grad_clip is not None:
            nn.utils.clip_grads_with_norm_(self._trainable, config.grad_clip, grad_norm)
        self.optimizer.step()
        if self._sharded:
            distributed.drop_param_caches(self.model)
        self.scheduler.step()
        return result

    def _finite_on_every_rank(self, loss: torch.Tensor, aux_loss: torch.Tensor | None,
                              grad_norm: torch.Tensor) -> bool:
        """Whether the step's loss, aux loss and gradient norm are finite on every rank: one host sync per step
        (and one scalar all-reduce under torchrun, so that all ranks stop or skip together; each rank's loss is its
        own share, the gradient norm is already global)."""
        bad = ~torch.isfinite(loss) | ~torch.isfinite(grad_norm)
        if aux_loss is not None:
            bad |= ~torch.isfinite(aux_loss)
        return distributed.all_reduce_sum(bad.to(torch.float32).reshape(1), self.ranks).item() == 0

    def _skip_update(self) -> None:
        """``on_nonfinite="skip"``: no optimizer step (weights, moments and AdamW's step count stay), but the
        schedule advances with the step counter, so that update s keeps lr_at(s) and batch s."""
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # Torch warns when the very first scheduler step comes before any optimizer step: here it is meant.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before")
            self.scheduler.step()

    def _diverged(self, step: int, result: _StepResult,
                  micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> TrainingDiverged:
        """The error for a non-finite step (``on_nonfinite="stop"``), found out after the fact: this rank's failing
        micro-batches run again (forward only, in training mode, the RNG state preserved) with a hook on every
        module until one outputs a non-finite value; and the weights and gradients that hold one are named."""
        aux = None if result.aux_loss is None else result.aux_loss.item()
        values = {"training loss": result.loss.item(), "aux loss": aux, "gradient norm": result.grad_norm.item()}
        shown = ", ".join(f"{name} is {value:.6g}" for name, value in values.items() if value is not None)
        module = None
        own_finite = all(value is None or math.isfinite(value) for value in values.values())
        # FSDP's forwards are collectives: every rank reruns all its micro-batches.
        if not own_finite or self._sharded:
            with torch.no_grad(), preserved_rng_state():
                for inputs, labels in micro_batches:
                    found_here = first_nonfinite_module(
                        self.model, functools.partial(self._forward, self.model, self.task, inputs, labels))
                    module = module or found_here
                    if module is not None and not self._sharded:
                        break
        if own_finite:
            # Only under torchrun: the ranks agreed to stop on another rank's loss.
            found = ["another rank's loss was not finite"]
        else:
            named = list(self.model.named_parameters())  # under FSDP this rank's shards
            weights = nonfinite_names((name, distributed.local(p)) for name, p in named)
            gradients = nonfinite_names((name, distributed.local(p.grad)) for name, p in named)
            found = [
                f"first non-finite output: {module}" if module else "no module output was non-finite when the "
                "failing micro-batch ran forward again (the backward pass overflowed, or the failure needs this "
                "step's random draws)",
                *([f"non-finite weights: {listed(weights)}"] if weights else []),
                *([f"non-finite gradients: {listed(gradients)}"] if gradients else []),
            ]
        rank = f" on rank {self.ranks.rank}" if self.ranks.distributed else ""
        return TrainingDiverged(
            f"step {step + 1}{rank}: {shown} (lr {self._scheduled_lr():.3g}); {'; '.join(found)}; the update was not "
            f"applied, {self._last_good_checkpoint()}; lower lr, set grad_clip, or set on_nonfinite='skip' to drop "
            "such steps",
            step=step + 1, module=module,
        )

    def _last_good_checkpoint(self) -> str:
        """Where a diverged run can resume from, for its message (checkpoints hold finite weights only)."""
        last = latest_checkpoint(self.config.out_dir) if self.config.out_dir is not None else None
        return f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written"

    def _run_loop(self, session_start: float) -> None:
        config, state = self.config, self._state
        window = _Window(self.device, self.ranks)
        with self._progress_bar() as bar:
            bar_task = bar.add_task(self.task.name, total=config.steps, completed=state.step, **self._bar_fields())
            while state.step < config.steps and not state.stopped_early:
                started = time.perf_counter()
                lr = self._scheduled_lr()
                result = self._train_step(state.step)
                state.step += 1
                state.tokens += result.tokens
                if result.skipped:
                    state.skipped_steps += 1
                else:
                    window.add(result.loss, result.grad_norm, result.aux_loss)
                final = state.step == config.steps
                if not final and self._over_budget(session_start):
                    state.stopped_early = True
                    state.stopped_by = "time_budget"
                checkpoint_now = config.checkpoint_every is not None and state.step % config.checkpoint_every == 0
                # Logging at every checkpoint too makes a resumed run's log windows those of an uninterrupted run.
                log_now = state.step % config.log_every == 0 or final or state.stopped_early or checkpoint_now
                # .item() waits for the device, so the timed span includes the step's queued kernels.
                means = window.pop() if log_now else None
                state.train_time_s += time.perf_counter() - started
                if means is not None:
                    self._log_train(lr, *means, session_start)
                # A run stopping now gets its final evaluation in _finish; a periodic one would repeat it.
                if state.step % config.eval_every == 0 and not final and not state.stopped_early:
                    self._periodic_eval(session_start)
                if checkpoint_now and not final and not state.stopped_early:
                    self._save(session_start)
                bar.update(bar_task, completed=state.step, **self._bar_fields())

    def _scheduled_lr(self) -> float:
        """``config.lr`` times the schedule's current factor: the lr of the groups without their own."""
        return self.config.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)

    def _log_train(self, lr: float, loss: float | None, grad_norm: float | None, aux_loss: float | None,
                   session_start: float) -> None:
        """A train line: the means over the window's updates (every step was checked finite; loss and grad_norm
        are null when the window's steps were all skipped), and ``skipped_steps`` so far with
        ``on_nonfinite="skip"``."""
        state = self._state
        if loss is not None:
            state.last_train_loss = loss
        skipping = self.config.on_nonfinite == "skip"
        self._log(
            kind="train",
            step=state.step,
            lr=lr,
            loss=loss,
            **({} if aux_loss is None else {"aux_loss": aux_loss}),
            grad_norm=grad_norm,
            **({"skipped_steps": state.skipped_steps} if skipping else {}),
            tokens_per_s=self._tokens_per_s(),
            elapsed_s=self._elapsed(session_start),
        )

    def _periodic_eval(self, session_start: float) -> None:
        config, state = self.config, self._state
        metrics = self._scored_eval(config.select_on, session_start)
        value = metrics[self.task.metric_name]
        if config.target_metric is not None and self._reaches(value, config.target_metric):
            state.stopped_early = True
            state.stopped_by = "target"

    def _over_budget(self, session_start: float) -> bool:
        """Whether the time budget is spent (rank 0's clock decides for every rank)."""
        budget = self.config.time_budget_s
        if budget is None:
            return False
        return distributed.agree(self._elapsed(session_start) >= budget, self.ranks, self.device)

    def _scored_eval(self, split: str, session_start: float) -> dict[str, float]:
        """A periodic-style evaluation (``eval_examples``) on ``split``, recorded; on the validation split, the
        weights are kept when it is the best so far (module docstring)."""
        metrics = self.evaluate(split, self.config.eval_examples)
        improved = self._record_eval(metrics, session_start, examples=self.config.eval_examples, split=split)
        if split == "val" and improved:
            state = self._state
            # Under FSDP gathered onto rank 0 (the only writer), empty on the other ranks.
            self._selected = distributed.full_state(self.model)[0] if self._sharded else {
                name: t.detach().to("cpu", copy=True) for name, t in self.model.state_dict().items()}
            state.selected_step = state.step
            state.selected_metrics = {f"val_{name}": value for name, value in metrics.items()}
        return metrics

    def _finish(self, session_start: float) -> TrainResult:
        """Final evaluation on the whole test split (of the selected weights, with ``select_on="val"``), final
        checkpoint, result."""
        state = self._state
        if state.stopped_by is None:
            state.stopped_by = "steps"
        if self.config.select_on == "val":
            return self._finish_selected(session_start)
        reusable = (
            self.config.eval_examples is None
            and state.last_eval is not None
            and state.last_eval.get("step") == state.step
        )
        if reusable:
            metrics = {k: v for k, v in state.last_eval.items() if k != "step"}
        else:
            metrics = self.evaluate("test")
            self._record_eval(metrics, session_start, examples=None)
        return self._final_result(metrics, session_start)

    def _finish_selected(self, session_start: float) -> TrainResult:
        """``select_on="val"``: validate the last weights (unless the last evaluation did), load the selected
        weights, score them on the whole test split."""
        state = self._state
        if state.last_eval is None or state.last_eval.get("step") != state.step:
            self._scored_eval("val", session_start)
        if self._sharded:
            distributed.load_full_state(self.model, self._selected)
        else:
            self.model.load_state_dict(self._selected)
        metrics = self.evaluate("test")
        self._log_eval("test", metrics, None, session_start, selected_step=state.selected_step)
        return self._final_result({**metrics, **state.selected_metrics, "selected_step": state.selected_step},
                                  session_start)

    def _final_result(self, metrics: dict[str, float], session_start: float) -> TrainResult:
        state = self._state
        if self.extra_evals:
            metrics = {**metrics, **self._extra_metrics()}
        state.final_metrics = metrics
        checkpoint = self._save(session_start) if self.config.out_dir is not None else None
        return self._result(state.wall_time_s + (time.perf_counter() - session_start), checkpoint)

    def _record_eval(self, metrics: dict[str, float], session_start: float, *, examples: int | None,
                     split: str = "test") -> bool:
        """Log an evaluation on ``split`` and make it the latest (its metrics named ``val_<name>`` on the
        validation split); return whether it is the best so far."""
        state = self._state
        value = metrics[self.task.metric_name]
        improved = state.best_metric is None or (
            value > state.best_metric if self.task.higher_is_better else value < state.best_metric
        )
        if improved:
            state.best_metric = value
        prefix = "val_" if split == "val" else ""
        state.last_eval = {"step": state.step, **{f"{prefix}{name}": v for name, v in metrics.items()}}
        self._log_eval(split, metrics, examples, session_start)
        return improved

    def _log_eval(self, split: str, metrics: dict[str, float], examples: int | None, session_start: float,
                  **extra: Any) -> None:
        self._log(
            kind="eval",
            step=self._state.step,
            split=split,
            examples=examples if examples is not None else self.task.num_examples(split),
            **{self.task.metric_name: metrics[self.task.metric_name], "eval_loss": metrics["loss"]},
            **extra,
            elapsed_s=self._elapsed(session_start),
        )

    def _reaches(self, value: float, target: float) -> bool:
        return value >= target if self.task.higher_is_better else value <= target

    # ----- output -----

    def _save(self, session_start: float) -> Path:
        """Checkpoint the current state as ``checkpoints/step-<step>`` and prune old checkpoints."""
        state = self._state
        out_dir = Path(self.config.out_dir)
        # Every rank checks (their weights are equal), so that all raise together: a poisoned checkpoint would
        # replace a good one when old checkpoints are pruned. Parameters only: a buffer may hold -inf by design.
        poisoned = nonfinite_names((name, distributed.local(p)) for name, p in self.model.named_parameters())
        if self._sharded:  # a rank checks its shards: the ranks add up their counts, so that all raise together
            found = torch.tensor(float(len(poisoned)), device=self.device)
            if distributed.all_reduce_sum(found, self.ranks).item() and not poisoned:
                poisoned = ["another rank's shards"]
        if poisoned:
            raise TrainingDiverged(f"step {state.step}: not checkpointed, the weights hold non-finite values "
                                   f"({listed(poisoned)}); {self._last_good_checkpoint()}", step=state.step)
        # Under FSDP every rank takes part in gathering the state that rank 0 writes.
        model_state, optimizer_state = (distributed.full_state(self.model, self.optimizer) if self._sharded
                                        else (None, None))
        if not self.ranks.is_main:
            return out_dir / CHECKPOINTS_DIR / f"step-{state.step:08d}"
        extra_progress = asdict(state)
        # Wall time so far, so that a resumed run reports the time of all its sessions.
        extra_progress["wall_time_s"] = state.wall_time_s + (time.perf_counter() - session_start)
        directory = save_checkpoint(
            out_dir / CHECKPOINTS_DIR / f"step-{state.step:08d}",
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=state.step,
            config=self._checkpoint_config(),
            extra={"progress": extra_progress},
            # Once finished, the model holds the selected weights: a copy would repeat them.
            extra_tensors=self._selected if state.final_metrics is None else None,
            model_state=model_state,
            optimizer_state=optimizer_state,
        )
        keep = self.config.keep_checkpoints
        if keep is not None:
            for _, old in checkpoint_dirs(out_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return directory

    def _log(self, **record: Any) -> None:
        if self._tensorboard is not None:
            self._tensorboard.write(record)
        if self.config.out_dir is None or not self.ranks.is_main:
            return
        with open(Path(self.config.out_dir) / METRICS_FILE, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def _tokens_per_s(self) -> float:
        state = self._state
        return state.tokens / state.train_time_s if state.train_time_s > 0 else 0.0

    def _elapsed(self, session_start: float) -> float:
        return self._state.wall_time_s + (time.perf_counter() - session_start)

    def _result(self, wall_time_s: float, checkpoint: Path | None = None) -> TrainResult:
        state = self._state
        if checkpoint is None and self.config.out_dir is not None:
            checkpoint = latest_checkpoint(self.config.out_dir)
        metrics = dict(state.final_metrics or state.last_eval or {})
        if self.config.on_nonfinite == "skip":
            metrics["skipped_steps"] = state.skipped_steps
        return TrainResult(
            run_id=state.run_id,
            steps=state.step,
            metrics=metrics,
            best_metric=state.best_metric,
            wall_time_s=wall_time_s,
            tokens_per_s=self._tokens_per_s(),
            stopped_early=state.stopped_early,
            checkpoint=checkpoint,
            stopped_by=state.stopped_by,
            train_loss=state.last_train_loss,
        )

    def _progress_bar(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[metric]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not self.progress,
        )

    def _bar_fields(self) -> dict[str, str]:
        state = self._state
        name = self.task.metric_name
        if state.last_eval is not None and f"val_{name}" in state.last_eval:
            name = f"val_{name}"
        metric = "-" if state.last_eval is None else f"{state.last_eval[name]:.4g}"
        return {
            "loss": "-" if state.last_train_loss is None else f"{state.last_train_loss:.4f}",
            "metric": f"{name} {metric}",
            "speed": f"{self._tokens_per_s():,.0f}",
        }
