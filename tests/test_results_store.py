"""The SQLite results store (runs, speed points, JSONL) and the provenance recorded with every row."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from longseq.results import ResultsStore, ResultsStoreError, collect_provenance, default_store_path
from longseq.results.store import SCHEMA_VERSION

REPO_ROOT = Path(__file__).resolve().parents[1]

PROVENANCE = {
    "git_commit": "a" * 40,
    "git_dirty": False,
    "torch_version": "2.13.0",
    "python_version": "3.11.7",
    "platform": "Linux",
    "cpu_model": "Test CPU",
    "gpu_model": None,
    "threads": 2,
    "dtype": "float32",
    "command": "longseq bench speed",
    "hostname": "host",
    "timestamp": "2026-01-01T00:00:00+00:00",
}


def speed_row(**changes: object) -> dict:
    row = {
        "bench_id": "bench-1",
        "label": "attention",
        "mixer": "attention",
        "hypers": {"n_heads": 4, "window": None},
        "pattern": "causal_self",
        "mode": "fwd",
        "seq_len": 1024,
        "batch": 2,
        "d_model": 64,
        "dtype": "float32",
        "device": "cpu",
        "status": "ok",
        "median_s": 0.0125,
        "iqr_s": 0.001,
        "repeats": 5,
        "tokens_per_s": 163840.0,
        "peak_mem_bytes": 12_345_678,
        "state_floats": 131072,
        "provenance": PROVENANCE,
    }
    row.update(changes)
    return row


def start(store: ResultsStore, **changes: object) -> str:
    fields = {
        "kind": "quality",
        "task": "mqar",
        "mixer": "mamba",
        "config": {"optim": {"lr": 1e-3}, "d_model": 64},
        "n_params": 12345,
        "provenance": PROVENANCE,
        "state_floats": 4096,
        "suite": "zoology-mini",
        "cell_key": "mqar/mamba/lr=1e-3",
    }
    fields.update(changes)
    return store.start_run(**fields)


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    with ResultsStore(tmp_path / "nested" / "results.db") as opened:
        yield opened


def test_schema_is_created_versioned_and_in_wal_mode(store: ResultsStore) -> None:
    conn = sqlite3.connect(store.path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "runs", "speed"} <= tables
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'runs_cell_key'").fetchone() is not None
    conn.close()


def test_run_round_trip_decodes_json_and_flattens_provenance(store: ResultsStore) -> None:
    run_id = start(store)
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)
    running = store.get_run(run_id)
    assert running["status"] == "running" and running["finished_at"] is None and running["metrics"] is None

    store.finish_run(
        run_id,
        status="completed",
        metrics={"accuracy": 0.93, "per_len": {"64": 1.0}},
        wall_time_s=12.5,
        tokens_per_s=4000.0,
        steps=300,
    )
    [run] = store.runs()
    assert run["run_id"] == run_id and run["status"] == "completed" and run["finished_at"] is not None
    assert run["config"] == {"optim": {"lr": 1e-3}, "d_model": 64}
    assert run["metrics"] == {"accuracy": 0.93, "per_len": {"64": 1.0}}
    assert run["provenance"] == PROVENANCE
    assert (run["wall_time_s"], run["tokens_per_s"], run["steps"]) == (12.5, 4000.0, 300)
    assert (run["n_params"], run["state_floats"], run["suite"]) == (12345, 4096, "zoology-mini")
    assert run["git_dirty"] is False and run["git_commit"] == "a" * 40
    assert (run["torch_version"], run["cpu_model"], run["threads"]) == ("2.13.0", "Test CPU", 2)
    assert run["command"] == "longseq bench speed"


def test_runs_filters(store: ResultsStore) -> None:
    first = start(store, kind="train", task="copy", mixer="attention", suite=None, cell_key=None)
    second = start(store)
    assert [r["run_id"] for r in store.runs()] == [first, second]
    assert [r["run_id"] for r in store.runs(kind="train")] == [first]
    assert [r["run_id"] for r in store.runs(task="mqar", mixer="mamba", suite="zoology-mini")] == [second]
    assert store.runs(status="completed") == []


def test_invalid_kind_and_status_name_value_and_allowed(store: ResultsStore) -> None:
    with pytest.raises(ValueError, match=r"kind='bogus'.*'train' or 'quality'"):
        start(store, kind="bogus")
    run_id = start(store)
    with pytest.raises(ValueError, match=r"status='done'; allowed: completed, failed, interrupted"):
        store.finish_run(run_id, status="done", metrics={}, wall_time_s=1.0, tokens_per_s=1.0, steps=1)
    with pytest.raises(ValueError, match=r"status='finished'; allowed: running, completed"):
        store.runs(status="finished")
    with pytest.raises(ValueError, match=r"n_params=-5"):
        start(store, n_params=-5)


def test_finish_run_refuses_unknown_and_already_finished_runs(store: ResultsStore) -> None:
    with pytest.raises(ResultsStoreError, match="no run with run_id='nope'"):
        store.finish_run("nope", status="failed", metrics={}, wall_time_s=0.0, tokens_per_s=0.0, steps=0)
    run_id = start(store)
    store.finish_run(run_id, status="failed", metrics={"loss": float("nan")}, wall_time_s=1, tokens_per_s=2, steps=3)
    with pytest.raises(ResultsStoreError, match="already 'failed'"):
        store.finish_run(run_id, status="completed", metrics={}, wall_time_s=1.0, tokens_per_s=1.0, steps=1)


def test_restarting_a_run_id_resumes_it_unless_completed(store: ResultsStore) -> None:
    run_id = start(store, run_id="fixed")
    store.finish_run(run_id, status="interrupted", metrics={"step": 10}, wall_time_s=1.0, tokens_per_s=1.0, steps=10)
    assert start(store, run_id="fixed") == "fixed"
    resumed = store.get_run("fixed")
    assert resumed["status"] == "running" and resumed["metrics"] is None and resumed["finished_at"] is None
    store.finish_run("fixed", status="completed", metrics={}, wall_time_s=2.0, tokens_per_s=1.0, steps=20)
    with pytest.raises(ResultsStoreError, match="already completed"):
        start(store, run_id="fixed")
    assert len(store.runs()) == 1


def test_finished_cell_finds_only_completed_runs(store: ResultsStore) -> None:
    key = "mqar/mamba/lr=1e-3"
    assert store.finished_cell(key) is None
    failed = start(store, cell_key=key)
    assert store.finished_cell(key) is None  # running
    store.finish_run(failed, status="failed", metrics={}, wall_time_s=1.0, tokens_per_s=1.0, steps=1)
    assert store.finished_cell(key) is None
    done = start(store, cell_key=key)
    store.finish_run(done, status="completed", metrics={"accuracy": 1.0}, wall_time_s=1.0, tokens_per_s=1.0, steps=1)
    found = store.finished_cell(key)
    assert found is not None and found["run_id"] == done and found["metrics"] == {"accuracy": 1.0}
    assert store.finished_cell("other") is None


def test_writes_are_committed_immediately(store: ResultsStore) -> None:
    run_id = start(store)
    store.add_speed_point(speed_row())
    # A second connection sees both rows while the first is still open: nothing waits for close().
    with ResultsStore(store.path) as other:
        assert other.get_run(run_id)["status"] == "running"
        assert len(other.speed_points()) == 1


def test_speed_round_trip_and_filters(store: ResultsStore) -> None:
    first = store.add_speed_point(speed_row(hypers={"n_heads": np.int64(4)}, median_s=np.float64(0.5)))
    second = store.add_speed_point(
        speed_row(bench_id="bench-2", mode="decode", status="oom", median_s=None, error="CUDA out of memory")
    )
    assert second > first
    point = store.speed_points(bench_id="bench-1")[0]
    assert point["id"] == first and point["hypers"] == {"n_heads": 4} and point["median_s"] == 0.5
    assert point["provenance"] == PROVENANCE and point["git_dirty"] is False and point["threads"] == 2
    assert "row_key" not in point
    [failed] = store.speed_points(status="oom")
    assert (failed["mode"], failed["error"], failed["median_s"]) == ("decode", "CUDA out of memory", None)
    assert store.speed_points(label="attention", mode="fwd") == [point]
    assert store.latest_bench_id() == "bench-2"


def test_latest_bench_id_of_empty_store_is_none(store: ResultsStore) -> None:
    assert store.latest_bench_id() is None


def test_speed_point_validation_names_keys_and_values(store: ResultsStore) -> None:
    with pytest.raises(ValueError, match=r"unknown key 'median'.*unknown key 'sequence_length'.*allowed keys"):
        store.add_speed_point(speed_row(median=1.0, sequence_length=5))
    with pytest.raises(ValueError, match=r"status='slow'.*'ok', 'skipped', 'oom', 'crashed', 'killed' or 'timeout'"):
        store.add_speed_point(speed_row(status="slow"))
    with pytest.raises(ValueError, match=r"mode='backward'"):
        store.add_speed_point(speed_row(mode="backward"))
    with pytest.raises(ValueError, match=r"missing key 'seq_len'"):
        store.add_speed_point({k: v for k, v in speed_row().items() if k != "seq_len"})
    with pytest.raises(ValueError, match=r"status 'ok' needs median_s"):
        store.add_speed_point(speed_row(median_s=None))
    with pytest.raises(ValueError, match=r"hypers must be JSON-serializable"):
        store.add_speed_point(speed_row(hypers={"fn": object()}))
    assert store.speed_points() == []


def test_non_store_files_fail_naming_the_path(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(ResultsStoreError, match=re.escape(str(garbage))):
        ResultsStore(garbage)

    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ResultsStoreError, match=re.escape(str(foreign)) + ".*not a longseq results store"):
        ResultsStore(foreign)

    ResultsStore(tmp_path / "future.db").close()
    conn = sqlite3.connect(tmp_path / "future.db")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ResultsStoreError, match="schema_version='99'"):
        ResultsStore(tmp_path / "future.db")


def test_default_store_path_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LONGSEQ_RESULTS", raising=False)
    assert default_store_path() == Path("longseq-results") / "results.db"
    monkeypatch.setenv("LONGSEQ_RESULTS", str(tmp_path / "elsewhere.db"))
    assert default_store_path() == tmp_path / "elsewhere.db"
    with ResultsStore() as store:
        assert store.path == tmp_path / "elsewhere.db"
    assert (tmp_path / "elsewhere.db").is_file()


def test_jsonl_export_import_is_idempotent(store: ResultsStore, tmp_path: Path) -> None:
    run_id = start(store)
    store.finish_run(run_id, status="completed", metrics={"accuracy": 0.5}, wall_time_s=1.0, tokens_per_s=2.0, steps=3)
    start(store, run_id="still-running")
    store.add_speed_point(speed_row())
    store.add_speed_point(speed_row(seq_len=2048, median_s=0.05))
    store.add_speed_point(speed_row(bench_id="other", status="timeout", median_s=None))

    assert store.export_jsonl(tmp_path / "out" / "runs.jsonl", "runs") == 2
    assert store.export_jsonl(tmp_path / "out" / "speed.jsonl", "speed", bench_id="bench-1") == 2
    lines = [json.loads(line) for line in (tmp_path / "out" / "speed.jsonl").read_text().splitlines()]
    assert all(line["table"] == "speed" for line in lines)

    # Re-importing into the store that wrote the files adds nothing.
    assert store.import_jsonl(tmp_path / "out" / "runs.jsonl") == 0
    assert store.import_jsonl(tmp_path / "out" / "speed.jsonl") == 0

    with ResultsStore(tmp_path / "copy.db") as copy:
        assert copy.import_jsonl(tmp_path / "out" / "runs.jsonl") == 2
        assert copy.import_jsonl(tmp_path / "out" / "speed.jsonl") == 2
        assert copy.import_jsonl(tmp_path / "out" / "speed.jsonl") == 0
        assert copy.runs() == store.runs()
        strip_id = [{k: v for k, v in p.items() if k != "id"} for p in copy.speed_points()]
        assert strip_id == [{k: v for k, v in p.items() if k != "id"} for p in store.speed_points(bench_id="bench-1")]


def test_import_rejects_bad_lines_atomically(store: ResultsStore, tmp_path: Path) -> None:
    good = json.dumps({"table": "speed", **speed_row()})
    bad_table = tmp_path / "bad_table.jsonl"
    bad_table.write_text(good + "\n\n" + json.dumps({"table": "points", "x": 1}) + "\n")
    with pytest.raises(
        ResultsStoreError, match=re.escape(f"{bad_table}:3") + r".*table='points'; allowed: runs, speed"
    ):
        store.import_jsonl(bad_table)
    bad_json = tmp_path / "bad_json.jsonl"
    bad_json.write_text(good + "\n{oops\n")
    with pytest.raises(ResultsStoreError, match=re.escape(f"{bad_json}:2")):
        store.import_jsonl(bad_json)
    assert store.speed_points() == []
    with pytest.raises(ResultsStoreError, match=r"table='nope'"):
        store.export_jsonl(tmp_path / "x.jsonl", "nope")


def test_provenance_fields_are_present_and_typed() -> None:
    provenance = collect_provenance(dtype="bfloat16")
    expected = {
        "git_commit",
        "git_dirty",
        "torch_version",
        "python_version",
        "platform",
        "cpu_model",
        "gpu_model",
        "threads",
        "kernels",
        "dtype",
        "command",
        "hostname",
        "timestamp",
    }
    assert set(provenance) == expected
    assert isinstance(provenance["torch_version"], str) and isinstance(provenance["python_version"], str)
    assert isinstance(provenance["threads"], int) and provenance["threads"] >= 1
    # which path each compiled kernel runs: "compiled" or "pytorch: <why>"
    assert all(v == "compiled" or v.startswith("pytorch: ") for v in provenance["kernels"].values())
    assert provenance["dtype"] == "bfloat16"
    assert provenance["command"] == shlex.join(sys.argv)
    assert provenance["timestamp"].endswith("+00:00")
    assert provenance["gpu_model"] is None or isinstance(provenance["gpu_model"], str)
    assert provenance["cpu_model"] is None or isinstance(provenance["cpu_model"], str)
    assert collect_provenance(command="longseq train x.yaml")["command"] == "longseq train x.yaml"


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="needs git and a git checkout"
)
def test_provenance_records_the_commit_inside_the_repository() -> None:
    provenance = collect_provenance()
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["git_commit"] or "")
    assert isinstance(provenance["git_dirty"], bool)


def test_provenance_without_git_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    provenance = collect_provenance()
    assert provenance["git_commit"] is None and provenance["git_dirty"] is None


def test_a_version_1_store_is_migrated_when_opened_and_keeps_its_rows(tmp_path: Path) -> None:
    """Version 1 refused speed mode "fwd_train" in a CHECK constraint; opening it rebuilds the table."""
    path = tmp_path / "v1.db"
    with ResultsStore(path) as store:
        store.add_speed_point(speed_row())
    conn = sqlite3.connect(path)
    (ddl,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'speed'").fetchone()
    conn.executescript(f"""
        CREATE TABLE speed_v1 {ddl[ddl.index('('):].replace("'fwd_train', ", "")};
        INSERT INTO speed_v1 SELECT * FROM speed; DROP TABLE speed; ALTER TABLE speed_v1 RENAME TO speed;
        UPDATE meta SET value = '1' WHERE key = 'schema_version';""")
    conn.close()
    with ResultsStore(path) as store:
        assert [p["mode"] for p in store.speed_points()] == ["fwd"]
        store.add_speed_point(speed_row(mode="fwd_train", bench_id="bench-2"))
        assert sorted(p["mode"] for p in store.speed_points()) == ["fwd", "fwd_train"]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    conn.close()
