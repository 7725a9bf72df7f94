"""Recording a training run in the results store: a ``TrainObserver`` that keeps one ``runs`` row per run.

The row is written ``running`` when a session starts and closed ``completed``, ``interrupted`` or ``failed`` when
it ends, with the metrics (final or latest evaluation, ``best_metric``, ``train_loss``, ``stopped_early``,
``stopped_by``), wall time, throughput and steps. A resumed run continues the same row: the trainer saves the row's
``run_id`` in its checkpoints and hands it back to ``on_start``, and ``ResultsStore.start_run`` with an existing id
sets that row ``running`` again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from longseq.results.provenance import collect_provenance
from longseq.results.store import ResultsStore
from longseq.train.events import RunStart, SessionEnd, TrainResult


@dataclass(frozen=True)
class StoreRecorder:
    """Records the runs of a trainer in ``store`` (see the module docstring).

    ``mixer``: the mixer or layer pattern the row names; ``config``: merged into the stored config beside
    ``"train"`` (e.g. ``{"task": ..., "model": ...}``); ``state_floats``: the model's recurrent state size;
    ``suite``/``cell_key``: the quality benchmark cell the run belongs to; ``command``: recorded in the provenance
    (default: this process's command line); ``primary_metric``: the task's metric, stored with the metrics as the
    one runs are ranked by (``longseq.bench.ranking``).
    """

    store: ResultsStore
    mixer: str
    config: dict[str, Any] = field(default_factory=dict)
    state_floats: int | None = None
    suite: str | None = None
    cell_key: str | None = None
    command: str | None = None
    primary_metric: str = "accuracy"

    def __post_init__(self) -> None:
        if not isinstance(self.mixer, str) or not self.mixer:
            raise ValueError(f"mixer={self.mixer!r} must name the mixer or layer pattern the run trains (a str)")
        if "train" in self.config:
            raise ValueError("config has a 'train' key; the recorder stores the trainer's TrainConfig there itself")

    def on_start(self, start: RunStart) -> str:
        """Write (or, on resume, reopen) the run's row as ``running``; return its run_id."""
        return self.store.start_run(
            kind="train",
            task=start.task,
            mixer=self.mixer,
            config={"train": start.train_config, **self.config},
            n_params=start.n_params,
            provenance=collect_provenance(command=self.command, dtype=start.dtype),
            state_floats=self.state_floats,
            suite=self.suite,
            cell_key=self.cell_key,
            run_id=start.run_id,
        )

    def on_end(self, status: SessionEnd, result: TrainResult) -> None:
        """Close the run's row with ``status`` and the session's results."""
        if result.run_id is None:
            raise ValueError("on_end got a result without run_id: on_start was not called for this run")
        self.store.finish_run(
            result.run_id,
            status=status,
            metrics={**_run_metrics(result), "primary_metric": self.primary_metric},
            wall_time_s=result.wall_time_s,
            tokens_per_s=result.tokens_per_s,
            steps=result.steps,
        )


def _run_metrics(result: TrainResult) -> dict[str, Any]:
    """The ``metrics`` column of a run: the evaluation metrics and how training went."""
    return {
        **result.metrics,
        "best_metric": result.best_metric,
        "train_loss": result.train_loss,
        "stopped_early": result.stopped_early,
        "stopped_by": result.stopped_by,
    }
