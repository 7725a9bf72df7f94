"""The report: markdown tables, a self-contained HTML file, and figures that really are images."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

from longseq.bench.ranking import rank_runs
from longseq.bench.report import MEMORY_MODES, TIME_MODES, Plot, ReportError, build_sections, write_report
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


def test_empty_store_reports_no_data_in_every_section(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "empty.db") as store:
        md_path, html_path = write_report(store, tmp_path / "out")
    md = md_path.read_text()
    for expected in (
        "No data: the store holds no results.",
        "No data for mode fwd.",
        "No data for mode fwdbwd.",
        "No data for mode prefill.",
        "No data: no point recorded peak memory.",
        "No data: no decode points.",
        "No data: no point recorded a state size.",
        "No data: no efficiency lengths were computed.",
        "No data: no completed run has a primary metric.",
    ):
        assert expected in md
    assert "<img" not in html_path.read_text()
    assert "fwd_train" not in md  # run only on request: no "No data" line for it


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
