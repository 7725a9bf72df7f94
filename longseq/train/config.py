"""The validated training configuration.

Every field is checked on construction; a bad value raises ``TrainConfigError`` (a ``ValueError``) naming the
field, the value and what is allowed, and an unknown field (a typo such as ``warmup=``) fails naming the
allowed fields and the closest match.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field

# Integers are strict so that ``True`` or ``"100"`` is refused instead of silently becoming a step count.
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]

# Fields that shape the optimisation trajectory: an exact resume needs them unchanged. The others (where to
# write, how often to evaluate, log or checkpoint, threads, the time budget) can differ between the two halves
# of a run.
TRAJECTORY_FIELDS: tuple[str, ...] = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "betas",
    "adam_eps",
    "warmup_steps",
    "min_lr_ratio",
    "grad_clip",
    "seed",
    "precision",
)


OMITTED_AT_DEFAULT: tuple[str, ...] = (
    "select_on", "grad_accum", "precision", "tensorboard_dir", "on_nonfinite", "fsdp",
)
"""Fields added after runs were recorded, left out of ``to_json_dict`` while at their default (the behaviour from
before they existed): the stored configs, checkpoint configs and quality run keys of runs that do not use them
stay what they were."""


class TrainConfigError(ValueError):
    """A training configuration field is unknown, of the wrong type, out of range, or inconsistent."""


class TrainConfig(pydantic.BaseModel):
    """How to train: optimiser, schedule, evaluation, early stopping, checkpoints, output.

    Steps count optimiser updates. The learning rate warms up linearly over ``warmup_steps`` and then follows a
    cosine from ``lr`` down to ``min_lr_ratio * lr`` at ``steps`` (see ``longseq.train.schedule``).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    steps: PositiveInt
    """Number of optimiser updates."""
    batch_size: PositiveInt = 32
    """Training examples per update: the global batch, whatever the number of ranks (``train.distributed``)."""
    grad_accum: PositiveInt = 1
    """Micro-batches per update on each rank (gradient accumulation): each holds ``batch_size / (ranks x
    grad_accum)`` examples, and the update is the one on the whole batch (up to rounding), so this is not a
    trajectory field: a run may resume with another value."""
    fsdp: Annotated[bool, Field(strict=True)] = False
    """Under torchrun: shard every parameter, gradient and optimizer moment over the ranks (PyTorch's FSDP2,
    ``fully_shard`` on each block and on the model) instead of a whole copy per rank (DDP); the updates are the same
    (``train.distributed``). Checkpoints hold the whole single-process state either way, so this is not a trajectory
    field: a run resumes with or without it, with any number of ranks. In one process there is nothing to shard and
    it changes nothing. CPU (gloo) and CUDA (NCCL)."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """``"bfloat16"``: forward passes (training and evaluation) under ``torch.autocast`` in bfloat16; parameters,
    optimizer state, and the scans, decays and recurrent states of the ops stay in float32 (``docs/design.md``
    §5)."""
    eval_batch_size: PositiveInt | None = None
    """Examples per evaluation forward pass; None = ``batch_size``."""
    lr: PositiveFloat = 1e-3
    """Peak learning rate, reached at the end of warmup."""
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.1
    """Decoupled (AdamW) weight decay, applied to matrices only (see ``Trainer``)."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    """AdamW moment decay rates, each in [0, 1)."""
    adam_eps: PositiveFloat = 1e-8
    """AdamW denominator epsilon."""
    warmup_steps: NonNegativeInt = 0
    """Linear warmup length in steps; must be < ``steps``."""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Floor of the cosine decay as a fraction of ``lr``."""
    grad_clip: PositiveFloat | None = 1.0
    """Clip the global gradient L2 norm to this value; None = no clipping (the norm is still logged)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """What a step whose loss or gradient norm is NaN or infinite (on any rank) does; checked every step, before the
    optimizer step. ``"stop"``: raise ``TrainingDiverged`` naming the step and the first module whose output was
    non-finite (the update is not applied; the checkpoints on disk are the last good ones). ``"skip"``: drop the
    update (no optimizer step) and go on; the lr schedule and the data order still advance with the step, so update
    s keeps batch s and lr_at(s), and a run still ends at ``steps``. Skipped steps are counted as ``skipped_steps``
    in the train lines of ``metrics.jsonl`` and the final metrics. Not a trajectory field: a run stopped by a
    non-finite step may resume with ``"skip"``."""
    eval_every: PositiveInt = 100
    """Evaluate every this many steps (and always at the end), on the split ``select_on`` names."""
    eval_examples: PositiveInt | None = None
    """Examples used by the periodic evaluations (and, with ``select_on="val"``, every validation evaluation);
    None = the whole split. The final test evaluation always uses the whole test split."""
    select_on: Literal["test", "val"] = "test"
    """Which split the periodic evaluations score, and so which weights the final metrics describe. ``"test"``:
    periodic evaluations on the test split, final metrics of the last weights. ``"val"`` (LRA's protocol): periodic
    evaluations, and one of the last weights, on the validation split; the weights of the best one are kept and the
    final test metrics are theirs, with ``val_<metric>``, ``val_loss`` and ``selected_step`` beside them. Only for
    tasks with a validation split (``tasks.base.task_splits``). ``target_metric`` is then a validation value."""
    target_metric: Annotated[float, Field(allow_inf_nan=False)] | None = None
    """Stop early once an evaluation reaches this value of the task's metric (direction from the task)."""
    time_budget_s: PositiveFloat | None = None
    """Stop early once the run's wall time (all sessions, periodic evaluations included) exceeds this many
    seconds; the final evaluation and checkpoint then run as after any early stop, so the run takes a little
    longer than the budget. None = no limit. Not a trajectory field: the budget decides where a run stops,
    never the updates it makes on the way, so a resume may change it."""
    seed: NonNegativeInt = 0
    """Seeds the data order and, on a fresh run, the python/numpy/torch random generators."""
    checkpoint_every: PositiveInt | None = None
    """Save a checkpoint every this many steps (a final one is always saved when ``out_dir`` is set)."""
    keep_checkpoints: PositiveInt | None = 2
    """How many of the most recent checkpoints to keep; None = keep all."""
    out_dir: Path | None = None
    """Where ``metrics.jsonl`` and ``checkpoints/`` go; None = write nothing."""
    threads: PositiveInt | None = None
    """``torch.set_num_threads`` for training and evaluation; None = leave torch's setting alone."""
    log_every: PositiveInt = 10
    """Write a training line to ``metrics.jsonl`` and refresh the progress bar every this many steps."""
    tensorboard_dir: Path | None = None
    """Also write every ``metrics.jsonl`` record's numbers as TensorBoard scalars here (needs the ``tensorboard``
    package: ``pip install -e '.[tensorboard]'``); None = no TensorBoard log."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as error:
            raise TrainConfigError(_describe_errors(error)) from None

    @pydantic.model_validator(mode="after")
    def _check_consistency(self) -> TrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be < steps={self.steps} (allowed: 0 <= warmup_steps < steps)"
            )
        if self.checkpoint_every is not None and self.out_dir is None:
            raise ValueError(
                f"checkpoint_every={self.checkpoint_every} needs out_dir (got out_dir=None); "
                "set out_dir or leave checkpoint_every unset"
            )
        return self

    @property
    def effective_eval_batch_size(self) -> int:
        """``eval_batch_size``, or ``batch_size`` when it is unset."""
        return self.eval_batch_size if self.eval_batch_size is not None else self.batch_size

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-able form (paths as strings, tuples as lists) without the ``OMITTED_AT_DEFAULT`` fields that are at
        their default; ``TrainConfig(**d)`` rebuilds it."""
        data = self.model_dump(mode="json")
        for name in OMITTED_AT_DEFAULT:
            if data[name] == TrainConfig.model_fields[name].default:
                del data[name]
        return data

    @classmethod
    def field_of(cls, data: dict[str, Any], name: str) -> Any:
        """Field ``name`` of a stored ``to_json_dict`` (its default where the dump left it out)."""
        return data.get(name, cls.model_fields[name].default)


def _describe_errors(error: pydantic.ValidationError) -> str:
    allowed_fields = list(TrainConfig.model_fields)
    problems = []
    for item in error.errors(include_url=False):
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".")
        if item["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(field, allowed_fields, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(
                f"unknown field {field!r} (value {item['input']!r}){suggestion}; allowed: {', '.join(allowed_fields)}"
            )
        elif not item["loc"]:
            # A model-level check: its message already names the fields and values involved.
            problems.append(str(item["msg"]).removeprefix("Value error, "))
        else:
            problems.append(f"{field}={item['input']!r}: {item['msg']}")
    return "invalid training config: " + "; ".join(problems)
