"""`longseq demo`: quality, speed and the report for every registered mixer, inside one fixed wall-time budget.

The budget (default 10 minutes on 2 CPU cores) is split: most of it to MQAR quality (the suite `demo`, its share
split across mixers by `run_quality`), a share to speed (fwd and decode at 1K/4K/8K, split across mixers), and the
rest to the report. Quality runs already finished in the store are not trained again, so a second demo is quick.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from longseq.bench.fit import efficiency_table
from longseq.bench.quality import QualityReport, QualitySuite, load_suite, run_quality
from longseq.bench.report import write_report
from longseq.bench.speed import run_speed_bench
from longseq.mixers import available
from longseq.results import ResultsStore

QUALITY_SHARE = 0.55  # of the whole budget
SPEED_SHARE = 0.35  # the rest (10%) is headroom for the report and process start-up
SPEED_LENGTHS = (1024, 4096, 8192)
SPEED_D_MODEL = 256
# CAB's two baselines: the fused kernel and the materialized softmax(QK^T).
BASELINES = ("attention", "attention[impl=math]")


@dataclasses.dataclass
class DemoResult:
    quality: QualityReport
    speed_rows: list[dict]
    speed_not_run: list[str]
    report_md: Path
    report_html: Path
    wall_time_s: float


def speed_specs() -> list[str]:
    """Every registered mixer (default hypers) plus attention's materialized form."""
    names = [info.name for info in available()]
    return [*BASELINES, *(n for n in names if n != "attention")]


def run_demo(*, store: ResultsStore, out_dir: Path, budget_s: float = 600.0, command: str | None = None,
             log: Callable[[str], None] = print, suite: QualitySuite | None = None,
             speed_lengths: tuple[int, ...] = SPEED_LENGTHS, speed_d_model: int = SPEED_D_MODEL) -> DemoResult:
    """Quality (``suite``, default the shipped ``demo``), speed, report — all inside ``budget_s`` seconds."""
    started = time.perf_counter()

    def left() -> float:
        return budget_s - (time.perf_counter() - started)

    log(f"quality: MQAR for {len(available())} mixers in {QUALITY_SHARE * budget_s:.0f}s")
    quality = run_quality(suite=suite or load_suite("demo"), store=store, budget_s=QUALITY_SHARE * budget_s,
                          command=command, log=lambda m: log(f"  {m}"))

    specs = speed_specs()
    speed_budget = min(SPEED_SHARE * budget_s, left() - 0.1 * budget_s)
    log(f"speed: fwd and decode at {'/'.join(map(str, speed_lengths))} for {len(specs)} specs in {speed_budget:.0f}s")
    bench_id, rows, not_run = None, [], []
    speed_started = time.perf_counter()
    for i, spec in enumerate(specs):
        spent = time.perf_counter() - speed_started
        share = (speed_budget - spent) / (len(specs) - i)
        if share <= 1.0:
            not_run = specs[i:]
            log(f"  speed budget spent: not measured: {', '.join(not_run)}")
            break
        # Six points per spec; a point that alone would take most of its share is recorded as a timeout.
        got = run_speed_bench([spec], lengths=speed_lengths, modes=("fwd", "decode"), d_model=speed_d_model,
                              repeats=3, min_time=min(0.2, share / 30), timeout=share / 2, store=store,
                              command=command, bench_id=bench_id)
        bench_id = got[0]["bench_id"] if got else bench_id
        rows += got
        for row in got:
            ms = f"{1e3 * row['median_s']:.2f} ms" if row.get("median_s") else row["status"]
            log(f"  {row['label']:<24} {row['mode']:<7} L={row['seq_len']:<6} {ms}")

    eff = efficiency_table(rows) if rows else None
    md, html = write_report(store, out_dir, bench_id=bench_id, efficiency_rows=eff)
    return DemoResult(quality=quality, speed_rows=rows, speed_not_run=not_run, report_md=md, report_html=html,
                      wall_time_s=time.perf_counter() - started)
