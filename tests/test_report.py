"""The report: markdown tables, a self-contained HTML file, and figures that really are images."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

from longseq.bench.ranking import rank_runs
from longseq.bench.report import (
    MEMORY_MODES,
    TIME_MODES,
    Plot,
    ReportError,
    build_sections,
    rank_quality_runs,
    write_report,
)
from longseq.results import ResultsStore
from longseq.results.store import SPEED_MODES as STORED_MODES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")
PROVENANCE = {
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": True,
    "torch_version": "2.13.0",
    "cpu_model": "Synthetic CPU",
    "gpu_model": None,
    "threads": 2,
    "dtype": "float32",
    "command": "longseq bench speed --suite tiny",
}
LENGTHS = (256, 512, 1024, 2048)
# (label, mixer, seconds per token at length 1, exponent of the length, state floats at length L)
MIXERS = (
    ("attention", "attention", 1e-7, 2.0, lambda n: 2 * 64 * n),
    ("mamba", "mamba", 2e-6, 1.0, lambda n: 64 * 16),
    ("hyena[order=2]", "hyena", 3e-6, 1.1, lambda n: 64 * n),
)
EFFICIENCY = [
    {"label": "mamba", "baseline": "attention", "mode": "fwd", "metric": "time", "length": 1024.0, "note": None,
     "cab_length": 1877.26, "cab_extrapolated": False, "cab_note": None},
    {"label": "mamba", "baseline": "attention", "mode": "fwd_train", "metric": "memory", "length": None,
     "note": "< 256 (the fits cross at ~69.5)", "cab_length": 69.5066, "cab_extrapolated": True,
     "cab_note": "extrapolated below 256"},
    # Only ours: CAB's columns are optional.
    {"label": "hyena[order=2]", "baseline": "attention", "metric": "memory", "length": None, "note": "> 2048"},
]
# fwd_train points go into the store once longseq/results/store.py accepts the mode; test_fwd_train_sections covers
# the report's side meanwhile.
MODES = tuple(m for m in ("fwd", "fwdbwd", "fwd_train", "prefill", "decode") if m in STORED_MODES)


def fill_store(store: ResultsStore) -> None:
    for label, mixer, unit, power, state in MIXERS:
        for mode in MODES:
            for n in LENGTHS:
                seconds = unit * n**power * (3.0 if mode == "fwdbwd" else 1.0) / (n if mode == "decode" else 1)
                store.add_speed_point(
                    {
                        "bench_id": "bench-a",
                        "label": label,
                        "mixer": mixer,
                        "pattern": "causal_self",
                        "mode": mode,
                        "seq_len": n,
                        "batch": 1,
                        "d_model": 64,
                        "dtype": "float32",
                        "device": "cpu",
                        "status": "ok",
                        "median_s": seconds,
                        "iqr_s": seconds / 20,
                        "repeats": 5,
                        "tokens_per_s": n / seconds,
                        "peak_mem_bytes": int(4096 * n**power),
                        "state_floats": state(n),
                        "provenance": PROVENANCE,
                    }
                )
    store.add_speed_point(
        {
            "bench_id": "bench-a",
            "label": "attention",
            "mixer": "attention",
            "pattern": "causal_self",
            "mode": "fwdbwd",
            "seq_len": 65536,
            "batch": 1,
            "d_model": 64,
            "dtype": "float32",
            "device": "cpu",
            "status": "oom",
            "error": "Traceback (most recent call last):\n  ...\nRuntimeError: out of memory <allocating 16 GiB>",
            "provenance": PROVENANCE,
        }
    )
    for task in ("mqar", "selective_copy"):
        for mixer, state_floats, accuracies in (("attention", 65536, (0.62, 0.99)), ("mamba", 1024, (0.41, 0.57))):
            for lr, accuracy in zip((1e-3, 1e-2), accuracies, strict=True):
                run_id = store.start_run(
                    kind="quality",
                    task=task,
                    mixer=mixer,
                    config={"task": {"name": task}, "model": {"d_model": 64}, "train": {"lr": lr}},
                    n_params=50_000,
                    provenance=PROVENANCE,
                    state_floats=state_floats,
                    suite="zoology-mini",
                )
                store.finish_run(
                    run_id,
                    status="completed",
                    metrics={"accuracy": accuracy, "loss": 1.0 - accuracy},
                    wall_time_s=30.0,
                    tokens_per_s=5000.0,
                    steps=200,
                )


# A figure per time and memory mode stored, + decode + state size + one recall-memory scatter per task.
FIGURES = sum(m in MODES for m in TIME_MODES) + sum(m in MODES for m in MEMORY_MODES) + 1 + 1 + 2


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    with ResultsStore(root / "results.db") as store:
        fill_store(store)
        return write_report(store, root / "out", efficiency_rows=EFFICIENCY)


def test_every_image_is_an_embedded_png(report: tuple[Path, Path]) -> None:
    html = report[1].read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(sources) == FIGURES
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        png = base64.b64decode(source.removeprefix("data:image/png;base64,"), validate=True)
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1024


def test_html_references_nothing_outside_itself(report: tuple[Path, Path]) -> None:
    html = report[1].read_text()
    for forbidden in ("http://", "https://", 'src="//', 'href="//', "<link", "<script"):
        assert forbidden not in html


def test_html_escapes_text(report: tuple[Path, Path]) -> None:
    html = report[1].read_text()
    assert "RuntimeError: out of memory &lt;allocating 16 GiB&gt;" in html
    assert "<allocating" not in html


def test_markdown_has_the_tables_and_its_figures_exist(report: tuple[Path, Path]) -> None:
    md_path = report[0]
    md = md_path.read_text()
    assert "| label | baseline | mode | metric | length | note | CAB length | CAB note |" in md
    # CAB's length rounded as CAB publishes it; an extrapolated one shown with its note.
    assert "| mamba | attention | fwd | time | 1,024 |  | 1,877 |  |" in md
    assert ("| mamba | attention | fwd_train | memory | — | < 256 (the fits cross at ~69.5) | 70 | "
            "extrapolated below 256 |") in md
    assert "| hyena[order=2] | attention |  | memory | — | > 2048 | — |  |" in md
    assert "Only attention[impl=math] is CAB's vanilla baseline" in md and "CAB: CAB's own computation" in md
    assert "| label | pattern | mode | seq_len | batch | status | error |" in md
    assert (
        "| attention | causal_self | fwdbwd | 65536 | 1 | oom | RuntimeError: out of memory <allocating 16 GiB> |" in md
    )
    assert "| mixer | d_model | metric | best | lr | runs | n_params | state_floats | wall time (s) | tokens/s |" in md
    # Best over the two learning rates, best mixer first.
    assert "| attention | 64 | accuracy | 0.99 | 0.01 | 2 | 50,000 | 65,536 | 30 | 5,000 |" in md
    assert md.index("| attention | 64 | accuracy | 0.99") < md.index("| mamba | 64 | accuracy | 0.57")
    assert "| ms | 256 | 512 | 1024 | 2048 |" in md
    assert "| Synthetic CPU |" in md and "| 0123456789ab | yes |" in md
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(figures) == FIGURES
    for figure in figures:
        assert (md_path.parent / figure).read_bytes().startswith(PNG_SIGNATURE)
    assert "No data" not in md


def test_empty_store_gives_no_empty_sections(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "empty.db") as store:
        md_path, html_path = write_report(store, tmp_path / "out")
    md = md_path.read_text()
    assert "The store holds no results: there is nothing to report." in md
    assert "\n## " not in md and "No data" not in md
    assert "<img" not in html_path.read_text() and "<h2>" not in html_path.read_text()


def test_sections_and_modes_without_data_are_left_out(tmp_path: Path) -> None:
    point = {"bench_id": "b", "label": "attention", "mixer": "attention", "pattern": "causal_self", "mode": "fwd",
             "batch": 1, "d_model": 64, "dtype": "float32", "device": "cpu", "status": "ok", "provenance": PROVENANCE}
    with ResultsStore(tmp_path / "r.db") as store:
        for n in LENGTHS:
            store.add_speed_point({**point, "seq_len": n, "median_s": 1e-6 * n})
        md = write_report(store, tmp_path / "out")[0].read_text()
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert headings == ["# longseq report", "## Provenance", "## Time vs sequence length", "### Mode: fwd"]


def test_fwd_train_sections(tmp_path: Path) -> None:
    point = {"label": "attention", "mixer": "attention", "pattern": "causal_self", "batch": 1, "d_model": 64,
             "dtype": "float32", "device": "cpu", "status": "ok", "iqr_s": 0.0, "repeats": 1, "state_floats": None,
             "error": None, "provenance": PROVENANCE}
    points = [{**point, "mode": mode, "seq_len": n, "median_s": 1e-9 * n * n, "peak_mem_bytes": 4096 * n}
              for mode in ("fwd", "fwd_train") for n in LENGTHS]
    sections = build_sections(points, [], None)
    assert [s.title for s in sections].count("Mode: fwd_train") == 2  # one under time, one under memory
    plots = {block.name for s in sections for block in s.blocks if isinstance(block, Plot)}
    assert {"time-fwd_train", "memory-fwd_train"} <= plots


def test_unknown_bench_and_malformed_efficiency_rows_fail_clearly(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.db") as store:
        with pytest.raises(ReportError, match=r"bench_id='nope' has no speed points"):
            write_report(store, tmp_path / "out", bench_id="nope")
        bad_metric = [{**EFFICIENCY[0], "metric": "latency"}]
        with pytest.raises(ReportError, match=r"metric='latency'; allowed: time, memory"):
            write_report(store, tmp_path / "out", efficiency_rows=bad_metric)
        bad_cab = [{**EFFICIENCY[0], "cab_length": "1877"}]
        with pytest.raises(ReportError, match=r"cab_length='1877'; allowed: a number or None"):
            write_report(store, tmp_path / "out", efficiency_rows=bad_cab)
        with pytest.raises(ReportError, match=r"unknown keys \['len'\]"):
            write_report(
                store,
                tmp_path / "out",
                efficiency_rows=[{"label": "a", "baseline": "b", "metric": "time", "length": 1.0, "len": 2}],
            )


def test_ranking_takes_losses_lower_is_better_and_keeps_cells_apart() -> None:
    def run(value: float, lr: float, seq_len: int = 64) -> dict:
        return {
            "status": "completed", "task": "lm", "mixer": "mamba", "n_params": 10, "state_floats": 8,
            "wall_time_s": 1.0, "tokens_per_s": 1.0, "run_id": f"{value}-{lr}-{seq_len}",
            "config": {"task": {"name": "lm", "seq_len": seq_len}, "train": {"lr": lr, "out_dir": str(value)}},
            "metrics": {"primary_metric": "val_loss", "val_loss": value},
        }

    runs = [run(2.5, 1e-3), run(1.5, 1e-2), {**run(0.1, 1.0), "status": "failed"}, run(3.0, 1e-3, seq_len=128)]
    best, other = rank_runs(runs)
    assert (best["metric"], best["value"], best["runs"], best["lr"]) == ("val_loss", 1.5, 2, 1e-2)
    # Same mixer and parameter count, another task length: its own cell, not merged into the first.
    assert (other["value"], other["runs"], other["setting"]) == (3.0, 1, "task.seq_len=128")


def test_headless_chromium_renders_the_report(report: tuple[Path, Path], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1280,2000",
            report[1].resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert screenshot.is_file() and screenshot.stat().st_size > 1024


def test_lines_are_split_by_pattern_only_when_patterns_differ(tmp_path: Path) -> None:
    base = {
        "bench_id": "b",
        "label": "attention",
        "mixer": "attention",
        "mode": "fwd",
        "batch": 1,
        "d_model": 64,
        "dtype": "float32",
        "device": "cpu",
        "status": "ok",
        "provenance": PROVENANCE,
    }
    with ResultsStore(tmp_path / "r.db") as store:
        for pattern in ("causal_self", "noncausal_self"):
            for n in LENGTHS:
                store.add_speed_point({**base, "pattern": pattern, "seq_len": n, "median_s": 1e-6 * n})
        md = write_report(store, tmp_path / "out")[0].read_text()
    assert "| attention (pattern=causal_self) | 0.256 |" in md
    assert "| attention (pattern=noncausal_self) | 0.256 |" in md
    assert "(dtype=" not in md and "(batch=" not in md


# ----- accuracy axes, failed cells, fingerprints, findings -----


def _quality_run(store: ResultsStore, *, mixer: str, seq_len: int, lr: float, accuracy: float | None,
                 fingerprint: str | None = "f" * 16, d_model: int = 64, suite: str = "fsuite",
                 state_floats: int = 1024) -> str:  # fmt: skip
    config = {"task": {"name": "mqar", "seq_len": seq_len}, "model": {"d_model": d_model, "layers": mixer},
              "train": {"lr": lr}}  # fmt: skip
    if fingerprint is not None:
        config["data_fingerprint"] = fingerprint
    run_id = store.start_run(kind="train", task="mqar", mixer=mixer, config=config, n_params=100,
                             provenance=PROVENANCE, state_floats=state_floats, suite=suite)  # fmt: skip
    status = "failed" if accuracy is None else "completed"
    metrics = {"stopped_by": None} if accuracy is None else {"accuracy": accuracy, "stopped_by": "steps"}
    store.finish_run(run_id, status=status, metrics=metrics, wall_time_s=1.0, tokens_per_s=1.0, steps=10)
    return run_id


def test_accuracy_axes_are_fixed_to_0_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from longseq.bench import report as report_module

    assert report_module.is_accuracy("accuracy") and report_module.is_accuracy("exact_match")
    assert not report_module.is_accuracy("loss") and not report_module.is_accuracy("perplexity")
    figures = []
    real_png = report_module._png
    monkeypatch.setattr(report_module, "_png", lambda fig: figures.append(fig) or real_png(fig))
    rows = [{"mixer": "mamba", "state_floats": 64, "value": 0.3, "metric": "accuracy"},
            {"mixer": "mamba", "state_floats": 128, "value": 0.4, "metric": "accuracy"}]  # fmt: skip
    report_module._scatter_plot(rows, title="t")
    report_module._finding_plot({"a": {64: 0.3, 128: 0.35}}, title="t", xlabel="x", ylabel="accuracy",
                                x_scale="log")  # fmt: skip
    report_module._finding_plot({"a": {64: 3.0, 128: 2.0}}, title="t", xlabel="x", ylabel="loss", x_scale="linear")
    assert [tuple(fig.axes[0].get_ylim()) for fig in figures[:2]] == [(0.0, 1.0), (0.0, 1.0)]
    assert tuple(figures[2].axes[0].get_ylim()) != (0.0, 1.0)


def test_a_cell_whose_every_learning_rate_failed_is_shown_failed(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.db") as store:
        _quality_run(store, mixer="attention", seq_len=64, lr=1e-3, accuracy=0.9)
        _quality_run(store, mixer="mamba", seq_len=64, lr=1e-3, accuracy=None)
        _quality_run(store, mixer="mamba", seq_len=64, lr=1e-2, accuracy=None)
        _quality_run(store, mixer="hyena", seq_len=64, lr=1e-3, accuracy=None)  # one lr failed, one did not
        _quality_run(store, mixer="hyena", seq_len=64, lr=1e-2, accuracy=0.5)
        md = write_report(store, tmp_path / "out")[0].read_text()
        ranked = rank_quality_runs(store.runs())
    assert [(r["mixer"], r["failed"], r["value"], r["runs"]) for r in ranked] == [
        ("attention", False, 0.9, 1), ("hyena", False, 0.5, 1), ("mamba", True, None, 2)]  # fmt: skip
    assert "| mamba | 64 | ffffffff | accuracy | failed | — | 2 |" in md
    assert "| hyena | 64 | ffffffff | accuracy | 0.5 | 0.01 | 1 |" in md
    assert "mamba" not in md.split("## Accuracy vs state size")[1].split("##")[0].replace("quality-mqar", "")


def test_cells_with_different_data_fingerprints_are_ranked_apart(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.db") as store:
        _quality_run(store, mixer="attention", seq_len=64, lr=1e-3, accuracy=0.9, fingerprint="a" * 16)
        _quality_run(store, mixer="attention", seq_len=64, lr=1e-2, accuracy=0.7, fingerprint="b" * 16)
        _quality_run(store, mixer="attention", seq_len=128, lr=1e-2, accuracy=0.6, fingerprint="c" * 16)
        md = write_report(store, tmp_path / "out")[0].read_text()
    assert "| attention | task.seq_len=64 | 64 | aaaaaaaa | accuracy | 0.9 | 0.001 | 1 |" in md
    assert "| attention | task.seq_len=64 | 64 | bbbbbbbb | accuracy | 0.7 | 0.01 | 1 |" in md
    assert "data_fingerprint=" not in md
    assert "1 task setting(s) have runs with more than one data fingerprint" in md


def _finding_suite(tmp_path: Path):
    from longseq.bench.quality import load_suite

    path = tmp_path / "fsuite.yaml"
    path.write_text("""
name: fsuite
description: a suite with findings
budget_s: 10
mixers: [attention]
tasks: [{name: mqar, params: {seq_len: 16, num_kv_pairs: 2, vocab_size: 32, num_train: 64, num_test: 16}}]
train: {steps: 2}
findings:
  - title: Recall vs length
    claim: Attention recalls at every length; recurrent models fall off as L grows.
    x: task.seq_len
    x_scale: log
  - title: Recall vs state size
    claim: Accuracy grows with state size.
    x: state_floats
    group: [mixer, model.d_model]
  - title: Nothing here
    claim: No run has this axis.
    x: model.mixer_hypers.mamba.d_state
""")
    return load_suite(path), path


def test_findings_are_built_from_the_suite_runs(tmp_path: Path) -> None:
    suite, path = _finding_suite(tmp_path)
    with ResultsStore(tmp_path / "r.db") as store:
        # Another suite's run and older data of one task setting (recorded first) do not enter the findings.
        _quality_run(store, mixer="attention", seq_len=64, lr=1e-3, accuracy=0.1, suite="other")
        _quality_run(store, mixer="mamba", seq_len=256, lr=1e-4, accuracy=0.05, fingerprint="0" * 16)
        _quality_run(store, mixer="attention", seq_len=256, lr=1e-5, accuracy=1.0, fingerprint="e" * 16)
        for mixer, accuracies in (("attention", (0.99, 0.98)), ("mamba", (0.8, 0.4))):
            for seq_len, accuracy in zip((64, 128), accuracies, strict=True):
                _quality_run(store, mixer=mixer, seq_len=seq_len, lr=1e-3, accuracy=accuracy)
                _quality_run(store, mixer=mixer, seq_len=seq_len, lr=1e-2, accuracy=accuracy - 0.1)
        _quality_run(store, mixer="mamba", seq_len=256, lr=1e-3, accuracy=None)
        _quality_run(store, mixer="attention", seq_len=256, lr=1e-3, accuracy=0.97)
        md_path, html_path = write_report(store, tmp_path / "out", suites=[path])
        sections = build_sections([], store.runs(), None, [suite])
    md = md_path.read_text()
    titles = [s.title for s in sections]
    assert titles.index("Findings") < titles.index("Recall vs length") < titles.index("Quality leaderboard")
    assert "Nothing here" not in titles  # no data: no section
    assert "Claim: Attention recalls at every length; recurrent models fall off as L grows." in md
    assert "| mixer \\\\ task.seq_len | 64 | 128 | 256 |" in md
    assert "| attention | 0.99 | 0.98 | 0.97 |" in md
    assert "| mamba | 0.8 | 0.4 | failed |" in md
    assert "2 cell(s) trained on older data of the same task settings" in md
    finding_plots = [b for s in sections for b in s.blocks if isinstance(b, Plot) and b.name.startswith("finding-")]
    assert {p.name for p in finding_plots} == {"finding-fsuite-recall-vs-length", "finding-fsuite-recall-vs-state-size"}
    assert (md_path.parent / "figures" / "finding-fsuite-recall-vs-length.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| mixer, model.d_model \\\\ state_floats | 1,024 |" in md
    assert "| attention, model.d_model=64 | 0.99 |" in md  # the best over the seq_len cells folded into one point
    assert "the best over the cells that differ in other settings" in md
    assert "Recall vs length" in html_path.read_text()


def test_findings_of_shipped_suites_named_in_the_store_are_found(tmp_path: Path, monkeypatch) -> None:
    from longseq.bench import quality

    suite, _ = _finding_suite(tmp_path)
    real_load = quality.load_suite
    monkeypatch.setattr(quality, "load_suite", lambda name: suite if name == "fsuite" else real_load(name))
    with ResultsStore(tmp_path / "r.db") as store:
        _quality_run(store, mixer="attention", seq_len=64, lr=1e-3, accuracy=0.9)
        _quality_run(store, mixer="attention", seq_len=64, lr=1e-3, accuracy=0.9, suite="not-a-shipped-suite")
        md = write_report(store, tmp_path / "out")[0].read_text()
    assert "## Findings" in md and "### Recall vs length" in md


def test_report_cli_shows_the_findings_of_a_suite_given_by_path(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from longseq.cli import app

    _, path = _finding_suite(tmp_path)
    with ResultsStore(tmp_path / "r.db") as store:
        for mixer, accuracy in (("attention", 0.99), ("mamba", 0.5)):
            _quality_run(store, mixer=mixer, seq_len=64, lr=1e-3, accuracy=accuracy)
    args = ["report", "--store", str(tmp_path / "r.db"), "--out", str(tmp_path / "out")]
    # fsuite is not shipped: found only when given by path
    assert CliRunner().invoke(app, args).exit_code == 0
    assert "Recall vs length" not in (tmp_path / "out" / "report.md").read_text()
    assert CliRunner().invoke(app, [*args, "--suite", str(path)]).exit_code == 0
    assert "| attention | 0.99 |" in (tmp_path / "out" / "report.md").read_text()
    missing = CliRunner().invoke(app, [*args, "--suite", str(tmp_path / "nope.yaml")])
    assert missing.exit_code != 0 and "nope.yaml" in missing.output
