"""The Pathfinder disk cache (tasks/example_cache.py): cached batches are the generated ones bit for bit, the data
fingerprint does not move, a tampered entry is refused by name, another generator version is ignored with a notice,
an interrupted build is never read and resumes, a second build extends, and the command builds and lists entries."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from longseq.cli import app
from longseq.tasks import build_task, example_cache, pathfinder
from longseq.tasks.example_cache import ExampleCacheError, build_entry, open_entry
from longseq.tasks.fingerprint import data_fingerprint
from longseq.tasks.pathfinder import Pathfinder, pathfinder_batch


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LONGSEQ_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def generated_indices(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The indices the task generates rather than reads (a spy on ``pathfinder_batch``), in request order."""
    seen: list[int] = []

    def spy(config, seed, split, indices):
        seen.extend(np.asarray(indices).tolist())
        return original(config, seed, split, indices)

    original = pathfinder.pathfinder_batch
    monkeypatch.setattr(pathfinder, "pathfinder_batch", spy)
    return seen


def small_task(difficulty: str = "easy") -> Pathfinder:
    return build_task("pathfinder", size=32, difficulty=difficulty)


def assert_generated(task: Pathfinder, split: str, indices: list[int]) -> None:
    """``task.batch`` (through the cache) equals the generator's batch, values and dtypes."""
    got, want = task.batch(split, indices), pathfinder_batch(task.config, task.seed, split, np.array(indices))
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)


def data_offset(path: Path) -> int:
    with open(path, "rb") as file:
        np.lib.format.read_magic(file)
        np.lib.format.read_array_header_1_0(file)
        return file.tell()


# ----------------------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_cached_batches_are_the_generated_ones_bit_for_bit(difficulty, generated_indices):
    task = small_task(difficulty)
    report = build_entry(task.cache_spec("train"), 12)
    assert (report.before, report.count) == (0, 12)
    entry = open_entry(task.cache_spec("train"))
    assert entry is not None and entry.count == 12 and entry.tokens.dtype == np.uint8
    want = pathfinder_batch(task.config, task.seed, "train", np.arange(12))
    assert np.array_equal(entry.tokens, want[0].numpy()) and np.array_equal(entry.labels, want[1].numpy())
    generated_indices.clear()  # (the reference batch above)

    assert_generated(task, "train", [11, 0, 5, 5, 7])
    assert generated_indices == []  # all read from the entry
    assert_generated(task, "train", [15, 3, 11, 12, 40, 0])  # cached and generated, interleaved
    assert generated_indices == [15, 12, 40]
    assert_generated(task, "test", [0, 1])  # another split has no entry: generated
    assert generated_indices[-2:] == [0, 1]


def test_the_data_fingerprint_does_not_change_with_the_cache(generated_indices):
    task = small_task("easy")
    before = data_fingerprint(task)
    build_entry(task.cache_spec("train"), 16)
    build_entry(task.cache_spec("test"), 8)
    generated_indices.clear()
    assert data_fingerprint(task) == before
    assert generated_indices == [*range(16, 64), *range(8, 64)]  # the rest came from the cache


def tamper_byte(index: int, name: str) -> Callable[[Path], None]:
    """Flip the first byte of row ``index`` of ``name``.npy."""

    def tamper(directory: Path) -> None:
        path = directory / f"{name}.npy"
        row_bytes = 1024 if name == "tokens" else 8
        data = bytearray(path.read_bytes())
        data[data_offset(path) + index * row_bytes] ^= 1
        path.write_bytes(bytes(data))

    return tamper


def tamper_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def tamper(directory: Path) -> None:
        manifest = json.loads((directory / "manifest.json").read_text())
        change(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))

    return tamper


def rewrite_last_example(directory: Path) -> None:
    """Change the last cached image and record the matching hash: only regenerating that example can tell."""
    tamper_byte(11, "tokens")(directory)
    tokens = np.load(directory / "tokens.npy")[:12]
    tamper_manifest(lambda m: m["sha256"].update(tokens=hashlib.sha256(tokens.tobytes()).hexdigest()))(directory)


def truncate_manifest(directory: Path) -> None:
    path = directory / "manifest.json"
    path.write_text(path.read_text()[:40])


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        (tamper_byte(0, "tokens"), r"the SHA-256 of the 12 rows of tokens\.npy is not the manifest's"),
        (tamper_byte(3, "labels"), r"the SHA-256 of the 12 rows of labels\.npy is not the manifest's"),
        (tamper_manifest(lambda m: m.update(seed=1)), r"its manifest's seed is 1, expected 0"),
        (tamper_manifest(lambda m: m["config"].update(continuity=1.5)), r"its manifest's config is .*continuity"),
        (tamper_manifest(lambda m: m.update(fingerprint="0" * 16)), r"its manifest's fingerprint is '0{16}'"),
        (tamper_manifest(lambda m: m["sha256"].update(labels="0" * 64)), r"rows of labels\.npy is not the manifest"),
        (tamper_manifest(lambda m: m.update(count=13)), r"tokens\.npy holds uint8 \(12, 1024\), expected uint8 \(13 "),
        (tamper_manifest(lambda m: m.update(count=6)), r"the SHA-256 of the 6 rows of tokens\.npy"),
        (rewrite_last_example, r"example 11 is not what the generator produces now"),
        (truncate_manifest, r"its manifest\.json cannot be read"),
    ],
)
def test_a_tampered_entry_is_refused_by_name_until_rebuilt(tamper, why):
    task = small_task("easy")
    spec = task.cache_spec("test")
    build_entry(spec, 12)
    directory = spec.directory()
    tamper(directory)
    with pytest.raises(ExampleCacheError, match=why) as caught:
        task.batch("test", [0])
    message = str(caught.value)
    assert f"cache entry {directory} is unusable" in message and f"rm -r {directory}" in message
    command = "longseq data cache-pathfinder --size 32 --difficulty easy --split test --seed 0"
    assert f"rebuild it: {command} --count N --rebuild" in message
    with pytest.raises(ExampleCacheError, match=why):
        build_entry(spec, 16)  # nor is it extended
    report = build_entry(spec, 12, rebuild=True)
    assert (report.before, report.count) == (0, 12)
    assert_generated(task, "test", list(range(14)))


def test_an_entry_of_another_generator_version_is_ignored_with_a_notice(monkeypatch, generated_indices):
    task = small_task("easy")
    build_entry(task.cache_spec("test"), 8)
    monkeypatch.setattr(pathfinder, "GENERATOR_VERSION", 2)
    directory = task.cache_spec("test").directory()
    notice = (rf"cache entry {directory} was built by pathfinder generator version 1, this is version 2; "
              "ignored, the examples are generated")
    with pytest.warns(RuntimeWarning, match=notice):
        assert_generated(task, "test", [0, 1, 2, 3])
    assert generated_indices[:4] == [0, 1, 2, 3]  # generated, not read
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.batch("test", [5])  # the notice is said once
    with pytest.warns(RuntimeWarning, match="starting it over"):
        report = build_entry(task.cache_spec("test"), 4)
    assert (report.before, report.count) == (0, 4)
    assert json.loads((directory / "manifest.json").read_text())["generator_version"] == 2
    assert np.load(directory / "tokens.npy").shape == (4, 1024)
    generated_indices.clear()
    assert_generated(task, "test", [3, 4])
    assert generated_indices[:1] == [4]  # the new entry is read


# ----------------------------------------------------------------------------------------------------------
# Building


def test_an_interrupted_build_is_never_read_and_the_next_one_resumes(monkeypatch):
    monkeypatch.setattr(example_cache, "COMMIT_EVERY", 4)
    monkeypatch.setattr(example_cache, "TASK_EXAMPLES", 2)
    task = small_task("hard")
    spec = task.cache_spec("train")
    directory = spec.directory()

    def interrupted_at(stop: int) -> example_cache.EntrySpec:
        def generate(index: int):
            if index == stop:
                raise KeyboardInterrupt
            return spec.generate(index)

        return dataclasses.replace(spec, generate=generate)

    with pytest.raises(KeyboardInterrupt):  # a first build killed before its first commit leaves no entry
        build_entry(interrupted_at(3), 16)
    assert (directory / "tokens.npy").exists() and open_entry(spec) is None
    with pytest.raises(KeyboardInterrupt):  # committed 0..7, wrote 8..9, killed in 10..11
        build_entry(interrupted_at(11), 16)
    assert (directory / "tokens.npy").stat().st_size == data_offset(directory / "tokens.npy") + 10 * 1024
    # and as if killed while writing the next manifest
    (directory / ".manifest.json.999.tmp").write_text('{"count": 12, "fingerp')
    with open(directory / "tokens.npy", "ab") as file:
        file.write(b"\xff" * 1500)
    assert open_entry(spec).count == 8
    assert_generated(task, "train", list(range(12)))

    report = build_entry(spec, 12)
    assert (report.before, report.count) == (8, 12)
    assert np.load(directory / "tokens.npy").shape == (12, 1024)
    assert (directory / "tokens.npy").stat().st_size == data_offset(directory / "tokens.npy") + 12 * 1024
    assert_generated(task, "train", list(range(16)))


def test_building_twice_extends_the_entry():
    task = small_task("easy")
    spec = task.cache_spec("val")
    build_entry(spec, 8)
    tokens = spec.directory() / "tokens.npy"
    first = tokens.read_bytes()[data_offset(tokens):]
    calls: list[int] = []

    def counted(index: int):
        calls.append(index)
        return spec.generate(index)

    report = build_entry(dataclasses.replace(spec, generate=counted), 16)
    assert (report.before, report.count) == (8, 16)
    assert calls == [7, *range(8, 16)]  # the check of the last cached example, then only the new ones
    assert tokens.read_bytes()[data_offset(tokens):][: len(first)] == first
    assert build_entry(spec, 10).count == 16  # holds enough: nothing to do
    assert_generated(task, "val", list(range(18)))


def test_one_build_of_an_entry_at_a_time():
    spec = small_task("easy").cache_spec("test")
    spec.directory().mkdir(parents=True)
    with open(spec.directory() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ExampleCacheError, match="is being built by another process"):
            build_entry(spec, 4)
    assert build_entry(spec, 4).count == 4


def test_the_command_builds_with_workers_and_lists_the_entry():
    args = ["data", "cache-pathfinder", "--size", "32", "--difficulty", "easy", "--split", "test", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--count", "12", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "generated 12 examples in" in result.output and "examples/s" in result.output
    task = small_task("easy")
    assert open_entry(task.cache_spec("test")).count == 12
    assert_generated(task, "test", list(range(14)))
    listing = CliRunner().invoke(app, ["data"])
    assert listing.exit_code == 0, listing.output
    assert "32px-easy-seed0-test-" in listing.output and "current version" in listing.output
    again = CliRunner().invoke(app, [*args, "--count", "12"])
    assert again.exit_code == 0 and "already holds 12 examples" in again.output
    bad = CliRunner().invoke(app, [*args, "--count", "0"])
    assert bad.exit_code == 2 and "count=0: allowed an int >= 1" in bad.output
