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
