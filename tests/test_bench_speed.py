"""The speed bench: spec parsing, option checks, peak-memory tracking, a real tiny run, and isolation — points that
raise, abort, exhaust memory, are predicted to exceed it, or hang are recorded with their status while the other
points still run."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

import longseq.bench.memory as memory
from longseq.bench.isolate import PointJob, import_extension, measure_point, median_and_iqr, time_calls
from longseq.bench.memory import parse_size, track_peak_memory
from longseq.bench.speed import (
    ROW_KEYS,
    MixerSpec,
    SpeedBenchError,
    parse_mixer_spec,
    run_speed_bench,
    write_rows_csv,
    write_rows_json,
)
from longseq.mixers import Mixer, Pattern, register
from longseq.mixers.registry import _REGISTRY
from longseq.results.store import ResultsStore

FAULTY = Path(__file__).with_name("bench_faulty_mixers.py")
MiB = 2**20
# Tiny points: one thread (two threads on a shared 2-core machine wait on each other), few repeats.
TINY = dict(d_model=16, threads=1, repeats=2, min_time=0.0, warmup=1)


@pytest.fixture
def faulty():
    """The path of the test-only mixers; unregisters them afterwards so that no other test sees them."""
    yield str(FAULTY)
    _REGISTRY.pop("bench_faulty", None)
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == FAULTY.resolve():
            del sys.modules[name]


# The probe's activations: CHAIN tensors of PROBE_BYTES each, all saved for backward when autograd is on.
PROBE_CHAIN, PROBE_BYTES = 8, 16 * MiB


class ActivationProbe(Mixer):
    """A chain of PROBE_CHAIN elementwise ops on a PROBE_BYTES-sized widening of x; records, per forward, whether
    it ran in training mode and with autograd on."""

    patterns = frozenset({Pattern.NONCAUSAL_SELF})
    seen: ClassVar[list[tuple[bool, bool]]] = []

    def __init__(self, d_model: int, *, pattern: Pattern | str = Pattern.NONCAUSAL_SELF,
                 max_len: int | None = None) -> None:
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.scale = nn.Parameter(torch.ones(()))

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        ActivationProbe.seen.append((self.training, torch.is_grad_enabled()))
        h = x.repeat(1, 1, PROBE_BYTES // (x.numel() * x.element_size()))
        for _ in range(PROBE_CHAIN):
            h = torch.tanh(h * self.scale)  # autograd keeps each h for backward; without it each dies once used
        return h[..., : x.shape[-1]]


@pytest.fixture
def probe():
    """Registers the activation probe in this process only, and unregisters it afterwards."""
    register("speed_probe")(ActivationProbe)
    ActivationProbe.seen.clear()
    yield "speed_probe"
    _REGISTRY.pop("speed_probe", None)


def statuses(rows: list[dict], label: str) -> list[tuple[int, str]]:
    return [(r["seq_len"], r["status"]) for r in rows if r["label"] == label]


# ----- specs and options -----


def test_mixer_spec_parses_hypers_and_keeps_the_text_as_label():
    assert parse_mixer_spec("attention") == MixerSpec("attention", "attention", {})
    spec = parse_mixer_spec(" attention[impl=math, n_heads=8, rope=false] ")
    assert spec == MixerSpec("attention[impl=math, n_heads=8, rope=false]", "attention",
                             {"impl": "math", "n_heads": 8, "rope": False})
    assert parse_mixer_spec("attention[rope_base=1e4]").hypers == {"rope_base": 10000.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("attention[impl=math", "malformed"),
        ("attention[impl]", "hyper 'impl' must look like key=value, as in NAME\\[key=value,...\\]"),
        ("attention[impl=math,impl=sdpa]", "given twice"),
        ("attention[pattern=causal_self]", "set by the bench's patterns option"),
        ("atention", "unknown mixer 'atention'.*did you mean 'attention'"),
        ("attention[heads=8]", "no hyper 'heads'.*did you mean 'n_heads'"),
        ("attention[impl=flash]", "impl='flash' is invalid"),
    ],
)
def test_bad_mixer_specs_fail_clearly(spec, message):
    with pytest.raises(SpeedBenchError, match=message):
        parse_mixer_spec(spec)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(modes=["forward"]), "modes=.*allowed: a non-empty list of fwd, fwdbwd, fwd_train, prefill, decode"),
        (dict(lengths=[64, 0]), "lengths entry=0 must be a positive integer"),
        (dict(lengths=[]), "lengths=.*non-empty"),
        (dict(dtype="float8"), "dtype='float8'; allowed: float32"),
        (dict(patterns=["causal"]), "pattern='causal' is not a pattern"),
        (dict(device="tpu"), "device='tpu'"),
        (dict(repeats=0), "repeats=0 must be a positive integer"),
        (dict(timeout=-1), "timeout=-1"),
        (dict(hypers={"mamba": {"d_state": 4}}), "hypers given for 'mamba', which no mixer spec names"),
        (dict(imports=["no_such_module_xyz"]), "imports: cannot import 'no_such_module_xyz'"),
    ],
)
def test_bad_options_fail_before_anything_runs(options, message):
    with pytest.raises(SpeedBenchError, match=message):
        run_speed_bench(["attention"], **{"lengths": [32], **options})


def test_hypers_that_cannot_be_combined_fail_before_anything_runs():
    with pytest.raises(SpeedBenchError, match="not divisible by n_heads=3"):
        run_speed_bench(["attention[n_heads=3]"], lengths=[32], d_model=16)


def test_duplicate_labels_are_refused():
    with pytest.raises(SpeedBenchError, match="more than once"):
        run_speed_bench(["attention", "attention"], lengths=[32])


# ----- measurement helpers -----


def test_time_calls_reaches_both_the_count_and_the_time():
    assert len(time_calls(lambda: None, repeats=7, min_time=0.0, sync=lambda: None)) == 7
    started = time.perf_counter()
    times = time_calls(lambda: time.sleep(0.01), repeats=1, min_time=0.1, sync=lambda: None)
    assert time.perf_counter() - started >= 0.1 and len(times) >= 5
    assert len(time_calls(lambda: None, repeats=1, min_time=60.0, sync=lambda: None, max_calls=3)) == 3


def test_median_and_iqr():
    assert median_and_iqr([3.0]) == (3.0, 0.0)
    assert median_and_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0)


@pytest.mark.parametrize(("text", "size"), [("8GiB", 8 * 2**30), ("512MiB", 512 * MiB), ("1.5G", 3 * 2**29),
                                           ("2GB", 2 * 10**9), ("4096", 4096), (4096, 4096)])
def test_sizes_parse(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "8XB", "", "-1G", -1])
def test_bad_sizes_fail_clearly(text):
    with pytest.raises(ValueError, match="is not a size; expected"):
        parse_size(text)


def test_peak_memory_of_a_region_is_measured_above_its_start():
    ballast = torch.ones(32 * MiB // 4)  # resident before the region: must not count
    with track_peak_memory("cpu") as mem:
        block = torch.ones(64 * MiB // 4)
        del block
    assert mem.method == "clear_refs" and mem.note is None
    assert 60 * MiB <= mem.peak_bytes <= 72 * MiB
    assert mem.baseline_bytes > ballast.numel() * 4


def test_peak_memory_falls_back_to_sampling_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    with track_peak_memory("cpu") as mem:
        block = torch.ones(64 * MiB // 4)
        time.sleep(0.05)  # hold it long enough for the sampler to see it
        del block
    assert mem.method == "sampling" and "not writable" in mem.note
    assert 60 * MiB <= mem.peak_bytes <= 80 * MiB


def test_peak_memory_is_filled_in_when_the_region_raises():
    with pytest.raises(RuntimeError, match="inside"), track_peak_memory("cpu") as mem:
        raise RuntimeError("inside")
    assert mem.peak_bytes is not None


def test_measure_point_turns_an_exception_into_a_crashed_result(faulty):
    import_extension(faulty)
    job = PointJob(mixer="bench_faulty", hypers={"fault": "raise", "at": 4}, pattern="causal_self", mode="fwd",
                   d_model=8, batch=1, dtype="float32", device="cpu", repeats=1, min_time=0.0)
    result = measure_point(job, 8)
    assert result["status"] == "crashed" and "deliberate failure at L=8" in result["error"]


def test_fwd_train_is_a_training_forward_whose_memory_counts_what_autograd_saves(probe):
    job = PointJob(mixer=probe, hypers={}, pattern="noncausal_self", mode="fwd", d_model=16, batch=1,
                   dtype="float32", device="cpu", repeats=2, min_time=0.0)
    fwd = measure_point(job, 256)
    fwd_seen = set(ActivationProbe.seen)
    ActivationProbe.seen.clear()
    train = measure_point(dataclasses.replace(job, mode="fwd_train"), 256)
    assert fwd["status"] == train["status"] == "ok", (fwd, train)
    # fwd: eval() under no_grad; fwd_train: train() with autograd on (what CAB timed), and no backward.
    assert fwd_seen == {(False, False)} and set(ActivationProbe.seen) == {(True, True)}
    # The training forward holds every link of the chain until it returns; no_grad frees each once the next exists
    # (its peak is a few links, plus what the allocator keeps after a free).
    assert train["peak_mem_bytes"] >= PROBE_CHAIN * PROBE_BYTES, train["peak_mem_bytes"] / MiB
    assert train["peak_mem_bytes"] - fwd["peak_mem_bytes"] >= PROBE_CHAIN // 2 * PROBE_BYTES, (fwd, train)


# ----- real runs -----


def test_tiny_attention_run_records_ok_points(tmp_path):
    seen = []
    rows = run_speed_bench(
        ["attention[n_heads=2]"], lengths=[64, 32], modes=["fwd", "decode"], store=tmp_path / "results.db",
        command="pytest tiny", on_row=seen.append, **TINY,
    )
    assert [(r["mode"], r["seq_len"], r["status"]) for r in rows] == [
        ("fwd", 32, "ok"), ("fwd", 64, "ok"), ("decode", 32, "ok"), ("decode", 64, "ok")]
    assert seen == rows
    for row in rows:
        assert set(row) == set(ROW_KEYS)
        assert row["median_s"] > 0 and row["iqr_s"] >= 0 and row["repeats"] >= 2
        assert isinstance(row["peak_mem_bytes"], int) and row["peak_mem_bytes"] >= 0
        assert row["provenance"]["threads"] == 1 and row["provenance"]["command"] == "pytest tiny"
        tokens = row["batch"] * (1 if row["mode"] == "decode" else row["seq_len"])
        assert row["tokens_per_s"] == pytest.approx(tokens / row["median_s"])
        # attention's state after L tokens: K and V, d_model floats each per token.
        assert row["state_floats"] == (2 * 16 * row["seq_len"] if row["mode"] == "decode" else None)
    with ResultsStore(tmp_path / "results.db") as store:
        stored = store.speed_points(bench_id=rows[0]["bench_id"])
    assert [(r["mode"], r["seq_len"], r["status"], r["median_s"]) for r in stored] == [
        (r["mode"], r["seq_len"], r["status"], r["median_s"]) for r in rows]


def test_a_row_records_the_kernels_its_measuring_child_ran(monkeypatch):
    """The parent never builds a kernel; each row carries the status of the child that measured it, after it ran:
    "compiled" for the mamba kernel a decode point used, the plain path's reason with LONGSEQ_KERNELS=off."""
    from longseq import kernels

    monkeypatch.setenv(kernels.KERNELS_ENV, "auto")
    if kernels.load("selective_scan") is None:
        pytest.skip("the selective_scan kernel cannot be built here")
    # What the parent would record for itself: the row must not carry it.
    monkeypatch.setattr(kernels, "kernel_status", lambda: {"all": "the parent's status"})
    row, = run_speed_bench(["mamba[d_state=4]"], lengths=[16], modes=["decode"], **TINY)
    assert row["status"] == "ok" and row["provenance"]["kernels"]["selective_scan"] == "compiled"
    monkeypatch.setenv(kernels.KERNELS_ENV, "off")
    row, = run_speed_bench(["mamba[d_state=4]"], lengths=[16], modes=["decode"], **TINY)
    assert row["provenance"]["kernels"] == {"all": "pytorch: LONGSEQ_KERNELS=off"}


def test_modes_and_patterns_without_a_form_are_not_run():
    rows = run_speed_bench(["attention[n_heads=2]"], patterns=["noncausal_self"], lengths=[32],
                           modes=["fwd", "fwd_train", "prefill", "decode"], **TINY)
    assert [(r["pattern"], r["mode"], r["status"]) for r in rows] == [
        ("noncausal_self", "fwd", "ok"), ("noncausal_self", "fwd_train", "ok")]


def test_fwd_train_points_are_recorded_like_the_other_modes(tmp_path):
    rows = run_speed_bench(["attention[n_heads=2]"], lengths=[32, 64], modes=["fwd_train"],
                           store=tmp_path / "results.db", **TINY)
    assert [(r["mode"], r["seq_len"], r["status"]) for r in rows] == [("fwd_train", 32, "ok"), ("fwd_train", 64, "ok")]
    assert all(r["median_s"] > 0 and r["peak_mem_bytes"] >= 0 and r["state_floats"] is None for r in rows)
    with ResultsStore(tmp_path / "results.db") as store:
        assert [(r["mode"], r["seq_len"]) for r in store.speed_points(mode="fwd_train")] == [
            ("fwd_train", 32), ("fwd_train", 64)]


def test_crashing_points_are_recorded_and_the_rest_go_on(faulty):
    raising, aborting = "bench_faulty[fault=raise,at=64]", "bench_faulty[fault=abort,at=64]"
    rows = run_speed_bench([raising, aborting], lengths=[32, 64, 128], modes=["fwd"], imports=[faulty], **TINY)
    # A raised exception leaves the child alive; an abort kills it and a fresh child measures the longer length.
    assert statuses(rows, raising) == [(32, "ok"), (64, "crashed"), (128, "crashed")]
    assert statuses(rows, aborting) == [(32, "ok"), (64, "crashed"), (128, "ok")]
    by_point = {(r["label"], r["seq_len"]): r for r in rows}
    assert "RuntimeError: bench_faulty: deliberate failure at L=64" in by_point[(raising, 64)]["error"]
    assert "SIGABRT" in by_point[(aborting, 64)]["error"]
    assert by_point[(aborting, 64)]["median_s"] is None


def test_memory_limits_kill_or_skip_points(faulty):
    # Large per-point allocations keep the extrapolation far from the limit whatever else the machine is doing:
    # the quadratic mixer measures 32 MiB .. 512 MiB, predicts 2 GiB at L=128, and the limit is 1.5 GiB.
    hog, quadratic = "bench_faulty[fault=hog,at=32]", "bench_faulty[fault=quadratic]"
    rows = run_speed_bench([hog, quadratic], lengths=[16, 32, 64, 128], modes=["fwd"], imports=[faulty],
                           max_memory=3 * 2**29, **TINY)
    assert statuses(rows, hog) == [(16, "ok"), (32, "killed"), (64, "skipped"), (128, "skipped")]
    assert statuses(rows, quadratic) == [(16, "ok"), (32, "ok"), (64, "ok"), (128, "skipped")]
    by_point = {(r["label"], r["seq_len"]): r for r in rows}
    assert "memory watchdog" in by_point[(hog, 32)]["error"]
    assert "L=32" in by_point[(hog, 64)]["error"] and "'killed'" in by_point[(hog, 64)]["error"]
    # The quadratic mixer holds 32 MiB * (L/16)^2: measured, then extrapolated to 2 GiB at L=128.
    for length in (16, 32, 64):
        assert by_point[(quadratic, length)]["peak_mem_bytes"] == pytest.approx(32 * MiB * (length / 16) ** 2,
                                                                               rel=0.15)
    skipped = by_point[(quadratic, 128)]["error"]
    assert re.search(r"predicted peak memory (1\.9\d|2\.0\d) GiB", skipped), skipped
    assert "exponent 2.0" in skipped and "exceeds max_memory 1.50 GiB" in skipped


def test_a_point_past_its_timeout_is_recorded_as_timeout(faulty):
    sleeper = "bench_faulty[fault=sleep,at=64]"
    rows = run_speed_bench([sleeper], lengths=[32, 64, 128], modes=["fwd"], imports=[faulty], timeout=3.0, **TINY)
    assert statuses(rows, sleeper) == [(32, "ok"), (64, "timeout"), (128, "skipped")]
    assert "timeout of 3 s" in rows[1]["error"]


# ----- export -----


def _row(**changes) -> dict:
    row = {key: None for key in ROW_KEYS}
    row.update(bench_id="b", label="attention[impl=math]", mixer="attention", hypers={"impl": "math"},
               pattern="causal_self", mode="fwd", seq_len=64, batch=1, d_model=16, dtype="float32", device="cpu",
               status="ok", median_s=0.5, repeats=3, provenance={"git_commit": "abc"})
    row.update(changes)
    return row


def test_rows_export_as_json_and_csv(tmp_path):
    rows = [_row(), _row(seq_len=128, status="skipped", median_s=None, error="predicted, too big")]
    write_rows_json(rows, tmp_path / "out" / "rows.json")
    assert json.loads((tmp_path / "out" / "rows.json").read_text()) == rows
    write_rows_csv([*rows, {**_row(), "id": 7}], tmp_path / "rows.csv")
    with (tmp_path / "rows.csv").open() as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == [*ROW_KEYS, "id"]
    assert json.loads(read[0]["hypers"]) == {"impl": "math"} and read[0]["median_s"] == "0.5"
    assert read[1]["status"] == "skipped" and read[1]["median_s"] == "" and read[2]["id"] == "7"
