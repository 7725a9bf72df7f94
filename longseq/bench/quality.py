"""``longseq bench quality``: a task x mixer x hyper-parameter grid, trained under one wall-time budget.

A **suite** (``QualitySuite``, a YAML file; the shipped ones live in ``longseq/bench/suites/``) names tasks,
mixers, a base model and training config, and a grid. A **cell** is one task x one mixer x one point of the
grid without the learning rate; each cell is trained once per learning rate (Zoology's protocol: the cell's
score is the best over learning rates, see ``leaderboard``).

Grid keys (``parse_grid`` reads them from the command line, a suite's ``grid`` from YAML):

- ``lr``: the learning rates tried in every cell;
- a ``TrainConfig`` field (``steps``, ``batch_size``, ...) or a ``ModelConfig`` field (``d_model``,
  ``n_layers``, ...); ``out_dir``/``time_budget_s`` (set by the runner) and ``vocab_size``/``layers``/
  ``mixer_hypers`` (set by the task, the mixers and the keys below) are refused;
- ``task.<param>``: a parameter of every task of the suite;
- ``<mixer>.<hyper>``: a hyper of that mixer; it multiplies only the cells whose layers use that mixer.

Training settings merge suite ``train`` < the task's own ``train`` < grid values < the run's ``lr``.

**Run keys.** Every run (cell + learning rate) is recorded in the results store with ``suite`` and a
``cell_key``: the first 16 hex digits of the SHA-256 of the canonical JSON of ``{"suite": name, "task": the
task's name and parameters as given, "mixer": layer pattern, "config": the fully resolved config}``, where the
resolved config is the task's ``describe()``, the ``ModelConfig`` dump and the ``TrainConfig`` dump (defaults
filled in, ``lr`` included) without ``out_dir`` and ``time_budget_s``, plus ``"data_fingerprint"``: the
fingerprint of the data the task generates (``longseq.tasks.fingerprint``). So the key changes exactly when the
experiment does -- including when a generator's output changes under the same parameters -- and a re-run skips
every run whose key has a completed row (``ResultsStore.finished_cell``): a finished run with another
fingerprint is not finished for the current data, and the new run gets its own folder.
A run stopped by its time budget is completed too: re-run it with a new store (or suite name) to give it more
time. Run directories are ``<out_root>/<suite>/<cell_key>`` (default out_root: ``quality/`` beside the store);
an interrupted run resumes from its last checkpoint there.

**Kills.** A call killed outright (SIGKILL, power loss) leaves the store consistent: every row is written in its
own committed SQLite transaction and checkpoints are written atomically. The next call skips the completed runs
and re-runs the others: a run with a checkpoint resumes from it (continuing its row), and rows a dead call left
``running`` are first closed ``interrupted`` (with the steps and wall time its ``metrics.jsonl`` reached), so no
row stays ``running`` forever; a run killed after its final checkpoint but before its row was closed is closed
``completed`` from that checkpoint (``run_experiment``). One call per store and suite at a time: a call takes
the ``running`` rows of its runs for the leftovers of a dead one.

**Budget.** The suite's ``budget_s`` (or the caller's override) is the wall time of the whole call. How a run
is bounded is the suite's ``split``:

- ``time`` (default; equal wall time): before each run the time left is split evenly over the runs left,
  ``TrainConfig.time_budget_s = left / runs left``, so runs that stop early (target reached) hand their time to
  the rest. A slower mixer trains fewer steps: the comparison is at equal compute on this machine. The final
  evaluation runs after a run's budget is spent, so a call can overrun by about one evaluation per run.
- ``steps`` (equal steps, the papers' protocol): every run trains its ``steps`` (or stops at its target)
  whatever its speed, so its result does not depend on the machine or its load; the budget only decides which
  runs start, and a call can overrun by the length of its last run.

Either way runs that find no time left are not started and are reported as ``out_of_budget`` (a later call
runs them).

**On Ray** (``run_quality(ray=ADDRESS)``, ``longseq bench quality --ray``): the runs are Ray tasks, several at a
time, and this process keeps the store; ``longseq.bench.ray_sweep`` says how the budget, kills and resumes map.

**Classification tasks** (LRA's: ListOps, Pathfinder, the stand-ins) train encoders (``ExperimentConfig.classifier``):
their cells are validated with every mixer built in the classifier's pattern (non-causal self by default, causal
self for a mixer that has only that), where token tasks build causal LMs; ``mixers: all`` lists, beside the causal
mixers for token tasks, every mixer that can take the classifier's pattern. A suite's ``classifier`` (pattern,
pooling) applies to its classification tasks and joins a run's key only when it is not the default, so the keys of
suites without one stay what they were.

A cell whose mixer is built with a ``max_len`` below the task's sequence length (each sequence of a pair task) is
dropped too: it would refuse every batch. A suite uses that to run a mixer only up to where it fits (``dna.yaml``).

**Parameter budget.** A suite may set ``param_budget`` (LRA's rule: 1.1, at most 10% more parameters than the base
Transformer of the same config, ``longseq.train.experiment.parameter_budget``): a cell whose model is larger is
dropped at planning time with its count and ratio. ``parameter_budgets`` lists every cell's.

**Missing datasets.** A cell whose task reads a dataset that is not installed cannot be planned (its key needs the
data's fingerprint): it is reported as ``missing data`` with the install command (``QualityPlan.unavailable``,
``QualityReport.unavailable``), and the other cells run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from longseq.bench.ranking import RUNNER_TRAIN_FIELDS, format_value, rank_runs
from longseq.data.registry import DatasetMissing
from longseq.mixers import Pattern, available, mixer_class
from longseq.mixers.registry import hyper_names
from longseq.models.config import ModelConfig, parse_layer_unit
from longseq.results.store import ResultsStore
from longseq.tasks import available_tasks, is_classification, is_classification_class, num_segments, task_class
from longseq.tasks.fingerprint import data_fingerprint
from longseq.train.config import TrainConfig
from longseq.train.events import TrainResult
from longseq.train.experiment import (
    ClassifierSpec,
    ExperimentConfig,
    ParameterBudget,
    TaskSpec,
    parameter_budget,
    run_experiment,
)
from longseq.train.trainer import latest_checkpoint
from longseq.userinput import coerce_number, describe_error, parse_assignments, parse_scalar

SUITES_PACKAGE = "longseq.bench"
SUITES_DIR = "suites"
ALL_MIXERS = "all"
"""Training fields the runner sets for each run; suites and grids may not set them, run keys leave them out."""
RESERVED_MODEL_FIELDS = ("vocab_size", "layers", "mixer_hypers")
"""Model fields a grid may not set: the task gives the vocabulary, ``mixers`` the layers, ``<mixer>.<hyper>``
keys the hypers."""


class QualitySuiteError(ValueError):
    """A suite that is unknown, unreadable or invalid, or a grid, mixer list or budget it cannot take."""


# ----------------------------------------------------------------------------------------------------------
# Grid keys and values


def _train_fields() -> list[str]:
    return [name for name in TrainConfig.model_fields if name not in RUNNER_TRAIN_FIELDS]


def _model_fields() -> list[str]:
    return [name for name in ModelConfig.model_fields if name not in RESERVED_MODEL_FIELDS]


def layer_names(pattern: str) -> set[str]:
    """The mixer names of a layer pattern: ``"mamba*3,attention"`` -> ``{"mamba", "attention"}``.

    Raises ``ValueError`` for a malformed pattern (see ``longseq.models.config.parse_layer_unit``)."""
    return set(parse_layer_unit(pattern))


def _registered_mixers() -> list[str]:
    return [info.name for info in available()]


def grid_key_kind(key: str, mixer_names: Iterable[str] = ()) -> Literal["lr", "train", "model", "task", "hyper"]:
    """Which part of a run's config grid key ``key`` sets (see the module docstring for the forms).

    ``mixer_names``: names accepted as ``<mixer>`` besides the registered mixers (a suite's own mixers, which
    may not be registered yet). Raises ``QualitySuiteError`` naming the key and the allowed forms.
    """
    if key == "lr":
        return "lr"
    if key in _train_fields():
        return "train"
    if key in _model_fields():
        return "model"
    prefix, dot, name = key.partition(".")
    if dot and prefix == "task" and name.isidentifier():
        return "task"
    registered = _registered_mixers()
    if dot and name and prefix in registered:
        allowed = [h for h in hyper_names(mixer_class(prefix)) if h != "pattern"]
        if name not in allowed:
            raise QualitySuiteError(
                f"grid key {key!r}: mixer {prefix!r} has no hyper {name!r}; allowed: {', '.join(allowed)}"
            )
        return "hyper"
    if dot and name and any(prefix in layer_names(pattern) for pattern in mixer_names):
        return "hyper"
    if key in RUNNER_TRAIN_FIELDS or key in RESERVED_MODEL_FIELDS:
        raise QualitySuiteError(f"grid key {key!r} is set by the quality runner, not by a grid")
    raise QualitySuiteError(
        f"unknown grid key {key!r}; allowed: lr, a training field ({', '.join(_train_fields())}),"
        f" a model field ({', '.join(_model_fields())}), task.<param>, or <mixer>.<hyper> with a mixer among "
        f"{', '.join(sorted({*registered, *(n for pattern in mixer_names for n in layer_names(pattern))}))}"
    )


_GRID_ITEM_FORM = "KEY=VALUE[,VALUE...], e.g. d_model=64,128"


def _grid_values(text: str) -> list[Any]:
    """``"64, 128"`` -> ``[64, 128]``: comma-separated YAML scalars, each a number, string or bool (not null)."""
    values = []
    for part in text.split(","):
        if not part.strip():
            raise ValueError(f"{text!r} has an empty value; separate values with single commas")
        value = parse_scalar(part)
        if value is None:
            raise ValueError(f"value {part!r} must be a number, string or bool")
        values.append(value)
    return values


def parse_grid(items: Sequence[str], *, mixer_names: Iterable[str] = ()) -> dict[str, list[Any]]:
    """``["d_model=64,128", "lr=1e-3,3e-3"]`` -> ``{"d_model": [64, 128], "lr": [0.001, 0.003]}``.

    Each item is ``KEY=V1,V2,...`` (read by ``longseq.userinput.parse_assignments``); values are YAML scalars
    (``1e-3`` is a number, ``true`` a bool, ``sdpa`` a string). Keys are checked with ``grid_key_kind``. Raises
    ``QualitySuiteError`` naming the item or the key.
    """
    try:
        grid = parse_assignments(items, "grid item", form=_GRID_ITEM_FORM, parse_value=_grid_values)
    except ValueError as error:
        raise QualitySuiteError(str(error)) from None
    for key in grid:
        grid_key_kind(key, mixer_names)
    return grid


# ----------------------------------------------------------------------------------------------------------
# Suites


class SuiteTask(BaseModel):
    """One task of a suite: a registered task name, its parameters, and training settings for this task only
    (e.g. a smaller batch for a longer sequence)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: list[dict[str, Any]] = Field(default_factory=list)
    """Parameter overrides whose test splits every trained model is also scored on, e.g. ``[{seq_len: 512}]`` for
    length extrapolation (``ExperimentConfig.extra_evals``); findings plot them with ``x: eval.<param>``."""

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, params=dict(self.params))


EVAL_AXIS_PREFIX = "eval."
"""A finding's x axis ``eval.<param>``: the value of a task parameter the trained model was scored at."""

RUN_AXES = ("mixer", "state_floats", "n_params", "wall_time_s", "tokens_per_s", "steps")
"""Run columns a finding may use as an axis or grouping, besides dotted config paths (``task.seq_len``,
``model.d_model``, ``train.batch_size``, ``model.mixer_hypers.mamba.d_state``)."""
_CONFIG_AXIS_PREFIXES = ("task.", "model.", "train.")


def _check_axis(axis: str, *, evaluated: bool = False) -> str:
    """``evaluated``: also allow ``eval.<param>`` (an x axis over a task parameter the trained model was scored at:
    its training value and each of the suite task's ``eval`` overrides)."""
    if axis in RUN_AXES or (axis.startswith(_CONFIG_AXIS_PREFIXES) and axis.partition(".")[2]):
        return axis
    if evaluated and axis.startswith(EVAL_AXIS_PREFIX) and axis.partition(".")[2]:
        return axis
    raise ValueError(
        f"axis {axis!r}: allowed {', '.join(RUN_AXES)}, or a config path task.<param>, model.<field> or "
        f"train.<field>{', or (x only) eval.<param>' if evaluated else ''}"
    )


class Finding(BaseModel):
    """A paper's claim and the table (and plot) that checks it, built by ``longseq report`` from the completed
    runs of the suite that declares it (YAML: a list under ``findings:``).

    ``x``: the horizontal axis; ``y``: the metric (a key of the runs' metrics, default ``accuracy``), taken from
    each cell's best run over learning rates; ``group``: one line (table row) per value of these keys (default
    ``mixer``); ``where``: keep only runs whose axes have these values (e.g. ``{task.seq_len: 64}``). Axes and
    keys are run columns (``RUN_AXES``) or config paths (``task.seq_len``, ``model.d_model``). Cells that differ
    in anything else (e.g. ``d_model`` when neither an axis nor a group) are folded into their best value, and
    the report says so. ``x_scale``: ``linear`` or ``log``; ``plot: false`` gives the table alone.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str = Field(min_length=1)
    claim: str = Field(min_length=1)
    x: str
    y: str = Field(default="accuracy", min_length=1)
    group: list[str] = Field(default_factory=lambda: ["mixer"], min_length=1)
    where: dict[str, Any] = Field(default_factory=dict)
    x_scale: Literal["linear", "log"] = "linear"
    plot: bool = True

    @pydantic.field_validator("group", mode="before")
    @classmethod
    def _one_or_more(cls, group: Any) -> Any:
        return [group] if isinstance(group, str) else group

    @pydantic.field_validator("x")
    @classmethod
    def _x_axis(cls, x: str) -> str:
        return _check_axis(x, evaluated=True)

    @pydantic.field_validator("group")
    @classmethod
    def _group_axes(cls, group: list[str]) -> list[str]:
        for key in group:
            _check_axis(key)
        if len(set(group)) != len(group):
            raise ValueError(f"lists a key twice: {group}")
        return group

    @pydantic.field_validator("where")
    @classmethod
    def _where_axes(cls, where: dict[str, Any]) -> dict[str, Any]:
        for key in where:
            _check_axis(key)
        return where

    @pydantic.model_validator(mode="after")
    def _x_not_grouped(self) -> Finding:
        if self.x in self.group:
            raise ValueError(f"x={self.x!r} is also a group key; a line cannot be grouped by its own axis")
        return self


class QualitySuite(BaseModel):
    """A quality benchmark: tasks x mixers x grid, trained under ``budget_s`` seconds of wall time in total.

    ``mixers``: mixer names or layer patterns (``"mamba*3,attention"``), or ``"all"`` = every registered
    mixer that supports the causal self pattern (token tasks train causal LMs) and, for a suite with
    classification tasks, every one that can take the classifier's pattern. ``model``: ModelConfig fields
    except ``vocab_size`` and ``layers`` (``mixer_hypers`` entries apply to the cells that use the mixer).
    ``train``: TrainConfig fields except ``out_dir`` and ``time_budget_s``. ``grid``: key -> values, see the
    module docstring. ``findings``: the paper claims the report checks on this suite's runs (``Finding``).
    ``split``: ``"time"`` (the budget split evenly over the runs left) or ``"steps"`` (every run trains its
    full ``steps``; the budget only decides which runs start); see the module docstring.
    ``classifier``: the encoder's pattern and pooling for the classification tasks (``ClassifierSpec``).
    ``param_budget``: the largest parameter count allowed, as a multiple of the base Transformer's (LRA: 1.1).
    Construction validates everything that does not depend on a cell; a cell that cannot be
    built (e.g. ``4 * num_kv_pairs > seq_len``) is dropped at planning time with its reason.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str
    budget_s: float = Field(gt=0, allow_inf_nan=False)
    mixers: list[str] | Literal["all"]
    tasks: list[SuiteTask] = Field(min_length=1)
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    split: Literal["time", "steps"] = "time"
    classifier: ClassifierSpec = Field(default_factory=ClassifierSpec)
    param_budget: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as error:
            raise QualitySuiteError(
                f"invalid quality suite {data.get('name', '?')!r}: {describe_error(error)}"
            ) from None

    @pydantic.field_validator("mixers", mode="before")
    @classmethod
    def _mixers_form(cls, mixers: Any) -> Any:
        if isinstance(mixers, str) and mixers != ALL_MIXERS:
            raise ValueError(f"{mixers!r} is neither a list of mixer names or layer patterns nor {ALL_MIXERS!r}")
        return mixers

    @pydantic.field_validator("mixers")
    @classmethod
    def _mixers_parse(cls, mixers: list[str] | str) -> list[str] | str:
        if isinstance(mixers, str):
            return mixers
        if not mixers:
            raise ValueError(f"must name at least one mixer or be {ALL_MIXERS!r}")
        for pattern in mixers:
            parse_layer_unit(pattern)
        if len(set(mixers)) != len(mixers):
            raise ValueError(f"lists a mixer twice: {mixers}")
        return mixers

    @pydantic.field_validator("grid", mode="before")
    @classmethod
    def _grid_scalars(cls, grid: Any) -> Any:
        if isinstance(grid, dict):
            return {
                key: [coerce_number(v) for v in values] if isinstance(values, list) else values
                for key, values in grid.items()
            }
        return grid

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> QualitySuite:
        known_tasks = available_tasks()
        for task in self.tasks:
            if task.name not in known_tasks:
                raise ValueError(f"unknown task {task.name!r}; available: {', '.join(known_tasks)}")
        if self.classifier != ClassifierSpec() and not self.has_classification:
            raise ValueError(f"classifier={self.classifier.model_dump()} applies to classification tasks, and the "
                             "suite has none: remove it")
        for key in self.model:
            if key not in _model_fields() and key != "mixer_hypers":
                raise ValueError(
                    f"model.{key} cannot be set here; allowed: {', '.join([*_model_fields(), 'mixer_hypers'])}"
                )
        for key in RUNNER_TRAIN_FIELDS:
            if key in self.train or any(key in task.train for task in self.tasks):
                raise ValueError(f"train.{key} is set by the quality runner for each run; remove it")
        for task in self.tasks:
            TrainConfig(**{**self.train, **task.train})  # base settings must be valid before any grid value
        titles = [finding.title for finding in self.findings]
        if len(set(titles)) != len(titles):
            raise ValueError(f"findings repeat a title: {titles}")
        names = self.mixer_names
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} has no values")
            if grid_key_kind(key, names) in ("lr", "train"):
                for value in values:  # a bad training value is the suite's error, not a cell's
                    _check_train_value(key, value)
        return self

    @property
    def mixer_names(self) -> list[str]:
        """The distinct mixer names of the suite's layer patterns (empty for ``"all"``)."""
        if self.mixers == ALL_MIXERS:
            return []
        return sorted({name for pattern in self.mixers for name in layer_names(pattern)})

    @property
    def has_classification(self) -> bool:
        """Whether some task of the suite is a classification task (known from its class: no dataset is read)."""
        return any(is_classification_class(task_class(task.name)) for task in self.tasks)

    @property
    def has_token_tasks(self) -> bool:
        return not all(is_classification_class(task_class(task.name)) for task in self.tasks)

    def resolved_mixers(self) -> list[str]:
        """The layer patterns this suite trains: its list, or for ``"all"`` every registered mixer whose default
        hypers support the causal self pattern (for token tasks) or a pattern the suite's classifier takes (for
        classification tasks), in registry order."""
        if self.mixers != ALL_MIXERS:
            return list(self.mixers)
        wanted = set()
        if self.has_token_tasks:
            wanted.add(Pattern.CAUSAL_SELF)
        if self.has_classification:
            explicit = self.classifier.pattern != "auto"
            wanted |= {Pattern.parse(self.classifier.pattern)} if explicit else {Pattern.NONCAUSAL_SELF,
                                                                                  Pattern.CAUSAL_SELF}
        return [info.name for info in available() if wanted & info.cls.supported_patterns()]

    def with_grid(self, grid: dict[str, list[Any]]) -> QualitySuite:
        """A validated copy whose grid has ``grid``'s keys replaced (other keys kept)."""
        return QualitySuite(**{**self.model_dump(), "grid": {**self.grid, **grid}})

    def with_mixers(self, extra: Sequence[str]) -> QualitySuite:
        """A validated copy that also trains ``extra``: a new mixer under this suite's exact protocol (tasks, model,
        training, grid and name), so that its runs join the suite's leaderboard and findings."""
        covered = [m for m in extra if m in self.resolved_mixers()]
        if covered:
            raise QualitySuiteError(f"mixers {covered} are already in suite {self.name!r}")
        return QualitySuite(**{**self.model_dump(), "mixers": [*self.resolved_mixers(), *extra]})

    def with_tasks(self, names: Sequence[str]) -> QualitySuite:
        """A validated copy restricted to the tasks named ``names`` (every task of the suite by that name)."""
        present = [task.name for task in self.tasks]
        outside = [name for name in names if name not in present]
        if outside:
            raise QualitySuiteError(
                f"tasks {outside} are not in suite {self.name!r}; it has: {', '.join(dict.fromkeys(present))}"
            )
        return QualitySuite(**{**self.model_dump(), "tasks": [t for t in self.model_dump()["tasks"]
                                                              if t["name"] in names]})


def _check_train_value(key: str, value: Any) -> None:
    """Type and range of one TrainConfig field; checks across fields (warmup < steps) are left to the cells,
    where another grid key may change the other field."""
    field_info = TrainConfig.model_fields[key]
    annotation = (
        Annotated[field_info.annotation, *field_info.metadata] if field_info.metadata else field_info.annotation
    )
    try:
        pydantic.TypeAdapter(annotation).validate_python(value)
    except pydantic.ValidationError as error:
        raise ValueError(f"grid.{key}={value!r}: {describe_error(error)}") from None


def _shipped_suite_files() -> dict[str, Any]:
    folder = resources.files(SUITES_PACKAGE).joinpath(SUITES_DIR)
    return {entry.name.removesuffix(".yaml"): entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def list_suites() -> dict[str, str]:
    """Shipped suite name -> its description, sorted by name."""
    return {name: load_suite(name).description for name in sorted(_shipped_suite_files())}


def load_suite(name_or_path: str | Path) -> QualitySuite:
    """A shipped suite by name (``"mqar-tiny"``), or a suite YAML file by path.

    Raises ``QualitySuiteError`` for an unknown name (listing the shipped suites), an unreadable or non-YAML
    file, or an invalid suite (naming the field, the value and what is allowed).
    """
    path = Path(name_or_path)
    shipped = _shipped_suite_files()
    if str(name_or_path) in shipped:
        source, text = f"shipped suite {name_or_path!r}", shipped[str(name_or_path)].read_text(encoding="utf-8")
    elif path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise QualitySuiteError(f"suite file {str(path)!r} does not exist")
        source, text = f"suite file {str(path)!r}", path.read_text(encoding="utf-8")
    else:
        raise QualitySuiteError(
            f"unknown suite {str(name_or_path)!r}; available: {', '.join(sorted(shipped))} (or a path to a .yaml file)"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise QualitySuiteError(f"{source} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise QualitySuiteError(f"{source} must hold a mapping (name, description, budget_s, mixers, tasks, ...)")
    try:
        return QualitySuite(**data)
    except QualitySuiteError as error:
        raise QualitySuiteError(f"{source}: {error}") from None


# ----------------------------------------------------------------------------------------------------------
# Planning: cells and runs


@dataclass(frozen=True)
class Cell:
    """One task x one mixer (layer pattern) x one grid point without the learning rate.

    ``task``: the task with the cell's ``task.*`` values applied; ``settings``: (grid key, value) pairs.
    """

    task: TaskSpec
    mixer: str
    settings: tuple[tuple[str, Any], ...]

    @property
    def label(self) -> str:
        params = ", ".join(f"{k}={format_value(v)}" for k, v in self.task.params.items())
        parts = [f"{self.task.name}({params})", self.mixer]
        parts += [f"{k}={format_value(v)}" for k, v in self.settings if not k.startswith("task.")]
        return " | ".join(parts)

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class QualityRun:
    """One training run of a cell: its learning rate, its validated config (without ``out_dir`` and
    ``time_budget_s``, which the runner sets), its ``cell_key`` in the results store and the fingerprint of its
    task's data (``longseq.tasks.fingerprint``)."""

    cell: Cell
    lr: float
    config: ExperimentConfig
    key: str
    fingerprint: str | None = None

    @property
    def label(self) -> str:
        return f"{self.cell.label} | lr={self.lr:g}"

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class QualityPlan:
    """The runs of a suite (cells in task, mixer, grid order; learning rates innermost), the dropped cells and the
    cells whose dataset is missing (``unavailable``), each with its reason."""

    suite: QualitySuite
    runs: list[QualityRun]
    dropped: list[tuple[Cell, str]]
    unavailable: list[tuple[Cell, str]] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        """The cells that have runs, in order."""
        return list({run.cell.label: run.cell for run in self.runs}.values())


def run_key(
    suite_name: str,
    task: TaskSpec,
    mixer: str,
    config: ExperimentConfig,
    *,
    fingerprint: str | None = None,
    split: Literal["time", "steps"] = "time",
) -> str:
    """The ``cell_key`` of one run (see the module docstring): 16 hex digits of a SHA-256.

    ``fingerprint``: the data fingerprint of ``config``'s task, computed when not given. ``split``: the suite's
    (a run bounded by its steps is another experiment than one bounded by a share of the time)."""
    built = config.task.build()
    train = {k: v for k, v in config.train.to_json_dict().items() if k not in RUNNER_TRAIN_FIELDS}
    identity = {
        "suite": suite_name,
        "task": task.model_dump(mode="json"),
        "mixer": mixer,
        "config": {
            "task": built.describe(),
            "model": config.model_config_for(built).model_dump(mode="json"),
            "train": train,
        },
        "data_fingerprint": fingerprint if fingerprint is not None else data_fingerprint(built),
    }
    if config.extra_evals:  # only then: the keys of suites without them stay what they were
        identity["extra_evals"] = config.extra_evals
    if config.classifier != ClassifierSpec():  # likewise
        identity["classifier"] = config.classifier.model_dump()
    if split != "time":  # likewise
        identity["split"] = split
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _cell_grid_keys(suite: QualitySuite, names: set[str]) -> list[str]:
    """The grid keys (lr excluded) that multiply a cell with these mixers: mixer hypers of other mixers do not."""
    keys = []
    for key in suite.grid:
        kind = grid_key_kind(key, suite.mixer_names)
        if kind == "lr" or (kind == "hyper" and key.partition(".")[0] not in names):
            continue
        keys.append(key)
    return keys


def _cell_config(suite: QualitySuite, task: SuiteTask, mixer: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The experiment config (as plain data, lr from the base settings) of one cell."""
    names = layer_names(mixer)
    params = dict(task.params)
    train = {**suite.train, **task.train}
    model = {k: v for k, v in suite.model.items() if k != "mixer_hypers"}
    hypers = {name: dict(h) for name, h in suite.model.get("mixer_hypers", {}).items() if name in names}
    for key, value in settings.items():
        kind = grid_key_kind(key, suite.mixer_names)
        if kind == "task":
            params[key.removeprefix("task.")] = value
        elif kind == "train":
            train[key] = value
        elif kind == "model":
            model[key] = value
        else:
            name, _, hyper = key.partition(".")
            hypers.setdefault(name, {})[hyper] = value
    model["layers"] = mixer
    if hypers:
        model["mixer_hypers"] = hypers
    classifier = ({"classifier": suite.classifier.model_dump()}
                  if is_classification_class(task_class(task.name)) else {})
    return {"task": {"name": task.name, "params": params}, "model": model, "train": train,
            "extra_evals": [dict(override) for override in task.eval], **classifier}


def _validated_run_config(data: dict[str, Any], lr: float | None) -> ExperimentConfig:
    """The ExperimentConfig of a cell at ``lr``; every failure is a ValueError with a one-line reason (a missing
    dataset: ``DatasetMissing``)."""
    train = TrainConfig(**(data["train"] if lr is None else {**data["train"], "lr": lr}))
    spec = TaskSpec(**data["task"])
    task = spec.build()
    model = ModelConfig(vocab_size=task.vocab_size, **data["model"])
    classifier = ClassifierSpec(**data.get("classifier", {}))
    # Token tasks train causal LMs, classification tasks encoders in the classifier's pattern; ModelConfig only
    # checks that each mixer builds in some pattern.
    pattern = classifier.resolve(model)[0] if is_classification(task) else Pattern.CAUSAL_SELF
    length = task.seq_len // num_segments(task)  # what each mixer sees (a pair task: one of its two sequences)
    for name in sorted(set(model.layer_names)):
        with torch.device("meta"):
            mixer = model.build_mixer(name, pattern)
        if mixer.max_len is not None and mixer.max_len < length:  # it would refuse every batch (SequenceTooLong)
            raise ValueError(f"mixer '{name}' is built with max_len={mixer.max_len}, below the task's sequence "
                             f"length {length}")
    return ExperimentConfig(task=spec, model=data["model"], train=train, extra_evals=data.get("extra_evals", []),
                            classifier=classifier)


def _chosen_mixers(suite: QualitySuite, mixers: Sequence[str] | None) -> list[str]:
    """The suite's layer patterns, restricted to ``mixers`` (``QualitySuiteError`` for one it does not cover)."""
    chosen = suite.resolved_mixers()
    if mixers is None:
        return chosen
    outside = [m for m in mixers if m not in chosen]
    if outside:
        raise QualitySuiteError(
            f"mixers {outside} are not in suite {suite.name!r}; "
            f"it covers: {', '.join(chosen) or '(no registered mixer)'}"
        )
    return [m for m in chosen if m in mixers]


def _expand(suite: QualitySuite, mixers: Sequence[str] | None) -> Iterator[tuple[Cell, list[ExperimentConfig],
                                                                                   ValueError | None]]:
    """Every cell of ``suite`` (restricted to ``mixers``) with its validated configs, one per learning rate, or
    the error that refuses it (then no configs)."""
    lrs: list[float | None] = list(suite.grid.get("lr", [None]))
    for task in suite.tasks:
        for mixer in _chosen_mixers(suite, mixers):
            try:
                names = layer_names(mixer)
            except ValueError as error:
                yield Cell(task.spec, mixer, ()), [], error
                continue
            keys = _cell_grid_keys(suite, names)
            for values in itertools.product(*(suite.grid[k] for k in keys)):
                settings = dict(zip(keys, values, strict=True))
                data = _cell_config(suite, task, mixer, settings)
                cell = Cell(TaskSpec(**data["task"]), mixer, tuple(settings.items()))
                try:
                    yield cell, [_validated_run_config(data, lr) for lr in lrs], None
                except ValueError as error:
                    yield cell, [], error


def plan_quality(suite: QualitySuite, *, mixers: Sequence[str] | None = None) -> QualityPlan:
    """Expand ``suite`` into runs; cells whose config does not validate, or whose model is over the suite's
    ``param_budget``, are dropped with the reason, and cells whose dataset is missing are listed as unavailable.

    ``mixers`` restricts the suite to some of its mixers (``QualitySuiteError`` for one it does not cover).
    """
    runs: list[QualityRun] = []
    dropped: list[tuple[Cell, str]] = []
    unavailable: list[tuple[Cell, str]] = []
    fingerprints: dict[str, str] = {}  # one per distinct task in this plan
    for cell, configs, error in _expand(suite, mixers):
        if error is not None:
            (unavailable if isinstance(error, DatasetMissing) else dropped).append((cell, describe_error(error)))
            continue
        built = configs[0].task.build()
        if suite.param_budget is not None:
            budget = parameter_budget(configs[0], built)
            if budget.ratio > suite.param_budget:
                dropped.append((cell, f"over the suite's param_budget of {suite.param_budget:g}: {budget.describe()}"))
                continue
        task_id = json.dumps({"name": built.name, **built.describe()}, sort_keys=True, default=str)
        if task_id not in fingerprints:
            fingerprints[task_id] = data_fingerprint(built)
        fingerprint = fingerprints[task_id]
        runs += [
            QualityRun(
                cell,
                config.train.lr,
                config,
                run_key(suite.name, cell.task, cell.mixer, config, fingerprint=fingerprint, split=suite.split),
                fingerprint,
            )
            for config in configs
        ]
    return QualityPlan(suite, runs, dropped, unavailable)


def parameter_budgets(suite: QualitySuite, *, mixers: Sequence[str] | None = None) -> list[tuple[Cell,
                                                                                                 ParameterBudget]]:
    """Each cell's parameter count against its base Transformer's (``train.experiment.parameter_budget``), for the
    cells that validate, whatever the suite's ``param_budget``."""
    return [(cell, parameter_budget(configs[0])) for cell, configs, error in _expand(suite, mixers)
            if error is None]


# ----------------------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class QualityReport:
    """What ``run_quality`` did: runs trained now (``ran``), already finished in the store (``skipped``),
    cells dropped as invalid, runs that raised, runs not started for lack of time, the suite's leaderboard, and
    the cells that could not run because their dataset is missing (``unavailable``, with the install command)."""

    suite: str
    ran: int
    skipped: int
    dropped: list[tuple[Cell, str]]
    failed: list[tuple[QualityRun, str]]
    out_of_budget: list[QualityRun]
    leaderboard: list[dict[str, Any]]
    wall_time_s: float
    budget_s: float
    unavailable: list[tuple[Cell, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``suite demo: 4 ran, 0 skipped, 1 dropped, 0 failed, 0 out of budget in 290s of 300s``
        (and ``, 3 cells missing data`` when some are)."""
        missing = f", {len(self.unavailable)} cells missing data" if self.unavailable else ""
        return (
            f"suite {self.suite}: {self.ran} ran, {self.skipped} skipped, {len(self.dropped)} dropped, "
            f"{len(self.failed)} failed{missing}, {len(self.out_of_budget)} out of budget "
            f"in {self.wall_time_s:.0f}s of {self.budget_s:.0f}s"
        )


def _check_budget(budget_s: float) -> float:
    if (
        isinstance(budget_s, bool)
        or not isinstance(budget_s, int | float)
        or not math.isfinite(budget_s)
        or budget_s <= 0
    ):
        raise QualitySuiteError(f"budget_s={budget_s!r}: allowed a finite number of seconds > 0")
    return float(budget_s)


def _progress_reached(out_dir: Path) -> tuple[int, float]:
    """(steps, wall seconds) of the last line of a run folder's ``metrics.jsonl`` that has them; (0, 0.0)."""
    steps, wall = 0, 0.0
    try:
        lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return steps, wall
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            steps = max(steps, record["step"])
            if isinstance(record.get("elapsed_s"), int | float):
                wall = max(wall, float(record["elapsed_s"]))
    return steps, wall


def close_from_folder(store: ResultsStore, run_id: str, out_dir: Path, *, status: str, metrics: dict[str, Any]) -> None:
    """Close a ``running`` row whose training cannot report its end (its process died), with the steps and wall
    time its folder's ``metrics.jsonl`` reached."""
    steps, wall = _progress_reached(out_dir)
    store.finish_run(run_id, status=status, metrics=metrics, wall_time_s=wall, tokens_per_s=0.0, steps=steps)


def _close_abandoned_runs(
    store: ResultsStore, suite: str, todo: Sequence[QualityRun], root: Path, log: Callable[[str], None]
) -> None:
    """Close ``interrupted`` the rows of ``todo``'s runs still ``running``: their call died (see **Kills**)."""
    keys = {run.key for run in todo}
    for row in store.runs(suite=suite, status="running"):
        if row["cell_key"] not in keys:
            continue
        close_from_folder(store, row["run_id"], root / suite / row["cell_key"], status="interrupted",
                          metrics={"stopped_by": "abandoned"})
        log(f"closed run {row['run_id']} ({row['cell_key']}) left running by a call that died: interrupted")


def foreign_folder_reason(out_dir: Path) -> str:
    """Why a run whose folder holds a finished run that the store does not record is not trained again."""
    return f"{out_dir} holds a finished run that this store does not record; delete that folder to re-run"


def result_line(result: TrainResult) -> str:
    """``accuracy 0.9000, loss 0.3000 after 100 steps in 12.0s (stopped by steps)``."""
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    return f"{scores} after {result.steps} steps in {result.wall_time_s:.1f}s (stopped by {result.stopped_by})"


@dataclass
class RunsOutcome:
    """What training the runs left did: how many finished, which failed (with the reason) and which found no time
    left to start."""

    ran: int = 0
    failed: list[tuple[QualityRun, str]] = field(default_factory=list)
    out_of_budget: list[QualityRun] = field(default_factory=list)


@dataclass(frozen=True)
class Sweep:
    """One ``run_quality`` call as its runs see it, in this process or on Ray (``longseq.bench.ray_sweep``): the
    suite, the store, the root of the run folders, the call's budget and when it started, the provenance command
    and the log."""

    suite: QualitySuite
    store: ResultsStore
    root: Path
    budget_s: float
    started: float
    command: str | None
    log: Callable[[str], None]

    def time_left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def run_dir(self, run: QualityRun) -> Path:
        """``<root>/<suite>/<cell_key>``: the run's checkpoints and ``metrics.jsonl``, where a resume finds them."""
        return self.root / self.suite.name / run.key

    def share(self, left: float, runs_left: int, slots: int = 1) -> float | None:
        """The time budget of the next run to start: with ``split: time`` the time left split evenly over the
        ``runs_left`` runs (this one included), which run ``slots`` at a time; None with ``split: steps``."""
        return left / math.ceil(runs_left / slots) if self.suite.split == "time" else None

    def config_for(self, run: QualityRun, share: float | None) -> ExperimentConfig:
        """``run``'s config with the fields the runner sets: its folder and its time budget."""
        train = run.config.train.model_copy(update={"out_dir": self.run_dir(run), "time_budget_s": share})
        return run.config.model_copy(update={"train": train})

    def start_line(self, index: int, total: int, run: QualityRun, config: ExperimentConfig, resume: bool) -> str:
        """``[2/4] <run label>: 12.5s (resuming)``: the run, its bound (a time share or its steps)."""
        budget = config.train.time_budget_s
        bound = f"{budget:.1f}s" if budget is not None else f"{config.train.steps} steps"
        return f"[{index}/{total}] {run.label}: {bound}{' (resuming)' if resume else ''}"

    def out_of_budget(self, runs: list[QualityRun]) -> list[QualityRun]:
        """Log that ``runs`` do not start (the budget is spent) and return them."""
        self.log(f"budget of {self.budget_s:.0f}s spent: {len(runs)} runs not started (a later call runs them)")
        return runs


def run_quality(
    *,
    suite: QualitySuite,
    store: ResultsStore,
    mixers: Sequence[str] | None = None,
    budget_s: float | None = None,
    progress: bool = False,
    command: str | None = None,
    log: Callable[[str], None] = print,
    out_root: str | Path | None = None,
    ray: str | None = None,
) -> QualityReport:
    """Train every run of ``suite`` (restricted to ``mixers``) that ``store`` has not finished, within
    ``budget_s`` (default: the suite's) seconds in total, and return the report with the suite's leaderboard.

    Dropped cells, skipped runs, each run's budget and result, and failures are reported through ``log``. A run
    that raises is recorded ``failed`` in the store, logged, and the suite goes on; KeyboardInterrupt stops
    it (the run is recorded ``interrupted`` and resumes from its last checkpoint on the next call).

    ``ray``: None trains the runs one after the other in this process; otherwise they run as tasks on a Ray
    cluster, ``ray`` being the address ``ray.init`` takes (``"local"`` starts one on this machine, ``"auto"``
    joins the one running here; see ``longseq.bench.ray_sweep``, which also says how the budget maps).
    """
    budget = _check_budget(suite.budget_s if budget_s is None else budget_s)
    started = time.perf_counter()
    plan = plan_quality(suite, mixers=mixers)
    for cell, reason in plan.dropped:
        log(f"dropped {cell.label}: {reason}")
    for cell, reason in plan.unavailable:
        log(f"missing data {cell.label}: {reason}")
    todo = [run for run in plan.runs if store.finished_cell(run.key) is None]
    skipped = len(plan.runs) - len(todo)
    log(
        f"suite {suite.name}: {len(plan.runs)} runs in {len(plan.cells)} cells ({len(plan.dropped)} dropped); "
        f"{skipped} already finished, {len(todo)} to run in {budget:.0f}s"
    )
    root = Path(out_root) if out_root is not None else store.path.parent / "quality"
    _close_abandoned_runs(store, suite.name, todo, root, log)
    sweep = Sweep(suite, store, root, budget, started, command, log)
    if ray is None:
        outcome = _run_in_process(todo, sweep, progress=progress)
    else:
        from longseq.bench.ray_sweep import run_on_ray  # Ray is an optional extra: imported only when asked for

        outcome = run_on_ray(todo, sweep, address=ray)
    return QualityReport(
        suite=suite.name,
        ran=outcome.ran,
        skipped=skipped,
        dropped=plan.dropped,
        failed=outcome.failed,
        out_of_budget=outcome.out_of_budget,
        leaderboard=leaderboard(store, suite=suite.name),
        wall_time_s=time.perf_counter() - started,
        budget_s=budget,
        unavailable=plan.unavailable,
    )


def _run_in_process(todo: list[QualityRun], sweep: Sweep, *, progress: bool) -> RunsOutcome:
    """Train ``todo`` one after the other in this process, each recorded by ``run_experiment``."""
    outcome = RunsOutcome()
    log = sweep.log
    for index, run in enumerate(todo):
        left = sweep.time_left()
        if left <= 0:
            outcome.out_of_budget = sweep.out_of_budget(todo[index:])
            break
        out_dir = sweep.run_dir(run)
        resume = latest_checkpoint(out_dir) is not None
        config = sweep.config_for(run, sweep.share(left, len(todo) - index))
        log(sweep.start_line(index + 1, len(todo), run, config, resume))
        try:
            result = run_experiment(
                config,
                store=sweep.store,
                resume=resume,
                command=sweep.command,
                progress=progress,
                suite=sweep.suite.name,
                cell_key=run.key,
                data_fingerprint=run.fingerprint,
            )
        except Exception as error:  # one broken run must not end the suite
            outcome.failed.append((run, describe_error(error)))
            log(f"  failed: {type(error).__name__}: {describe_error(error)}")
            continue
        if sweep.store.finished_cell(run.key) is None:
            reason = foreign_folder_reason(out_dir)
            outcome.failed.append((run, reason))
            log(f"  failed: {reason}")
            continue
        outcome.ran += 1
        log(f"  {result_line(result)}")
    return outcome


# ----------------------------------------------------------------------------------------------------------
# Leaderboard


def leaderboard(store: ResultsStore, suite: str | None = None, task: str | None = None) -> list[dict[str, Any]]:
    """The best completed run over learning rates of each cell (Zoology's protocol), ranked per task: see
    ``longseq.bench.ranking.rank_runs`` for what a cell is and the row keys. The data fingerprint is part of a
    cell (cells with different fingerprints are ranked apart) but left out of ``setting``: each row carries it as
    ``data_fingerprint``."""
    runs = store.runs(suite=suite, task=task)
    fingerprints = {run["run_id"]: (run.get("config") or {}).get("data_fingerprint") for run in runs}
    rows = rank_runs(runs)
    for row in rows:
        row["setting"] = " ".join(t for t in row["setting"].split(" ") if not t.startswith("data_fingerprint="))
        row["data_fingerprint"] = fingerprints.get(row["run_id"])
    return rows


def _cell_text(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_leaderboard(rows: list[dict[str, Any]], *, title: str = "quality leaderboard") -> Table:
    """A rich Table of ``leaderboard`` rows (the setting column only when some row has one)."""
    table = Table(title=title)
    with_setting = any(row["setting"] for row in rows)
    headers = [
        "task",
        *(["setting"] if with_setting else []),
        "mixer",
        "d_model",
        "best lr",
        "metric",
        "value",
        "n_params",
        "state floats",
        "wall s",
        "tokens/s",
        "runs",
    ]
    for header in headers:
        table.add_column(header, justify="right" if header not in ("task", "setting", "mixer", "metric") else "left")
    for row in rows:
        table.add_row(
            row["task"],
            *([row["setting"]] if with_setting else []),
            row["mixer"],
            _cell_text(row["d_model"]),
            _cell_text(row["lr"], 3),
            row["metric"],
            f"{row['value']:.4f}",
            _cell_text(row["n_params"]),
            _cell_text(row["state_floats"]),
            _cell_text(row["wall_time_s"], 3),
            _cell_text(row["tokens_per_s"], 3),
            str(row["runs"]),
        )
    return table


__all__ = [
    "ALL_MIXERS",
    "RUN_AXES",
    "Cell",
    "Finding",
    "QualityPlan",
    "QualityReport",
    "QualityRun",
    "QualitySuite",
    "QualitySuiteError",
    "SuiteTask",
    "format_leaderboard",
    "grid_key_kind",
    "layer_names",
    "leaderboard",
    "list_suites",
    "load_suite",
    "parameter_budgets",
    "parse_grid",
    "plan_quality",
    "run_key",
    "run_quality",
]
