"""An experiment = task + model + training, as one validated config (YAML-loadable), and the function that runs it.

The model follows the task's kind (``longseq.tasks.base``, ``build_model``): a ``CausalLM`` for a token task, unless
the task declares an ``objective`` (``maze``): ``"mlmu"`` builds the MLM-U encoder-decoder (``models/mlmu.py``; its
``n_layers`` blocks split evenly between encoder and decoder) and ``"next_token"`` its baseline, a ``PathCausalLM``
of ``n_layers`` blocks (the same parameter count within 2·d_model), both evaluated by decoding left to right; for a
classification task (ListOps, Pathfinder) a ``SequenceClassifier``, an encoder with masked pooling and a linear
head, whose self pattern and pooling ``ClassifierSpec`` resolves (by default non-causal with mean pooling, as LRA's
Pathfinder config); for a pair task (``segments = 2``: ``byte_retrieval``) a ``TwoTowerClassifier``, the same
encoder run on each half of a row and LRA's dual-encoder head.

**Parameter budget** (``parameter_budget``): LRA compares models at the base Transformer's size, allowing at most
10% more parameters. The budget of an experiment is its model's parameter count against the count of the same
experiment with every layer ``attention`` (the same task, d_model, depth, MLP, norm and classifier; attention's
hypers from ``mixer_hypers`` when given, else its defaults), both built on the meta device; the ratio is the
number a suite's ``param_budget`` bounds (``bench/quality.py``).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from longseq.mixers import Pattern, mixer_class
from longseq.models import MLMU, CausalLM, ModelConfig, PathCausalLM, SequenceClassifier, TwoTowerClassifier
from longseq.results import ResultsStore
from longseq.results.store import ResultsStoreError
from longseq.tasks import Task, build_task, is_classification, num_segments, task_splits
from longseq.tasks.fingerprint import data_fingerprint
from longseq.train import distributed
from longseq.train.config import TrainConfig
from longseq.train.events import TrainResult
from longseq.train.recorder import StoreRecorder
from longseq.train.trainer import Trainer, count_parameters


class ConfigFileError(ValueError):
    """A configuration file is missing, not YAML, or not a mapping."""


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "mqar"
    params: dict[str, Any] = Field(default_factory=dict)

    def build(self) -> Task:
        return build_task(self.name, **self.params)


class ClassifierSpec(BaseModel):
    """The encoder of a classification task; a token task (a causal LM) takes only the defaults.

    ``pattern``: the backbone's self pattern. ``"auto"`` is ``noncausal_self`` (an encoder, as in LRA) when every
    mixer of the layer pattern supports it, else ``causal_self`` when every one supports that. An explicit pattern
    that a mixer does not support is refused, naming the mixer and the patterns it has. ``pooling``: ``"auto"`` is
    ``mean`` over the valid positions for a non-causal backbone (LRA's Pathfinder config; LRA's ListOps config pools
    a CLS token, which this classifier does not have) and ``last`` for a causal one (the last valid position, the
    only one that has seen the whole sequence).
    """

    model_config = ConfigDict(extra="forbid")
    pattern: Literal["auto", "noncausal_self", "causal_self"] = "auto"
    pooling: Literal["auto", "mean", "last"] = "auto"

    def resolve(self, model: ModelConfig) -> tuple[Pattern, Literal["mean", "last"]]:
        """The self pattern and pooling of ``model``'s classifier; ``ValueError`` when a mixer cannot take it."""
        supported = {name: mixer_class(name).supported_patterns(**model.mixer_hypers.get(name, {}))
                     for name in sorted(set(model.layer_names))}
        if self.pattern == "auto":
            candidates = (Pattern.NONCAUSAL_SELF, Pattern.CAUSAL_SELF)
            pattern = next((p for p in candidates if all(p in have for have in supported.values())), None)
            if pattern is None:
                have = "; ".join(f"'{name}': {_listed(ps)}" for name, ps in supported.items())
                raise ValueError(f"classifier.pattern='auto': no self pattern is supported by every mixer of "
                                 f"layers={model.layers!r} ({have}); a classifier needs noncausal_self or causal_self")
        else:
            pattern = Pattern.parse(self.pattern)
            for name, have in supported.items():
                if pattern not in have:
                    raise ValueError(
                        f"classifier.pattern={self.pattern!r}: mixer '{name}' does not support it; it supports: "
                        f"{_listed(have)} (allowed here: 'auto', 'noncausal_self', 'causal_self')")
        pooling = self.pooling if self.pooling != "auto" else ("last" if pattern.is_causal else "mean")
        return pattern, pooling


def _listed(patterns: frozenset[Pattern]) -> str:
    return ", ".join(sorted(p.value for p in patterns))


class ExperimentConfig(BaseModel):
    """``task``: which generator and its parameters; ``model``: ModelConfig fields except ``vocab_size`` (the
    task's); ``train``: TrainConfig fields; ``classifier``: the encoder's pattern and pooling, for classification
    tasks only (``ClassifierSpec``). Everything is validated at construction."""

    model_config = ConfigDict(extra="forbid")
    task: TaskSpec = Field(default_factory=TaskSpec)
    model: dict[str, Any] = Field(default_factory=dict)
    train: TrainConfig
    classifier: ClassifierSpec = Field(default_factory=ClassifierSpec)
    extra_evals: list[dict[str, Any]] = Field(default_factory=list)
    """Parameter overrides of ``task`` whose test splits the final model is also scored on (length
    extrapolation: ``[{"seq_len": 512}, {"seq_len": 1024}]``), recorded as ``"<metric>@seq_len=512"``."""

    @pydantic.model_validator(mode="after")
    def _model_builds(self) -> ExperimentConfig:
        if "vocab_size" in self.model:
            raise ValueError("model.vocab_size is set by the task; remove it")
        task = self.task.build()
        model = self.model_config_for(task)
        if is_classification(task):
            self.classifier.resolve(model)
        elif self.classifier != ClassifierSpec():
            raise ValueError(f"classifier={self.classifier.model_dump()} applies to classification tasks only; task "
                             f"{task.name!r} is a token task (a causal LM is trained on it): remove it")
        if self.train.select_on not in task_splits(task):
            raise ValueError(f"train.select_on={self.train.select_on!r}: task {task.name!r} has no such split (it "
                             f"has: {', '.join(task_splits(task))}); token tasks have no validation split")
        self.extra_eval_tasks()
        return self

    def extra_eval_tasks(self) -> dict[str, Task]:
        """name ("seq_len=512") -> the task rebuilt with that override; a bad override raises naming it."""
        return {",".join(f"{k}={v}" for k, v in override.items()): build_task(self.task.name,
                                                                            **{**self.task.params, **override})
                for override in self.extra_evals}

    def model_config_for(self, task: Task) -> ModelConfig:
        return ModelConfig(vocab_size=task.vocab_size, **self.model)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigFileError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigFileError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigFileError(f"config file {str(path)!r} must hold a mapping with task/model/train sections")
        return cls.model_validate(data)


@dataclass(frozen=True)
class BuiltModel:
    """A model built for an experiment: ``config``, what the store and the checkpoints record of it (the
    ``ModelConfig`` dump, with ``"classifier": {num_classes, pattern, pooling}`` for a classifier and ``"towers": 2``
    in it for a two-tower one, ``"objective"`` for a task that declares one), and its recurrent state size at the
    task's length (None for a non-causal encoder, MLM-U's included)."""

    model: CausalLM | SequenceClassifier | MLMU
    config: dict[str, Any]
    state_floats: int | None


def build_model(config: ExperimentConfig, task: Task) -> BuiltModel:
    """The model of ``config`` for ``task`` (module docstring), with parameters from torch's current generator."""
    model_cfg = config.model_config_for(task)
    data = model_cfg.model_dump()
    objective = getattr(task, "objective", None)
    if objective == "mlmu":
        data["objective"] = objective
        return BuiltModel(MLMU(model_cfg, mask_id=task.mask_id), data, None)
    if objective == "next_token":
        data["objective"] = objective
        lm = PathCausalLM(model_cfg)
        return BuiltModel(lm, data, lm.state_size(task.seq_len))
    if objective is not None:
        raise ValueError(f"task {task.name!r} declares objective={objective!r}; allowed: 'mlmu', 'next_token'")
    if not is_classification(task):
        lm = CausalLM(model_cfg)
        return BuiltModel(lm, data, lm.state_size(task.seq_len))
    towers = num_segments(task)
    if towers not in (1, 2):
        raise ValueError(f"task {task.name!r} has segments={towers}; a classifier takes 1 or 2 (a pair)")
    pattern, pooling = config.classifier.resolve(model_cfg)
    kind = TwoTowerClassifier if towers == 2 else SequenceClassifier
    model = kind(model_cfg, task.num_classes, pooling=pooling, pattern=pattern)
    data["classifier"] = {"num_classes": task.num_classes, "pattern": pattern.value, "pooling": pooling,
                          **({"towers": towers} if towers != 1 else {})}
    state_floats = model.backbone.state_size(task.seq_len // towers) if pattern.is_causal else None
    return BuiltModel(model, data, state_floats)


BASELINE_MIXER = "attention"
"""The mixer of the base Transformer that ``parameter_budget`` compares with."""


@dataclass(frozen=True)
class ParameterBudget:
    """A model's parameter count against the base Transformer's of the same experiment (module docstring)."""

    n_params: int
    baseline: int

    @property
    def ratio(self) -> float:
        return self.n_params / self.baseline

    def describe(self) -> str:
        return (f"{self.n_params:,} parameters, {self.ratio:.3f}x the base Transformer's {self.baseline:,} "
                f"({BASELINE_MIXER} in every layer, same config)")


def parameter_budget(config: ExperimentConfig, task: Task | None = None) -> ParameterBudget:
    """``config``'s model size against its base Transformer's (module docstring); ``task``: ``config``'s, if
    already built."""
    task = config.task.build() if task is None else task
    hypers = config.model.get("mixer_hypers", {})
    baseline = config.model_copy(update={"model": {
        **config.model, "layers": BASELINE_MIXER,
        "mixer_hypers": {BASELINE_MIXER: hypers[BASELINE_MIXER]} if BASELINE_MIXER in hypers else {},
    }})
    return ParameterBudget(*(_parameter_count(c, task) for c in (config, baseline)))


def build_model_shapes(config: ExperimentConfig, task: Task) -> BuiltModel:
    """``build_model`` on the meta device: shapes only, nothing allocated or initialised for real. A mixer that reads
    a value while it is built (``.item()`` fails on meta) is built on the CPU instead, leaving torch's random stream
    as it was (a count must not move the caller's)."""
    try:
        with torch.device("meta"):
            return build_model(config, task)
    except (RuntimeError, NotImplementedError):
        with torch.random.fork_rng(devices=[]):
            return build_model(config, task)


def _parameter_count(config: ExperimentConfig, task: Task) -> int:
    return count_parameters(build_model_shapes(config, task).model)


def default_out_dir(task: str, mixer: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", mixer)
    return Path("longseq-results") / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{task}-{slug}"


def run_experiment(config: ExperimentConfig, *, store: ResultsStore | None = None, resume: bool = False,
                   command: str | None = None, progress: bool = True, suite: str | None = None,
                   cell_key: str | None = None, data_fingerprint: str | None = None,
                   device: str = "cpu") -> TrainResult:
    """Build the task and its model (``build_model``: a CausalLM, or for a classification task a SequenceClassifier
    or a TwoTowerClassifier as ``config.classifier`` resolves it) and train; with a ``store``, record the run (with
    its state size) there.

    ``command`` (the provenance's), ``suite`` and ``cell_key`` (the quality cell) go to the store's row; see
    ``longseq.train.recorder.StoreRecorder``. The row's config holds the task's ``describe()``, the model config
    (``BuiltModel.config``, also in the checkpoints) and,
    as ``data_fingerprint``, the fingerprint of the task's data (``longseq.tasks.fingerprint``; computed here
    unless the caller passes it). A non-causal classifier has no recurrent state: its ``state_floats`` is None.

    A resumed run whose final checkpoint was written but whose row is still ``running`` (the process was killed
    between the two) is closed ``completed`` from the checkpoint's result, so the store agrees with the folder.

    Under torchrun (``longseq train --nproc N``) this joins the process group first (``train.distributed``); only
    rank 0 records into the store. ``device``: ``"cpu"`` or ``"cuda"`` (each rank then takes GPU ``LOCAL_RANK``).
    """
    ranks = distributed.init_from_env(device)
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and ranks.distributed:
        torch_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    task = config.task.build()
    model_cfg = config.model_config_for(task)
    torch.manual_seed(config.train.seed)  # the initial weights are part of the run's seed
    built = build_model(config, task)
    model, model_data, state_floats = built.model.to(torch_device), built.config, built.state_floats
    recorder = None
    if store is not None and ranks.is_main:
        fingerprint = data_fingerprint if data_fingerprint is not None else _fingerprint(task)
        recorder = StoreRecorder(
            store,
            mixer=model_cfg.layers,
            config={"task": task.describe(), "model": model_data, "data_fingerprint": fingerprint},
            state_floats=state_floats,
            suite=suite,
            cell_key=cell_key,
            command=command,
            primary_metric=task.metric_name,
        )
    trainer = Trainer(model, task, config.train, observer=recorder, model_config=model_data, progress=progress,
                      extra_evals=config.extra_eval_tasks())
    result = trainer.train(resume=resume)
    if recorder is not None and resume and result.run_id is not None:
        _close_if_left_running(recorder, result)
    return result


def _fingerprint(task: Task) -> str:
    return data_fingerprint(task)


def _close_if_left_running(recorder: StoreRecorder, result: TrainResult) -> None:
    """Close the row of a run the trainer found finished in its folder but the store still has ``running``."""
    try:
        row = recorder.store.get_run(result.run_id)
    except ResultsStoreError:
        return  # a folder finished for another store: the caller decides what to do
    if row["status"] == "running" and result.metrics:
        recorder.on_end("completed", result)
