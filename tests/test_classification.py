"""Classification tasks end to end (LRA's ListOps and Pathfinder): an encoder classifier trains through
``run_experiment`` and the CLI, records its accuracy, resumes exactly; the pattern/pooling choice and its refusals;
the trainer's padding mask; and no shortcut from label frequencies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from longseq.cli import app
from longseq.mixers import Pattern, mixer_class
from longseq.models import SequenceClassifier
from longseq.results import ResultsStore
from longseq.tasks import build_task
from longseq.tasks.listops import ListOps
from longseq.train import TrainConfig, Trainer
from longseq.train.experiment import ClassifierSpec, ExperimentConfig, run_experiment

TINY_TASKS = {
    "listops": {"min_length": 10, "max_length": 40, "num_train": 64, "num_test": 16},
    "pathfinder": {"size": 32, "difficulty": "easy", "num_train": 32, "num_test": 8},
}
HYPERS = {"attention": {"n_heads": 2}, "s4d": {}}


def config(task: str, mixer: str, out_dir: Path | None, classifier: dict | None = None, **train) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "task": {"name": task, "params": TINY_TASKS[task]},
        "model": {"d_model": 16, "n_layers": 1, "layers": mixer, "mlp_ratio": 2.0,
                  "mixer_hypers": {mixer: HYPERS[mixer]} if HYPERS[mixer] else {}},
        "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "warmup_steps": 1, "threads": 1,
                  "out_dir": None if out_dir is None else str(out_dir), **train},
        **({} if classifier is None else {"classifier": classifier}),
    })


# ----------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("mixer", ["s4d", "attention"])
@pytest.mark.parametrize("task", ["listops", "pathfinder"])
def test_a_tiny_classifier_trains_and_records_its_accuracy(tmp_path: Path, task: str, mixer: str):
    with ResultsStore(tmp_path / "r.db") as store:
        result = run_experiment(config(task, mixer, tmp_path / "run"), store=store, progress=False)
        (row,) = store.runs()
    accuracy = result.metrics["accuracy"]
    assert 0.0 <= accuracy <= 1.0 and math.isfinite(result.metrics["loss"]) and result.steps == 4
    num_test = TINY_TASKS[task]["num_test"]
    assert (accuracy * num_test).is_integer()  # the mean of one 0/1 score per test example
    assert (row["status"], row["task"], row["mixer"]) == ("completed", task, mixer)
    assert row["metrics"]["primary_metric"] == "accuracy" and row["metrics"]["accuracy"] == accuracy
    num_classes = {"listops": 10, "pathfinder": 2}[task]
    assert row["config"]["model"]["classifier"] == {"num_classes": num_classes, "pattern": "noncausal_self",
                                                    "pooling": "mean"}
    assert row["state_floats"] is None  # a non-causal encoder carries no state
    assert row["config"]["task"] == build_task(task, **TINY_TASKS[task]).describe()
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and all(r["examples"] == num_test for r in evals)


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    last = sorted((out_dir / "checkpoints").glob("*"))[-1]
    return load_file(last / "model.safetensors")


def test_an_interrupted_classifier_run_resumes_exactly(tmp_path: Path, monkeypatch):
    def cfg(name: str) -> ExperimentConfig:
        return config("listops", "s4d", tmp_path / name, steps=6, checkpoint_every=2)

    store = ResultsStore(tmp_path / "r.db")
    run_experiment(cfg("straight"), store=store, progress=False)
    real_batch = ListOps.batch
    calls = {"n": 0}

    def crash_at_step_5(self, split, indices):
        if split == "train":
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return real_batch(self, split, indices)

    monkeypatch.setattr(ListOps, "batch", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg("split"), store=store, progress=False)
    monkeypatch.setattr(ListOps, "batch", real_batch)
    resumed = run_experiment(cfg("split"), store=store, progress=False, resume=True)
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(r["status"] for r in store.runs()) == ["completed", "completed"]
    assert resumed.steps == 6 and "accuracy" in resumed.metrics
    saved = json.loads(next((tmp_path / "split" / "checkpoints").glob("*/state.json")).read_text())
    assert saved["config"]["model"]["classifier"]["pattern"] == "noncausal_self"


def test_the_cli_trains_listops(tmp_path: Path):
    args = ["train", "--task", "listops", "--mixer", "s4d", "--steps", "4", "--layers", "1", "--d-model", "16",
            "--batch-size", "4", "--eval-every", "2", "--warmup-steps", "1", "--train-examples", "32",
            "--test-examples", "8", "--task-param", "min_length=10", "--task-param", "max_length=40",
            "--pooling", "last", "--no-progress", "--store", str(tmp_path / "r.db"), "--out-dir", str(tmp_path / "run")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output
    (row,) = ResultsStore(tmp_path / "r.db").runs()
    assert row["config"]["model"]["classifier"]["pooling"] == "last"
    r = CliRunner().invoke(app, ["train", "--task", "mqar", "--pooling", "mean", "--steps", "2",
                                 "--out-dir", str(tmp_path / "lm")])
    assert r.exit_code == 2 and "classification tasks only" in r.output


# ----------------------------------------------------------------------------------------------------------
# Pattern, pooling, mask


def test_pattern_and_pooling_resolution():
    model = config("listops", "s4d", None).model_config_for(build_task("listops", **TINY_TASKS["listops"]))
    spec = ClassifierSpec
    assert spec().resolve(model) == (Pattern.NONCAUSAL_SELF, "mean")
    assert spec(pattern="causal_self").resolve(model) == (Pattern.CAUSAL_SELF, "last")
    assert spec(pattern="causal_self", pooling="mean").resolve(model) == (Pattern.CAUSAL_SELF, "mean")
    assert spec(pooling="last").resolve(model) == (Pattern.NONCAUSAL_SELF, "last")


def test_a_causal_classifier_records_its_state_size(tmp_path: Path):
    with ResultsStore(tmp_path / "r.db") as store:
        run_experiment(config("pathfinder", "s4d", None, classifier={"pattern": "causal_self"}, steps=2),
                       store=store, progress=False)
        (row,) = store.runs()
    assert row["config"]["model"]["classifier"]["pooling"] == "last" and row["state_floats"] > 0


def test_a_causal_only_mixer_gets_the_causal_pattern_with_last_pooling(monkeypatch):
    cls = mixer_class("s4d")
    monkeypatch.setattr(cls, "supported_patterns", classmethod(lambda c, **h: frozenset({Pattern.CAUSAL_SELF})))
    exp = config("listops", "s4d", None)
    assert exp.classifier.resolve(exp.model_config_for(exp.task.build())) == (Pattern.CAUSAL_SELF, "last")
    with pytest.raises(ValueError, match=r"classifier.pattern='noncausal_self': mixer 's4d' does not support it; "
                                         r"it supports: causal_self"):
        config("listops", "s4d", None, classifier={"pattern": "noncausal_self"})


def test_unsupported_patterns_and_misplaced_settings_are_refused():
    with pytest.raises(ValueError, match=r"mixer 'cosformer' does not support it; it supports: noncausal_cross, "
                                         r"noncausal_self"):
        ExperimentConfig.model_validate({"task": {"name": "listops", "params": TINY_TASKS["listops"]},
                                         "model": {"d_model": 16, "n_layers": 1, "layers": "cosformer"},
                                         "train": {"steps": 2}, "classifier": {"pattern": "causal_self"}})
    with pytest.raises(ValueError, match=r"applies to classification tasks only; task 'mqar' is a token task"):
        ExperimentConfig.model_validate({"task": {"name": "mqar"}, "train": {"steps": 2},
                                         "classifier": {"pooling": "last"}})
    with pytest.raises(ValueError, match=r"pooling"):
        config("listops", "s4d", None, classifier={"pooling": "cls"})


@pytest.mark.parametrize("task", ["listops", "pathfinder"])
def test_the_trainer_masks_exactly_the_padding(task: str, monkeypatch):
    seen = []
    real_forward = SequenceClassifier.forward

    def spy(self, input_ids, labels=None, *, mask=None):
        seen.append((input_ids, mask))
        return real_forward(self, input_ids, labels, mask=mask)

    monkeypatch.setattr(SequenceClassifier, "forward", spy)
    exp = config(task, "s4d", None)
    built = build_task(task, **TINY_TASKS[task])
    model = SequenceClassifier(exp.model_config_for(built), built.num_classes)
    Trainer(model, built, TrainConfig(steps=1, batch_size=4, threads=1), progress=False).evaluate("test", 4)
    ((inputs, mask),) = seen
    if task == "listops":
        assert torch.equal(mask, inputs != 0) and not mask.all()  # short expressions are right-padded with 0
    else:
        assert mask is None  # full-length images: no padding, and black pixels (0) are real tokens


# ----------------------------------------------------------------------------------------------------------
# No shortcut


@pytest.mark.parametrize(("name", "params", "count"), [
    ("listops", {}, 800),  # LRA's lengths: the label distribution is skewed, not uniform
    ("pathfinder", {"difficulty": "easy"}, 400),
])
def test_label_frequencies_alone_score_at_most_the_majority_share(name: str, params: dict, count: int):
    """Predicting the training majority class everywhere scores on the test split no better than that class's
    share of the training labels, up to 3 sigma of the difference of the two estimates (a test split whose labels
    are distributed like the training split's; Pathfinder's labels are uniform by construction, so chance is 1/2)."""
    task = build_task(name, **params)
    _, fit = task.batch("train", np.arange(count))
    _, labels = task.batch("test", np.arange(count))
    counts = torch.bincount(fit, minlength=task.num_classes)
    majority = int(counts.argmax())
    if name == "pathfinder":  # the exact share: only the test estimate is noisy
        share, variance_factor = 0.5, 1 / count
    else:  # the share estimated on the training labels: both estimates are noisy
        share, variance_factor = float(counts[majority]) / count, 2 / count
    predictions = torch.full_like(labels, majority)
    accuracy = float(task.score(predictions, labels, torch.arange(count), count).mean())
    sigma = math.sqrt(share * (1 - share) * variance_factor)
    assert accuracy <= share + 3 * sigma, (accuracy, share, sigma)
