"""Exact resume of a real experiment (CausalLM + attention + MQAR): interrupted and resumed == uninterrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longseq.results import ResultsStore
from longseq.tasks.mqar import MQAR
from longseq.train.experiment import ExperimentConfig, run_experiment


def config(out_dir: Path, **train) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "task": {"name": "mqar", "params": {"seq_len": 16, "num_kv_pairs": 2, "vocab_size": 32, "num_train": 64,
                                            "num_test": 16}},
        "model": {"d_model": 16, "n_layers": 2, "mixer_hypers": {"attention": {"n_heads": 2}}},
        "train": {"steps": 8, "batch_size": 4, "eval_every": 3, "checkpoint_every": 2, "warmup_steps": 2,
                  "out_dir": str(out_dir), **train},
    })


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    (last,) = sorted((out_dir / "checkpoints").glob("*"))[-1:]
    return load_file(last / "model.safetensors")


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path: Path, monkeypatch):
    store = ResultsStore(tmp_path / "r.db")
    run_experiment(config(tmp_path / "straight"), store=store, progress=False)

    real_batch = MQAR.batch
    calls = {"n": 0}

    def crash_at_step_5(self, split, indices):
        if split == "train":
            calls["n"] += 1
            if calls["n"] == 6:
                raise KeyboardInterrupt
        return real_batch(self, split, indices)

    monkeypatch.setattr(MQAR, "batch", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config(tmp_path / "split"), store=store, progress=False)
    monkeypatch.setattr(MQAR, "batch", real_batch)
    assert [r["status"] for r in store.runs()].count("interrupted") == 1
    run_experiment(config(tmp_path / "split"), store=store, progress=False, resume=True)

    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert sorted(r["status"] for r in store.runs()) == ["completed", "completed"]


def test_rows_carry_the_data_fingerprint(tmp_path: Path):
    from longseq.tasks.fingerprint import task_fingerprint

    cfg = config(tmp_path / "run")
    with ResultsStore(tmp_path / "r.db") as store:
        run_experiment(cfg, store=store, progress=False)
        (row,) = store.runs()
    assert row["config"]["data_fingerprint"] == task_fingerprint("mqar", **cfg.task.params)
    assert row["config"]["task"] == cfg.task.build().describe()


def test_a_run_killed_after_its_final_checkpoint_is_closed_by_the_resume(tmp_path: Path, monkeypatch):
    """SIGKILL between the final checkpoint and the row's closing: the folder is finished, the row running."""
    from longseq.train.recorder import StoreRecorder

    cfg = config(tmp_path / "run")
    with ResultsStore(tmp_path / "r.db") as store:
        monkeypatch.setattr(StoreRecorder, "on_end", lambda self, status, result: None)  # the process "dies"
        first = run_experiment(cfg, store=store, progress=False)
        assert [r["status"] for r in store.runs()] == ["running"]
        monkeypatch.undo()
        again = run_experiment(cfg, store=store, progress=False, resume=True)
        (row,) = store.runs()
    assert again.run_id == first.run_id == row["run_id"]
    assert (row["status"], row["steps"]) == ("completed", 8)
    assert row["metrics"]["accuracy"] == first.metrics["accuracy"] and row["metrics"]["stopped_by"] == "steps"


def test_a_task_with_another_metric_is_ranked_by_it(tmp_path):
    """passkey scores exact_match: the run's row names it as its primary metric, so the leaderboard ranks it."""
    from longseq.bench.quality import leaderboard
    from longseq.results import ResultsStore
    from longseq.train.experiment import ExperimentConfig, TaskSpec, run_experiment

    store = ResultsStore(tmp_path / "r.db")
    config = ExperimentConfig(
        task=TaskSpec(name="passkey", params={"seq_len": 64, "num_train": 64, "num_test": 8}),
        model={"d_model": 16, "n_layers": 1, "mixer_hypers": {"attention": {"n_heads": 2}}},
        train={"steps": 2, "batch_size": 4, "eval_every": 2, "out_dir": str(tmp_path / "run"), "threads": 1},
    )
    run_experiment(config, store=store, progress=False)
    (run,) = store.runs()
    assert run["metrics"]["primary_metric"] == "exact_match"
    assert [row["metric"] for row in leaderboard(store)] == ["exact_match"]
