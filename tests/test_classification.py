"""Classification tasks end to end (LRA's ListOps and Pathfinder): an encoder classifier trains through
``run_experiment`` and the CLI, records its accuracy, resumes exactly; the pattern/pooling choice and its refusals;
the trainer's padding mask; no shortcut from label frequencies; the two-tower model of pair tasks; the parameter
budget against the base Transformer; and the validation split of each classification task."""

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
from longseq.models import ModelConfig, SequenceClassifier, TwoTowerClassifier
from longseq.results import ResultsStore
from longseq.tasks import TaskParameterError, build_task
from longseq.tasks.listops import ListOps, ListOpsParams, listops_example
from longseq.tasks.pathfinder import pathfinder_example
from longseq.train import TrainConfig, Trainer
from longseq.train.experiment import (
    ClassifierSpec,
    ExperimentConfig,
    build_model,
    parameter_budget,
    run_experiment,
)

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


# ----------------------------------------------------------------------------------------------------------
# Two towers (a pair task: byte_retrieval)


def tower_model(pattern: str = "noncausal_self", pooling: str = "mean") -> TwoTowerClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=16, n_layers=1, layers="s4d", mlp_ratio=2.0)
    return TwoTowerClassifier(cfg, 2, pattern=pattern, pooling=pooling).double().eval()


@pytest.mark.parametrize(("pattern", "pooling"), [("noncausal_self", "mean"), ("causal_self", "last")])
def test_two_towers_encode_each_half_alone_with_one_encoder(pattern: str, pooling: str):
    model = tower_model(pattern, pooling)
    inputs = torch.randint(0, 256, (3, 2 * 24))
    first, second = inputs[:, :24], inputs[:, 24:]
    x1, x2 = model.encode(first, None), model.encode(second, None)  # the shared encoder, each half alone
    expected = model.head(torch.cat([x1, x2, x1 * x2, x1 - x2], dim=-1))
    out = model(inputs, torch.tensor([0, 1, 1]))
    assert torch.allclose(out.logits, expected, atol=1e-12) and out.loss is not None
    assert [type(layer).__name__ for layer in model.head] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert model.head[0].in_features == 4 * 16 and model.head[0].out_features == 4 * 16  # LRA: mlp_dim = 4 d
    # nothing crosses from one half to the other: a changed second half leaves the first encoding alone
    changed = torch.cat([first, torch.randint(0, 256, (3, 24))], dim=1)
    encoded = model.encode(torch.cat(changed.chunk(2, dim=1)), None).chunk(2)[0]
    assert torch.allclose(encoded, x1, atol=1e-12)


def test_two_towers_split_the_mask_with_the_inputs_and_refuse_an_odd_length():
    model = tower_model()
    inputs = torch.randint(1, 256, (2, 32))
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[0, 12:16] = False  # the end of row 0's first sequence is padding
    x1 = model.encode(inputs[:, :16], mask[:, :16])
    x2 = model.encode(inputs[:, 16:], mask[:, 16:])
    logits = model(inputs, mask=mask).logits
    assert torch.allclose(logits, model.head(torch.cat([x1, x2, x1 * x2, x1 - x2], dim=-1)), atol=1e-12)
    with pytest.raises(ValueError, match=r"TwoTowerClassifier: inputs hold two sequences side by side, so their "
                                         r"length must be even; got 31"):
        model(inputs[:, :31])


RETRIEVAL = {"window": 64, "num_train": 32, "num_test": 8}


@pytest.mark.parametrize("pattern", ["noncausal_self", "causal_self"])
def test_a_pair_task_trains_a_two_tower_classifier_through_run_experiment(tmp_path: Path, pattern: str):
    exp = ExperimentConfig.model_validate({
        "task": {"name": "byte_retrieval", "params": RETRIEVAL},
        "model": {"d_model": 16, "n_layers": 1, "layers": "s4d", "mlp_ratio": 2.0},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 1, "threads": 1, "select_on": "val"},
        "classifier": {"pattern": pattern},
    })
    built = build_model(exp, exp.task.build())
    assert isinstance(built.model, TwoTowerClassifier)
    assert built.config["classifier"]["towers"] == 2
    if pattern == "causal_self":  # each tower runs one window: the state after 64 tokens, not 128
        assert built.state_floats == built.model.backbone.state_size(64) > 0
    with ResultsStore(tmp_path / "r.db") as store:
        result = run_experiment(exp, store=store, progress=False)
        (row,) = store.runs()
    assert row["config"]["model"]["classifier"]["towers"] == 2 and 0 <= result.metrics["accuracy"] <= 1
    assert result.metrics["selected_step"] in (1, 2) and "val_accuracy" in result.metrics


def test_single_sequence_classifiers_record_no_towers():
    exp = config("listops", "s4d", None)
    built = build_model(exp, exp.task.build())
    assert type(built.model) is SequenceClassifier and "towers" not in built.config["classifier"]


# ----------------------------------------------------------------------------------------------------------
# Parameter budget (LRA: at most 10% more parameters than the base Transformer)


def test_the_parameter_budget_compares_with_attention_in_every_layer_of_the_same_config():
    exp = ExperimentConfig.model_validate({
        "task": {"name": "listops", "params": TINY_TASKS["listops"]},
        "model": {"d_model": 16, "n_layers": 2, "layers": "s4d", "mlp_ratio": 2.0,
                  "mixer_hypers": {"attention": {"n_heads": 2}, "s4d": {"d_state": 8}}},
        "train": {"steps": 2},
    })
    budget = parameter_budget(exp)
    task = exp.task.build()
    real = sum(p.numel() for p in build_model(exp, task).model.parameters())
    baseline_exp = exp.model_copy(update={"model": {**exp.model, "layers": "attention",
                                                     "mixer_hypers": {"attention": {"n_heads": 2}}}})
    baseline = sum(p.numel() for p in build_model(baseline_exp, task).model.parameters())
    assert (budget.n_params, budget.baseline) == (real, baseline) and budget.ratio == real / baseline
    assert parameter_budget(baseline_exp).ratio == 1.0
    assert budget.describe().endswith(f"x the base Transformer's {baseline:,} (attention in every layer, same config)")


# ----------------------------------------------------------------------------------------------------------
# Validation splits of the classification tasks


def test_listops_and_pathfinder_validate_on_their_generator_at_split_id_2():
    listops = build_task("listops", **TINY_TASKS["listops"])
    assert listops.num_examples("val") == TINY_TASKS["listops"]["num_test"]
    params = ListOpsParams(min_length=10, max_length=40)
    inputs, labels = listops.batch("val", [0, 3])
    for row, index in enumerate([0, 3]):
        tokens, label = listops_example(0, "val", index, params)
        assert torch.equal(inputs[row, : tokens.size], torch.from_numpy(tokens)) and int(labels[row]) == label
    pathfinder = build_task("pathfinder", **TINY_TASKS["pathfinder"])
    assert pathfinder.num_examples("val") == TINY_TASKS["pathfinder"]["num_test"]
    pixels, label = pathfinder_example(pathfinder.config, 0, "val", 2)
    inputs, labels = pathfinder.batch("val", [2])
    assert torch.equal(inputs[0], torch.from_numpy(pixels.astype(np.int64))) and int(labels[0]) == label


def test_sfmnist_holds_the_last_tenth_of_the_training_order_out_for_validation(tmp_path: Path):
    from longseq.data.fashion_mnist import load_fashion_mnist
    from longseq.data.samples import write_samples

    root = write_samples(tmp_path)["fashion-mnist"]
    task = build_task("sfmnist", paths={"fashion-mnist": str(root)})
    assert (task.num_examples("train"), task.num_examples("val"), task.num_examples("test")) == (58, 6, 32)
    images, _ = load_fashion_mnist("train", root)
    flat = images.reshape(64, -1)

    def which(split: str) -> list[int]:
        inputs = task.batch(split, range(task.num_examples(split)))[0].numpy()
        return [int(np.flatnonzero((flat == row).all(axis=1))[0]) for row in inputs]

    train, val = which("train"), which("val")
    assert sorted(train + val) == list(range(64))  # every training image once, in one of the two splits
    with pytest.raises(TaskParameterError, match=r"num_train=60: the train split has 58 images; allowed <= 58"):
        build_task("sfmnist", paths={"fashion-mnist": str(root)}, num_train=60)


def test_window_classification_validates_on_the_test_regions(tmp_path: Path):
    from longseq.data.samples import write_samples
    from longseq.data.windows import split_region

    roots = write_samples(tmp_path)
    task = build_task("dna_species", paths={d: str(roots[d]) for d in ("bowtie-examples", "sibelia-examples",
                                                                        "kmer-examples")}, seq_len=1024)
    cuts = {pool.regions[0].name: split_region(pool.regions[0].name, pool.regions[0].data, "test").start
            for pool in task.windows.pools["test"]}
    for _, _, window in task.draws("val", range(16)):
        assert window.start >= cuts[window.name]  # inside the test region, never in a training window
    assert task.num_examples("val") == task.num_examples("test")
    assert not torch.equal(task.batch("val", range(4))[0], task.batch("test", range(4))[0])
