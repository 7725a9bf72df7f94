"""Quality sweeps on a Ray cluster: ``run_quality(ray=ADDRESS)``, ``longseq bench quality --ray ADDRESS``.

The runs ``run_quality`` planned (and did not find finished) become Ray tasks; everything else -- planning, the
skip of finished runs, closing the rows a dead call left ``running``, the report -- is ``bench/quality.py``'s, so
a suite gives the same rows and run keys on Ray as in one process. Ray is an optional extra (``pip install -e
'.[distributed]'``), imported here only, when a sweep asks for it.

**The store stays in this process** (the driver): a worker on another machine cannot reach its SQLite file.

- At submission the driver writes the run's row ``running``: the row ``run_experiment`` writes when training
  starts (``StoreRecorder``), its model built on the meta device. A resumed run continues its row: the driver
  reads the row's id from the run's latest checkpoint, as the trainer hands it to the recorder in one process.
- The worker (``train_on_worker``) trains through ``run_experiment`` into a scratch store of its own, in a
  temporary folder, under the id the driver chose (so its checkpoints name the driver's row), and returns that
  row and the ``TrainResult``; an exception is caught there and returned as text. The driver copies the row into
  the store (its provenance is the worker's machine) and closes it ``completed``, ``failed`` or ``interrupted``,
  as the trainer did.
- A worker that dies (killed, out of memory, its node lost: a ``ray.exceptions.RayError``) has its row closed
  ``failed`` with ``{"stopped_by": "worker_lost", "error": ...}`` and the steps and wall time its folder's
  ``metrics.jsonl`` reached; the other runs go on. Ray does not retry a task (``max_retries=0``): the next call
  runs the run again, from its last checkpoint if it has one.
- Ctrl-C records the tasks that already ended, cancels the others, closes their rows ``interrupted`` (their
  folders' progress) and re-raises; a driver killed outright leaves rows ``running``, which the next call closes
  ``interrupted`` (**Kills** in ``bench/quality.py``).

**Resources.** Each task asks for ``num_cpus`` = the run's ``train.threads`` (1 when unset), which the trainer
also gives torch. The quality runner trains on the CPU (it passes ``run_experiment`` no device), so no task asks
for a GPU.

**Budget.** Runs are submitted as slots free up, at most ``slots`` = the cluster's CPUs // the run's CPUs at a
time, so that a run's time share is fixed when it can start. ``split: time``: the next run's share is the time
left / ceil(runs left / slots) -- with one slot exactly the sequential rule, and early finishers still hand their
time on. ``split: steps``: every run trains its ``steps``; the budget decides which runs are submitted. A run
that finds the budget spent is not submitted (``out_of_budget``); one asking for more CPUs than the cluster has
fails at once instead of waiting forever. The trainer's clock starts when the worker does: time a task waits on a
cluster busy with other jobs is in nobody's share, and the call overruns by as much. Starting or joining the
cluster counts against the budget.

**Run folders** are ``<root>/<suite>/<cell_key>`` as in one process, made absolute on the driver. On a multi-node
cluster the root (default: ``quality/`` beside the store; ``out_root``) must be a shared filesystem mounted at the
same path on every node, and every node needs this version of longseq installed: otherwise a resume finds no
checkpoint and a dead worker's row records 0 steps.

**Cluster.** ``address`` goes to ``ray.init``: ``"local"`` starts a cluster on this machine (stopped at the end),
``"auto"`` joins the one ``ray start`` runs here (or ``$RAY_ADDRESS``), ``HOST:PORT`` or ``ray://HOST:PORT`` a
remote one (disconnected at the end). A process already connected (``ray.is_initialized()``: a notebook, a test)
keeps its cluster and its connection, whatever ``address`` says.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from longseq.bench.quality import (
    QualityRun,
    RunsOutcome,
    Sweep,
    close_from_folder,
    foreign_folder_reason,
    result_line,
)
from longseq.results.store import ResultsStore, ResultsStoreError
from longseq.tasks.fingerprint import data_fingerprint
from longseq.train.checkpoint import read_checkpoint_state
from longseq.train.events import RunStart, TrainResult
from longseq.train.experiment import ExperimentConfig, build_model_shapes, run_experiment
from longseq.train.recorder import StoreRecorder
from longseq.train.trainer import count_parameters, latest_checkpoint
from longseq.userinput import describe_error

KILL_ENV = "LONGSEQ_TEST_RAY_KILL"
"""Test hook: comma-separated cell keys whose worker exits at once (``os._exit``), as a killed worker does. Read in
the worker, so it must be in the cluster's environment (set before the cluster starts)."""

ADDRESS_FORMS = ("'local' (start a cluster on this machine), 'auto' (the cluster `ray start` runs here, or "
                 "$RAY_ADDRESS), HOST:PORT or ray://HOST:PORT")

# The row fields StoreRecorder.on_start writes; the driver copies them from the worker's row.
_START_FIELDS = ("kind", "task", "mixer", "config", "n_params", "provenance", "state_floats", "suite", "cell_key")


class RaySweepError(ValueError):
    """Ray is not installed, or the cluster at the given address cannot be started or reached."""


# ----------------------------------------------------------------------------------------------------------
# The worker


@dataclass(frozen=True)
class WorkerOutcome:
    """What a worker sends back: its store's row of the run (None when no training session started: the run
    failed before, or its folder held a finished run), the trainer's result (None when it raised) and the error
    (``"TypeName: message"``, None when it did not raise)."""

    row: dict[str, Any] | None
    result: TrainResult | None
    error: str | None


class _ScratchStore(ResultsStore):
    """A worker's own store: a fresh run takes the id the driver assigned, so that its checkpoints (which keep the
    id a resume hands back) name the driver's row."""

    def __init__(self, path: Path, run_id: str) -> None:
        super().__init__(path)
        self.assigned_run_id = run_id

    def start_run(self, *, run_id: str | None = None, **fields: Any) -> str:
        return super().start_run(run_id=self.assigned_run_id if run_id is None else run_id, **fields)


def train_on_worker(config: ExperimentConfig, *, run_id: str, resume: bool, suite: str, cell_key: str,
                    fingerprint: str | None, command: str) -> WorkerOutcome:
    """Train one run (``config`` holds its folder and time budget) as ``run_experiment`` does in one process,
    recording into a scratch store; the body of the Ray task."""
    if cell_key in os.environ.get(KILL_ENV, "").split(","):
        os._exit(1)
    with (tempfile.TemporaryDirectory(prefix="longseq-ray-") as scratch,
          _ScratchStore(Path(scratch) / "results.db", run_id) as store):
        try:
            result = run_experiment(config, store=store, resume=resume, command=command, progress=False,
                                    suite=suite, cell_key=cell_key, data_fingerprint=fingerprint)
        except Exception as error:  # reported to the driver, which records it like the in-process runner
            rows = store.runs()
            return WorkerOutcome(rows[0] if rows else None, None, f"{type(error).__name__}: {describe_error(error)}")
        rows = store.runs()
        return WorkerOutcome(rows[0] if rows else None, result, None)


def task_resources(config: ExperimentConfig) -> dict[str, float]:
    """The Ray resources of a run's task: ``num_cpus`` = ``train.threads`` (1 when unset), no GPU (the quality
    runner trains on the CPU)."""
    return {"num_cpus": float(config.train.threads or 1), "num_gpus": 0.0}


# ----------------------------------------------------------------------------------------------------------
# The driver


@dataclass(frozen=True)
class _Submitted:
    index: int
    run: QualityRun
    run_id: str
    out_dir: Path


def run_on_ray(todo: list[QualityRun], sweep: Sweep, *, address: str) -> RunsOutcome:
    """Train ``todo`` as Ray tasks on the cluster at ``address`` (module docstring), recording into
    ``sweep.store`` from this process."""
    if not todo:  # every run finished: no cluster to start
        return RunsOutcome()
    # Workers may run in another directory (or machine): folders are named absolutely.
    sweep = replace(sweep, root=sweep.root.resolve(), command=sweep.command or shlex.join(sys.argv))
    with _connected(address) as ray:
        driver = _Driver(ray, sweep, todo)
        try:
            while driver.submit_what_fits():
                driver.collect(driver.next_finished())
        except KeyboardInterrupt:
            driver.interrupt()
            raise
        return driver.outcome


class _Driver:
    """The driver's side of one sweep: the runs waiting, the tasks in flight, and what became of each."""

    def __init__(self, ray: ModuleType, sweep: Sweep, todo: list[QualityRun]) -> None:
        self.ray = ray
        self.sweep = sweep
        self.total = len(todo)
        self.remote = ray.remote(max_retries=0)(train_on_worker)  # a dead worker's run is failed, not re-run
        self.cpus = float(ray.cluster_resources().get("CPU", 0.0))
        self.pending = deque(enumerate(todo, start=1))
        self.in_flight: dict[Any, _Submitted] = {}
        self.outcome = RunsOutcome()

    def submit_what_fits(self) -> bool:
        """Submit waiting runs while the cluster has room and the budget has time left; whether tasks are in flight."""
        sweep = self.sweep
        while self.pending:
            index, run = self.pending[0]
            request = task_resources(run.config)
            if request["num_cpus"] > self.cpus:
                self.pending.popleft()
                self._failed(index, run, f"train.threads={run.config.train.threads} asks for "
                                         f"{request['num_cpus']:g} CPUs and the Ray cluster has {self.cpus:g}",
                             announced=False)
                continue
            slots = int(self.cpus // request["num_cpus"])
            if len(self.in_flight) >= slots:
                break
            left = sweep.time_left()
            if left <= 0:
                self.outcome.out_of_budget = sweep.out_of_budget([run for _, run in self.pending])
                self.pending.clear()
                break
            self.pending.popleft()
            self._submit(index, run, sweep.config_for(run, sweep.share(left, len(self.pending) + 1, slots)),
                         request)
        return bool(self.in_flight)

    def next_finished(self) -> Any:
        (ready,), _ = self.ray.wait(list(self.in_flight), num_returns=1)
        return ready

    def collect(self, ref: Any) -> None:
        """Record the end of a finished (or dead) task in the store and in ``outcome``."""
        submitted = self.in_flight.pop(ref)
        store, prefix = self.sweep.store, f"[{submitted.index}/{self.total}]"
        try:
            done: WorkerOutcome = self.ray.get(ref)
        except self.ray.exceptions.RayError as error:  # the worker died or the task could not run: the others go on
            reason = f"{type(error).__name__}: {describe_error(error)}"
            close_from_folder(store, submitted.run_id, submitted.out_dir, status="failed",
                              metrics={"stopped_by": "worker_lost", "error": reason})
            self._failed(submitted.index, submitted.run, reason)
            return
        if done.row is not None:
            store.start_run(run_id=submitted.run_id, **{name: done.row[name] for name in _START_FIELDS})
            store.finish_run(submitted.run_id, status=done.row["status"], metrics=done.row["metrics"],
                             wall_time_s=done.row["wall_time_s"], tokens_per_s=done.row["tokens_per_s"],
                             steps=done.row["steps"])
        if done.result is not None and done.row is not None:  # the trainer returned: it closed its row completed
            self.outcome.ran += 1
            self.sweep.log(f"{prefix} {result_line(done.result)}")
            return
        # No result: it raised. No row: no session started (it raised first, or found the run finished in its folder).
        reason = done.error if done.error is not None else foreign_folder_reason(submitted.out_dir)
        if done.row is None:
            close_from_folder(store, submitted.run_id, submitted.out_dir, status="failed", metrics={"error": reason})
        self._failed(submitted.index, submitted.run, reason)

    def interrupt(self) -> None:
        """Ctrl-C: record the tasks that ended, cancel the others and close their rows ``interrupted``."""
        if self.in_flight:
            ended, _ = self.ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=0)
            for ref in ended:
                self.collect(ref)
        for ref, submitted in self.in_flight.items():
            self.ray.cancel(ref, force=True)
            close_from_folder(self.sweep.store, submitted.run_id, submitted.out_dir, status="interrupted",
                              metrics={"stopped_by": "interrupted"})

    def _submit(self, index: int, run: QualityRun, config: ExperimentConfig, request: dict[str, float]) -> None:
        """Record ``run`` ``running`` and submit its task (the run fails when the store refuses the row)."""
        sweep = self.sweep
        out_dir = sweep.run_dir(run)
        resume = latest_checkpoint(out_dir) is not None
        run_id = (_checkpoint_run_id(out_dir) if resume else None) or uuid.uuid4().hex
        sweep.log(sweep.start_line(index, self.total, run, config, resume))
        try:
            _record_submitted(sweep, run, config, run_id)
        except ResultsStoreError as error:  # e.g. the checkpoint names a row this store has completed
            self._failed(index, run, describe_error(error))
            return
        ref = self.remote.options(**request).remote(config, run_id=run_id, resume=resume, suite=sweep.suite.name,
                                                    cell_key=run.key, fingerprint=run.fingerprint,
                                                    command=sweep.command)
        self.in_flight[ref] = _Submitted(index, run, run_id, out_dir)

    def _failed(self, index: int, run: QualityRun, reason: str, *, announced: bool = True) -> None:
        """Count ``run`` failed and log it (with its label when no start line announced it)."""
        self.outcome.failed.append((run, reason))
        label = "" if announced else f" {run.label}:"
        self.sweep.log(f"[{index}/{self.total}]{label} failed: {reason}")


@contextmanager
def _connected(address: str) -> Iterator[ModuleType]:
    """The ``ray`` module, connected to the cluster at ``address`` for the block (module docstring)."""
    try:
        import ray
    except ImportError:
        raise RaySweepError(f"ray={address!r}: Ray is not installed; install the extra: pip install -e "
                            "'.[distributed]'") from None
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RaySweepError(f"ray={address!r}: cannot start or reach a Ray cluster ({describe_error(error)}); "
                            f"allowed: {ADDRESS_FORMS}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _checkpoint_run_id(out_dir: Path) -> str | None:
    """The row id the trainer saved in the latest checkpoint of ``out_dir`` (``extra.progress.run_id``), if any."""
    latest = latest_checkpoint(out_dir)
    progress = read_checkpoint_state(latest)["extra"].get("progress") if latest is not None else None
    return progress.get("run_id") if isinstance(progress, dict) else None


def _record_submitted(sweep: Sweep, run: QualityRun, config: ExperimentConfig, run_id: str) -> None:
    """Write the row ``run_experiment`` writes when ``run``'s training starts, ``running``, under ``run_id``."""
    task = config.task.build()
    built = build_model_shapes(config, task)
    recorder = StoreRecorder(
        sweep.store,
        mixer=config.model_config_for(task).layers,
        config={"task": task.describe(), "model": built.config,
                "data_fingerprint": run.fingerprint if run.fingerprint is not None else data_fingerprint(task)},
        state_floats=built.state_floats,
        suite=sweep.suite.name,
        cell_key=run.key,
        command=sweep.command,
        primary_metric=task.metric_name,
    )
    dtype = next(built.model.parameters()).dtype
    recorder.on_start(RunStart(run_id=run_id, task=task.name, train_config=config.train.to_json_dict(),
                               n_params=count_parameters(built.model), dtype=str(dtype).removeprefix("torch.")))


__all__ = ["KILL_ENV", "RaySweepError", "WorkerOutcome", "run_on_ray", "task_resources", "train_on_worker"]
