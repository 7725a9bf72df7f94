"""Non-finite guards in the trainer and checkpoint integrity (issue 16): a step whose loss or gradient goes
non-finite stops with the step and the first bad layer named and the last good checkpoint kept, or is skipped and
counted; ranks decide together; every corrupted byte, another model or config, and an unreadable format are
one-line ``CheckpointError``s."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
from pathlib import Path

import pytest
import safetensors.torch
import torch
from ddp_worker import VOCAB, RaggedTask
from torch import nn

import longseq
from longseq.models import CausalLM, ModelConfig
from longseq.train import (
    CheckpointError,
    TrainConfig,
    TrainConfigError,
    Trainer,
    TrainingDiverged,
    batch_indices,
    distributed,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    parameter_groups,
    save_checkpoint,
    warmup_cosine_scheduler,
)
from longseq.train.checkpoint import FORMAT_VERSION, read_checkpoint_state

POISONED = "backbone.blocks.1.mixer.v_proj.weight"  # the attention layer's value projection


def lm(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, layers="s4d,attention", mlp_ratio=2.0))


def config(**changes: object) -> TrainConfig:
    base = dict(steps=8, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=100, log_every=1, threads=1)
    return TrainConfig(**{**base, **changes})


class PoisonAt(RaggedTask):
    """Sets one entry of ``model``'s parameter ``name`` to inf when asked for the batch of update ``step`` (counted
    from 1): the weights go bad between two updates, as after an overflowing update."""

    def __init__(self, model: nn.Module, name: str, step: int) -> None:
        self.model, self.name, self.step, self.calls = model, name, step, 0

    def batch(self, split: str, indices):
        if split == "train":
            self.calls += 1
            if self.calls == self.step:
                with torch.no_grad():
                    self.model.get_parameter(self.name).view(-1)[0] = math.inf
        return super().batch(split, indices)


class NanLossAt(nn.Module):
    """``inner``, whose training loss is NaN at the given training forwards (counted from 1). ``constant``: the NaN
    is added as a constant, so the gradients stay finite and only the loss shows it."""

    def __init__(self, inner: nn.Module, calls: set[int], *, constant: bool = False) -> None:
        super().__init__()
        self.inner, self.calls, self.constant, self.count = inner, calls, constant, 0

    def forward(self, inputs: torch.Tensor, *, labels: torch.Tensor):
        out = self.inner(inputs, labels=labels)
        if self.training and torch.is_grad_enabled():
            self.count += 1
            if self.count in self.calls:
                loss = out.loss + math.nan if self.constant else out.loss * math.nan
                out = dataclasses.replace(out, loss=loss)
        return out


def train_lines(out_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


def no_hooks_left(model: nn.Module) -> bool:
    return all(not module._forward_hooks for module in model.modules())


# ----------------------------------------------------------------------------------------------------------
# Trainer: stop


def test_poisoned_weights_stop_at_that_step_naming_the_layer_and_the_last_good_checkpoint_stays(tmp_path):
    model = lm()
    cfg = config(out_dir=tmp_path / "poisoned", checkpoint_every=2, keep_checkpoints=1)
    with pytest.raises(TrainingDiverged) as caught:
        Trainer(model, PoisonAt(model, POISONED, step=5), cfg, progress=False).train()
    error = caught.value
    message = str(error)
    assert error.step == 5 and error.module == "'backbone.blocks.1.mixer.v_proj' (Linear)"
    assert message.startswith("step 5: training loss is nan, gradient norm is nan")
    assert "first non-finite output: 'backbone.blocks.1.mixer.v_proj' (Linear)" in message
    assert f"non-finite weights: {POISONED};" in message
    last_good = tmp_path / "poisoned" / "checkpoints" / "step-00000004"
    assert f"the update was not applied, the last good checkpoint is {last_good};" in message
    assert "\n" not in message and no_hooks_left(model)

    # The last good checkpoint is kept (keep_checkpoints=1 pruned nothing after it) and holds exactly the weights of
    # an unpoisoned run at step 4.
    assert latest_checkpoint(tmp_path / "poisoned") == last_good
    clean = config(out_dir=tmp_path / "clean", checkpoint_every=2, keep_checkpoints=None)
    Trainer(lm(), RaggedTask(), clean, progress=False).train()
    kept = safetensors.torch.load_file(last_good / "model.safetensors")
    reference = safetensors.torch.load_file(tmp_path / "clean" / "checkpoints" / "step-00000004" / "model.safetensors")
    assert kept.keys() == reference.keys() and all(torch.equal(kept[k], reference[k]) for k in kept)
    assert all(torch.isfinite(t).all() for t in kept.values())
    # The metrics log stops at the last good update.
    assert [line["step"] for line in train_lines(tmp_path / "poisoned")] == [1, 2, 3, 4]


def test_a_nonfinite_loss_with_finite_gradients_stops_too():
    model = NanLossAt(lm(), {3}, constant=True)
    with pytest.raises(TrainingDiverged, match=r"^step 3: training loss is nan, gradient norm is \d") as caught:
        Trainer(model, RaggedTask(), config(steps=4), progress=False).train()
    # The rerun (no gradient) does not reproduce a NaN made by the backward pass: said so, no layer named.
    assert caught.value.module is None and "no module output was non-finite" in str(caught.value)


# ----------------------------------------------------------------------------------------------------------
# Trainer: skip


def _reference_run(model: nn.Module, cfg: TrainConfig, skipped: set[int]) -> torch.optim.Optimizer:
    """The trainer's loop written out (one process, no clipping): AdamW on the trainer's groups, the warmup+cosine
    schedule, batch s = batch_indices(s); the updates in ``skipped`` (counted from 1) do not step the optimizer,
    and the schedule advances anyway."""
    task = RaggedTask()
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                  eps=cfg.adam_eps)
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                                        min_lr_ratio=cfg.min_lr_ratio)
    torch.manual_seed(cfg.seed)
    model.train()
    for step in range(cfg.steps):
        indices = batch_indices(seed=cfg.seed, step=step, batch_size=cfg.batch_size,
                                num_examples=task.num_examples("train"))
        inputs, labels = task.batch("train", indices)
        optimizer.zero_grad(set_to_none=True)
        model(inputs, labels=labels).loss.backward()
        if step + 1 not in skipped:
            optimizer.step()
        scheduler.step()
    return optimizer


def test_skip_mode_drops_exactly_the_nonfinite_updates_and_counts_them(tmp_path):
    cfg = config(steps=6, grad_clip=None, on_nonfinite="skip", out_dir=tmp_path)
    model = NanLossAt(lm().double(), {2, 5})
    trainer = Trainer(model, RaggedTask(), cfg, progress=False)
    result = trainer.train()

    reference = lm().double()
    optimizer = _reference_run(reference, cfg, skipped={2, 5})
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.inner.state_dict()[name], value, rtol=0, atol=1e-12, msg=name)
    steps_taken = {float(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps_taken == {float(state["step"]) for state in optimizer.state.values()} == {4.0}

    lines = train_lines(tmp_path)
    assert [line["skipped_steps"] for line in lines] == [0, 1, 1, 1, 2, 2]
    assert [line["loss"] is None and line["grad_norm"] is None for line in lines] == [False, True, False, False,
                                                                                       True, False]
    assert all(math.isfinite(line["loss"]) for line in lines if line["loss"] is not None)
    schedule = dict(base_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_lr_ratio=0.1)
    assert [line["lr"] for line in lines] == pytest.approx([lr_at(line["step"] - 1, **schedule) for line in lines])
    assert result.metrics["skipped_steps"] == 2 and result.steps == 6
    assert result.train_loss == lines[-1]["loss"]


def test_skip_mode_never_checkpoints_poisoned_weights(tmp_path):
    model = lm()
    cfg = config(out_dir=tmp_path, checkpoint_every=2, on_nonfinite="skip")
    with pytest.raises(TrainingDiverged, match=rf"^step 4: not checkpointed, the weights hold non-finite values "
                                               rf"\({POISONED}\); the last good checkpoint is .*step-00000002$"):
        Trainer(model, PoisonAt(model, POISONED, step=3), cfg, progress=False).train()
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    assert [line["skipped_steps"] for line in train_lines(tmp_path)] == [0, 0, 1, 2]


def test_on_nonfinite_is_left_out_of_the_stored_config_at_its_default_and_validated():
    assert "on_nonfinite" not in config().to_json_dict()
    assert config(on_nonfinite="skip").to_json_dict()["on_nonfinite"] == "skip"
    with pytest.raises(TrainConfigError, match=r"on_nonfinite='ignore': Input should be 'stop' or 'skip'"):
        config(on_nonfinite="ignore")


def test_a_run_stopped_by_a_nonfinite_step_resumes_with_skip(tmp_path):
    """Not a trajectory field: the remedy for a stop is to resume from the last good checkpoint skipping it."""
    model = NanLossAt(lm(), {5})
    with pytest.raises(TrainingDiverged, match=r"^step 5: "):
        Trainer(model, RaggedTask(), config(out_dir=tmp_path, checkpoint_every=2), progress=False).train()
    model.count = 4  # the resumed session's first update is update 5 again
    resumed = Trainer(model, RaggedTask(), config(out_dir=tmp_path, checkpoint_every=2, on_nonfinite="skip"),
                      progress=False).train(resume=True)
    assert resumed.steps == 8 and resumed.metrics["skipped_steps"] == 1


# ----------------------------------------------------------------------------------------------------------
# Trainer: ranks decide together


def _rank(rank: int, init_file: str, out_file: str) -> None:
    """One of two gloo ranks; only rank 1's loss goes NaN (at update 2, gradients finite): both modes must end
    the same on both ranks."""
    import datetime

    import torch.distributed as dist

    # A rank left waiting for a peer that decided otherwise fails within a minute instead of hanging.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    outcome = {}
    try:
        for mode in ("skip", "stop"):
            model = NanLossAt(lm().double(), {2} if rank == 1 else set(), constant=True)
            try:
                result = Trainer(model, RaggedTask(), config(steps=3, on_nonfinite=mode), progress=False).train()
                weights = sum(p.double().sum().item() for p in model.parameters())
                outcome[mode] = {"skipped": result.metrics["skipped_steps"], "weights": weights}
            except TrainingDiverged as error:
                outcome[mode] = {"step": error.step, "message": str(error)}
    finally:
        distributed.shutdown()
    Path(out_file).write_text(json.dumps(outcome))


def test_ranks_skip_or_stop_together_when_one_rank_alone_sees_a_nonfinite_loss(tmp_path):
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=_rank, args=(rank, str(tmp_path / "init"), str(tmp_path / f"{rank}.json")))
             for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=180)
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in ranks] == [0, 0]
    zero, one = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert zero["skip"]["skipped"] == one["skip"]["skipped"] == 1
    assert zero["skip"]["weights"] == one["skip"]["weights"]
    assert zero["stop"]["step"] == one["stop"]["step"] == 2
    assert "step 2 on rank 0: training loss is" in zero["stop"]["message"]
    assert "another rank's loss was not finite" in zero["stop"]["message"]
    assert "step 2 on rank 1: training loss is nan" in one["stop"]["message"]


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A trainer checkpoint of a tiny LM after 2 updates (model config recorded)."""
    out_dir = tmp_path_factory.mktemp("run")
    Trainer(lm(), RaggedTask(), config(steps=2, out_dir=out_dir), model_config={"d_model": 16, "impl": "sdpa"},
            progress=False).train()
    return latest_checkpoint(out_dir)


def _load(directory: Path, model: nn.Module | None = None, *, trainer: Trainer | None = None, **kwargs) -> dict:
    """load_checkpoint into ``trainer``'s model, optimizer and scheduler (a fresh one's around ``model``)."""
    if trainer is None:
        trainer = Trainer(model if model is not None else lm(1), RaggedTask(), config(steps=2), progress=False)
    return load_checkpoint(directory, model=trainer.model, optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                           **kwargs)


def test_checkpoints_record_the_longseq_version_and_their_own_hash(checkpoint):
    state = read_checkpoint_state(checkpoint)
    assert state["version"] == FORMAT_VERSION == 2 and state["longseq_version"] == longseq.__version__
    assert len(state["state_sha256"]) == 64 and set(state["files"]) == {"model.safetensors", "optimizer.safetensors"}


def test_the_content_hash_survives_what_json_changes(tmp_path):
    """Integer keys come back as strings (and sort differently), tuples as lists: the hash is of what is read."""
    model = lm()
    trainer = Trainer(model, RaggedTask(), config(steps=2), progress=False)
    save_checkpoint(tmp_path, model=model, optimizer=trainer.optimizer, scheduler=trainer.scheduler, step=0,
                    config={"sizes": {2: "a", 10: "b"}, "pair": (1, 2)}, extra={})
    assert _load(tmp_path, trainer=trainer)["config"] == {"sizes": {"2": "a", "10": "b"}, "pair": [1, 2]}


def test_one_corrupted_byte_anywhere_is_a_one_line_error(checkpoint, tmp_path):
    """Every file, about 80 byte positions each (first and last bytes included): the byte XOR 1."""
    trainer = Trainer(lm(1), RaggedTask(), config(steps=2), progress=False)
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        path = checkpoint / name
        data = path.read_bytes()
        positions = sorted({0, len(data) - 1, *range(0, len(data), max(1, len(data) // 80))})
        try:
            for position in positions:
                corrupted = bytearray(data)
                corrupted[position] ^= 1
                path.write_bytes(bytes(corrupted))
                with pytest.raises(CheckpointError) as caught:
                    _load(checkpoint, trainer=trainer)
                assert "\n" not in str(caught.value), str(caught.value)
                if name != "state.json":
                    assert f"{name}: does not match state.json (size/sha256" in str(caught.value)
        finally:
            path.write_bytes(data)
    _load(checkpoint, trainer=trainer)  # restored: loads again


def test_an_edited_state_json_fails_its_content_hash(checkpoint, tmp_path):
    directory = tmp_path / "edited"
    directory.mkdir()
    for path in checkpoint.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    state = json.loads((directory / "state.json").read_text())
    state["scheduler"]["last_epoch"] += 1  # valid JSON, plausible, wrong
    (directory / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"state\.json: sha256 of its content [0-9a-f]{12} != recorded "
                                              r"[0-9a-f]{12}; the file was edited or damaged"):
        _load(directory)


def test_a_checkpoint_of_another_model_or_config_names_what_differs(checkpoint, tmp_path):
    torch.manual_seed(0)
    wider = CausalLM(ModelConfig(vocab_size=VOCAB, d_model=24, n_layers=2, layers="s4d,attention", mlp_ratio=2.0))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not fit CausalLM: .*embed\.weight: file has "
                                              r"\(12, 16\) torch\.float32, model has \(12, 24\)"):
        _load(checkpoint, wider)
    saved = read_checkpoint_state(checkpoint)["config"]
    other = {**saved, "model": {**saved["model"], "d_model": 32}}
    with pytest.raises(CheckpointError, match=r"config differs: config\.model\.d_model: checkpoint 16, now 32$"):
        _load(checkpoint, config=other)
    assert _load(checkpoint, config=saved)["step"] == 2

    # Through the trainer: a model config the tensors cannot tell apart is refused on resume...
    out_dir = checkpoint.parent.parent
    with pytest.raises(CheckpointError, match=r"model\.impl: checkpoint 'sdpa', now 'math'"):
        Trainer(lm(), RaggedTask(), config(steps=2, out_dir=out_dir), model_config={"d_model": 16, "impl": "math"},
                progress=False).train(resume=True)
    # ...while a model field the checkpoint does not record (added to longseq since) is not a difference.
    result = Trainer(lm(), RaggedTask(), config(steps=2, out_dir=out_dir), progress=False,
                     model_config={"d_model": 16, "impl": "sdpa", "added_later": 1}).train(resume=True)
    assert result.steps == 2


def _rewrite_state(checkpoint: Path, directory: Path, change) -> Path:
    directory.mkdir()
    for path in checkpoint.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    state = json.loads((directory / "state.json").read_text())
    change(state)
    (directory / "state.json").write_text(json.dumps(state))
    return directory


def test_format_versions_old_ones_load_newer_ones_are_refused_naming_both_versions(checkpoint, tmp_path):
    def as_format_1(state: dict) -> None:  # what longseq wrote before integrity hashes
        del state["longseq_version"], state["state_sha256"]
        state["version"] = 1

    old = _rewrite_state(checkpoint, tmp_path / "v1", as_format_1)
    model = lm(1)
    assert _load(old, model)["step"] == 2
    expected = safetensors.torch.load_file(checkpoint / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())

    def from_the_future(state: dict) -> None:
        state.update(version=FORMAT_VERSION + 1, longseq_version="9.9.9")

    newer = _rewrite_state(checkpoint, tmp_path / "v3", from_the_future)
    with pytest.raises(CheckpointError, match=rf"written by longseq 9\.9\.9 \(format 3\), this is longseq "
                                              rf"{longseq.__version__} \(format 2\), which reads formats 1 to 2"):
        _load(newer)

    def stripped(state: dict) -> None:
        del state["state_sha256"]

    with pytest.raises(CheckpointError, match=r"missing entries \['state_sha256'\] \(format 2\)"):
        _load(_rewrite_state(checkpoint, tmp_path / "stripped", stripped))

    def downgraded(state: dict) -> None:  # a damaged version byte must not switch the hash check off
        state["version"] = 1

    with pytest.raises(CheckpointError, match="sha256 of its content"):
        _load(_rewrite_state(checkpoint, tmp_path / "downgraded", downgraded))
