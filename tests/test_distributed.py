"""Data-parallel training (longseq.train.distributed): 2 gloo ranks on this CPU against one process, gradient
accumulation, FSDP and its checkpoints, kill -9 of the launcher and of a rank, bfloat16 autocast, TensorBoard
logging."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from longseq.train import TrainConfig, Trainer, latest_checkpoint
from longseq.train.distributed import Ranks, evaluation_share, rank_micro_batches
from longseq.train.trainer import checkpoint_dirs

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from ddp_worker import RaggedTask, build_model, train_config  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
QUIET = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_CPP_LOG_LEVEL": "ERROR"}


def test_rank_micro_batches_partition_the_global_batch_in_order():
    indices = np.arange(100, 124)
    for world, accum in [(1, 1), (2, 1), (2, 3), (3, 4), (4, 2)]:
        parts = [rank_micro_batches(indices, Ranks(rank, world), accum) for rank in range(world)]
        assert all(len(p) == accum for p in parts)
        np.testing.assert_array_equal(np.concatenate([m for p in parts for m in p]), indices)
    with pytest.raises(ValueError, match=r"batch_size=24 is not divisible by world_size x grad_accum = 5 x 1"):
        rank_micro_batches(indices, Ranks(0, 5), 1)


def test_trainer_refuses_a_batch_it_cannot_split():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"batch_size=6 cannot be split over 1 rank\(s\) x grad_accum=4"):
        Trainer(model, RaggedTask(), TrainConfig(steps=2, batch_size=6, grad_accum=4), progress=False)


def test_evaluation_shares_deal_batches_out_and_pad_them_to_equal_counts_for_fsdp():
    for world, batches in [(1, 3), (2, 3), (2, 1), (3, 7), (4, 2)]:
        plain = [evaluation_share(batches, Ranks(rank, world), same_count=False) for rank in range(world)]
        assert sorted(number for share in plain for number, counted in share if counted) == list(range(batches))
        assert all(counted for share in plain for _, counted in share)
        padded = [evaluation_share(batches, Ranks(rank, world), same_count=True) for rank in range(world)]
        assert [[item for item in share if item[1]] for share in padded] == plain
        assert {len(share) for share in padded} == {-(-batches // world)}
        assert all(item == (0, False) for share in padded for item in share if not item[1])


def _run_worker(out: Path, grad_accum: int, *extra: str, ranks: int) -> None:
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    done = subprocess.run([*launcher, str(HERE / "ddp_worker.py"), str(out), str(grad_accum), *extra], env=QUIET,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


def _worker(tmp_path: Path, name: str, grad_accum: int, *, ranks: int) -> dict[str, torch.Tensor]:
    out = tmp_path / f"{name}.safetensors"
    _run_worker(out, grad_accum, ranks=ranks)
    return safetensors.torch.load_file(str(out))


def test_two_gloo_ranks_and_accumulation_train_the_one_process_weights(tmp_path):
    """float64, 6 steps of a global batch of 8 whose examples supervise 1..16 positions each: 2 ranks x 2
    micro-batches and 1 process x 4 micro-batches end at the weights of 1 process x 1 batch (up to summation order:
    1e-10)."""
    reference = _worker(tmp_path, "one", 1, ranks=1)
    for name, weights in [("two_ranks", _worker(tmp_path, "two", 2, ranks=2)),
                          ("accumulated", _worker(tmp_path, "acc", 4, ranks=1))]:
        assert weights.keys() == reference.keys()
        for key, value in weights.items():
            torch.testing.assert_close(value, reference[key], rtol=0, atol=1e-10, msg=f"{name}: {key}")
    moved = max((reference[k] - v).abs().max().item() for k, v in _initial(tmp_path).items() if k in reference)
    assert moved > 1e-3  # the comparison is of trained weights, not of the initialisation


def _initial(tmp_path: Path) -> dict[str, torch.Tensor]:
    return build_model().state_dict()


def test_fsdp_resumes_and_writes_the_one_process_checkpoints_which_resume_in_one_process(tmp_path):
    """FSDP, 2 gloo ranks x 2 micro-batches, float64, selecting on validation (3 evaluation batches: a rank's share is
    padded). Resumed from a one-process checkpoint (step 2), it writes the one-process run's checkpoints at steps 4
    and 6: the same files, names and metadata (the tied weight stored once), weights and kept weights within 1e-10
    and optimizer moments within 1e-9 relative (summation order), the same optimizer, scheduler and RNG JSON; and it
    logs the same losses, gradient norms (above grad_clip: clipped) and evaluations. Its step-4 checkpoint resumed
    in one process, with fsdp=True there (nothing to shard: it changes nothing), ends at the one-process weights."""
    reference, sharded = tmp_path / "reference", tmp_path / "fsdp"
    Trainer(build_model(), RaggedTask(), train_config(1, reference), progress=False).train()
    shutil.copytree(reference, sharded)
    _remove_checkpoints_after(sharded, 2)
    _run_worker(sharded, 2, "fsdp", ranks=2)
    assert [step for step, _ in checkpoint_dirs(sharded)] == [2, 4, 6]
    for step in (4, 6):
        _assert_same_checkpoint(reference, sharded, step)
    _assert_same_log(reference, sharded)

    _remove_checkpoints_after(sharded, 4)
    Trainer(build_model(), RaggedTask(), train_config(1, sharded, fsdp=True), progress=False).train(resume=True)
    _assert_same_checkpoint(reference, sharded, 6)


def _remove_checkpoints_after(run_dir: Path, step: int) -> None:
    for saved, directory in checkpoint_dirs(run_dir):
        if saved > step:
            shutil.rmtree(directory)


def _assert_same_checkpoint(expected_run: Path, run: Path, step: int) -> None:
    expected, actual = (directory / "checkpoints" / f"step-{step:08d}" for directory in (expected_run, run))
    assert sorted(p.name for p in actual.iterdir()) == sorted(p.name for p in expected.iterdir())
    for name, tolerance in [("model", {"rtol": 0, "atol": 1e-10}), ("extra", {"rtol": 0, "atol": 1e-10}),
                            ("optimizer", {"rtol": 1e-9, "atol": 1e-15})]:
        if not (expected / f"{name}.safetensors").exists():
            continue
        (want_metadata, want), (got_metadata, got) = (_read(directory / f"{name}.safetensors")
                                                      for directory in (expected, actual))
        assert got_metadata == want_metadata and got.keys() == want.keys(), name
        for key, tensor in want.items():
            torch.testing.assert_close(got[key], tensor, **tolerance, msg=f"step {step}: {name}: {key}")
    states = [json.loads((directory / "state.json").read_text()) for directory in (expected, actual)]
    for entry in ("step", "optimizer", "scheduler", "rng"):
        assert states[1][entry] == states[0][entry], f"step {step}: {entry}"


def _read(path: Path) -> tuple[dict[str, str] | None, dict[str, torch.Tensor]]:
    """A safetensors file's metadata and tensors."""
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    return metadata, safetensors.torch.load_file(str(path))


def _assert_same_log(expected_run: Path, run: Path) -> None:
    expected, actual = ([json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
                        for directory in (expected_run, run))
    assert [(r["kind"], r["step"], r.get("split")) for r in actual] == [
        (r["kind"], r["step"], r.get("split")) for r in expected]
    for want, got in zip(expected, actual, strict=True):
        for key in ("lr", "loss", "grad_norm", "accuracy", "eval_loss"):
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-9, abs=0), (want, key)
    assert max(r["grad_norm"] for r in actual if r["kind"] == "train" and r["step"] > 2) > 1.0  # grad_clip = 1.0


def _train_command(out_dir: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "longseq.cli", "train", "--task", "mqar", "--seq-len", "32", "--kv-pairs", "4",
            "--vocab", "64", "--d-model", "16", "--mixer", "s4d", "--steps", "60", "--batch-size", "8",
            "--warmup-steps", "2", "--eval-every", "1000", "--target", "2", "--checkpoint-every", "4", "--threads",
            "1", "--train-examples", "256", "--test-examples", "32", "--out-dir", str(out_dir), "--store", str(store),
            "--no-progress", *extra]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is not training
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def _wait_for_checkpoint(out_dir: Path, launcher: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while latest_checkpoint(out_dir) is None:
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.2)


def _final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(latest_checkpoint(out_dir) / "model.safetensors"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the launched ranks")
def test_kill_9_of_the_launcher_stops_the_ranks_and_the_run_resumes_with_another_rank_count(tmp_path):
    reference_dir = tmp_path / "reference"
    done = subprocess.run(_train_command(reference_dir, tmp_path / "ref.db"), env=QUIET, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    out_dir, store = tmp_path / "run", tmp_path / "run.db"
    launcher = subprocess.Popen(_train_command(out_dir, store, "--nproc", "2"), env=QUIET, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(out_dir, launcher)
    ranks = _children(launcher.pid)
    assert len(ranks) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in ranks):
        assert time.monotonic() < deadline, "ranks still running 30 s after the launcher was killed"
        time.sleep(0.2)
    interrupted_at = int(latest_checkpoint(out_dir).name.removeprefix("step-"))
    assert interrupted_at < 60

    resumed = subprocess.run(_train_command(out_dir, store, "--resume"), env=QUIET, capture_output=True, text=True,
                             timeout=240)  # one process now: the checkpoint does not depend on the rank count
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = _final_weights(out_dir)
    reference = _final_weights(reference_dir)
    for key, value in reference.items():  # float32: 2 ranks sum in another order than 1
        torch.testing.assert_close(final[key], value, rtol=1e-4, atol=1e-5, msg=key)
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["kind"] == "train"] == [
        m["step"] for m in map(json.loads, (reference_dir / "metrics.jsonl").read_text().splitlines())
        if m["kind"] == "train"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the launched ranks")
def test_a_killed_rank_ends_the_run_with_a_message_naming_it(tmp_path):
    launcher = subprocess.Popen(_train_command(tmp_path / "run", tmp_path / "run.db", "--nproc", "2"), env=QUIET,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(tmp_path / "run", launcher)
    os.kill(sorted(_children(launcher.pid))[-1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert "of 2 failed" in stderr and "Resume from the last checkpoint with --resume" in stderr


def test_nproc_needs_a_run_directory(tmp_path):
    done = subprocess.run([sys.executable, "-m", "longseq.cli", "train", "--steps", "2", "--nproc", "2"],
                          env=QUIET, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert "--nproc=2 needs a run directory (--out-dir" in done.stdout + done.stderr


def test_bfloat16_autocast_trains_close_to_float32_and_keeps_parameters_in_float32(tmp_path):
    from longseq.models import CausalLM, ModelConfig

    losses = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = CausalLM(ModelConfig(vocab_size=12, d_model=16, n_layers=2, layers="s4d,attention", mlp_ratio=2.0))
        config = TrainConfig(steps=4, batch_size=8, warmup_steps=1, precision=precision, log_every=1,
                             out_dir=tmp_path / precision)
        Trainer(model, RaggedTask(), config, progress=False).train()
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        lines = (tmp_path / precision / "metrics.jsonl").read_text().splitlines()
        losses[precision] = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    assert all(np.isfinite(losses["bfloat16"]))
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=3e-2)
    assert losses["bfloat16"] != losses["float32"]  # autocast did run in bfloat16


def test_precision_is_a_trajectory_field(tmp_path):
    from longseq.models import CausalLM, ModelConfig
    from longseq.train import CheckpointError

    model = CausalLM(ModelConfig(vocab_size=12, d_model=16, n_layers=1, layers="s4d", mlp_ratio=0))
    Trainer(model, RaggedTask(), TrainConfig(steps=2, batch_size=4, out_dir=tmp_path), progress=False).train()
    bf16 = TrainConfig(steps=2, batch_size=4, out_dir=tmp_path, precision="bfloat16")
    with pytest.raises(CheckpointError, match="precision: checkpoint 'float32', now 'bfloat16'"):
        Trainer(model, RaggedTask(), bf16, progress=False).train(resume=True)


def test_tensorboard_scalars_equal_the_metrics_log(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra: pip install -e '.[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from longseq.models import CausalLM, ModelConfig

    model = CausalLM(ModelConfig(vocab_size=12, d_model=16, n_layers=1, layers="s4d", mlp_ratio=0))
    config = TrainConfig(steps=6, batch_size=4, log_every=2, eval_every=3, out_dir=tmp_path / "run",
                         tensorboard_dir=tmp_path / "tb")
    Trainer(model, RaggedTask(), config, progress=False).train()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [r["step"] for r in train] == [2, 4, 6]
    np.testing.assert_allclose([e.value for e in logged], [r["loss"] for r in train], rtol=1e-6)
    assert [e.step for e in events.Scalars("eval/accuracy")] == [r["step"] for r in records if r["kind"] == "eval"]
