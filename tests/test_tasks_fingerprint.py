"""Data fingerprints: deterministic across processes, equal for equal parameters, sensitive to the generator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from longseq.data.idx import write_idx
from longseq.tasks import build_task
from longseq.tasks.fingerprint import FINGERPRINT_EXAMPLES, data_fingerprint, task_fingerprint
from longseq.tasks.mqar import MQAR

PARAMS = {"seq_len": 32, "num_kv_pairs": 4, "vocab_size": 128, "num_train": 200, "num_test": 100}


def test_fingerprint_is_16_hex_digits_and_equal_for_equal_parameters():
    first = task_fingerprint("mqar", **PARAMS)
    assert len(first) == 16 and int(first, 16) >= 0
    assert data_fingerprint(build_task("mqar", **PARAMS)) == first
    assert task_fingerprint("mqar", **{**PARAMS, "seq_len": 64}) != first
    assert task_fingerprint("mqar", **{**PARAMS, "seed": 1}) != first


def test_fingerprint_is_the_same_in_another_process():
    code = (
        "from longseq.tasks.fingerprint import task_fingerprint; "
        f"print(task_fingerprint('mqar', **{PARAMS!r}))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert other.stdout.strip() == task_fingerprint("mqar", **PARAMS)


def test_fingerprint_changes_when_the_generator_output_changes(monkeypatch):
    before = task_fingerprint("mqar", **PARAMS)
    real_batch = MQAR.batch

    def one_label_changed(self, split, indices):
        inputs, labels = real_batch(self, split, indices)
        if split == "test" and len(indices) > 5:
            labels = labels.clone()
            position = int(torch.nonzero(labels[5] != -100)[0, 0])
            labels[5, position] = (labels[5, position] + 1) % self.vocab_size
        return inputs, labels

    monkeypatch.setattr(MQAR, "batch", one_label_changed)
    assert task_fingerprint("mqar", **PARAMS) != before
    monkeypatch.setattr(MQAR, "batch", real_batch)
    assert task_fingerprint("mqar", **PARAMS) == before


def test_fingerprint_reads_the_first_examples_of_each_split_only(monkeypatch):
    asked: list[tuple[str, list[int]]] = []
    real_batch = MQAR.batch

    def spy(self, split, indices):
        asked.append((split, list(map(int, indices))))
        return real_batch(self, split, indices)

    monkeypatch.setattr(MQAR, "batch", spy)
    task_fingerprint("mqar", **{**PARAMS, "num_test": 10})
    assert asked == [("train", list(range(FINGERPRINT_EXAMPLES))), ("test", list(range(10)))]


def test_fingerprint_dtype_and_shape_matter(monkeypatch):
    before = task_fingerprint("mqar", **PARAMS)
    real_batch = MQAR.batch
    monkeypatch.setattr(MQAR, "batch", lambda self, split, indices: tuple(
        t.to(torch.int32) for t in real_batch(self, split, indices)))
    assert task_fingerprint("mqar", **PARAMS) != before


@pytest.mark.parametrize("examples", [0, -1, True, 2.0])
def test_fingerprint_refuses_a_bad_example_count(examples):
    with pytest.raises(ValueError, match=r"examples=.*: allowed an int >= 1"):
        data_fingerprint(build_task("mqar", **PARAMS), examples=examples)


# Fingerprints computed before the validation split existed: adding "val" must not move any of them (the
# fingerprint hashes train and test only), so every stored run stays comparable with new ones.
PINNED_FINGERPRINTS = [
    ("mqar", {}, "6ab592a94ff9f1c9"),
    ("passkey", {}, "f07946877c9b5b9b"),
    ("joint_recall", {}, "529e3e6d517552f1"),
    ("listops", {}, "ee9b0c376839c68d"),
    ("listops", {"min_length": 10, "max_length": 40, "num_train": 64, "num_test": 16}, "f92434dee79ac24d"),
    ("pathfinder", {"size": 32, "difficulty": "easy"}, "46892f7d2fd7fc8a"),
    ("bytetext", {}, "13e4577c4da0c0ff"),  # the sample copies of tests/conftest.py
    ("dna_species", {}, "e33a582ce352ec5d"),
    ("dna_lm", {}, "c4f5614bc12fae7f"),
]


@pytest.mark.parametrize(("name", "params", "expected"), PINNED_FINGERPRINTS)
def test_fingerprints_of_existing_tasks_are_pinned(name, params, expected):
    assert task_fingerprint(name, **params) == expected


def _fashion_mnist_copy(root: Path) -> None:
    """200 train and 40 test random images in the IDX layout: more than the 64 hashed train examples remain once
    sfmnist holds 10% of the train images out for validation (the sample copy has only 64)."""
    rng = np.random.default_rng(5)
    for prefix, count in (("train", 200), ("t10k", 40)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(count, 28, 28)).astype(np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(count) % 10).astype(np.uint8))


@pytest.mark.parametrize(("params", "expected"), [({}, "8f0491173e099f7b"),
                                                  ({"pad32": True, "permute": "bitrev"}, "c97e598785ac0a35")])
def test_sfmnist_fingerprint_is_pinned_where_the_held_out_images_leave_64_train_examples(tmp_path, params, expected):
    _fashion_mnist_copy(tmp_path)
    assert task_fingerprint("sfmnist", paths={"fashion-mnist": str(tmp_path)}, **params) == expected
