"""`longseq demo` end to end at toy sizes: quality and speed rows in the store, a self-contained report."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from longseq.bench.demo import run_demo, speed_specs
from longseq.bench.quality import load_suite
from longseq.mixers import Pattern, available
from longseq.results import ResultsStore


def test_demo_fills_the_store_and_writes_the_report_within_budget(tmp_path: Path):
    store = ResultsStore(tmp_path / "results.db")
    suite = load_suite("demo")
    suite = suite.model_copy(update={"tasks": [t.model_copy(update={"params": {**t.params, "num_test": 32}})
                                               for t in suite.tasks]})
    result = run_demo(store=store, out_dir=tmp_path / "report", budget_s=40, suite=suite, speed_lengths=(64, 128),
                      speed_d_model=16, log=lambda m: None)
    assert result.wall_time_s < 60  # the budget plus the report's own share and slack
    runs = store.runs(status="completed")
    # Every registered mixer that can train a causal LM (MQAR); the non-causal-only ones are speed-benchmarked only.
    assert {r["mixer"] for r in runs} == set(suite.resolved_mixers())
    assert set(suite.resolved_mixers()) == {i.name for i in available() if Pattern.CAUSAL_SELF in i.patterns}
    labels = {row["label"] for row in store.speed_points() if row["status"] == "ok"}
    assert labels == set(speed_specs()) - set(result.speed_not_run)
    html = result.report_html.read_text()
    images = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert images
    for src in images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1024
    assert not re.search(r"https?://|src=\"//", html)
