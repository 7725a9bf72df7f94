"""An experiment = task + model + training, as one validated config (YAML-loadable), and the function that runs it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pydantic
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from longseq.models import CausalLM, ModelConfig
from longseq.results import ResultsStore
from longseq.tasks import Task, build_task
from longseq.train.config import TrainConfig
from longseq.train.events import TrainResult
from longseq.train.recorder import StoreRecorder
from longseq.train.trainer import Trainer


class ConfigFileError(ValueError):
    """A configuration file is missing, not YAML, or not a mapping."""


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "mqar"
    params: dict[str, Any] = Field(default_factory=dict)

    def build(self) -> Task:
        return build_task(self.name, **self.params)


class ExperimentConfig(BaseModel):
    """``task``: which generator and its parameters; ``model``: ModelConfig fields except ``vocab_size`` (the
    task's); ``train``: TrainConfig fields. Everything is validated at construction."""

    model_config = ConfigDict(extra="forbid")
    task: TaskSpec = Field(default_factory=TaskSpec)
    model: dict[str, Any] = Field(default_factory=dict)
    train: TrainConfig

    @pydantic.model_validator(mode="after")
    def _model_builds(self) -> ExperimentConfig:
        if "vocab_size" in self.model:
            raise ValueError("model.vocab_size is set by the task; remove it")
        self.model_config_for(self.task.build())
        return self

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


def default_out_dir(task: str, mixer: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", mixer)
    return Path("longseq-results") / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{task}-{slug}"


def run_experiment(config: ExperimentConfig, *, store: ResultsStore | None = None, resume: bool = False,
                   command: str | None = None, progress: bool = True, suite: str | None = None,
                   cell_key: str | None = None) -> TrainResult:
    """Build the task and a CausalLM and train; with a ``store``, record the run (with its state size) there.

    ``command`` (the provenance's), ``suite`` and ``cell_key`` (the quality cell) go to the store's row; see
    ``longseq.train.recorder.StoreRecorder``.
    """
    task = config.task.build()
    model_cfg = config.model_config_for(task)
    torch.manual_seed(config.train.seed)  # the initial weights are part of the run's seed
    model = CausalLM(model_cfg)
    model_data = model_cfg.model_dump()
    recorder = None
    if store is not None:
        recorder = StoreRecorder(
            store,
            mixer=model_cfg.layers,
            config={"task": task.describe(), "model": model_data},
            state_floats=model.state_size(task.seq_len),
            suite=suite,
            cell_key=cell_key,
            command=command,
        )
    trainer = Trainer(model, task, config.train, observer=recorder, model_config=model_data, progress=progress)
    return trainer.train(resume=resume)
