"""Trainer, config, schedule and checkpoints, against a toy task and a toy model defined here."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from longseq.modules.optim import set_optim
from longseq.results.store import ResultsStore
from longseq.tasks.base import IGNORE_INDEX, per_example_accuracy
from longseq.train import (
    CheckpointError,
    RunStart,
    TrainConfig,
    TrainConfigError,
    Trainer,
    TrainingDiverged,
    TrainResult,
    batch_indices,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    parameter_groups,
    save_checkpoint,
    warmup_cosine_scheduler,
)
from longseq.train.recorder import StoreRecorder

VOCAB = 16
SEQ_LEN = 16


# ----------------------------------------------------------------------------------------------------------
# Toy task and model


class IdentityTask:
    """Random tokens; at odd positions the label is the token itself (even positions unsupervised)."""

    name = "toy-identity"
    vocab_size = VOCAB
    seq_len = SEQ_LEN
    metric_name = "accuracy"
    higher_is_better = True

    def __init__(self, *, num_train: int = 96, num_test: int = 24, seed: int = 0) -> None:
        self.sizes = {"train": num_train, "test": num_test}
        self.seed = seed
        self.train_batches = 0

    def num_examples(self, split: str) -> int:
        return self.sizes[split]

    def batch(self, split: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            self.train_batches += 1
        split_id = 0 if split == "train" else 1
        rows = [np.random.default_rng([self.seed, split_id, int(i)]).integers(0, VOCAB, SEQ_LEN) for i in indices]
        inputs = torch.from_numpy(np.stack(rows)).long()
        labels = inputs.clone()
        labels[:, ::2] = IGNORE_INDEX
        return inputs, labels

    def score(self, predictions, targets, example_index, batch_size):
        return per_example_accuracy(predictions, targets, example_index, batch_size)

    def describe(self) -> dict:
        return {"name": self.name, "num_train": self.sizes["train"], "num_test": self.sizes["test"]}


class FailingTask(IdentityTask):
    """Raises ``error`` when asked for its ``fail_at``-th training batch (1-based)."""

    def __init__(self, *, fail_at: int, error: BaseException, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_at = fail_at
        self.error = error

    def batch(self, split, indices):
        if split == "train" and self.train_batches + 1 == self.fail_at:
            raise self.error
        return super().batch(split, indices)


@dataclass
class ToyOutput:
    loss: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor
    example_index: torch.Tensor


class ToyModel(nn.Module):
    """Embedding -> (dropout) -> LayerNorm -> Linear head."""

    def __init__(self, *, dropout: float = 0.0, d_model: int = 8, nan_loss: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB)
        self.nan_loss = nan_loss

    def forward(self, inputs: torch.Tensor, *, labels: torch.Tensor) -> ToyOutput:
        logits = self.head(self.norm(self.dropout(self.embed(inputs))))
        supervised = labels != IGNORE_INDEX
        selected = logits[supervised]
        targets = labels[supervised]
        loss = nn.functional.cross_entropy(selected, targets)
        if self.nan_loss:
            loss = loss * math.nan
        return ToyOutput(loss, selected.argmax(-1), targets, supervised.nonzero()[:, 0])


class TiedModel(nn.Module):
    """Head weight tied to the embedding: stored once in safetensors."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, inputs, *, labels):
        return ToyModel.forward(self, inputs, labels=labels)  # type: ignore[arg-type]


def make_model(seed: int = 0, **kwargs) -> ToyModel:
    torch.manual_seed(seed)
    return ToyModel(**kwargs)


def config(**overrides) -> TrainConfig:
    base = dict(steps=12, batch_size=8, lr=3e-2, warmup_steps=2, eval_every=4, log_every=2, threads=1)
    return TrainConfig(**{**base, **overrides})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------
# Config


def test_config_unknown_field_names_the_closest_allowed_one():
    with pytest.raises(TrainConfigError, match=r"unknown field 'warmup' \(value 3\).*did you mean 'warmup_steps'"):
        TrainConfig(steps=10, warmup=3)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("steps", 0, "greater than 0"),
        ("batch_size", -1, "greater than 0"),
        ("lr", 0.0, "greater than 0"),
        ("lr", math.inf, "finite"),
        ("min_lr_ratio", 1.5, "less than or equal to 1"),
        ("grad_clip", 0.0, "greater than 0"),
        ("eval_every", 0, "greater than 0"),
        ("threads", 0, "greater than 0"),
        ("steps", True, "valid integer"),
        ("seed", -1, "greater than or equal to 0"),
    ],
)
def test_config_bad_value_names_field_value_and_allowed(field, value, allowed):
    with pytest.raises(TrainConfigError, match=rf"{field}={value!r}: .*{allowed}"):
        TrainConfig(**{"steps": 10, field: value})


def test_config_consistency_checks():
    with pytest.raises(TrainConfigError, match="warmup_steps=10 must be < steps=10"):
        TrainConfig(steps=10, warmup_steps=10)
    with pytest.raises(TrainConfigError, match=r"betas\[1\]=1.0"):
        TrainConfig(steps=10, betas=(0.9, 1.0))
    with pytest.raises(TrainConfigError, match="checkpoint_every=5 needs out_dir"):
        TrainConfig(steps=10, checkpoint_every=5)
    assert isinstance(TrainConfigError("x"), ValueError)


def test_config_json_round_trip(tmp_path):
    original = TrainConfig(steps=10, out_dir=tmp_path, grad_clip=None, target_metric=0.5)
    assert TrainConfig(**json.loads(json.dumps(original.to_json_dict()))) == original
    assert original.effective_eval_batch_size == original.batch_size


# ----------------------------------------------------------------------------------------------------------
# Schedule


def test_lr_at_boundaries():
    kw = dict(base_lr=1.0, warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.25)
    assert lr_at(3, **kw) == pytest.approx(1.0)
    assert lr_at(4, **kw) == pytest.approx(1.0)
    assert lr_at(12, **kw) == pytest.approx(0.55)  # cosine midpoint: halfway between peak and floor
    assert lr_at(20, **kw) == pytest.approx(0.1)
    assert lr_at(1000, **kw) == pytest.approx(0.1)
    decay = [lr_at(s, **kw) for s in range(4, 21)]
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert lr_at(0, base_lr=2.0, warmup_steps=0, total_steps=5, min_lr_ratio=0.0) == pytest.approx(2.0)
    assert lr_at(5, base_lr=2.0, warmup_steps=0, total_steps=5, min_lr_ratio=0.0) == pytest.approx(0.0)


def test_lr_at_rejects_bad_arguments():
    with pytest.raises(ValueError, match="step=-1"):
        lr_at(-1, base_lr=1.0, warmup_steps=0, total_steps=5, min_lr_ratio=0.1)
    with pytest.raises(ValueError, match="warmup_steps=5"):
        lr_at(0, base_lr=1.0, warmup_steps=5, total_steps=5, min_lr_ratio=0.1)
    with pytest.raises(ValueError, match="min_lr_ratio=2"):
        lr_at(0, base_lr=1.0, warmup_steps=0, total_steps=5, min_lr_ratio=2)


def test_scheduler_follows_lr_at():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=3, total_steps=10, min_lr_ratio=0.2)
    for step in range(12):
        expected = lr_at(step, base_lr=0.5, warmup_steps=3, total_steps=10, min_lr_ratio=0.2)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        optimizer.step()
        scheduler.step()


# ----------------------------------------------------------------------------------------------------------
# Data order and parameter groups


def test_batch_indices_is_a_pure_function_walking_seeded_permutations():
    kw = dict(seed=3, batch_size=4, num_examples=10)
    stream = np.concatenate([batch_indices(step=s, **kw) for s in range(10)])  # 4 epochs of 10
    for epoch in range(4):
        assert sorted(stream[10 * epoch : 10 * epoch + 10].tolist()) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])  # each epoch reshuffled
    assert np.array_equal(batch_indices(step=7, **kw), stream[28:32])  # straddles epochs 2 and 3
    assert not np.array_equal(batch_indices(step=0, **{**kw, "seed": 4}), stream[:4])
    big = batch_indices(seed=0, step=1, batch_size=25, num_examples=10)
    assert len(big) == 25 and set(big.tolist()) == set(range(10))


def test_parameter_groups_exempt_biases_norms_embeddings_and_marked():
    model = make_model()
    extra = set_optim(nn.Parameter(torch.zeros(3, 3)), weight_decay=0.0)
    model.register_parameter("marked", extra)
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.head.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(p) for p in (model.embed.weight, model.norm.weight, model.norm.bias, model.head.bias, extra)
    }


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def _trained_state(model: nn.Module, steps: int = 3):
    optimizer, scheduler = _fresh_state(model)
    task = IdentityTask()
    for step in range(steps):
        inputs, labels = task.batch("train", [step, step + 1])
        out = model(inputs, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def _fresh_state(model: nn.Module):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=1, total_steps=10, min_lr_ratio=0.1)
    return optimizer, scheduler


def test_checkpoint_round_trip_restores_everything_and_leaves_no_temp_files(tmp_path):
    model = make_model(0)
    optimizer, scheduler = _trained_state(model)
    save_checkpoint(
        tmp_path / "ck", model=model, optimizer=optimizer, scheduler=scheduler, step=3,
        config={"a": 1}, extra={"metrics": [0.5]},
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    expected_random = (random.random(), np.random.rand(), torch.rand(3))

    other = make_model(1)
    other_optimizer, other_scheduler = _fresh_state(other)
    state = load_checkpoint(tmp_path / "ck", model=other, optimizer=other_optimizer, scheduler=other_scheduler)

    assert state["step"] == 3 and state["config"] == {"a": 1} and state["extra"] == {"metrics": [0.5]}
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    saved, loaded = optimizer.state_dict(), other_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)
    assert other_scheduler.state_dict() == scheduler.state_dict()
    restored_random = (random.random(), np.random.rand(), torch.rand(3))
    assert expected_random[:2] == restored_random[:2] and torch.equal(expected_random[2], restored_random[2])


def test_checkpoint_overwrite_in_place_and_tied_weights(tmp_path):
    model = TiedModel()
    optimizer, scheduler = _fresh_state(model)
    for step in (1, 2):
        with torch.no_grad():
            model.embed.weight.add_(1.0)
        save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, step=step, config={}, extra={})
    other = TiedModel()
    state = load_checkpoint(tmp_path, model=other, optimizer=_fresh_state(other)[0], scheduler=_fresh_state(other)[1])
    assert state["step"] == 2
    assert torch.equal(other.embed.weight, model.embed.weight) and other.head.weight is other.embed.weight
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _saved(tmp_path: Path) -> Path:
    model = make_model(0)
    optimizer, scheduler = _trained_state(model)
    return save_checkpoint(
        tmp_path / "ck", model=model, optimizer=optimizer, scheduler=scheduler, step=3, config={}, extra={}
    )


def _load_into(directory: Path, model: nn.Module | None = None):
    model = model if model is not None else make_model(1)
    optimizer, scheduler = _fresh_state(model)
    return load_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler)


def test_checkpoint_missing(tmp_path):
    with pytest.raises(CheckpointError, match=f"no checkpoint at {tmp_path / 'nowhere'}"):
        _load_into(tmp_path / "nowhere")


def test_checkpoint_bad_json(tmp_path):
    directory = _saved(tmp_path)
    (directory / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"state\.json: not valid JSON"):
        _load_into(directory)


def test_checkpoint_tensor_file_missing_or_modified(tmp_path):
    directory = _saved(tmp_path)
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not match state\.json"):
        _load_into(directory)
    (directory / "model.safetensors").write_bytes(data)
    _load_into(directory)
    (directory / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors: missing"):
        _load_into(directory)


def test_checkpoint_wrong_model_shapes_and_missing_tensors_leave_model_untouched(tmp_path):
    directory = _saved(tmp_path)
    wider = make_model(1, d_model=12)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not fit ToyModel: .*embed\.weight: file has"):
        _load_into(directory, wider)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())

    bigger = make_model(1)
    bigger.extra = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"missing tensors \['extra\.bias', 'extra\.weight'\]"):
        _load_into(directory, bigger)


def test_checkpoint_optimizer_tensor_missing(tmp_path):
    directory = _saved(tmp_path)
    path = directory / "optimizer.safetensors"
    tensors = safetensors.torch.load_file(path)
    del tensors["state.0.exp_avg"]
    safetensors.torch.save_file(tensors, path)
    state = json.loads((directory / "state.json").read_text())
    # Re-record the file so the checksum passes and the content check is what fails.
    state["files"]["optimizer.safetensors"] = {
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    (directory / "state.json").write_text(json.dumps(state))
    with pytest.raises(
        CheckpointError, match=r"optimizer\.safetensors: does not fit the optimizer: .*state\.0\.exp_avg"
    ):
        _load_into(directory)


def test_checkpoint_refuses_non_json_extra_without_touching_the_directory(tmp_path):
    directory = _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    model = make_model(2)
    optimizer, scheduler = _fresh_state(model)
    with pytest.raises(ValueError, match="must be JSON-able"):
        save_checkpoint(
            directory, model=model, optimizer=optimizer, scheduler=scheduler, step=4, config={}, extra={"x": object()}
        )
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


# ----------------------------------------------------------------------------------------------------------
# Training


def test_training_learns_and_stops_early(tmp_path):
    task = IdentityTask()
    cfg = config(steps=300, eval_every=10, target_metric=0.95, out_dir=tmp_path, lr=5e-2, eval_examples=16)
    result = Trainer(make_model(), task, cfg, progress=False).train()

    assert result.stopped_early and result.steps < 300 and result.steps % 10 == 0
    assert result.metrics["accuracy"] >= 0.9 and result.best_metric >= 0.95
    assert result.tokens_per_s > 0 and result.wall_time_s > 0
    assert result.checkpoint == latest_checkpoint(tmp_path) and result.checkpoint.name == f"step-{result.steps:08d}"

    lines = read_jsonl(tmp_path / "metrics.jsonl")
    train_lines = [r for r in lines if r["kind"] == "train"]
    eval_lines = [r for r in lines if r["kind"] == "eval"]
    assert set(train_lines[0]) == {"kind", "step", "lr", "loss", "grad_norm", "tokens_per_s", "elapsed_s"}
    assert set(eval_lines[0]) == {"kind", "step", "split", "examples", "accuracy", "eval_loss", "elapsed_s"}
    assert train_lines[-1]["loss"] < 0.5 * train_lines[0]["loss"]
    for line in train_lines:  # the lr logged at step s is the one update s - 1 ran with
        schedule = dict(base_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_lr_ratio=0.1)
        assert line["lr"] == pytest.approx(lr_at(line["step"] - 1, **schedule))
    assert eval_lines[0]["examples"] == 16 and eval_lines[-1]["examples"] == task.num_examples("test")
    assert eval_lines[-1]["step"] == result.steps


def test_evaluate_restores_mode_and_rng():
    trainer = Trainer(make_model(dropout=0.5), IdentityTask(), config(eval_batch_size=5), progress=False)
    trainer.model.train()
    torch.manual_seed(7)
    metrics = trainer.evaluate()
    assert trainer.model.training
    assert set(metrics) == {"accuracy", "loss"} and 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    after = torch.rand(2)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(2))
    assert trainer.evaluate(num_examples=5) != metrics
    with pytest.raises(ValueError, match="num_examples=99"):
        trainer.evaluate(num_examples=99)


def _strip_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in records]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_interrupted_run_resumes_bit_identical(tmp_path, dropout):
    cfg = dict(steps=12, checkpoint_every=6, eval_every=4, log_every=4, grad_clip=0.5)
    straight = make_model(0, dropout=dropout)
    Trainer(straight, IdentityTask(), config(out_dir=tmp_path / "a", **cfg), progress=False).train()

    interrupted_task = FailingTask(fail_at=9, error=KeyboardInterrupt())
    first = Trainer(
        make_model(0, dropout=dropout), interrupted_task, config(out_dir=tmp_path / "b", **cfg), progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert latest_checkpoint(tmp_path / "b").name == "step-00000006"

    random.seed(123)
    torch.manual_seed(123)  # the resumed run must not depend on the RNG state it starts in
    resumed = make_model(5, dropout=dropout)
    result = Trainer(resumed, IdentityTask(), config(out_dir=tmp_path / "b", **cfg), progress=False).train(resume=True)

    assert result.steps == 12
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert _strip_times(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == _strip_times(
        read_jsonl(tmp_path / "b" / "metrics.jsonl")
    )


def test_fresh_run_refuses_used_out_dir_and_resume_needs_a_matching_checkpoint(tmp_path):
    Trainer(make_model(), IdentityTask(), config(steps=4, out_dir=tmp_path), progress=False).train()
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        Trainer(make_model(), IdentityTask(), config(steps=4, out_dir=tmp_path), progress=False).train()
    with pytest.raises(CheckpointError, match=r"lr: checkpoint 0\.03, now 0\.1"):
        Trainer(make_model(), IdentityTask(), config(steps=4, out_dir=tmp_path, lr=0.1), progress=False).train(
            resume=True
        )
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        Trainer(make_model(), IdentityTask(), config(steps=4, out_dir=tmp_path / "empty"), progress=False).train(
            resume=True
        )


def test_resuming_a_finished_run_returns_its_result(tmp_path):
    first = Trainer(make_model(), IdentityTask(), config(steps=4, out_dir=tmp_path), progress=False).train()
    task = IdentityTask()
    again = Trainer(make_model(3), task, config(steps=4, out_dir=tmp_path), progress=False).train(resume=True)
    assert task.train_batches == 0
    assert (again.steps, again.metrics, again.checkpoint) == (first.steps, first.metrics, first.checkpoint)


def test_keep_checkpoints_prunes_old_ones(tmp_path):
    cfg = config(steps=8, checkpoint_every=2, keep_checkpoints=2, out_dir=tmp_path)
    Trainer(make_model(), IdentityTask(), cfg, progress=False).train()
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step-00000006", "step-00000008"]


def test_nan_loss_raises_training_diverged():
    trainer = Trainer(make_model(nan_loss=True), IdentityTask(), config(steps=4), progress=False)
    with pytest.raises(TrainingDiverged, match="training loss is nan"):
        trainer.train()


def test_threads_apply_during_training_only():
    seen = []

    class Recording(ToyModel):
        def forward(self, inputs, *, labels):
            seen.append(torch.get_num_threads())
            return super().forward(inputs, labels=labels)

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    Trainer(Recording(), IdentityTask(), config(steps=3, threads=target), progress=False).train()
    assert set(seen) == {target} and torch.get_num_threads() == before


# ----------------------------------------------------------------------------------------------------------
# Observer and results store


class ListObserver:
    """Remembers what the trainer told it; hands out run ids ``run-0``, ``run-1``, ... to fresh runs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_start(self, start: RunStart) -> str:
        self.events.append(("start", start))
        return start.run_id or f"run-{sum(kind == 'start' for kind, _ in self.events) - 1}"

    def on_end(self, status: str, result: TrainResult) -> None:
        self.events.append((status, result))


def test_observer_hears_each_session_and_gets_its_run_id_back_on_resume(tmp_path):
    observer = ListObserver()
    cfg = config(steps=8, checkpoint_every=4, eval_every=2, out_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(), FailingTask(fail_at=6, error=KeyboardInterrupt()), cfg, observer=observer,
                progress=False).train()  # fmt: skip
    (_, start), (status, partial) = observer.events
    assert start == RunStart(run_id=None, task="toy-identity", train_config=cfg.to_json_dict(),
                             n_params=sum(p.numel() for p in make_model().parameters()), dtype="float32")  # fmt: skip
    assert (status, partial.run_id, partial.steps, partial.stopped_by) == ("interrupted", "run-0", 5, None)
    assert partial.metrics["step"] == 4 and partial.train_loss is not None  # the latest periodic evaluation

    observer.events.clear()
    result = Trainer(make_model(), IdentityTask(), cfg, observer=observer, progress=False).train(resume=True)
    (_, start), (status, final) = observer.events
    assert (start.run_id, status, final) == ("run-0", "completed", result)
    assert result.run_id == "run-0" and set(result.metrics) == {"accuracy", "loss"}


def test_checkpoints_record_the_model_config(tmp_path):
    cfg = config(steps=4, out_dir=tmp_path)
    result = Trainer(make_model(), IdentityTask(), cfg, model_config={"d_model": 8}, progress=False).train()
    saved = json.loads((result.checkpoint / "state.json").read_text())
    assert saved["config"]["model"] == {"d_model": 8} and saved["config"]["task"] == IdentityTask().describe()


def test_trainer_imports_neither_the_results_store_nor_the_benchmarks():
    code = (
        "import sys, longseq.train.trainer\n"
        "print(sorted(m for m in sys.modules if m.startswith(('longseq.results', 'longseq.bench'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_store_recorder_is_validated(tmp_path):
    with ResultsStore(tmp_path / "results.db") as store:
        with pytest.raises(ValueError, match=r"mixer=None must name the mixer"):
            StoreRecorder(store, mixer=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"config has a 'train' key"):
            StoreRecorder(store, mixer="toy", config={"train": {}})


def test_store_rows_for_completed_failed_and_resumed_runs(tmp_path):
    with ResultsStore(tmp_path / "results.db") as store:
        recorder = StoreRecorder(store, mixer="toy", config={"model": {"d_model": 8}}, state_floats=0, suite="unit",
                                 command="pytest")  # fmt: skip
        done = Trainer(make_model(), IdentityTask(), config(steps=4), observer=recorder, progress=False).train()
        row = store.get_run(done.run_id)
        assert (row["status"], row["kind"], row["task"], row["mixer"], row["steps"], row["suite"]) == (
            "completed", "train", "toy-identity", "toy", 4, "unit",
        )  # fmt: skip
        assert row["config"]["train"]["steps"] == 4 and row["config"]["model"] == {"d_model": 8}
        assert row["metrics"]["accuracy"] == done.metrics["accuracy"] and row["command"] == "pytest"
        assert row["metrics"]["train_loss"] == done.train_loss and row["metrics"]["stopped_by"] == "steps"
        assert row["n_params"] == sum(p.numel() for p in make_model().parameters())
        assert row["tokens_per_s"] > 0 and row["provenance"]["dtype"] == "float32"

        cfg = config(steps=8, checkpoint_every=4, out_dir=tmp_path / "run")
        failing = FailingTask(fail_at=6, error=RuntimeError("boom"))
        with pytest.raises(RuntimeError, match="boom"):
            Trainer(make_model(), failing, cfg, observer=recorder, progress=False).train()
        (failed,) = [r for r in store.runs() if r["run_id"] != done.run_id]
        assert (failed["status"], failed["steps"]) == ("failed", 5)

        interrupted = FailingTask(fail_at=1, error=KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            Trainer(make_model(), interrupted, cfg, observer=recorder, progress=False).train(resume=True)
        assert store.get_run(failed["run_id"])["status"] == "interrupted"

        resumed = Trainer(make_model(), IdentityTask(), cfg, observer=recorder, progress=False)
        result = resumed.train(resume=True)
        assert result.run_id == failed["run_id"]
        row = store.get_run(result.run_id)
        assert (row["status"], row["steps"]) == ("completed", 8) and len(store.runs()) == 2


# ----------------------------------------------------------------------------------------------------------
# Time budget


def test_time_budget_stops_like_an_early_stop(tmp_path):
    cfg = config(steps=1_000_000, eval_every=1_000_000, log_every=1_000_000, time_budget_s=0.2, out_dir=tmp_path)
    with ResultsStore(tmp_path / "results.db") as store:
        recorder = StoreRecorder(store, mixer="toy")
        trainer = Trainer(make_model(), IdentityTask(), cfg, observer=recorder, progress=False)
        result = trainer.train()
        row = store.get_run(result.run_id)

    assert result.stopped_by == "time_budget" and result.stopped_early and 0 < result.steps < cfg.steps
    assert result.wall_time_s >= 0.2 and set(result.metrics) == {"accuracy", "loss"}
    assert result.checkpoint == latest_checkpoint(tmp_path) and result.checkpoint.name == f"step-{result.steps:08d}"
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    # The stopping step is logged (training window and final evaluation) although it is no log or eval step.
    assert [(r["kind"], r["step"]) for r in lines] == [("train", result.steps), ("eval", result.steps)]
    assert (row["status"], row["steps"], row["metrics"]["stopped_by"]) == ("completed", result.steps, "time_budget")


def test_stopped_by_target_and_steps():
    by_steps = Trainer(make_model(), IdentityTask(), config(steps=4, time_budget_s=3600.0), progress=False).train()
    assert (by_steps.stopped_by, by_steps.stopped_early, by_steps.steps) == ("steps", False, 4)
    cfg = config(steps=300, eval_every=10, target_metric=0.95, lr=5e-2, time_budget_s=3600.0)
    by_target = Trainer(make_model(), IdentityTask(), cfg, progress=False).train()
    assert (by_target.stopped_by, by_target.stopped_early) == ("target", True) and by_target.steps < 300


def test_time_budget_is_not_a_trajectory_field(tmp_path):
    cfg = dict(steps=12, checkpoint_every=6, out_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(), FailingTask(fail_at=9, error=KeyboardInterrupt()), config(**cfg), progress=False).train()
    resumed = Trainer(make_model(), IdentityTask(), config(**cfg, time_budget_s=3600.0), progress=False)
    result = resumed.train(resume=True)
    assert (result.steps, result.stopped_by) == (12, "steps")


def test_time_budget_must_be_positive():
    with pytest.raises(TrainConfigError, match=r"time_budget_s=0\.0: .*greater than 0"):
        TrainConfig(steps=10, time_budget_s=0.0)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint selection on the validation split (TrainConfig.select_on, LRA's protocol)


class ValTask(IdentityTask):
    """IdentityTask with a validation split of its own stream (split id 2)."""

    splits = ("train", "val", "test")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sizes["val"] = 24

    def batch(self, split, indices):
        if split != "val":
            return super().batch(split, indices)
        rows = [np.random.default_rng([self.seed, 2, int(i)]).integers(0, VOCAB, SEQ_LEN) for i in indices]
        inputs = torch.from_numpy(np.stack(rows)).long()
        labels = inputs.clone()
        labels[:, ::2] = IGNORE_INDEX
        return inputs, labels


def test_select_on_is_left_out_of_the_dump_at_its_default_so_existing_configs_stay_the_same():
    plain, val = TrainConfig(steps=2), TrainConfig(steps=2, select_on="val")
    assert "select_on" not in plain.to_json_dict() and val.to_json_dict()["select_on"] == "val"
    assert TrainConfig(**plain.to_json_dict()) == plain and TrainConfig(**val.to_json_dict()) == val
    assert TrainConfig.field_of(plain.to_json_dict(), "select_on") == "test"
    with pytest.raises(TrainConfigError, match=r"select_on='best'"):
        TrainConfig(steps=2, select_on="best")


def test_select_on_val_needs_a_task_with_a_validation_split():
    with pytest.raises(ValueError, match=r"select_on='val': task 'toy-identity' has no such split \(it has: train, "
                                         r"test\)"):
        Trainer(make_model(), IdentityTask(), config(select_on="val"), progress=False)


def test_select_on_val_scores_the_best_validation_weights_on_test(tmp_path, monkeypatch):
    scripted = iter([0.2, 0.7, 0.5, 0.7])  # validations at steps 3, 6, 9 and of the last weights (12)
    real_evaluate = Trainer.evaluate

    def evaluate(self, split="test", num_examples=None):
        metrics = real_evaluate(self, split, num_examples)
        return {**metrics, "accuracy": next(scripted)} if split == "val" else metrics

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    cfg = config(steps=12, eval_every=3, checkpoint_every=3, keep_checkpoints=None, out_dir=tmp_path,
                 select_on="val")
    model = make_model()
    result = Trainer(model, ValTask(), cfg, progress=False).train()
    assert next(scripted, None) is None  # four validations, no more
    assert result.metrics["selected_step"] == 6 and result.metrics["val_accuracy"] == 0.7  # a tie keeps the earlier
    assert result.best_metric == 0.7 and set(result.metrics) == {"accuracy", "loss", "val_accuracy", "val_loss",
                                                                 "selected_step"}
    selected = safetensors.torch.load_file(tmp_path / "checkpoints" / "step-00000006" / "model.safetensors")
    final = safetensors.torch.load_file(tmp_path / "checkpoints" / "step-00000012" / "model.safetensors")
    assert all(torch.equal(selected[name], final[name]) for name in selected)  # the final checkpoint: step 6's
    assert all(torch.equal(selected[name], t) for name, t in model.state_dict().items())  # and the model object
    fresh = make_model(1)
    fresh.load_state_dict(selected)
    check = Trainer(fresh, ValTask(), config(), progress=False).evaluate("test")
    assert (result.metrics["accuracy"], result.metrics["loss"]) == (check["accuracy"], check["loss"])
    evals = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert [(r["step"], r["split"]) for r in evals] == [(3, "val"), (6, "val"), (9, "val"), (12, "val"), (12, "test")]
    assert evals[-1]["selected_step"] == 6 and evals[-1]["examples"] == 24
    assert (tmp_path / "checkpoints" / "step-00000009" / "extra.safetensors").is_file()
    assert not (tmp_path / "checkpoints" / "step-00000012" / "extra.safetensors").exists()


def test_select_on_val_resumes_exactly_with_the_selected_weights_saved_in_the_checkpoints(tmp_path):
    cfg = dict(steps=12, checkpoint_every=5, eval_every=2, log_every=2, select_on="val")
    straight = make_model(0)
    expected = Trainer(straight, ValTask(), config(out_dir=tmp_path / "a", **cfg), progress=False).train()

    class FailingValTask(ValTask):
        def batch(self, split, indices):
            if split == "train" and self.train_batches + 1 == 8:
                raise KeyboardInterrupt
            return super().batch(split, indices)

    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(0), FailingValTask(), config(out_dir=tmp_path / "b", **cfg), progress=False).train()
    resumed = make_model(5)
    result = Trainer(resumed, ValTask(), config(out_dir=tmp_path / "b", **cfg), progress=False).train(resume=True)
    assert result.metrics == expected.metrics and result.best_metric == expected.best_metric
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match=r"select_on: checkpoint 'val', now 'test'"):
        Trainer(make_model(), ValTask(), config(out_dir=tmp_path / "b", **{**cfg, "select_on": "test"}),
                progress=False).train(resume=True)


def test_extra_tensors_round_trip_with_their_checksum(tmp_path):
    from longseq.train.checkpoint import read_extra_tensors

    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=0, total_steps=4, min_lr_ratio=0.1)
    saved = {"w": torch.arange(6.0).reshape(2, 3)}
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, step=1, config={}, extra={},
                    extra_tensors=saved)
    assert torch.equal(read_extra_tensors(tmp_path)["w"], saved["w"])
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, step=2, config={}, extra={})
    assert read_extra_tensors(tmp_path) is None and not (tmp_path / "extra.safetensors").exists()
