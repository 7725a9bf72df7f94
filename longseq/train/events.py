"""What the trainer reports: its result, and the start and end of each training session to an observer.

The trainer records nothing itself beyond its run directory. Whoever wants a run recorded (``longseq.train.recorder``
writes it to the results store) passes an object with ``on_start`` and ``on_end`` (``TrainObserver``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

STOP_REASONS = ("target", "time_budget", "steps")
SessionEnd = Literal["completed", "interrupted", "failed"]


@dataclass(frozen=True)
class TrainResult:
    """What a ``Trainer.train`` call reports (and what ``TrainObserver.on_end`` receives).

    ``run_id``: the id ``TrainObserver.on_start`` returned (None without an observer); ``metrics``: the final
    evaluation on the whole test split (``{<task metric>: value, "loss": value}``; with ``TrainConfig.select_on =
    "val"``, of the weights selected on validation, plus ``val_<metric>``, ``val_loss`` and ``selected_step``) —
    for a session that ends before the final evaluation, the latest periodic evaluation with its ``"step"`` (its
    keys ``val_``-prefixed on the validation split; empty if none); ``best_metric``: the best value of the task
    metric over all periodic evaluations of the run (on the split ``select_on`` names); ``wall_time_s``: wall
    time of all training sessions of the run (up to the last checkpoint for resumed runs), evaluation included;
    ``tokens_per_s``: input tokens per second of training-step time (evaluation excluded); ``checkpoint``: the
    final (or latest) checkpoint directory (None without ``out_dir``); ``stopped_by``: why training stopped, one
    of ``STOP_REASONS`` — ``"target"`` (an evaluation reached ``target_metric``), ``"time_budget"`` (wall time
    passed ``time_budget_s``) or ``"steps"`` (all ``steps`` done), None while it has not; ``stopped_early`` is
    ``stopped_by`` in (``"target"``, ``"time_budget"``); ``train_loss``: the mean training loss of the last
    logged window.
    """

    run_id: str | None
    steps: int
    metrics: dict[str, float]
    best_metric: float | None
    wall_time_s: float
    tokens_per_s: float
    stopped_early: bool
    checkpoint: Path | None
    stopped_by: str | None = None
    train_loss: float | None = None


@dataclass(frozen=True)
class RunStart:
    """What the trainer tells ``TrainObserver.on_start`` when a session starts.

    ``run_id``: None for a fresh run; on resume, the id the observer returned when the run began (saved in the
    checkpoints), so that the observer can continue the same record. ``task``: the task's name; ``train_config``:
    the ``TrainConfig`` as JSON-able data; ``n_params``: distinct parameter elements (a tied weight once);
    ``dtype``: the model's parameter dtype (``"float32"``).
    """

    run_id: str | None
    task: str
    train_config: dict[str, Any]
    n_params: int
    dtype: str


class TrainObserver(Protocol):
    """Told when a training session starts and ends; e.g. ``longseq.train.recorder.StoreRecorder``."""

    def on_start(self, start: RunStart) -> str | None:
        """A session starts (fresh or resumed); return the run's id, or None.

        The trainer treats the id as opaque: it reports it in ``TrainResult.run_id``, saves it in every
        checkpoint and hands it back as ``RunStart.run_id`` when the run resumes.
        """
        ...

    def on_end(self, status: SessionEnd, result: TrainResult) -> None:
        """The session ended: ``"completed"``, ``"interrupted"`` (KeyboardInterrupt) or ``"failed"`` (another
        exception, which propagates after this call)."""
        ...
