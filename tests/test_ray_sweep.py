"""Quality sweeps on Ray (longseq.bench.ray_sweep): a killed worker is recorded failed while the other runs complete,
the rows equal the in-process runner's, a resumed run continues its own row, and the budget maps as documented.

One local cluster (2 CPUs) serves the module; the tests that need it skip when Ray is not installed."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from longseq.bench import quality
from longseq.bench.quality import QualitySuite, Sweep, plan_quality, run_quality
from longseq.bench.ray_sweep import KILL_ENV, RaySweepError, _checkpoint_run_id
from longseq.results.store import ResultsStore
from longseq.train.experiment import run_experiment
from longseq.train.trainer import Trainer

KILL_SUITE = "ray-kill"
TINY_TASK = {"name": "mqar",
             "params": {"seq_len": 32, "num_kv_pairs": 2, "vocab_size": 64, "num_train": 64, "num_test": 16}}


def tiny_suite(name: str, **overrides: Any) -> QualitySuite:
    """Equal steps: a run's result depends neither on the machine's load nor on where it ran."""
    data = {
        "name": name,
        "description": "a tiny suite for the Ray tests",
        "budget_s": 600.0,
        "split": "steps",
        "mixers": ["attention"],
        "tasks": [TINY_TASK],
        "model": {"d_model": 16, "n_layers": 1, "mixer_hypers": {"attention": {"n_heads": 2}}},
        "train": {"steps": 3, "batch_size": 8, "eval_every": 100, "log_every": 1, "threads": 1},
        "grid": {"lr": [1e-3, 3e-3, 1e-2]},
    }
    return QualitySuite(**{**data, **overrides})


@pytest.fixture(scope="module")
def cluster():
    """A local cluster whose workers kill themselves on the second run of suite ``ray-kill``; yields that key."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[distributed]'")
    killed = plan_quality(tiny_suite(KILL_SUITE)).runs[1].key
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KILL_ENV, killed)  # workers inherit the environment the cluster starts with
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield killed
        finally:
            ray.shutdown()


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """What two runs of one experiment must share, wherever they ran: not their folders, times or provenance."""
    config = {**row["config"], "train": {k: v for k, v in row["config"]["train"].items() if k != "out_dir"}}
    return {"status": row["status"], "task": row["task"], "mixer": row["mixer"], "suite": row["suite"],
            "config": config, "n_params": row["n_params"], "state_floats": row["state_floats"],
            "metrics": row["metrics"], "steps": row["steps"]}


def test_a_killed_worker_is_recorded_failed_and_the_other_runs_complete(cluster, tmp_path):
    killed = cluster
    suite = tiny_suite(KILL_SUITE)
    plan = plan_quality(suite)
    lines: list[str] = []
    with ResultsStore(tmp_path / "results.db") as store:
        report = run_quality(suite=suite, store=store, ray="local", command="pytest", log=lines.append)
        ((run, reason),) = report.failed
        assert (report.ran, report.skipped, report.out_of_budget, run.key) == (2, 0, [], killed)
        assert reason.startswith("WorkerCrashedError: ")
        rows = {row["cell_key"]: row for row in store.runs()}
        assert set(rows) == {run.key for run in plan.runs}
        dead = rows.pop(killed)
        assert (dead["status"], dead["steps"], dead["metrics"]) == (
            "failed", 0, {"stopped_by": "worker_lost", "error": reason})
        assert dead["config"]["train"]["lr"] == run.lr and dead["n_params"] > 0  # the row written at submission
        for key, row in rows.items():
            assert (row["status"], row["steps"], row["command"]) == ("completed", 3, "pytest")
            assert row["metrics"]["stopped_by"] == "steps" and 0.0 <= row["metrics"]["accuracy"] <= 1.0
            # the folder's checkpoints name the driver's row, so that a resume continues it
            assert _checkpoint_run_id(tmp_path / "quality" / KILL_SUITE / key) == row["run_id"]
        assert {row["run_id"] for row in report.leaderboard} <= {row["run_id"] for row in rows.values()}
        assert any(line.endswith(f"failed: {reason}") for line in lines)

        again = run_quality(suite=suite, store=store, ray="local", log=lines.append)
        assert (again.ran, again.skipped, [run.key for run, _ in again.failed]) == (0, 2, [killed])
        assert [row["status"] for row in store.runs() if row["cell_key"] == killed] == ["failed", "failed"]


def test_rows_recorded_through_ray_equal_the_in_process_runners(cluster, tmp_path):
    suite = tiny_suite("ray-same")
    stores = {}
    for where, ray in (("process", None), ("ray", "local")):
        with ResultsStore(tmp_path / f"{where}.db") as store:
            report = run_quality(suite=suite, store=store, ray=ray, out_root=tmp_path / where, log=lambda line: None)
            assert (report.ran, report.failed) == (3, [])
            stores[where] = {row["cell_key"]: _comparable(row) for row in store.runs()}
    assert stores["ray"] == stores["process"] and len(stores["ray"]) == 3


def test_a_run_interrupted_after_a_checkpoint_resumes_on_ray_in_its_own_row(cluster, tmp_path, monkeypatch):
    suite = tiny_suite("ray-resume", grid={"lr": [3e-3]}, train={**tiny_suite("x").train, "steps": 6})
    (run,) = plan_quality(suite).runs
    with ResultsStore(tmp_path / "whole.db") as store:  # the oracle: the run, uninterrupted, in this process
        run_quality(suite=suite, store=store, out_root=tmp_path / "whole", log=lambda line: None)
        (whole,) = store.runs()

    save = Trainer._save

    def save_then_interrupt(self: Trainer, session_start: float):
        save(self, session_start)
        raise KeyboardInterrupt

    with ResultsStore(tmp_path / "results.db") as store:
        sweep = Sweep(suite, store, tmp_path / "quality", 600.0, 0.0, "pytest", print)
        config = sweep.config_for(run, None)
        config = config.model_copy(update={"train": config.train.model_copy(update={"checkpoint_every": 2})})
        monkeypatch.setattr(Trainer, "_save", save_then_interrupt)  # this process only: Ray workers are others
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, store=store, resume=False, progress=False, suite=suite.name, cell_key=run.key,
                           data_fingerprint=run.fingerprint)
        monkeypatch.undo()
        (interrupted,) = store.runs()
        assert (interrupted["status"], interrupted["steps"]) == ("interrupted", 2)

        lines: list[str] = []
        report = run_quality(suite=suite, store=store, ray="local", log=lines.append)
        assert (report.ran, report.failed) == (1, [])
        assert any(line.endswith("6 steps (resuming)") for line in lines)
        (resumed,) = store.runs()  # the same row, continued
        assert resumed["run_id"] == interrupted["run_id"] and resumed["steps"] == 6
        assert _comparable(resumed) == _comparable(whole)


def test_runs_that_cannot_start_are_not_submitted(cluster, tmp_path):
    with ResultsStore(tmp_path / "results.db") as store:
        spent = run_quality(suite=tiny_suite("ray-budget"), store=store, ray="local", budget_s=1e-9,
                            log=lambda line: None)
        assert (spent.ran, spent.failed, len(spent.out_of_budget)) == (0, [], 3)
        wide = tiny_suite("ray-wide", grid={"lr": [1e-3]}, train={**tiny_suite("x").train, "threads": 4})
        report = run_quality(suite=wide, store=store, ray="local", log=lambda line: None)
        assert [reason for _, reason in report.failed] == [
            "train.threads=4 asks for 4 CPUs and the Ray cluster has 2"]
        assert store.runs() == []


def test_time_shares_split_the_time_left_over_the_waves_of_runs_left():
    sweep = Sweep(tiny_suite("shares", split="time"), None, None, 100.0, 0.0, None, print)  # type: ignore[arg-type]
    # one slot: the in-process rule, left / runs left; two slots: left / ceil(runs left / 2)
    assert [sweep.share(100.0, 4), sweep.share(100.0, 4, 2), sweep.share(100.0, 3, 2), sweep.share(90.0, 1, 2)] == [
        25.0, 50.0, 50.0, 90.0]
    steps = Sweep(tiny_suite("shares"), None, None, 100.0, 0.0, None, print)  # type: ignore[arg-type]
    assert steps.share(100.0, 4, 2) is None


def test_without_ray_installed_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with ResultsStore(tmp_path / "results.db") as store, pytest.raises(RaySweepError, match=r"pip install -e "
                                                                        r"'\.\[distributed\]'"):
        run_quality(suite=tiny_suite("no-ray"), store=store, ray="local", log=lambda line: None)


def test_the_cli_passes_ray_through(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from longseq.cli import app

    seen: dict[str, Any] = {}

    def fake_run_quality(**kwargs: Any) -> quality.QualityReport:
        seen.update(kwargs)
        return quality.QualityReport(kwargs["suite"].name, 0, 0, [], [], [], [], 0.0, 1.0)

    monkeypatch.setattr(quality, "run_quality", fake_run_quality)
    for args, address in (([], None), (["--ray", "local"], "local"), (["--ray", "ray://head:10001"], "ray://head:10001")):
        result = CliRunner().invoke(app, ["bench", "quality", "--suite", "mqar-tiny", "--store",
                                          str(tmp_path / "r.db"), *args])
        assert result.exit_code == 0, result.output
        assert seen["ray"] == address
