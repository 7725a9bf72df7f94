"""The results store under concurrent writers and interrupted writes: two processes writing at once lose no row, a
writer killed (SIGKILL) mid-transaction leaves a readable store with every committed row, and a lock held past the
busy timeout is waited out by bounded retries."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from longseq.results import ResultsStore, ResultsStoreError
from longseq.results import store as store_module

PROVENANCE = {"git_commit": "a" * 40, "git_dirty": False, "torch_version": "2", "cpu_model": "cpu", "threads": 1,
              "command": "test"}
ROWS_PER_WRITER = 40


def speed_row(bench_id: str, number: int, **changes: object) -> dict:
    row = {"bench_id": bench_id, "label": "attention", "mixer": "attention", "pattern": "causal_self", "mode": "fwd",
           "seq_len": 16 + number, "batch": 1, "d_model": 16, "dtype": "float32", "device": "cpu", "status": "ok",
           "median_s": 0.001, "provenance": PROVENANCE}
    return {**row, **changes}


def _writer(path: str, name: str, start: multiprocessing.synchronize.Barrier) -> None:
    """A benchmark-like process: opens the store when the other does (a fresh file: both race to create the
    schema), then writes a run and a speed point per row, each its own transaction."""
    start.wait()
    with ResultsStore(path) as store:
        for number in range(ROWS_PER_WRITER):
            run_id = store.start_run(kind="quality", task="mqar", mixer=name, config={"n": number}, n_params=1,
                                     provenance=PROVENANCE, run_id=f"{name}-{number}")
            store.add_speed_point(speed_row(name, number))
            store.finish_run(run_id, status="completed", metrics={"accuracy": number}, wall_time_s=1.0,
                             tokens_per_s=1.0, steps=number)


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_two_processes_writing_at_once_lose_no_row(tmp_path):
    path = tmp_path / "results.db"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [context.Process(target=_writer, args=(str(path), name, start)) for name in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0, 0]

    with ResultsStore(path) as store:
        runs = store.runs()
        assert sorted(run["run_id"] for run in runs) == sorted(f"{n}-{i}" for n in "ab" for i in range(ROWS_PER_WRITER))
        assert all(run["status"] == "completed" and run["metrics"]["accuracy"] == run["steps"] for run in runs)
        for name in "ab":
            points = store.speed_points(bench_id=name)
            assert sorted(p["seq_len"] for p in points) == [16 + i for i in range(ROWS_PER_WRITER)]
    assert _integrity(path) == "ok"


def _killed_mid_import(path: str, jsonl: str, committed: int) -> None:
    """Commits ``committed`` speed points one by one, then dies by SIGKILL as the COMMIT of a large import starts:
    its rows were written (the page cache is kept tiny so that they spill into the WAL) but never committed."""
    store = ResultsStore(path)
    for number in range(committed):
        store.add_speed_point(speed_row("committed", number))
    conn = store._conn
    conn.execute("PRAGMA cache_size=2")  # pages: the import's writes reach the WAL file before its COMMIT
    conn.set_trace_callback(lambda sql: os.kill(os.getpid(), signal.SIGKILL) if sql == "COMMIT" else None)
    store.import_jsonl(jsonl)


def test_a_writer_killed_mid_transaction_leaves_every_committed_row(tmp_path):
    path = tmp_path / "results.db"
    jsonl = tmp_path / "big.jsonl"
    lines = [json.dumps({"table": "speed", **speed_row("uncommitted", number, error="x" * 2000)})
             for number in range(300)]
    jsonl.write_text("\n".join(lines) + "\n")
    committed = 25
    child = multiprocessing.get_context("spawn").Process(target=_killed_mid_import,
                                                         args=(str(path), str(jsonl), committed))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    # The killed transaction did reach the disk (frames without a commit record), so this is a real test of recovery.
    assert Path(f"{path}-wal").stat().st_size > 300 * 2000

    with ResultsStore(path) as store:
        assert [p["seq_len"] for p in store.speed_points()] == [16 + i for i in range(committed)]
        assert store.speed_points(bench_id="uncommitted") == []
        store.add_speed_point(speed_row("after", 0))  # and the store takes writes again
        assert len(store.speed_points()) == committed + 1
    assert _integrity(path) == "ok"


def _hold_write_lock(path: Path, seconds: float, held: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


def _with_lock_held(path: Path, seconds: float) -> threading.Thread:
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, seconds, held))
    holder.start()
    assert held.wait(10)
    return holder


def test_a_lock_held_past_the_busy_timeout_is_waited_out_by_retries(tmp_path, monkeypatch):
    path = tmp_path / "results.db"
    ResultsStore(path).close()
    monkeypatch.setattr(store_module, "RETRY_DELAYS_S", (0.05,) * 20)
    with ResultsStore(path, busy_timeout_s=0.01) as store:
        holder = _with_lock_held(path, 0.4)
        started = time.monotonic()
        store.add_speed_point(speed_row("late", 0))
        waited = time.monotonic() - started
        holder.join()
        assert waited >= 0.3  # it did wait for the lock, through several retries of 0.05-0.075 s
        assert [p["bench_id"] for p in store.speed_points()] == ["late"]


def test_retries_are_bounded_and_the_error_names_the_store(tmp_path, monkeypatch):
    path = tmp_path / "results.db"
    ResultsStore(path).close()
    monkeypatch.setattr(store_module, "RETRY_DELAYS_S", (0.01, 0.01))
    with ResultsStore(path, busy_timeout_s=0.01) as store:
        holder = _with_lock_held(path, 1.0)
        try:
            with pytest.raises(ResultsStoreError, match=rf"add_speed_point of results store {path}: still locked "
                                                        r"after 3 attempts .*database is locked"):
                store.add_speed_point(speed_row("never", 0))
        finally:
            holder.join()
        assert store.speed_points() == []  # nothing half-written
        store.add_speed_point(speed_row("now", 0))
    with pytest.raises(ResultsStoreError, match="busy_timeout_s=-1"):
        ResultsStore(path, busy_timeout_s=-1)
