"""The benchmark report: ``report.md`` (figures beside it as PNG files) and a self-contained ``report.html``; and
the README's generated mixers table.

Every section appears when the store has data for it and otherwise says so in one line. The HTML embeds its
figures as ``data:`` URIs and its style inline, so it opens anywhere, offline, as a single file.

Quality runs are ranked by ``longseq.bench.ranking.rank_runs``: the best run over learning rates of each cell,
by the run's primary metric.

The README's table of mixers (name, description, patterns, modes, impls, complexity, state size) is generated from
the registry (``mixers_table_markdown``) and written between two HTML comments (``update_mixers_table``, i.e.
``longseq list --markdown --update README.md``); ``tests/test_readme_tables.py`` fails when the README's copy is
stale.
"""

from __future__ import annotations

import base64
import html
import io
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

# The object-oriented Figure with an explicit Agg canvas renders headless without pyplot, so importing this
# module never switches the global matplotlib backend of the caller's process.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from longseq.bench.fit import CAB_BASELINE_NOTE, CAB_METHOD_NOTE, format_cab_length
from longseq.bench.ranking import primary_metric, rank_runs
from longseq.results.provenance import utc_now_iso
from longseq.results.store import ResultsStore

if TYPE_CHECKING:
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
        elif mode in _ON_REQUEST_MODES:
            continue
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
    "memory"), length (number or None), and optionally mode, note (e.g. "> 16384") and CAB's computation:
    cab_length (number or None), cab_extrapolated and cab_note, as ``longseq.bench.fit.efficiency_table`` gives.
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
