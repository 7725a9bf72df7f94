"""The benchmark report: ``report.md`` (figures beside it as PNG files) and a self-contained ``report.html``.

Every section appears when the store has data for it and otherwise says so in one line. The HTML embeds its
figures as ``data:`` URIs and its style inline, so it opens anywhere, offline, as a single file.

Quality runs are ranked by ``longseq.bench.ranking.rank_runs``: the best run over learning rates of each cell,
by the run's primary metric.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The object-oriented Figure with an explicit Agg canvas renders headless without pyplot, so importing this
# module never switches the global matplotlib backend of the caller's process.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from longseq.bench.ranking import primary_metric, rank_runs
from longseq.results.provenance import utc_now_iso
from longseq.results.store import ResultsStore

TIME_MODES = ("fwd", "fwdbwd", "prefill")
MEMORY_MODES = ("fwd", "fwdbwd", "prefill", "decode")
EFFICIENCY_METRICS = ("time", "memory")
EFFICIENCY_KEYS = ("label", "baseline", "mode", "metric", "length", "note")
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


def _scatter_plot(rows: list[dict], *, title: str) -> bytes:
    """Metric against recurrent state size (log x), one colour per mixer: Zoology's recall-memory plot."""
    fig = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    by_mixer: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_mixer[row["mixer"]].append(row)
    for mixer, entries in sorted(by_mixer.items()):
        ax.scatter([e["state_floats"] for e in entries], [e["value"] for e in entries], label=mixer, s=30)
    ax.set_xscale("log")
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
        if series:
            png = _line_plot(series, title=f"{mode}: median time vs length", xlabel="sequence length", ylabel="s")
            section.blocks += [Plot(f"time-{mode}", f"{mode} time vs length", png), _pivot(series, _ms, "ms")]
        else:
            section.blocks.append(f"No data for mode {mode}.")
        sections.append(section)
    return sections


def _memory_sections(ok_points: list[dict]) -> list[Section]:
    sections = [Section("Peak memory vs sequence length")]
    for mode in MEMORY_MODES:
        series = _series([p for p in ok_points if p["mode"] == mode], _mib)
        if series:
            png = _line_plot(series, title=f"{mode}: peak memory vs length", xlabel="sequence length", ylabel="MiB")
            plot = Plot(f"memory-{mode}", f"{mode} peak memory", png)
            sections.append(Section(f"Mode: {mode}", level=3, blocks=[plot, _pivot(series, _fmt, "MiB")]))
    if len(sections) == 1:
        sections[0].blocks.append("No data: no point recorded peak memory.")
    return sections


def _decode_section(ok_points: list[dict]) -> Section:
    section = Section("Decode latency vs context length")
    series = _series([p for p in ok_points if p["mode"] == "decode"], lambda p: p["median_s"])
    if not series:
        section.blocks.append("No data: no decode points.")
        return section
    png = _line_plot(series, title="decode: time per token vs context", xlabel="context length", ylabel="s / token")
    section.blocks += [Plot("decode", "decode latency per token", png), _pivot(series, _ms, "ms / token")]
    return section


def _state_section(points: list[dict]) -> Section:
    section = Section("State size vs context length")
    # State size is a property of the model at a length, not of the measurement: batch and dtype do not split it.
    series = _series(points, lambda p: p["state_floats"], dimensions=("pattern", "d_model"))
    if not series:
        section.blocks.append("No data: no point recorded a state size.")
        return section
    png = _line_plot(series, title="state size vs context length", xlabel="context length", ylabel="floats")
    section.blocks += [
        "Floats of recurrent state (KV cache for attention) per sequence after the context.",
        Plot("state-size", "state size vs context length", png),
        _pivot(series, lambda v: _fmt(int(v)), "floats"),
    ]
    return section


def _efficiency_section(rows: list[dict] | None) -> Section:
    section = Section("Efficiency length")
    if not rows:
        section.blocks.append("No data: no efficiency lengths were computed.")
        return section
    section.blocks.append("Shortest length from which a mixer beats its baseline (time or memory).")
    table_rows = []
    for row in rows:
        length = row["length"]
        shown = _NONE if length is None else (f"{int(length):,}" if float(length).is_integer() else f"{length:.4g}")
        table_rows.append([row["label"], row["baseline"], row.get("mode") or "", row["metric"], shown,
                           row.get("note") or ""])
    section.blocks.append(Table(["label", "baseline", "mode", "metric", "length", "note"], table_rows))
    return section


def _failed_section(points: list[dict]) -> Section:
    section = Section("Skipped / failed points")
    failed = [p for p in points if p["status"] != "ok"]
    if not failed:
        section.blocks.append("None: every point ran.")
        return section
    columns = ("label", "pattern", "mode", "seq_len", "batch", "status")
    rows = [[*(str(p[c]) for c in columns), _error_summary(p["error"])] for p in failed]
    section.blocks.append(Table([*columns, "error"], rows))
    return section


# ----- quality sections -----


def _leaderboard_sections(runs: list[dict], ranked: list[dict]) -> list[Section]:
    section = Section("Quality leaderboard")
    if not ranked:
        section.blocks.append("No data: no completed run has a primary metric.")
        return [section]
    section.blocks.append("Best completed run per cell (task settings, mixer, size), over learning rates "
                          "(runs = how many).")
    sections = [section]
    with_setting = any(row["setting"] for row in ranked)
    headers = ["mixer", *(["setting"] if with_setting else []), "d_model", "metric", "best", "lr", "runs",
               "n_params", "state_floats", "wall time (s)", "tokens/s"]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in ranked:
        by_task[row["task"]].append(row)
    for task, rows in by_task.items():
        table = [
            [
                row["mixer"],
                *([row["setting"]] if with_setting else []),
                _fmt(row["d_model"]),
                row["metric"],
                _fmt(row["value"]),
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
    unscored = sum(1 for r in runs if r["status"] == "completed" and primary_metric(r["metrics"]) is None)
    if unscored:
        section.blocks.append(f"{unscored} completed run(s) have no primary metric and are not ranked.")
    return sections


def _recall_memory_section(ranked: list[dict]) -> Section:
    section = Section("Accuracy vs state size")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in ranked:
        if row["state_floats"]:
            groups[(row["task"], row["metric"])].append(row)
    for (task, metric), rows in sorted(groups.items()):
        png = _scatter_plot(rows, title=f"{task}: {metric} vs state size")
        section.blocks.append(Plot(f"quality-{_slug(task)}-{_slug(metric)}", f"{task}: {metric} vs state", png))
    if not section.blocks:
        section.blocks.append("No data: no completed run has both a primary metric and a state size.")
    return section


# ----- provenance -----


def _provenance_section(points: list[dict], runs: list[dict]) -> Section:
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
        section.blocks.append("No data: the store holds no results.")
        return section
    headers = ["source", "commit", "dirty", "torch", "cpu", "gpu", "threads", "rows"]
    section.blocks.append(Table(headers, [[*key, str(n)] for key, n in sorted(counts.items())]))
    return section


# ----- rendering -----


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _render_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    out = [f"# {title}", "", *intro, ""]
    for section in sections:
        out += ["#" * section.level + " " + section.title, ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out.append("| " + " | ".join(_markdown_cell(h) for h in block.headers) + " |")
                out.append("|" + "---|" * len(block.headers))
                out += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in block.rows]
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
        missing = [k for k in EFFICIENCY_KEYS if k not in row and k not in ("note", "mode")]
        unknown = sorted(set(row) - set(EFFICIENCY_KEYS))
        if missing or unknown:
            raise ReportError(
                f"efficiency_rows[{index}]: missing keys {missing}, unknown keys {unknown}; "
                f"allowed: {', '.join(EFFICIENCY_KEYS)} (mode and note optional)"
            )
        if row["metric"] not in EFFICIENCY_METRICS:
            raise ReportError(
                f"efficiency_rows[{index}] metric={row['metric']!r}; allowed: {', '.join(EFFICIENCY_METRICS)}"
            )
        length = row["length"]
        if length is not None and (isinstance(length, bool) or not isinstance(length, int | float)):
            raise ReportError(f"efficiency_rows[{index}] length={length!r}; allowed: a number or None")


def build_sections(points: list[dict], runs: list[dict], efficiency_rows: list[dict] | None) -> list[Section]:
    """Every report section from one bench's speed points, all runs, and precomputed efficiency lengths."""
    ok_points = [p for p in points if p["status"] == "ok"]
    ranked = rank_runs(runs)
    return [
        _provenance_section(points, runs),
        *_time_sections(ok_points),
        *_memory_sections(ok_points),
        _decode_section(ok_points),
        _state_section(points),
        _efficiency_section(efficiency_rows),
        _failed_section(points),
        *_leaderboard_sections(runs, ranked),
        _recall_memory_section(ranked),
    ]


def write_report(
    store: ResultsStore,
    out_dir: Path,
    *,
    bench_id: str | None = None,
    efficiency_rows: list[dict] | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` (+ ``out_dir/figures/*.png``) and ``out_dir/report.html``; return both paths.

    Speed sections show the points of ``bench_id`` (default: the latest bench in the store); quality
    sections show every run. ``efficiency_rows`` are dicts with keys label, baseline, metric ("time" or
    "memory"), length (number or None) and note (e.g. "> 16384").
    """
    _check_efficiency_rows(efficiency_rows)
    chosen = bench_id if bench_id is not None else store.latest_bench_id()
    points = store.speed_points(bench_id=chosen) if chosen is not None else []
    if bench_id is not None and not points:
        raise ReportError(
            f"bench_id={bench_id!r} has no speed points in {store.path}; latest is {store.latest_bench_id()!r}"
        )
    runs = store.runs()
    sections = build_sections(points, runs, efficiency_rows)

    title = "longseq report"
    intro = [
        f"Generated {utc_now_iso()} from {store.path}.",
        f"Speed: bench {chosen} ({len(points)} points)." if chosen else "Speed: no bench in the store.",
        f"Quality: {len(runs)} runs.",
    ]
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
