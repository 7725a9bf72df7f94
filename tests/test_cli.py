"""The `longseq` CLI: list, train (flags and YAML), resume, and one-line errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from longseq.cli import app
from longseq.mixers import Pattern
from longseq.results import ResultsStore
from longseq.testing.contract import CHECKS

TINY = ["--seq-len", "16", "--kv-pairs", "2", "--vocab", "32", "--d-model", "16", "--layers", "1",
        "--train-examples", "64", "--test-examples", "16", "--steps", "6", "--batch-size", "4", "--eval-every", "3",
        "--checkpoint-every", "3", "--warmup-steps", "2", "--no-progress", "--hyper", "n_heads=2"]


def run(args: list[str]):
    return CliRunner().invoke(app, args)


def test_list_shows_mixers_and_tasks():
    r = run(["list"])
    assert r.exit_code == 0, r.output
    assert "attention" in r.output and "mqar" in r.output


def test_help_on_every_command():
    for cmd in ([], ["list"], ["train"], ["demo"], ["bench"], ["bench", "speed"], ["bench", "quality"], ["report"],
                ["check"], ["data"], ["data", "cache-pathfinder"]):
        r = run([*cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output


def test_check_prints_a_clean_report_for_attention_and_refuses_bad_hypers():
    r = run(["check", "attention", "--hyper", "n_heads=2"])
    assert r.exit_code == 0, r.output
    n_causal = sum(check.patterns(Pattern.CAUSAL_SELF) for check in CHECKS)
    assert f"causal_self      {n_causal} passed, 0 failed" in r.output and "all checks passed" in r.output
    r = run(["check", "attention", "--hyper", "n_heads=3"])
    assert r.exit_code == 2 and "not divisible by n_heads=3" in r.output


def test_train_records_the_run_and_resume_of_a_finished_run_is_a_no_op(tmp_path: Path):
    db, out = tmp_path / "r.db", tmp_path / "run"
    r = run(["train", *TINY, "--store", str(db), "--out-dir", str(out)])
    assert r.exit_code == 0, r.output
    (row,) = ResultsStore(db).runs()
    assert row["status"] == "completed" and row["task"] == "mqar" and row["mixer"] == "attention"
    assert row["n_params"] > 0 and row["state_floats"] == 2 * 16 * 16
    assert row["git_commit"] is None or len(row["git_commit"]) == 40
    assert [json.loads(x)["kind"] for x in (out / "metrics.jsonl").read_text().splitlines()].count("eval") >= 2
    again = run(["train", *TINY, "--store", str(db), "--out-dir", str(out), "--resume"])
    assert again.exit_code == 0, again.output


def test_train_from_yaml(tmp_path: Path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "task: {name: mqar, params: {seq_len: 16, num_kv_pairs: 2, vocab_size: 32, num_train: 32, num_test: 8}}\n"
        "model: {d_model: 16, n_layers: 1, mixer_hypers: {attention: {n_heads: 2}}}\n"
        f"train: {{steps: 2, batch_size: 4, eval_every: 1, out_dir: {tmp_path / 'run'}}}\n")
    r = run(["train", "--config", str(cfg), "--store", str(tmp_path / "r.db"), "--no-progress"])
    assert r.exit_code == 0, r.output


def _corrupt_checkpoint(tmp_path: Path) -> list[str]:
    out = tmp_path / "run"
    assert run(["train", *TINY, "--store", str(tmp_path / "r.db"), "--out-dir", str(out)]).exit_code == 0
    for state in out.glob("checkpoints/*/state.json"):
        state.write_text("{not json")
    return ["train", *TINY, "--store", str(tmp_path / "r.db"), "--out-dir", str(out), "--resume"]


BAD = {
    "unknown mixer": (lambda p: ["train", "--mixer", "atention"], "unknown mixer 'atention'"),
    "unknown task": (lambda p: ["train", "--task", "mqr"], "unknown task 'mqr'"),
    "too many kv pairs": (lambda p: ["train", "--kv-pairs", "40", "--seq-len", "128"], "4*num_kv_pairs > seq_len"),
    "negative width": (lambda p: ["train", "--d-model", "-4"], "d_model"),
    "heads do not divide": (lambda p: ["train", "--d-model", "18", "--hyper", "n_heads=4"], "not divisible"),
    "unknown hyper": (lambda p: ["train", "--hyper", "n_head=2"], "no hyper 'n_head'"),
    "malformed hyper": (lambda p: ["train", "--hyper", "n_heads"], "--hyper 'n_heads' must look like KEY=VALUE"),
    "hyper given twice": (lambda p: ["train", "--hyper", "n_heads=2", "--hyper", "n_heads=4"],
                          "key 'n_heads' is given twice"),
    "malformed task param": (lambda p: ["train", "--task-param", "=3"], "--task-param '=3' must look like KEY=VALUE"),
    "missing checkpoint": (lambda p: ["train", "--resume", "--out-dir", str(p / "nothing")], "no checkpoint"),
    "corrupt checkpoint": (_corrupt_checkpoint, "state.json"),
    "missing config": (lambda p: ["train", "--config", str(p / "nope.yaml")], "does not exist"),
    "malformed yaml": (lambda p: ["train", "--config", str(_write(p, "task: [unclosed"))], "not valid YAML"),
    "config not a mapping": (lambda p: ["train", "--config", str(_write(p, "- a\n- b"))], "must hold a mapping"),
    "unknown config field": (lambda p: ["train", "--config", str(_write(p, "train: {steps: 1}\nmodle: {}"))],
                             "modle"),
    "bad train value": (lambda p: ["train", "--config", str(_write(p, "train: {steps: 1, lr: -1}"))], "lr"),
}


def _write(p: Path, text: str) -> Path:
    f = p / "cfg.yaml"
    f.write_text(text)
    return f


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_error_without_traceback(case, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_args, fragment = BAD[case]
    r = CliRunner().invoke(app, make_args(tmp_path))
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    err = r.stderr if hasattr(r, "stderr") else r.output
    assert "Traceback" not in r.output
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]


def test_bench_speed_and_report_through_the_cli(tmp_path: Path):
    db, out = tmp_path / "r.db", tmp_path / "rep"
    r = run(["bench", "speed", "--mixers", "attention,attention[impl=math]", "--lengths", "32,64", "--modes",
             "fwd,decode", "--d-model", "16", "--repeats", "1", "--min-time", "0.01", "--store", str(db),
             "--json", str(tmp_path / "rows.json")])
    assert r.exit_code == 0, r.output
    assert "attention[impl=math]" in r.output  # labels are not eaten as rich markup
    assert len(ResultsStore(db).speed_points(status="ok")) == 8
    r = run(["report", "--store", str(db), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "report.html").stat().st_size > 1000


def test_bench_speed_prints_cabs_efficiency_lengths_beside_ours(tmp_path: Path):
    r = run(["bench", "speed", "--mixers", "attention,attention[impl=math],tcn", "--lengths", "32,64,128", "--modes",
             "fwd", "--d-model", "16", "--threads", "1", "--repeats", "1", "--min-time", "0.01", "--store",
             str(tmp_path / "r.db")])
    assert r.exit_code == 0, r.output
    table = r.output[r.output.index("efficiency length: L beyond which"):]
    header = next(line for line in table.splitlines() if "label" in line)
    assert all(column in header for column in ("baseline", "ours", "CAB", "CAB note"))
    # One row per (baseline, metric) for tcn, each with CAB's length or its reason.
    assert sum(line.lstrip("│ ").startswith("tcn") for line in table.splitlines()) == 4
    assert "Only attention[impl=math] is CAB's vanilla baseline" in r.output
    assert "the mixer's time without the shortest length" in r.output


def test_bench_speed_bad_input_is_one_line():
    for args, fragment in ((["--mixers", "atention"], "atention"), (["--lengths", "10,x"], "--lengths"),
                           (["--max-memory", "lots"], "lots"),
                           (["--modes", "sideways"], "allowed: a non-empty list of fwd, fwdbwd, fwd_train")):
        r = run(["bench", "speed", *args])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert fragment in r.output
