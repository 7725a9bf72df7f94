"""byte_retrieval, the LRA-Retrieval stand-in, on the sample texts: splits by work, pairs of the documented kind
(same work and disjoint, or different works), balance, the two-window layout, refusals; and the two draws' exact
support on a toy work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longseq.data.text import Document
from longseq.tasks import TaskParameterError, build_task, num_segments, task_splits
from longseq.tasks.byte_retrieval import WorkWindows, source_documents, split_of_work

WINDOW = 512


@pytest.fixture(scope="module")
def task():
    return build_task("byte_retrieval", window=WINDOW, num_train=400, num_test=200)


def where(task, split: str, window: np.ndarray) -> list[tuple[str, int]]:
    """``(work name, start)`` of every occurrence of ``window``'s bytes in a work of ``split``."""
    needle = window.astype(np.uint8).tobytes()
    found = []
    for doc in task.pairs[split].works:
        text = doc.data.tobytes()
        start = text.find(needle)
        while start != -1:
            found.append((doc.name, start))
            start = text.find(needle, start + 1)
    return found


def test_works_are_split_by_their_position_and_belong_to_one_split(task):
    names = {split: {doc.name for doc in task.pairs[split].works} for split in task_splits(task)}
    assert all(len(works) >= 2 for works in names.values())
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    shakespeare = [doc.name for doc in source_documents(["shakespeare"], None)]
    assert shakespeare == sorted(shakespeare)
    for position, name in enumerate(shakespeare):
        assert name in names[split_of_work(position)]
    assert [split_of_work(i) for i in range(10)] == ["test", "train", "train", "val", "train", "test", "train",
                                                     "train", "train", "train"]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_pairs_are_two_disjoint_windows_of_one_work_or_windows_of_two_works(task, split):
    inputs, labels = task.batch(split, range(40))
    assert inputs.shape == (40, 2 * WINDOW) and task.seq_len == 2 * WINDOW and num_segments(task) == 2
    assert set(labels.tolist()) == {0, 1}
    for row, label in zip(inputs.numpy(), labels.tolist(), strict=True):
        first, second = where(task, split, row[:WINDOW]), where(task, split, row[WINDOW:])
        assert first and second  # each half is a window of a work of this split
        if label == 1:
            assert any(a == b and abs(i - j) >= WINDOW for a, i in first for b, j in second)
        else:
            assert any(a != b for a, _ in first for b, _ in second)


def test_labels_are_balanced_and_examples_are_pure_functions_of_seed_split_index(task):
    labels = task.batch("train", range(400))[1].float()
    assert abs(labels.mean().item() - 0.5) < 0.1
    again = build_task("byte_retrieval", window=WINDOW, num_train=400, num_test=200)
    assert all(torch.equal(a, b) for a, b in zip(task.batch("val", [3, 9]), again.batch("val", [3, 9]), strict=True))
    other = build_task("byte_retrieval", window=WINDOW, num_train=400, num_test=200, seed=1)
    assert not torch.equal(task.batch("train", range(8))[0], other.batch("train", range(8))[0])


def _toy(lengths: list[int]) -> WorkWindows:
    return WorkWindows([Document(f"w{i}", "toy", None, np.zeros(n, dtype=np.uint8)) for i, n in
                        enumerate(lengths)], length=4)


def test_the_disjoint_partner_is_uniform_over_exactly_the_windows_that_share_no_byte():
    works = _toy([11, 30])  # 11 = 3 * 4 - 1: the shortest work whose every window has a disjoint partner
    rng = np.random.default_rng(0)
    for start in range(11 - 4 + 1):
        allowed = {s for s in range(11 - 4 + 1) if abs(s - start) >= 4}
        seen = [works.disjoint_partner(rng, 0, start) for _ in range(400)]
        assert set(seen) == allowed
        counts = np.bincount(seen, minlength=8)[sorted(allowed)]
        assert counts.min() > 400 / len(allowed) / 2  # roughly uniform


def test_first_windows_weight_works_by_their_windows_and_other_work_never_draws_the_same_one():
    works = _toy([11, 30, 20])
    rng = np.random.default_rng(1)
    drawn = [works.first(rng)[0] for _ in range(3000)]
    shares = np.bincount(drawn, minlength=3) / 3000
    assert np.allclose(shares, works.counts / works.counts.sum(), atol=0.03)
    for work in range(3):
        others = [works.other_work(rng, work) for _ in range(500)]
        assert all(other != work and 0 <= start <= works.works[other].data.shape[0] - 4 for other, start in others)
        assert {other for other, _ in others} == set(range(3)) - {work}


def test_a_window_too_long_for_two_works_per_split_is_refused():
    with pytest.raises(TaskParameterError, match=r"task 'byte_retrieval': window=9000: a split needs two works of at "
                                                 r"least 3 \* window - 1 = 26,999 bytes"):
        build_task("byte_retrieval", window=9000)
    with pytest.raises(TaskParameterError, match=r"sources=\['milton', 'milton'\]: a source is listed twice"):
        build_task("byte_retrieval", sources=["milton", "milton"])
    with pytest.raises(TaskParameterError, match=r"paths has unknown dataset\(s\) 'python-docs'"):
        build_task("byte_retrieval", paths={"python-docs": "/nowhere"})
