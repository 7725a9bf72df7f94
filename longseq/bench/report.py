"""The benchmark report: ``report.md`` (figures beside it as PNG files) and a self-contained ``report.html``; and
the README's generated mixers table.

A section (or a mode's subsection) appears only when the store has data for it; an empty store gives a report
that says so in its introduction. The HTML embeds its figures as ``data:`` URIs and its style inline, so it opens
anywhere, offline, as a single file.

Quality runs are ranked by ``longseq.bench.ranking.rank_runs``: the best run over learning rates of each cell,
by the run's primary metric. A cell whose every run failed is listed as ``failed`` (``rank_quality_runs``), not
dropped. Each run's config holds the fingerprint of its task's data (``longseq.tasks.fingerprint``); it is part
of the cell, so cells of one task setting with different fingerprints are ranked apart (the leaderboard's
``data`` column), and a finding uses only the newest fingerprint of each task setting.

**Findings.** A suite may declare findings (``longseq.bench.quality.Finding``, YAML ``findings:``): a title, the
paper's claim, and the axes of a table and plot built from the suite's runs (e.g. accuracy vs ``task.seq_len``
per mixer, accuracy vs ``state_floats`` per mixer). The report shows the findings of the suites it is given, and
by default those of the shipped suites whose names appear in the store. Accuracy axes are fixed to [0, 1].

The README's table of mixers (name, description, patterns, modes, impls, complexity, state size) is generated from
the registry (``mixers_table_markdown``) and written between two HTML comments (``update_mixers_table``, i.e.
``longseq list --markdown --update README.md``); ``tests/test_readme_tables.py`` fails when the README's copy is
stale.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

# The object-oriented Figure with an explicit Agg canvas renders headless without pyplot, so importing this
# module never switches the global matplotlib backend of the caller's process.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from longseq.bench.fit import CAB_BASELINE_NOTE, CAB_METHOD_NOTE, format_cab_length
from longseq.bench.quality import EVAL_AXIS_PREFIX
from longseq.bench.ranking import cell_identity, lower_is_better, primary_metric, rank_runs
from longseq.results.provenance import utc_now_iso
from longseq.results.store import ResultsStore

if TYPE_CHECKING:
    from longseq.bench.quality import Finding, QualitySuite
    from longseq.mixers import MixerInfo

TIME_MODES = ("fwd", "fwdbwd", "fwd_train", "prefill")
MEMORY_MODES = ("fwd", "fwdbwd", "fwd_train", "prefill", "decode")
# Modes the speed bench runs only on request: a report without them does not say "No data" for them.
_ON_REQUEST_MODES = ("fwd_train",)
EFFICIENCY_METRICS = ("time", "memory")
EFFICIENCY_KEYS = ("label", "baseline", "mode", "metric", "length", "note", "cab_length", "cab_extrapolated",
                   "cab_note")
# Keys an efficiency row may leave out: a caller with only our efficiency lengths still gets its table.
_OPTIONAL_EFFICIENCY_KEYS = ("mode", "note", "cab_length", "cab_extrapolated", "cab_note")
MIXERS_TABLE_START = "<!-- mixers-table:start -->"
MIXERS_TABLE_END = "<!-- mixers-table:end -->"
MIXERS_TABLE_COMMAND = "longseq list --markdown --update README.md"
# Words whose full stop does not end a mixer's description sentence.
_ABBREVIATIONS = (" al.", "e.g.", "i.e.", " cf.", " vs.")
# Point attributes that, when they vary among the points of one plot, become part of each line's name.
_SERIES_DIMENSIONS = ("pattern", "dtype", "device", "batch", "d_model")
_ERROR_CHARS = 160
_NONE = "—"


class ReportError(ValueError):
    """A report request that cannot be honoured: an unknown bench_id or malformed efficiency rows."""


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Plot:
    name: str  # file stem of the PNG written beside report.md
    caption: str
    png: bytes


@dataclass
class Section:
    """A heading and its blocks; a ``str`` block is a paragraph."""

    title: str
    level: int = 2
    blocks: list[str | Table | Plot] = field(default_factory=list)


# ----- formatting -----


def _fmt(value: object) -> str:
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        # Thousands in full: "1,260" reads better in a table than "1.26e+03".
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ms(seconds: float) -> str:
    return _fmt(float(seconds * 1e3))


def _mib(point: dict) -> float | None:
    n_bytes = point["peak_mem_bytes"]
    return None if n_bytes is None else n_bytes / 2**20


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _error_summary(error: str | None) -> str:
    """The last non-empty line of an error (a traceback ends with the exception), shortened."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return _NONE
    last = lines[-1]
    return last if len(last) <= _ERROR_CHARS else last[: _ERROR_CHARS - 1] + "…"


# ----- plots -----


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _line_plot(series: dict[str, dict[int, float]], *, title: str, xlabel: str, ylabel: str) -> bytes:
    """Log-log lines, one per series; ``series[name][x] = y``. Non-positive y cannot sit on a log axis."""
    fig = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for name, points in series.items():
        xs = sorted(x for x, y in points.items() if y > 0)
        ax.plot(xs, [points[x] for x in xs], marker="o", markersize=4, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def is_accuracy(metric: str) -> bool:
    """Whether a metric is a fraction in [0, 1] whose axis is fixed to [0, 1]: accuracies and exact matches."""
    name = metric.lower()
    return not lower_is_better(name) and ("acc" in name or "match" in name)


def _finding_plot(
    series: dict[str, dict[float, float]], *, title: str, xlabel: str, ylabel: str, x_scale: str
) -> bytes:
    """Lines with markers, one per group; the y axis is [0, 1] for an accuracy."""
    fig = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for name, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", markersize=4, label=name, clip_on=False)
    if x_scale == "log":
        ax.set_xscale("log", base=2)
    if is_accuracy(ylabel):
        ax.set_ylim(0.0, 1.0)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def _scatter_plot(rows: list[dict], *, title: str) -> bytes:
    """Metric against recurrent state size (log x), one colour per mixer: Zoology's recall-memory plot."""
    fig = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    by_mixer: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_mixer[row["mixer"]].append(row)
    for mixer, entries in sorted(by_mixer.items()):
        ax.scatter([e["state_floats"] for e in entries], [e["value"] for e in entries], label=mixer, s=30,
                   clip_on=False)
    ax.set_xscale("log")
    if is_accuracy(rows[0]["metric"]):
        ax.set_ylim(0.0, 1.0)
    ax.set(title=title, xlabel="state size (floats per sequence)", ylabel=rows[0]["metric"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


# ----- speed sections -----


def _series(
    points: list[dict], value: Callable[[dict], float | None], dimensions: tuple[str, ...] = _SERIES_DIMENSIONS
) -> dict[str, dict[int, float]]:
    """Group points into named lines ``{name: {seq_len: value}}``; points whose value is None are left out.

    A line is a label, plus each of ``dimensions`` that varies among ``points``; a later point at the same
    length replaces an earlier one (a re-measurement).
    """
    varying = [d for d in dimensions if len({p[d] for p in points}) > 1]
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for point in points:
        y = value(point)
        if y is None:
            continue
        qualifiers = ", ".join(f"{d}={point[d]}" for d in varying)
        name = f"{point['label']} ({qualifiers})" if qualifiers else point["label"]
        series[name][point["seq_len"]] = y
    return dict(sorted(series.items()))


def _pivot(series: dict[str, dict[int, float]], fmt: Callable[[float], str], corner: str) -> Table:
    lengths = sorted({length for line in series.values() for length in line})
    rows = [[name, *(fmt(line[n]) if n in line else _NONE for n in lengths)] for name, line in series.items()]
    return Table([corner, *(str(n) for n in lengths)], rows)


def _time_sections(ok_points: list[dict]) -> list[Section]:
    sections = [Section("Time vs sequence length", blocks=["Median wall time per call, log-log."])]
    for mode in TIME_MODES:
        section = Section(f"Mode: {mode}", level=3)
        series = _series([p for p in ok_points if p["mode"] == mode], lambda p: p["median_s"])
        if not series:
            continue  # no empty sections
        png = _line_plot(series, title=f"{mode}: median time vs length", xlabel="sequence length", ylabel="s")
        section.blocks += [Plot(f"time-{mode}", f"{mode} time vs length", png), _pivot(series, _ms, "ms")]
        sections.append(section)
    return sections if len(sections) > 1 else []


def _memory_sections(ok_points: list[dict]) -> list[Section]:
    sections = [Section("Peak memory vs sequence length")]
    for mode in MEMORY_MODES:
        series = _series([p for p in ok_points if p["mode"] == mode], _mib)
        if series:
            png = _line_plot(series, title=f"{mode}: peak memory vs length", xlabel="sequence length", ylabel="MiB")
            plot = Plot(f"memory-{mode}", f"{mode} peak memory", png)
            sections.append(Section(f"Mode: {mode}", level=3, blocks=[plot, _pivot(series, _fmt, "MiB")]))
    return sections if len(sections) > 1 else []


def _decode_section(ok_points: list[dict]) -> Section | None:
    section = Section("Decode latency vs context length")
    series = _series([p for p in ok_points if p["mode"] == "decode"], lambda p: p["median_s"])
    if not series:
        return None
    png = _line_plot(series, title="decode: time per token vs context", xlabel="context length", ylabel="s / token")
    section.blocks += [Plot("decode", "decode latency per token", png), _pivot(series, _ms, "ms / token")]
    return section


def _state_section(points: list[dict]) -> Section | None:
    section = Section("State size vs context length")
    # State size is a property of the model at a length, not of the measurement: batch and dtype do not split it.
    series = _series(points, lambda p: p["state_floats"], dimensions=("pattern", "d_model"))
    if not series:
        return None
    png = _line_plot(series, title="state size vs context length", xlabel="context length", ylabel="floats")
    section.blocks += [
        "Floats of recurrent state (KV cache for attention) per sequence after the context.",
        Plot("state-size", "state size vs context length", png),
        _pivot(series, lambda v: _fmt(int(v)), "floats"),
    ]
    return section


def _efficiency_section(rows: list[dict] | None) -> Section | None:
    section = Section("Efficiency length")
    if not rows:
        return None
    section.blocks += [
        "Shortest length from which a mixer beats its baseline (time or memory). length: ours, each curve fitted "
        "over its own lengths, reported only inside the lengths measured.",
        CAB_METHOD_NOTE,
        CAB_BASELINE_NOTE,
    ]
    table_rows = []
    for row in rows:
        length = row["length"]
        shown = _NONE if length is None else (f"{int(length):,}" if float(length).is_integer() else f"{length:.4g}")
        cab_length = row.get("cab_length")
        table_rows.append([row["label"], row["baseline"], row.get("mode") or "", row["metric"], shown,
                           row.get("note") or "", _NONE if cab_length is None else format_cab_length(cab_length),
                           row.get("cab_note") or ""])
    section.blocks.append(Table(["label", "baseline", "mode", "metric", "length", "note", "CAB length", "CAB note"],
                                table_rows))
    return section


def _failed_section(points: list[dict]) -> Section | None:
    section = Section("Skipped / failed points")
    failed = [p for p in points if p["status"] != "ok"]
    if not failed:
        return None
    columns = ("label", "pattern", "mode", "seq_len", "batch", "status")
    rows = [[*(str(p[c]) for c in columns), _error_summary(p["error"])] for p in failed]
    section.blocks.append(Table([*columns, "error"], rows))
    return section


# ----- quality sections -----

_FINGERPRINT_KEY = "data_fingerprint"
_FAILED = "failed"


def _cell_of(run: dict) -> str:
    return json.dumps([run["task"], run["mixer"], cell_identity(run)], sort_keys=True, default=str)


def _fingerprint_of(run: dict) -> str | None:
    value = (run.get("config") or {}).get(_FINGERPRINT_KEY)
    return value if isinstance(value, str) else None


def rank_quality_runs(runs: list[dict]) -> list[dict]:
    """``rank_runs`` rows plus one row per cell whose every run failed, and each row's data fingerprint.

    A failed cell (no completed run with a primary metric, at least one ``failed`` run) gets ``failed=True``,
    ``value``/``lr``/timings None, ``runs`` = its failed runs, the metric of its task's other rows (else
    ``accuracy``) and comes last among its task setting. Every row gets ``data_fingerprint`` (None for runs
    recorded without one); it is shown in its own column, so ``setting`` leaves it out.
    """
    scored = {_cell_of(r) for r in runs if r["status"] == "completed" and primary_metric(r["metrics"]) is not None}
    metric_of_task: dict[str, str] = {}
    for run in runs:
        found = primary_metric(run["metrics"]) if run["status"] == "completed" else None
        if found is not None:
            metric_of_task.setdefault(run["task"], found[0])
    proxies = []
    for run in runs:
        if run["status"] == "failed" and _cell_of(run) not in scored:
            metric = metric_of_task.get(run["task"], "accuracy")
            worst = math.inf if lower_is_better(metric) else -math.inf
            proxies.append({**run, "status": "completed", "metrics": {"primary_metric": metric, metric: worst}})
    proxy_ids = {run["run_id"] for run in proxies}
    by_id = {run["run_id"]: run for run in runs}
    rows = []
    for row in rank_runs([*runs, *proxies]):
        failed = row["run_id"] in proxy_ids and math.isinf(row["value"])
        setting = " ".join(t for t in row["setting"].split(" ") if not t.startswith(f"{_FINGERPRINT_KEY}="))
        row = {**row, "setting": setting, "failed": failed, _FINGERPRINT_KEY: _fingerprint_of(by_id[row["run_id"]])}
        if failed:
            row.update(value=None, lr=None, wall_time_s=None, tokens_per_s=None, stopped_by=None)
        rows.append(row)
    return rows


def _short_fingerprint(value: str | None) -> str:
    return value[:8] if value else _NONE


def _task_setting_fingerprints(runs: list[dict]) -> dict[str, set[str]]:
    """Task config (JSON) -> the distinct data fingerprints its runs were recorded with."""
    found: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        fingerprint = _fingerprint_of(run)
        if fingerprint is not None:
            found[json.dumps((run["config"] or {}).get("task"), sort_keys=True, default=str)].add(fingerprint)
    return found


def _leaderboard_sections(runs: list[dict], ranked: list[dict]) -> list[Section]:
    section = Section("Quality leaderboard")
    unscored = sum(1 for r in runs if r["status"] == "completed" and primary_metric(r["metrics"]) is None)
    if not ranked:
        if unscored:
            section.blocks.append(f"{unscored} completed run(s) have no primary metric and are not ranked.")
            return [section]
        return []
    section.blocks.append("Best completed run per cell (task settings, mixer, size), over learning rates "
                          "(runs = how many). A cell whose every run failed shows best = failed.")
    with_data = any(row[_FINGERPRINT_KEY] for row in ranked)
    if with_data:
        section.blocks.append("data: the fingerprint of the task's generated data; cells with different "
                              "fingerprints were trained on different data and are ranked apart.")
        mixed = sum(len(found) > 1 for found in _task_setting_fingerprints(runs).values())
        if mixed:
            section.blocks.append(f"{mixed} task setting(s) have runs with more than one data fingerprint: a "
                                  "generator changed between those runs.")
    sections = [section]
    with_setting = any(row["setting"] for row in ranked)
    headers = ["mixer", *(["setting"] if with_setting else []), "d_model", *(["data"] if with_data else []),
               "metric", "best", "lr", "runs", "n_params", "state_floats", "wall time (s)", "tokens/s"]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in ranked:
        by_task[row["task"]].append(row)
    for task, rows in by_task.items():
        table = [
            [
                row["mixer"],
                *([row["setting"]] if with_setting else []),
                _fmt(row["d_model"]),
                *([_short_fingerprint(row[_FINGERPRINT_KEY])] if with_data else []),
                row["metric"],
                _FAILED if row["failed"] else _fmt(row["value"]),
                _fmt(row["lr"]),
                str(row["runs"]),
                _fmt(row["n_params"]),
                _fmt(row["state_floats"]),
                _fmt(row["wall_time_s"]),
                _fmt(row["tokens_per_s"]),
            ]
            for row in rows
        ]
        sections.append(Section(f"Task: {task}", level=3, blocks=[Table(headers, table)]))
    if unscored:
        section.blocks.append(f"{unscored} completed run(s) have no primary metric and are not ranked.")
    return sections


def _recall_memory_section(ranked: list[dict]) -> Section | None:
    section = Section("Accuracy vs state size")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in ranked:
        if row["state_floats"] and not row["failed"]:
            groups[(row["task"], row["metric"])].append(row)
    for (task, metric), rows in sorted(groups.items()):
        png = _scatter_plot(rows, title=f"{task}: {metric} vs state size")
        section.blocks.append(Plot(f"quality-{_slug(task)}-{_slug(metric)}", f"{task}: {metric} vs state", png))
    return section if section.blocks else None


# ----- findings -----


def axis_value(run: dict, axis: str) -> Any:
    """A run's value on a finding's axis: a run column (``state_floats``, ``mixer``) or a dotted config path
    (``task.seq_len``, ``model.mixer_hypers.mamba.d_state``); None when the run has none."""
    if "." not in axis:
        return run.get(axis)
    value: Any = run.get("config") or {}
    for part in axis.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _axis_text(value: Any) -> str:
    return _fmt(value) if not isinstance(value, float) or not value.is_integer() else _fmt(int(value))


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _finding_cell(best: dict[tuple[str, Any], float | None], label: str, x: Any) -> str:
    if (label, x) not in best:
        return _NONE
    value = best[(label, x)]
    return _FAILED if value is None else _fmt(value)


def _metric_value(metrics: dict, key: str) -> float | None:
    found = metrics.get(key)
    return None if isinstance(found, bool) or not isinstance(found, int | float) else float(found)


def _finding_points(finding: Finding, run: dict, row: dict) -> list[tuple[Any, float | None]]:
    """The (x, y) points one ranked run gives a finding (y None: failed). An ``eval.<param>`` axis gives the
    training value of the parameter with the run's own metric, and one point per extra evaluation recorded as
    ``"<y>@<param>=<value>"`` (None where the model refused that setting)."""
    metrics = run["metrics"] or {}
    if finding.x.startswith(EVAL_AXIS_PREFIX):
        param = finding.x.removeprefix(EVAL_AXIS_PREFIX)
        trained_at = axis_value(run, f"task.{param}")
        if trained_at is None:
            return []
        own = None if row["failed"] else (row["value"] if finding.y == row["metric"] else
                                          _metric_value(metrics, finding.y))
        points = [(trained_at, own)]
        prefix = f"{finding.y}@{param}="
        for key in metrics:
            if key.startswith(prefix) and "," not in key:
                value = yaml.safe_load(key.removeprefix(prefix))
                points.append((value, None if row["failed"] else _metric_value(metrics, key)))
        return points
    x = axis_value(run, finding.x)
    if x is None:
        return []
    if row["failed"]:
        return [(x, None)]
    if finding.y == row["metric"]:
        return [(x, row["value"])]
    y = _metric_value(metrics, finding.y)
    return [] if y is None else [(x, y)]


def _finding_section(suite: str, finding: Finding, runs: list[dict]) -> Section | None:
    """The section of one finding, or None when no run of ``suite`` gives it a point."""
    by_id = {run["run_id"]: run for run in runs}
    # Per task setting, only the newest data fingerprint: results of another generator are not comparable.
    newest: dict[str, tuple[str, str]] = {}
    for run in runs:
        fingerprint = _fingerprint_of(run)
        if fingerprint is not None:
            setting = json.dumps((run["config"] or {}).get("task"), sort_keys=True, default=str)
            if setting not in newest or run["created_at"] > newest[setting][0]:
                newest[setting] = (run["created_at"], fingerprint)
    older = 0
    points: dict[tuple[str, Any], list[tuple[float | None, dict]]] = defaultdict(list)
    for row in rank_quality_runs(runs):
        run = by_id[row["run_id"]]
        if any(axis_value(run, key) != value for key, value in finding.where.items()):
            continue
        setting = json.dumps((run["config"] or {}).get("task"), sort_keys=True, default=str)
        if setting in newest and _fingerprint_of(run) != newest[setting][1]:
            older += 1
            continue
        label = ", ".join(
            str(axis_value(run, key)) if key == "mixer" else f"{key}={_axis_text(axis_value(run, key))}"
            for key in finding.group
        )
        for x, y in _finding_points(finding, run, row):
            points[(label, x)].append((y, row))
    if not points:
        return None
    pick = min if lower_is_better(finding.y) else max
    best: dict[tuple[str, Any], float | None] = {}
    folded = False
    for key, entries in points.items():
        values = [y for y, _ in entries if y is not None]
        best[key] = pick(values) if values else None
        folded |= len(entries) > 1
    labels = sorted({label for label, _ in best}, key=str)
    xs = sorted({x for _, x in best}, key=_sort_key)
    group_name = ", ".join(finding.group)
    table = Table(
        [f"{group_name} \\ {finding.x}", *(_axis_text(x) for x in xs)],
        [
            [label, *(_finding_cell(best, label, x) for x in xs)]
            for label in labels
        ],
    )
    section = Section(finding.title, level=3, blocks=[f"Claim: {finding.claim}"])
    how = f"Suite {suite}: {finding.y} of each cell's best run over learning rates"
    if folded:
        how += ", the best over the cells that differ in other settings"
    section.blocks.append(f"{how}, against {finding.x}, one line per {group_name}. failed: every run failed.")
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    if finding.plot and numeric:
        series = {
            label: {x: y for (name, x), y in best.items() if name == label and y is not None} for label in labels
        }
        series = {label: line for label, line in series.items() if line}
        if series:
            png = _finding_plot(series, title=finding.title, xlabel=finding.x, ylabel=finding.y,
                                x_scale=finding.x_scale)
            section.blocks.append(Plot(f"finding-{_slug(suite)}-{_slug(finding.title)}", finding.title, png))
    section.blocks.append(table)
    if older:
        section.blocks.append(f"{older} cell(s) trained on older data of the same task settings (another data "
                              "fingerprint) are left out.")
    return section


def _findings_sections(runs: list[dict], suites: Sequence[QualitySuite]) -> list[Section]:
    sections = []
    for suite in suites:
        suite_runs = [run for run in runs if run.get("suite") == suite.name]
        for finding in suite.findings:
            section = _finding_section(suite.name, finding, suite_runs)
            if section is not None:
                sections.append(section)
    if not sections:
        return []
    intro = Section("Findings", blocks=["Claims of the papers, checked on the quality runs of the suites that "
                                        "declare them."])
    return [intro, *sections]


def _suites_in_store(runs: list[dict]) -> list[QualitySuite]:
    """The shipped suites whose names appear among ``runs`` (a suite given by path is not found by name)."""
    from longseq.bench.quality import QualitySuiteError, load_suite

    suites = []
    for name in sorted({run["suite"] for run in runs if run.get("suite")}):
        try:
            suites.append(load_suite(name))
        except QualitySuiteError:
            continue
    return suites


# ----- provenance -----


def _provenance_section(points: list[dict], runs: list[dict]) -> Section | None:
    counts: Counter[tuple[str, ...]] = Counter()
    for source, rows in (("speed", points), ("runs", runs)):
        for row in rows:
            p = row["provenance"]
            commit = p.get("git_commit")
            counts[
                (
                    source,
                    commit[:12] if commit else _NONE,
                    _fmt(p.get("git_dirty")),
                    _fmt(p.get("torch_version")),
                    _fmt(p.get("cpu_model")),
                    _fmt(p.get("gpu_model")),
                    _fmt(p.get("threads")),
                )
            ] += 1
    section = Section("Provenance")
    if not counts:
        return None
    headers = ["source", "commit", "dirty", "torch", "cpu", "gpu", "threads", "rows"]
    section.blocks.append(Table(headers, [[*key, str(n)] for key, n in sorted(counts.items())]))
    return section


# ----- rendering -----


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown_table(table: Table) -> list[str]:
    out = ["| " + " | ".join(_markdown_cell(h) for h in table.headers) + " |", "|" + "---|" * len(table.headers)]
    return out + ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in table.rows]


def _render_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    out = [f"# {title}", "", *intro, ""]
    for section in sections:
        out += ["#" * section.level + " " + section.title, ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out += _markdown_table(block)
            elif isinstance(block, Plot):
                out.append(f"![{block.caption}](figures/{block.name}.png)")
            else:
                out.append(block)
            out.append("")
    return "\n".join(out)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f0f0f0; }
figure { margin: 0.5rem 0 1rem; }
img { max-width: 100%; }
figcaption { font-size: 0.85rem; color: #555; }
"""


def _render_html(title: str, intro: list[str], sections: list[Section]) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        *(f"<p>{esc(line)}</p>" for line in intro),
    ]
    for section in sections:
        out.append(f"<h{section.level}>{esc(section.title)}</h{section.level}>")
        for block in section.blocks:
            if isinstance(block, Table):
                header = "".join(f"<th>{esc(h)}</th>" for h in block.headers)
                out.append(f"<table><thead><tr>{header}</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows]
                out.append("</tbody></table>")
            elif isinstance(block, Plot):
                data = base64.b64encode(block.png).decode("ascii")
                out.append(
                    f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{esc(block.caption)}</figcaption></figure>"
                )
            else:
                out.append(f"<p>{esc(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out)


# ----- entry point -----


def _check_efficiency_rows(rows: list[dict] | None) -> None:
    for index, row in enumerate(rows or []):
        if not isinstance(row, dict):
            raise ReportError(f"efficiency_rows[{index}] must be a dict, got {type(row).__name__}")
        missing = [k for k in EFFICIENCY_KEYS if k not in row and k not in _OPTIONAL_EFFICIENCY_KEYS]
        unknown = sorted(set(row) - set(EFFICIENCY_KEYS))
        if missing or unknown:
            raise ReportError(
                f"efficiency_rows[{index}]: missing keys {missing}, unknown keys {unknown}; "
                f"allowed: {', '.join(EFFICIENCY_KEYS)} ({', '.join(_OPTIONAL_EFFICIENCY_KEYS)} optional)"
            )
        if row["metric"] not in EFFICIENCY_METRICS:
            raise ReportError(
                f"efficiency_rows[{index}] metric={row['metric']!r}; allowed: {', '.join(EFFICIENCY_METRICS)}"
            )
        for key in ("length", "cab_length"):
            length = row.get(key)
            if length is not None and (isinstance(length, bool) or not isinstance(length, int | float)):
                raise ReportError(f"efficiency_rows[{index}] {key}={length!r}; allowed: a number or None")


def build_sections(
    points: list[dict],
    runs: list[dict],
    efficiency_rows: list[dict] | None,
    suites: Sequence[QualitySuite] = (),
) -> list[Section]:
    """The report's sections that have data, from one bench's speed points, all runs, precomputed efficiency
    lengths and the suites whose findings to show."""
    ok_points = [p for p in points if p["status"] == "ok"]
    ranked = rank_quality_runs(runs)
    sections = [
        _provenance_section(points, runs),
        *_time_sections(ok_points),
        *_memory_sections(ok_points),
        _decode_section(ok_points),
        _state_section(points),
        _efficiency_section(efficiency_rows),
        _failed_section(points),
        *_findings_sections(runs, suites),
        *_leaderboard_sections(runs, ranked),
        _recall_memory_section(ranked),
    ]
    return [section for section in sections if section is not None and section.blocks]


def write_report(
    store: ResultsStore,
    out_dir: Path,
    *,
    bench_id: str | None = None,
    efficiency_rows: list[dict] | None = None,
    suites: Sequence[QualitySuite | str | Path] | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` (+ ``out_dir/figures/*.png``) and ``out_dir/report.html``; return both paths.

    Speed sections show the points of ``bench_id`` (default: the latest bench in the store); quality
    sections show every run. ``efficiency_rows`` are dicts with keys label, baseline, metric ("time" or
    "memory"), length (number or None), and optionally mode, note (e.g. "> 16384") and CAB's computation:
    cab_length (number or None), cab_extrapolated and cab_note, as ``longseq.bench.fit.efficiency_table`` gives.
    ``suites``: the suites (objects, shipped names or YAML paths) whose findings to show; default: the shipped
    suites named by the store's runs.
    """
    _check_efficiency_rows(efficiency_rows)
    chosen = bench_id if bench_id is not None else store.latest_bench_id()
    points = store.speed_points(bench_id=chosen) if chosen is not None else []
    if bench_id is not None and not points:
        raise ReportError(
            f"bench_id={bench_id!r} has no speed points in {store.path}; latest is {store.latest_bench_id()!r}"
        )
    runs = store.runs()
    if suites is None:
        chosen_suites = _suites_in_store(runs)
    else:
        from longseq.bench.quality import QualitySuite, load_suite

        chosen_suites = [s if isinstance(s, QualitySuite) else load_suite(s) for s in suites]
    sections = build_sections(points, runs, efficiency_rows, chosen_suites)

    title = "longseq report"
    intro = [
        f"Generated {utc_now_iso()} from {store.path}.",
        f"Speed: bench {chosen} ({len(points)} points)." if chosen else "Speed: no bench in the store.",
        f"Quality: {len(runs)} runs.",
    ]
    if not sections:
        intro.append("The store holds no results: there is nothing to report.")
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Plot):
                (figures_dir / f"{block.name}.png").write_bytes(block.png)
    md_path = out_dir / "report.md"
    html_path = out_dir / "report.html"
    md_path.write_text(_render_markdown(title, intro, sections), encoding="utf-8")
    html_path.write_text(_render_html(title, intro, sections), encoding="utf-8")
    return md_path, html_path


# ----- the README's mixers table -----


class ReadmeTableError(ValueError):
    """A file whose generated-table markers are missing, repeated or out of order."""


def builtin_mixers() -> list[MixerInfo]:
    """The registered mixers that longseq itself defines, sorted by name: a mixer a test or a plugin registers in
    this process is not part of the README."""
    from longseq.mixers import available

    return [info for info in available() if info.cls.__module__.startswith("longseq.")]


def _first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, its lines joined: up to the first full stop that ends
    a word outside brackets and is not an abbreviation's ("et al.", "e.g."), or the whole paragraph (a closing
    colon made a full stop)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    depth = 0
    for index, char in enumerate(paragraph):
        depth += (char in "([{") - (char in ")]}")
        ends_word = index > 0 and not paragraph[index - 1].isspace() and paragraph[index + 1: index + 2] in ("", " ")
        if char == "." and depth == 0 and ends_word and not paragraph[: index + 1].endswith(_ABBREVIATIONS):
            return paragraph[: index + 1]
    return paragraph.removesuffix(":") + "." if paragraph.endswith(":") else paragraph


def _description(info: MixerInfo) -> str:
    """The first sentence of the mixer's module docstring, else of its class docstring."""
    for doc in (sys.modules[info.cls.__module__].__doc__, info.cls.__doc__):
        if doc and doc.strip():
            return _first_sentence(doc)
    return _NONE


def _modes_cell(info: MixerInfo) -> str:
    """The mixer's modes, each with the patterns that have it unless every supported pattern does, e.g.
    "parallel; stream, step (causal_self)"."""
    from longseq.mixers import Pattern
    from longseq.mixers.base import modes_for

    patterns = [p for p in Pattern if p in info.patterns]
    groups: dict[tuple[str, ...], list[str]] = {}  # the patterns having a mode -> the modes, in Mode's order
    for mode in info.modes:
        having = tuple(p.value for p in patterns if mode in modes_for(p))
        groups.setdefault(having, []).append(mode.value)
    every = tuple(p.value for p in patterns)
    return "; ".join(", ".join(modes) + ("" if having == every else f" ({', '.join(having)})")
                     for having, modes in groups.items())


def mixers_table_markdown(infos: Sequence[MixerInfo]) -> str:
    """A markdown table of the mixers: name, description (the module docstring's first sentence), patterns, modes,
    impls, complexity and state size (in floats per sequence, ``state_formula``)."""
    from longseq.mixers import Pattern

    rows = [
        [
            f"`{info.name}`",
            _description(info),
            ", ".join(p.value for p in Pattern if p in info.patterns),
            _modes_cell(info),
            ", ".join(f"`{impl}`" for impl in info.impls) or _NONE,
            info.complexity or _NONE,
            info.state_formula or _NONE,
        ]
        for info in infos
    ]
    headers = ["mixer", "description", "patterns", "modes", "impls", "complexity", "state size"]
    return "\n".join(_markdown_table(Table(headers, rows)))


def _split_marked(text: str, where: str) -> tuple[str, str, str]:
    """(before the start marker, between the markers, after the end marker); ``where`` names the text in errors."""
    starts, ends = text.count(MIXERS_TABLE_START), text.count(MIXERS_TABLE_END)
    if starts != 1 or ends != 1:
        raise ReadmeTableError(
            f"{where} must hold {MIXERS_TABLE_START} and {MIXERS_TABLE_END} once each, around the mixers table; "
            f"found them {starts} and {ends} times"
        )
    head, rest = text.split(MIXERS_TABLE_START)
    if MIXERS_TABLE_END not in rest:
        raise ReadmeTableError(f"{where}: {MIXERS_TABLE_END} comes before {MIXERS_TABLE_START}")
    inside, tail = rest.split(MIXERS_TABLE_END)
    return head, inside, tail


def marked_region(text: str, *, where: str) -> str:
    """The text between the mixers-table markers, without the line breaks around it."""
    return _split_marked(text, where)[1].strip("\n")


def replace_marked_region(text: str, body: str, *, where: str) -> str:
    """``text`` with what lies between the mixers-table markers replaced by ``body`` on its own lines; the markers
    stay. ``where`` names the text (its file) in errors."""
    head, _, tail = _split_marked(text, where)
    return f"{head}{MIXERS_TABLE_START}\n{body}\n{MIXERS_TABLE_END}{tail}"


def update_mixers_table(path: str | Path) -> bool:
    """Write the built-in mixers' table between the markers of ``path`` (the README); True if it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    updated = replace_marked_region(text, mixers_table_markdown(builtin_mixers()), where=str(path))
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text
