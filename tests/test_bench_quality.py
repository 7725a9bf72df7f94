"""The quality runner: suites, grid expansion, dropped cells, resume-skip, budget split, leaderboard, parse_grid."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Annotated

import pytest
import torch
import yaml
from pydantic import Field
from rich.table import Table

from longseq.bench import quality
from longseq.bench.quality import (
    QualitySuite,
    QualitySuiteError,
    format_leaderboard,
    layer_names,
    leaderboard,
    list_suites,
    load_suite,
    parse_grid,
    plan_quality,
    run_quality,
)
from longseq.mixers import Mixer, Pattern, available, register
from longseq.mixers.registry import _REGISTRY
from longseq.results.store import ResultsStore
from longseq.train import TrainResult

TINY_TASK = {
    "name": "mqar",
    "params": {"seq_len": 16, "num_kv_pairs": 2, "vocab_size": 32, "num_train": 64, "num_test": 16},
}
TASK_LABEL = "mqar(seq_len=16, num_kv_pairs=2, vocab_size=32, num_train=64, num_test=16)"


def tiny_suite(**overrides) -> QualitySuite:
    data = {
        "name": "unit",
        "description": "a tiny suite for the tests",
        "budget_s": 60.0,
        "mixers": ["attention"],
        "tasks": [TINY_TASK],
        "model": {"d_model": 16, "n_layers": 1, "mixer_hypers": {"attention": {"n_heads": 2}}},
        "train": {"steps": 3, "batch_size": 8, "eval_every": 100, "log_every": 1, "threads": 1},
        "grid": {"lr": [1e-3, 3e-3]},
    }
    return QualitySuite(**{**data, **overrides})


class _CausalProbe(Mixer):
    """A per-token linear map: causal, with a hyper that does not change the parameter count."""

    def __init__(self, d_model: int, *, pattern: Pattern | str = Pattern.CAUSAL_SELF, max_len: int | None = None,
                 width: Annotated[int, Field(gt=0)] = 1) -> None:  # fmt: skip
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.proj = torch.nn.Linear(d_model, d_model)
        self.width = width

    def _forward(self, x, *, context, context_mask, mask):
        return self.proj(x)

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return 0


class _NonCausalProbe(_CausalProbe):
    @classmethod
    def supported_patterns(cls, **hyper):
        return frozenset({Pattern.NONCAUSAL_SELF})


@pytest.fixture
def probe_mixers():
    """Two extra mixers, registered for one test only (the contract suite must not see them)."""
    register("qprobe")(_CausalProbe)
    register("qprobe_noncausal")(_NonCausalProbe)
    try:
        yield
    finally:
        del _REGISTRY["qprobe"], _REGISTRY["qprobe_noncausal"]


# ----------------------------------------------------------------------------------------------------------
# Planning


def test_plan_expands_tasks_x_mixers_x_grid_with_learning_rates_innermost(probe_mixers):
    longer = {"name": "mqar", "params": {**TINY_TASK["params"], "seq_len": 32, "vocab_size": 64}}
    suite = tiny_suite(
        mixers=["attention", "qprobe"],
        tasks=[TINY_TASK, longer],
        grid={"d_model": [16, 32], "attention.n_heads": [1, 2], "qprobe.width": [1, 2, 3], "lr": [1e-3, 3e-3]},
    )
    plan = plan_quality(suite)
    # per task: attention 2 d_model x 2 heads + qprobe 2 d_model x 3 widths = 10 cells; mixer hypers of one
    # mixer do not multiply the other's cells
    assert plan.dropped == [] and len(plan.cells) == 2 * (4 + 6) and len(plan.runs) == 2 * len(plan.cells)
    assert len({run.key for run in plan.runs}) == len(plan.runs)
    assert [run.lr for run in plan.runs[:4]] == [1e-3, 3e-3, 1e-3, 3e-3]
    first = plan.runs[0]
    assert first.cell.label == f"{TASK_LABEL} | attention | d_model=16 | attention.n_heads=1"
    assert first.label.endswith("| lr=0.001")
    assert first.config.model["mixer_hypers"] == {"attention": {"n_heads": 1}}
    probe_hypers = [run.config.model["mixer_hypers"] for run in plan.runs if run.cell.mixer == "qprobe"]
    assert len(probe_hypers) == 24 and all(set(hypers) == {"qprobe"} for hypers in probe_hypers)

    only_probe = plan_quality(suite, mixers=["qprobe"])
    assert {run.cell.mixer for run in only_probe.runs} == {"qprobe"} and len(only_probe.runs) == 2 * 6 * 2
    with pytest.raises(
        QualitySuiteError, match=r"mixers \['mamba'\] are not in suite 'unit'; it covers: attention, qprobe$"
    ):
        plan_quality(suite, mixers=["mamba"])


def test_a_new_mixer_joins_a_suite_under_its_protocol_and_tasks_restrict_it(probe_mixers):
    suite = tiny_suite(tasks=[TINY_TASK, {"name": "associative_recall", "params": {"seq_len": 16}}])
    joined = suite.with_mixers(["qprobe"])
    # the suite's own runs keep their keys (same name and protocol); the new mixer's runs are added to them
    own = {run.key for run in plan_quality(suite).runs}
    assert own < {run.key for run in plan_quality(joined).runs}
    assert {run.cell.mixer for run in plan_quality(joined, mixers=["qprobe"]).runs} == {"qprobe"}
    with pytest.raises(QualitySuiteError, match=r"mixers \['attention'\] are already in suite 'unit'"):
        suite.with_mixers(["attention"])
    dropped = plan_quality(suite.with_mixers(["nosuch"]), mixers=["nosuch"]).dropped
    assert len(dropped) == 2 and all("nosuch" in reason for _, reason in dropped)
    only_mqar = suite.with_tasks(["mqar"])
    assert {run.cell.task.name for run in plan_quality(only_mqar).runs} == {"mqar"}
    assert {run.key for run in plan_quality(only_mqar).runs} < own
    with pytest.raises(QualitySuiteError, match=r"tasks \['passkey'\] are not in suite 'unit'; it has: mqar, "
                                                 r"associative_recall"):
        suite.with_tasks(["passkey"])


def test_run_keys_are_stable_and_follow_the_experiment():
    keys = [run.key for run in plan_quality(tiny_suite()).runs]
    assert keys == [run.key for run in plan_quality(tiny_suite()).runs]
    assert all(len(key) == 16 and int(key, 16) >= 0 for key in keys)
    assert keys != [run.key for run in plan_quality(tiny_suite(name="other")).runs]
    steps = tiny_suite(train={**tiny_suite().train, "steps": 4})
    assert not set(keys) & {run.key for run in plan_quality(steps).runs}


def test_invalid_cells_are_dropped_with_their_reason(probe_mixers):
    suite = tiny_suite(
        mixers=["attention", "qprobe_noncausal", "nosuchmixer"],
        grid={"task.num_kv_pairs": [2, 8], "attention.n_heads": [2, 3], "lr": [1e-3]},
    )
    plan = plan_quality(suite)
    assert len(plan.runs) == 1 and plan.runs[0].cell.settings == (("task.num_kv_pairs", 2), ("attention.n_heads", 2))
    reasons = {cell.label: reason for cell, reason in plan.dropped}
    assert len(plan.dropped) == 3 + 2 + 2  # attention: 3 of 4 cells; the other two mixers: both cells
    too_many_pairs = TASK_LABEL.replace("num_kv_pairs=2", "num_kv_pairs=8")
    assert reasons[f"{too_many_pairs} | attention | attention.n_heads=2"].startswith(
        "task 'mqar': 4*num_kv_pairs > seq_len (32 > 16)"
    )
    assert reasons[f"{TASK_LABEL} | attention | attention.n_heads=3"] == (
        "mixer 'attention': d_model=16 is not divisible by n_heads=3"
    )
    assert reasons[f"{TASK_LABEL} | qprobe_noncausal"] == (
        "mixer 'qprobe_noncausal' does not support pattern 'causal_self'; it supports: noncausal_self"
    )
    assert reasons[f"{TASK_LABEL} | nosuchmixer"].startswith("layers: unknown mixer 'nosuchmixer'; allowed: ")

    lines: list[str] = []
    report = run_quality(suite=suite.with_grid({"task.num_kv_pairs": [8]}), store=_null(), log=lines.append)
    assert report.ran == 0 and len(report.dropped) == 2 + 1 + 1
    assert [line for line in lines if line.startswith("dropped ")] == [
        f"dropped {cell.label}: {reason}" for cell, reason in report.dropped
    ]


def _null():
    """A store stand-in for runs that never train: nothing is finished, nothing is recorded."""

    class NullStore:
        path = Path("unused") / "results.db"

        def finished_cell(self, key):
            return None

        def runs(self, **filters):
            return []

    return NullStore()


def test_all_means_every_registered_mixer_with_a_causal_self_pattern(probe_mixers):
    suite = tiny_suite(mixers="all")
    names = suite.resolved_mixers()
    assert "attention" in names and "qprobe" in names and "qprobe_noncausal" not in names
    assert names == [info.name for info in available() if Pattern.CAUSAL_SELF in info.patterns]


# ----------------------------------------------------------------------------------------------------------
# Running


def test_run_quality_trains_records_and_a_rerun_skips_finished_runs(tmp_path):
    suite = tiny_suite()
    lines: list[str] = []
    with ResultsStore(tmp_path / "results.db") as store:
        report = run_quality(suite=suite, store=store, log=lines.append, command="pytest")
        assert (report.ran, report.skipped, report.dropped, report.failed, report.out_of_budget) == (2, 0, [], [], [])
        rows = store.runs(suite="unit")
        plan = plan_quality(suite)
        assert sorted(r["cell_key"] for r in rows) == sorted(run.key for run in plan.runs)
        assert {r["status"] for r in rows} == {"completed"} and {r["command"] for r in rows} == {"pytest"}
        assert all(r["metrics"]["stopped_by"] == "steps" and r["config"]["train"]["time_budget_s"] > 0 for r in rows)
        for run in plan.runs:
            assert (tmp_path / "quality" / "unit" / run.key / "metrics.jsonl").is_file()
        (row,) = report.leaderboard
        assert row["runs"] == 2 and row["mixer"] == "attention" and row["d_model"] == 16

        lines.clear()
        again = run_quality(suite=suite, store=store, log=lines.append)
        assert (again.ran, again.skipped) == (0, 2) and len(store.runs()) == 2
        assert "2 already finished, 0 to run" in lines[0] and len(lines) == 1
        assert again.summary().startswith("suite unit: 0 ran, 2 skipped, 0 dropped, 0 failed, 0 out of budget in ")


def test_a_run_folder_finished_for_another_store_is_reported_not_overwritten(tmp_path):
    suite = tiny_suite(grid={"lr": [1e-3]})
    with ResultsStore(tmp_path / "a.db") as first:
        run_quality(suite=suite, store=first, out_root=tmp_path / "runs", log=lambda line: None)
    lines: list[str] = []
    with ResultsStore(tmp_path / "b.db") as second:
        report = run_quality(suite=suite, store=second, out_root=tmp_path / "runs", log=lines.append)
        assert second.runs() == []
    ((run, reason),) = report.failed
    assert report.ran == 0 and "holds a finished run that this store does not record" in reason
    assert lines[1].startswith(f"[1/1] {run.label}: ") and lines[1].endswith("s (resuming)")


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _fake_trainer(clock: _FakeClock, durations: list[float], budgets: list[float], fail_on: int | None = None):
    """Stands in for run_experiment: records the run's time budget, lets ``durations`` pass, records the run."""

    def run_experiment(config, *, store, resume, command, progress, suite, cell_key, data_fingerprint=None):
        index = len(budgets)
        budgets.append(config.train.time_budget_s)
        clock.now += durations[index]
        if index == fail_on:
            raise RuntimeError("boom")
        run_id = store.start_run(kind="train", task="mqar", mixer="attention", config={"train": {"lr": 1.0}},
                                 n_params=1, provenance={}, suite=suite, cell_key=cell_key)  # fmt: skip
        store.finish_run(run_id, status="completed", metrics={"accuracy": 0.5}, wall_time_s=durations[index],
                         tokens_per_s=1.0, steps=1)  # fmt: skip
        return TrainResult(run_id, 1, {"accuracy": 0.5}, 0.5, durations[index], 1.0, False, None, "steps")

    return run_experiment


def test_budget_is_split_evenly_over_the_runs_left(tmp_path, monkeypatch):
    clock, budgets = _FakeClock(), []
    monkeypatch.setattr(quality, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(quality, "run_experiment", _fake_trainer(clock, [10.0, 30.0, 50.0, 5.0], budgets, fail_on=1))
    suite = tiny_suite(grid={"lr": [1e-4, 1e-3, 1e-2, 1e-1]})
    lines: list[str] = []
    with ResultsStore(tmp_path / "results.db") as store:
        report = run_quality(suite=suite, store=store, budget_s=100.0, log=lines.append)
    # 100 / 4; then (100 - 10) / 3; (100 - 40) / 2; (100 - 90) / 1: early finishers hand their time on
    assert budgets == pytest.approx([25.0, 30.0, 30.0, 10.0])
    assert report.ran == 3 and [(run.lr, reason) for run, reason in report.failed] == [(1e-3, "boom")]
    assert any("failed: RuntimeError: boom" in line for line in lines)


def test_runs_that_find_no_time_left_are_not_started(tmp_path, monkeypatch):
    clock, budgets = _FakeClock(), []
    monkeypatch.setattr(quality, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(quality, "run_experiment", _fake_trainer(clock, [120.0, 1.0], budgets))
    with ResultsStore(tmp_path / "results.db") as store:
        report = run_quality(suite=tiny_suite(), store=store, budget_s=100.0, log=lambda line: None)
        assert budgets == [50.0] and report.ran == 1 and [run.lr for run in report.out_of_budget] == [3e-3]
        monkeypatch.setattr(quality, "run_experiment", _fake_trainer(clock, [1.0], budgets := []))
        later = run_quality(suite=tiny_suite(), store=store, budget_s=100.0, log=lambda line: None)
        assert (later.ran, later.skipped, budgets) == (1, 1, [100.0])


def test_steps_split_trains_every_run_to_its_steps_and_keys_it_apart(tmp_path, monkeypatch):
    clock, budgets = _FakeClock(), []
    monkeypatch.setattr(quality, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(quality, "run_experiment", _fake_trainer(clock, [120.0, 1.0], budgets))
    suite = tiny_suite(split="steps")
    with ResultsStore(tmp_path / "results.db") as store:
        report = run_quality(suite=suite, store=store, budget_s=100.0, log=lambda line: None)
    # no time share reaches the trainer; the first run overran the whole budget, so the second did not start
    assert budgets == [None] and report.ran == 1 and [run.lr for run in report.out_of_budget] == [3e-3]
    by_time, by_steps = plan_quality(tiny_suite()), plan_quality(suite)
    assert {run.key for run in by_time.runs}.isdisjoint(run.key for run in by_steps.runs)
    with pytest.raises(QualitySuiteError, match="split"):
        tiny_suite(split="tokens")


def test_budget_override_must_be_positive():
    with pytest.raises(QualitySuiteError, match=r"budget_s=0: allowed a finite number of seconds > 0"):
        run_quality(suite=tiny_suite(), store=_null(), budget_s=0)


# ----------------------------------------------------------------------------------------------------------
# Leaderboard


def _record(store, *, lr, accuracy, seq_len=64, d_model=64, mixer="attention", status="completed", suite="s"):
    config = {
        "task": {"name": "mqar", "seq_len": seq_len, "num_kv_pairs": 4},
        "model": {"d_model": d_model, "layers": mixer},
        "train": {"lr": lr, "steps": 100, "out_dir": f"/runs/{lr}", "time_budget_s": lr * 7},
    }
    run_id = store.start_run(kind="train", task="mqar", mixer=mixer, config=config, n_params=d_model * 10,
                             provenance={}, state_floats=d_model, suite=suite)  # fmt: skip
    store.finish_run(run_id, status=status, metrics={"accuracy": accuracy, "stopped_by": "steps"}, wall_time_s=2.0,
                     tokens_per_s=100.0, steps=100)  # fmt: skip


def test_leaderboard_takes_the_best_learning_rate_of_each_cell(tmp_path):
    with ResultsStore(tmp_path / "results.db") as store:
        _record(store, lr=1e-3, accuracy=0.5)
        _record(store, lr=3e-3, accuracy=0.9)
        _record(store, lr=1e-2, accuracy=1.0, status="failed")  # not completed: not considered
        _record(store, lr=1e-3, accuracy=0.7, seq_len=128)
        _record(store, lr=1e-3, accuracy=0.95, seq_len=128, mixer="qprobe")
        _record(store, lr=1e-3, accuracy=0.8, d_model=128)
        _record(store, lr=1e-3, accuracy=0.99, suite="other")
        rows = leaderboard(store, suite="s")
        assert leaderboard(store, suite="s", task="nope") == []

    summary = [(r["setting"], r["mixer"], r["d_model"], r["lr"], r["value"], r["runs"]) for r in rows]
    assert summary == [
        ("task.seq_len=64", "attention", 64, 3e-3, 0.9, 2),
        ("task.seq_len=64", "attention", 128, 1e-3, 0.8, 1),
        ("task.seq_len=128", "qprobe", 64, 1e-3, 0.95, 1),
        ("task.seq_len=128", "attention", 64, 1e-3, 0.7, 1),
    ]
    assert rows[0]["n_params"] == 640 and rows[0]["state_floats"] == 64 and rows[0]["stopped_by"] == "steps"
    assert rows[0]["metric"] == "accuracy" and rows[0]["task"] == "mqar"
    table = format_leaderboard(rows)
    assert isinstance(table, Table) and table.row_count == 4 and table.columns[1].header == "setting"


# ----------------------------------------------------------------------------------------------------------
# parse_grid


def test_parse_grid_reads_yaml_scalars():
    grid = parse_grid(["d_model=64,128", "lr=1e-3, 3e-3", "attention.impl=math,sdpa", "task.seq_len=64",
                       "attention.rope=false"])  # fmt: skip
    assert grid == {"d_model": [64, 128], "lr": [1e-3, 3e-3], "attention.impl": ["math", "sdpa"],
                    "task.seq_len": [64], "attention.rope": [False]}  # fmt: skip
    assert isinstance(grid["lr"][0], float) and isinstance(grid["d_model"][0], int)
    assert parse_grid(["mamba.d_state=16"], mixer_names=["mamba"]) == {"mamba.d_state": [16]}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("d_model", r"grid item 'd_model' must look like KEY=VALUE\[,VALUE...\]"),
        ("=64", "must look like KEY=VALUE"),
        ("d_model=", "must look like KEY=VALUE"),
        ("d_model=16,,32", "has an empty value"),
        ("d_model=[16]", "value '\\[16\\]' must be a number, string or bool"),
        (
            "dmodel=64",
            r"unknown grid key 'dmodel'; allowed: lr, a training field \(steps, .*\), a model field "
            r"\(d_model, .*\), task.<param>, or <mixer>.<hyper> with a mixer among abc, attention",
        ),
        ("attention.nheads=2", "mixer 'attention' has no hyper 'nheads'; allowed: max_len, n_heads"),
        ("out_dir=x", "grid key 'out_dir' is set by the quality runner"),
        ("vocab_size=64", "grid key 'vocab_size' is set by the quality runner"),
    ],
)
def test_parse_grid_errors_name_the_item(item, message):
    with pytest.raises(QualitySuiteError, match=message):
        parse_grid([item])


def test_parse_grid_refuses_a_key_given_twice():
    with pytest.raises(QualitySuiteError, match="key 'lr' is given twice"):
        parse_grid(["lr=1e-3", "lr=3e-3"])


# ----------------------------------------------------------------------------------------------------------
# Suites


def _builtin_mixers() -> list[str]:
    # Other test modules may register mixers of their own for a while; the shipped suites target the library's.
    return [info.name for info in available() if info.cls.__module__.startswith("longseq.mixers")]


@pytest.mark.parametrize("name", ["demo", "mqar-tiny", "zoology-fig2"])
def test_shipped_suites_load_and_every_cell_builds(name):
    assert name in list_suites()
    suite = load_suite(name)
    assert suite.name == name and suite.description and suite.budget_s > 0
    builtin = set(_builtin_mixers())
    covered = [m for m in suite.resolved_mixers() if layer_names(m) <= builtin]
    plan = plan_quality(suite, mixers=covered)
    assert plan.dropped == [] and plan.runs
    lrs = suite.grid.get("lr")
    assert lrs is None or len(plan.runs) == len(plan.cells) * len(lrs)


def test_zoology_fig2_follows_the_paper_protocol():
    suite = load_suite("zoology-fig2")
    shapes = [(t.params["seq_len"], t.params["num_kv_pairs"]) for t in suite.tasks]
    assert shapes == [(64, 4), (128, 8), (256, 16)]
    assert {t.params["vocab_size"] for t in suite.tasks} == {8192}
    assert {(t.params["num_train"], t.params["num_test"]) for t in suite.tasks} == {(100_000, 3_000)}
    assert suite.grid["d_model"] == [64, 128, 256]
    assert suite.grid["lr"] == pytest.approx([1e-4, 10 ** (-4 + 2 / 3), 10 ** (-4 + 4 / 3), 1e-2], rel=1e-3)


def test_unknown_suite_lists_the_shipped_ones():
    shipped = ", ".join(sorted(list_suites()))
    assert {"demo", "mqar-tiny", "zoology-fig2"} <= set(list_suites())
    with pytest.raises(QualitySuiteError, match=rf"unknown suite 'nope'; available: {shipped} \(or a path"):
        load_suite("nope")
    with pytest.raises(QualitySuiteError, match=r"suite file 'missing\.yaml' does not exist"):
        load_suite("missing.yaml")


def test_suite_files_are_validated(tmp_path):
    good = tiny_suite().model_dump()
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(good))
    assert load_suite(path) == tiny_suite() and load_suite(str(path)).name == "unit"

    path.write_text("name: [unclosed")
    with pytest.raises(QualitySuiteError, match="is not valid YAML"):
        load_suite(path)
    path.write_text("- a list")
    with pytest.raises(QualitySuiteError, match="must hold a mapping"):
        load_suite(path)
    path.write_text(yaml.safe_dump({**good, "budget": 3}))
    with pytest.raises(QualitySuiteError, match=r"suite file '.*mine.yaml': invalid quality suite 'unit': budget: "
                                                r"unknown field \(value 3\)"):  # fmt: skip
        load_suite(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"budget_s": -1.0}, "budget_s: Input should be greater than 0"),
        ({"name": "no spaces"}, "name: String should match pattern"),
        ({"tasks": [{"name": "mqr"}]}, r"unknown task 'mqr'; available: (.*, )?mqar\b"),
        ({"model": {"vocab_size": 10}}, "model.vocab_size cannot be set here"),
        ({"train": {"steps": 3, "out_dir": "x"}}, "train.out_dir is set by the quality runner"),
        ({"train": {"steps": 0}}, r"steps=0: Input should be greater than 0"),
        ({"grid": {"lr": [1e-3, -1.0]}}, r"grid.lr=-1.0: Input should be greater than 0"),
        ({"grid": {"steps": [10, True]}}, r"grid.steps=True: Input should be a valid integer"),
        ({"grid": {"d_model": []}}, "grid.d_model has no values"),
        ({"grid": {"attention.nheads": [1]}}, "mixer 'attention' has no hyper 'nheads'"),
        ({"mixers": []}, "must name at least one mixer or be 'all'"),
        ({"mixers": ["attention*0"]}, "each item is NAME or NAME\\*COUNT"),
    ],
)
def test_bad_suites_fail_naming_the_field(overrides, message):
    with pytest.raises(QualitySuiteError, match=message):
        tiny_suite(**overrides)


def test_grid_numbers_written_without_a_dot_are_numbers():
    suite = tiny_suite(grid={"lr": ["1e-3", 3e-3], "d_model": ["16"]})
    assert suite.grid == {"lr": [1e-3, 3e-3], "d_model": [16]}


def test_mixers_must_be_a_list_or_all():
    with pytest.raises(QualitySuiteError, match=r"mixers: 'al' is neither a list of mixer names or layer patterns nor "
                                                r"'all'$"):  # fmt: skip
        tiny_suite(mixers="al")


def test_hybrid_layer_patterns_take_the_hypers_of_each_of_their_mixers(probe_mixers):
    suite = tiny_suite(
        mixers=["qprobe*3,attention"],
        model={"d_model": 16, "n_layers": 4},
        grid={"attention.n_heads": [1, 2], "qprobe.width": [1, 2], "lr": [1e-3]},
    )
    plan = plan_quality(suite)
    assert plan.dropped == [] and len(plan.runs) == 4
    assert plan.runs[-1].config.model["mixer_hypers"] == {"attention": {"n_heads": 2}, "qprobe": {"width": 2}}
    assert parse_grid(["qprobe.width=3"], mixer_names=["qprobe*3,attention"]) == {"qprobe.width": [3]}


# ----------------------------------------------------------------------------------------------------------
# Data fingerprints and kills


def test_runs_record_their_data_fingerprint_and_a_changed_generator_reruns(tmp_path, monkeypatch):
    from longseq.tasks.fingerprint import task_fingerprint
    from longseq.tasks.mqar import MQAR

    suite = tiny_suite(grid={"lr": [1e-3]})
    fingerprint = task_fingerprint("mqar", **TINY_TASK["params"])
    (planned,) = plan_quality(suite).runs
    assert planned.fingerprint == fingerprint
    with ResultsStore(tmp_path / "results.db") as store:
        assert run_quality(suite=suite, store=store, log=lambda line: None).ran == 1
        (row,) = store.runs()
        assert row["config"]["data_fingerprint"] == fingerprint and row["cell_key"] == planned.key
        assert run_quality(suite=suite, store=store, log=lambda line: None).skipped == 1

        real_batch = MQAR.batch

        def shifted(self, split, indices):
            inputs, labels = real_batch(self, split, indices)
            return inputs, torch.where(labels == -100, labels, (labels + 1) % self.vocab_size)

        monkeypatch.setattr(MQAR, "batch", shifted)
        (changed,) = plan_quality(suite).runs
        assert changed.fingerprint != fingerprint and changed.key != planned.key
        # The finished run was trained on other data: it is not finished for this generator.
        report = run_quality(suite=suite, store=store, log=lambda line: None)
        assert (report.ran, report.skipped) == (1, 0)
        recorded = sorted(r["config"]["data_fingerprint"] for r in store.runs())
        assert recorded == sorted([fingerprint, changed.fingerprint])
        assert (tmp_path / "quality" / "unit" / changed.key / "metrics.jsonl").is_file()


def test_rows_left_running_by_a_dead_call_are_closed_interrupted(tmp_path):
    suite = tiny_suite(grid={"lr": [1e-3]})
    (run,) = plan_quality(suite).runs
    lines: list[str] = []
    with ResultsStore(tmp_path / "results.db") as store:
        orphan = store.start_run(kind="train", task="mqar", mixer="attention", config={}, n_params=1, provenance={},
                                 suite="unit", cell_key=run.key)  # fmt: skip
        report = run_quality(suite=suite, store=store, log=lines.append)
        assert report.ran == 1
        statuses = {r["run_id"]: r["status"] for r in store.runs()}
        assert statuses.pop(orphan) == "interrupted" and list(statuses.values()) == ["completed"]
        assert store.get_run(orphan)["metrics"] == {"stopped_by": "abandoned"}
    assert any(line.startswith(f"closed run {orphan} ") for line in lines)


KILL_SUITE = """
name: killed
description: two cells, a short one and a long one
budget_s: 600
mixers: [attention]
tasks:
  - name: mqar
    params: {seq_len: 16, num_kv_pairs: 2, vocab_size: 32, num_train: 64, num_test: 16}
model: {d_model: 16, n_layers: 1, mixer_hypers: {attention: {n_heads: 2}}}
train: {steps: 20, batch_size: 8, eval_every: 100000, log_every: 10, threads: 1, lr: 1.0e-3}
grid:
  steps: [20, 600]
"""


@pytest.mark.slow
def test_a_call_killed_mid_cell_leaves_the_store_consistent_and_the_next_call_finishes_it(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    suite_path = tmp_path / "killed.yaml"
    suite_path.write_text(KILL_SUITE)
    db = tmp_path / "results.db"
    long_run = plan_quality(load_suite(suite_path)).runs[1]
    long_dir = tmp_path / "quality" / "killed" / long_run.key
    command = [str(Path(sys.executable).parent / "longseq"), "bench", "quality", "--suite", str(suite_path),
               "--store", str(db)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "LONGSEQ_RESULTS": str(db)})  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, "the call ended before it could be killed"
            assert time.monotonic() < deadline, "no cell finished in time"
            if db.exists():
                with ResultsStore(db) as store:
                    statuses = [r["status"] for r in store.runs()]
                if statuses == ["completed", "running"] and (long_dir / "metrics.jsonl").is_file():
                    break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with ResultsStore(db) as store:
        first, killed = store.runs()
        assert (first["status"], killed["status"], killed["cell_key"]) == ("completed", "running", long_run.key)
        lines: list[str] = []
        report = run_quality(suite=load_suite(suite_path), store=store, log=lines.append)
        assert (report.ran, report.skipped, report.failed) == (1, 1, [])
        rows = {r["run_id"]: r for r in store.runs()}
        # The finished cell was skipped; the killed run (no checkpoint yet: a suite checkpoints at the end) was
        # closed interrupted and re-run from the start; no row is left running.
        assert rows.pop(first["run_id"])["status"] == "completed"
        assert rows.pop(killed["run_id"])["status"] == "interrupted"
        (rerun,) = rows.values()
        assert (rerun["status"], rerun["cell_key"], rerun["steps"]) == ("completed", long_run.key, 600)
        assert any(line.startswith(f"closed run {killed['run_id']} ") for line in lines)


# ----------------------------------------------------------------------------------------------------------
# Findings


FINDING = {"title": "Recall vs length", "claim": "Attention recalls at every length.", "x": "task.seq_len"}


def test_suites_declare_findings_as_data():
    suite = tiny_suite(findings=[FINDING, {**FINDING, "title": "vs state", "x": "state_floats", "group": "mixer",
                                           "x_scale": "log", "where": {"model.d_model": 16}}])  # fmt: skip
    first, second = suite.findings
    assert (first.x, first.y, first.group, first.plot) == ("task.seq_len", "accuracy", ["mixer"], True)
    assert (second.group, second.x_scale, second.where) == (["mixer"], "log", {"model.d_model": 16})
    assert suite.with_grid({"lr": [1e-2]}).findings == suite.findings


@pytest.mark.parametrize(
    ("finding", "message"),
    [
        ({**FINDING, "x": "seq_len"}, r"axis 'seq_len': allowed mixer, state_floats"),
        ({**FINDING, "group": ["mixer", "task."]}, r"axis 'task.'"),
        ({**FINDING, "group": ["task.seq_len"]}, r"x='task.seq_len' is also a group key"),
        ({**FINDING, "claim": ""}, r"claim"),
        ({**FINDING, "x_scale": "log10"}, r"x_scale"),
        ({**FINDING, "colour": "red"}, r"colour"),
    ],
)
def test_bad_findings_fail_naming_the_field(finding, message):
    with pytest.raises(QualitySuiteError, match=message):
        tiny_suite(findings=[finding])
    with pytest.raises(QualitySuiteError, match="findings repeat a title"):
        tiny_suite(findings=[FINDING, FINDING])


# ----------------------------------------------------------------------------------------------------------
# Pinned run keys: computed before the validation split, the encoder planning of classification cells, the
# suite's classifier and parameter budget existed; none of them may move an existing key (a moved key re-runs
# every finished cell of a store).

PINNED_KEYS = {
    "demo": [("attention", "f244d3abdd139edc"), ("mamba", "708257675f9d54a6"), ("s4d", "8c84be59e8b031d9")],
    "mqar-tiny": [("attention", "70c56188946e697c"), ("attention", "94f30e70c2605f71"),
                  ("attention", "11431998cc66442e"), ("attention", "0377f9c001a54be1"),
                  ("mamba", "c84e2e73e062120b"), ("s4d", "a5d4ea222b8d0998")],
}


@pytest.mark.parametrize("name", sorted(PINNED_KEYS))
def test_run_keys_of_shipped_token_suites_are_pinned(name):
    plan = plan_quality(load_suite(name), mixers=["attention", "mamba", "s4d"])
    assert set(PINNED_KEYS[name]) <= {(run.cell.mixer, run.key) for run in plan.runs}


def test_run_keys_of_classification_cells_are_pinned():
    suite = tiny_suite(
        mixers=["attention", "s4d"],
        tasks=[{"name": "listops", "params": {"min_length": 10, "max_length": 40, "num_train": 64, "num_test": 16}},
               {"name": "pathfinder", "params": {"size": 32, "difficulty": "easy", "num_train": 32, "num_test": 8}}],
        grid={"lr": [1e-3]},
    )
    assert [(run.cell.task.name, run.cell.mixer, run.key) for run in plan_quality(suite).runs] == [
        ("listops", "attention", "eef4e8a00c41744c"), ("listops", "s4d", "b6b551d23af93023"),
        ("pathfinder", "attention", "816d76f629236880"), ("pathfinder", "s4d", "884a4da7f2c96905"),
    ]


# ----------------------------------------------------------------------------------------------------------
# Classification suites: encoder planning, the suite's classifier, the parameter budget, missing datasets

LISTOPS = {"name": "listops", "params": {"min_length": 10, "max_length": 40, "num_train": 64, "num_test": 16}}


def test_classification_cells_are_planned_in_the_encoders_pattern(probe_mixers):
    suite = tiny_suite(mixers=["attention", "qprobe_noncausal"], tasks=[TINY_TASK, LISTOPS], grid={"lr": [1e-3]})
    plan = plan_quality(suite)
    assert [(run.cell.task.name, run.cell.mixer) for run in plan.runs] == [
        ("mqar", "attention"), ("listops", "attention"), ("listops", "qprobe_noncausal")]
    ((cell, reason),) = plan.dropped  # a causal LM needs the causal pattern; an encoder takes the non-causal one
    assert (cell.task.name, cell.mixer) == ("mqar", "qprobe_noncausal") and "does not support pattern" in reason
    assert plan.runs[2].config.classifier.resolve(plan.runs[2].config.model_config_for(
        plan.runs[2].config.task.build()))[0] == Pattern.NONCAUSAL_SELF


def test_all_adds_the_mixers_an_encoder_can_take_for_classification_suites_only(probe_mixers):
    token_only = tiny_suite(mixers="all").resolved_mixers()
    with_listops = tiny_suite(mixers="all", tasks=[TINY_TASK, LISTOPS]).resolved_mixers()
    assert "qprobe_noncausal" not in token_only and "qprobe_noncausal" in with_listops
    assert set(token_only) < set(with_listops)
    causal = tiny_suite(mixers="all", tasks=[LISTOPS], classifier={"pattern": "causal_self"}).resolved_mixers()
    assert "qprobe_noncausal" not in causal and "qprobe" in causal


def test_a_suite_classifier_joins_the_run_key_only_when_it_is_not_the_default():
    base = tiny_suite(mixers=["s4d"], tasks=[LISTOPS], grid={"lr": [1e-3]})
    default = tiny_suite(mixers=["s4d"], tasks=[LISTOPS], grid={"lr": [1e-3]}, classifier={"pattern": "auto"})
    causal = tiny_suite(mixers=["s4d"], tasks=[LISTOPS], grid={"lr": [1e-3]}, classifier={"pattern": "causal_self"})
    keys = [[run.key for run in plan_quality(suite).runs] for suite in (base, default, causal)]
    assert keys[0] == keys[1] and keys[0] != keys[2]
    (run,) = plan_quality(causal).runs
    assert run.config.classifier.pattern == "causal_self"
    with pytest.raises(QualitySuiteError, match=r"applies to classification tasks, and the suite has none"):
        tiny_suite(classifier={"pooling": "last"})


def test_cells_over_the_param_budget_are_dropped_with_their_count_and_ratio():
    suite = tiny_suite(mixers=["attention", "s4d", "mamba"], tasks=[LISTOPS], grid={"lr": [1e-3]},
                       model={"d_model": 16, "n_layers": 1, "mixer_hypers": {"attention": {"n_heads": 2}}},
                       param_budget=1.1)
    plan = plan_quality(suite)
    ratios = {cell.mixer: budget.ratio for cell, budget in quality.parameter_budgets(suite)}
    assert ratios["attention"] == 1.0 and ratios["mamba"] > 1.1
    assert {run.cell.mixer for run in plan.runs} == {m for m, r in ratios.items() if r <= 1.1}
    reasons = {cell.mixer: reason for cell, reason in plan.dropped}
    assert reasons["mamba"].startswith("over the suite's param_budget of 1.1: ") and "x the base Transformer's" in \
        reasons["mamba"]
    unbounded = plan_quality(suite.model_copy(update={"param_budget": None}))
    assert {run.cell.mixer for run in unbounded.runs} == set(ratios)
    assert [run.key for run in plan.runs] == [run.key for run in unbounded.runs if run.cell.mixer in
                                              {run.cell.mixer for run in plan.runs}]  # the budget is not in keys


def test_a_mixer_built_shorter_than_the_task_is_dropped_at_planning():
    suite = tiny_suite(mixers=["attention", "s4d"], tasks=[LISTOPS], grid={"lr": [1e-3]},
                       model={"d_model": 16, "n_layers": 1, "mixer_hypers": {"attention": {"n_heads": 2,
                                                                                           "max_len": 32}}})
    plan = plan_quality(suite)
    assert [run.cell.mixer for run in plan.runs] == ["s4d"]
    assert plan.dropped[0][1] == "mixer 'attention' is built with max_len=32, below the task's sequence length 40"


def test_a_missing_dataset_fails_its_cells_with_the_install_command_and_the_rest_runs(tmp_path):
    missing = {"name": "sfmnist", "params": {"paths": {"fashion-mnist": str(tmp_path / "nowhere")}}}
    suite = tiny_suite(mixers=["s4d"], tasks=[missing, LISTOPS], grid={"lr": [1e-3]},
                       train={**tiny_suite().train, "steps": 2, "eval_every": 1, "select_on": "val"})
    lines: list[str] = []
    with ResultsStore(tmp_path / "results.db") as store:
        report = run_quality(suite=suite, store=store, log=lines.append)
        (row,) = store.runs()
    ((cell, reason),) = report.unavailable
    assert cell.task.name == "sfmnist" and "apt-get install dataset-fashion-mnist" in reason
    assert f"missing data {cell.label}: {reason}" in lines
    assert report.ran == 1 and "1 failed" not in report.summary() and ", 1 cells missing data, " in report.summary()
    # the one tiny end-to-end cell: LRA's protocol, test accuracy of the best validation checkpoint
    assert row["status"] == "completed" and row["config"]["train"]["select_on"] == "val"
    assert {"accuracy", "val_accuracy", "selected_step"} <= set(row["metrics"])


def test_select_on_val_is_refused_for_token_tasks_at_planning():
    suite = tiny_suite(tasks=[TINY_TASK, LISTOPS], mixers=["s4d"], grid={"lr": [1e-3]},
                       train={**tiny_suite().train, "select_on": "val"})
    plan = plan_quality(suite)
    assert [run.cell.task.name for run in plan.runs] == ["listops"]
    assert "train.select_on='val': task 'mqar' has no such split" in plan.dropped[0][1]


def test_the_lra_suite_follows_the_protocol_and_plans_every_cell_on_the_sample_data():
    suite = load_suite("lra")
    assert suite.param_budget == 1.1 and suite.train["select_on"] == "val" and suite.split == "steps"
    assert [t.name for t in suite.tasks] == ["listops", "pathfinder", "sfmnist", "bytetext", "byte_retrieval"]
    assert {"attention", "s4d", "s4", "mamba"} <= set(suite.resolved_mixers())
    plan = plan_quality(suite)
    assert plan.unavailable == []
    reasons = {(cell.task.name, cell.mixer): reason for cell, reason in plan.dropped}
    for (task, mixer), reason in reasons.items():
        if task == "sfmnist":  # the sample copy has 32 test images; the real one 10,000
            assert reason.startswith("task 'sfmnist': num_test=500: the test split has 32 images")
        else:  # two passes: too many parameters at this size
            assert mixer == "mamba" and reason.startswith("over the suite's param_budget of 1.1: ")
    assert {mixer for task, mixer in reasons if task != "sfmnist"} == {"mamba"}
    assert len(plan.runs) == len(plan.cells) == 4 * (len(suite.resolved_mixers()) - 1)
    (finding,) = suite.findings
    assert "59.60" in finding.claim and "36.37" in finding.claim  # the published numbers it checks against


def test_the_dna_suite_plans_attention_only_up_to_its_max_len():
    suite = load_suite("dna")
    seq_lens = [suite.tasks[0].params["seq_len"], *suite.grid["task.seq_len"]] if "task.seq_len" in suite.grid \
        else [t.params["seq_len"] for t in suite.tasks]
    assert {1024, 4096, 16384} <= set(seq_lens)
    plan = plan_quality(suite)
    attention = {run.cell.task.params["seq_len"] for run in plan.runs if run.cell.mixer == "attention"}
    assert attention and max(attention) <= 4096  # the sample genomes hold windows up to 4,096 in their tests
    assert any("max_len" in reason or "does not fit" in reason for _, reason in plan.dropped)


def test_the_cli_lists_each_cells_parameters_against_the_base_transformer():
    from typer.testing import CliRunner

    from longseq.cli import app

    result = CliRunner().invoke(app, ["bench", "params", "--suite", "lra", "--tasks", "listops"])
    assert result.exit_code == 0, result.output
    assert "base Transformer" in result.output and "param_budget: 1.1" in result.output
    rows = [line for line in result.output.splitlines() if "listops(" in line]
    assert any("mamba" in row and " no" in row for row in rows) and any("| attention" in row and "1.000" in row
                                                                        for row in rows)
