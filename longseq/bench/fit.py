"""Fits over speed points: CAB's efficiency length, scaling exponents, and log-log extrapolation.

Efficiency length (CAB, Zhang et al. 2023; specs/attn_hybrid.md §2.3): fit the baseline attention's cost as
``a L^2 + b L + c`` and the efficient mixer's as ``d L + e`` (least squares, each over its own measured lengths);
the efficiency length is the length ``L*`` from which the mixer is cheaper, the root of
``f(L) = a L^2 + (b - d) L + (c - e)`` where ``f`` turns positive: ``L* = (-(b-d) + sqrt((b-d)^2 - 4a(c-e))) / 2a``.
It is reported only inside the lengths both curves were measured at; outside, a note says on which side it lies.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

EFFICIENCY_METRICS = ("time", "memory")
_METRIC_COLUMN = {"time": "median_s", "memory": "peak_mem_bytes"}
SCALING_MIN_POINTS = 4
# A fitted L^2 term contributing less than this fraction of the baseline's cost at the longest length is zero.
_NEGLIGIBLE = 1e-9


class FitError(ValueError):
    """Rows that cannot be fitted as asked: duplicated points, mismatched array lengths."""


@dataclasses.dataclass(frozen=True)
class Crossing:
    """An efficiency length: ``length`` inside the measured range, else None and a ``note`` saying why."""

    length: float | None
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class LogLogFit:
    """``value ≈ coefficient * L ** exponent``, fitted by least squares in log-log space."""

    exponent: float
    coefficient: float

    def predict(self, length: float) -> float:
        return self.coefficient * length**self.exponent


def _as_arrays(lengths: Sequence[float], values: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(lengths, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise FitError(f"{what}: lengths and values must be 1-D sequences of equal size, got {x.shape} and {y.shape}")
    return x, y


def fit_loglog(lengths: Sequence[float], values: Sequence[float]) -> LogLogFit | None:
    """Least-squares line through (log L, log value) over the points with L > 0 and value > 0; None when fewer
    than two distinct lengths remain."""
    x, y = _as_arrays(lengths, values, "fit_loglog")
    keep = (x > 0) & (y > 0)
    x, y = x[keep], y[keep]
    if np.unique(x).size < 2:
        return None
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return LogLogFit(exponent=float(slope), coefficient=float(math.exp(intercept)))


def scaling_exponent(lengths: Sequence[float], values: Sequence[float]) -> float | None:
    """Slope of log value vs log L (e.g. 2 for a quadratic cost); None with fewer than four distinct lengths."""
    x, y = _as_arrays(lengths, values, "scaling_exponent")
    keep = (x > 0) & (y > 0)
    if np.unique(x[keep]).size < SCALING_MIN_POINTS:
        return None
    fit = fit_loglog(x[keep], y[keep])
    return None if fit is None else fit.exponent


def _format_length(length: float) -> str:
    return f"{int(length)}" if float(length).is_integer() else f"{length:.4g}"


def efficiency_length(
    baseline_lengths: Sequence[float],
    baseline_costs: Sequence[float],
    mixer_lengths: Sequence[float],
    mixer_costs: Sequence[float],
) -> Crossing:
    """CAB's efficiency length of a mixer against a quadratic baseline (see the module docstring).

    Needs three distinct baseline lengths and two mixer lengths. The crossing is reported when it lies within the
    lengths both were measured at; otherwise ``length`` is None and ``note`` is ``"< L_min"`` (the mixer is already
    cheaper at the shortest common length) or ``"> L_max"`` (not yet cheaper at the longest, or never), with the
    numbers filled in and, where the fits do cross outside the range, the extrapolated crossing.
    """
    bx, by = _as_arrays(baseline_lengths, baseline_costs, "efficiency_length baseline")
    mx, my = _as_arrays(mixer_lengths, mixer_costs, "efficiency_length mixer")
    if np.unique(bx).size < 3 or np.unique(mx).size < 2:
        return Crossing(None, "too few points (the baseline needs 3 lengths, the mixer 2)")
    lo, hi = max(bx.min(), mx.min()), min(bx.max(), mx.max())
    if lo > hi:
        return Crossing(None, "no common lengths")
    a, b, c = np.polyfit(bx, by, 2)
    d, e = np.polyfit(mx, my, 1)
    if abs(a) * hi**2 <= _NEGLIGIBLE * np.abs(by).max():
        a = 0.0  # a linear baseline fits a rounding-noise curvature, which would invent a far-away crossing
    coeffs = (float(a), float(b - d), float(c - e))

    def gap(length: float) -> float:  # baseline minus mixer: positive where the mixer is cheaper
        return coeffs[0] * length**2 + coeffs[1] * length + coeffs[2]

    root = _upward_root(*coeffs)
    if root is not None and lo <= root <= hi:
        return Crossing(root)
    if gap(lo) > 0 and gap(hi) > 0:
        beyond = f" (the fits cross at ~{root:.4g})" if root is not None and 0 < root < lo else ""
        return Crossing(None, f"< {_format_length(lo)}{beyond}")
    if root is not None and root > hi:
        beyond = f" (the fits cross at ~{root:.4g})"
    elif gap(lo) > 0:
        beyond = " (the mixer is cheaper only at the shorter lengths)"
    else:
        beyond = " (the fits do not cross)"
    return Crossing(None, f"> {_format_length(hi)}{beyond}")


def _upward_root(a: float, b: float, c: float) -> float | None:
    """The root of ``a L^2 + b L + c`` where the polynomial goes from negative to positive, or None."""
    if a == 0.0:
        return -c / b if b > 0 else None
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    # Its derivative at this root is +sqrt(disc) whatever the sign of a: the upward crossing.
    return (-b + math.sqrt(disc)) / (2 * a)


# ----------------------------------------------------------------------------------------------------
# Tables over bench rows


def baseline_kind(row: dict) -> str | None:
    """"sdpa" or "math" when the row is softmax attention with default hypers but ``impl``, else None."""
    if row.get("mixer") != "attention":
        return None
    hypers = dict(row.get("hypers") or {})
    impl = hypers.pop("impl", "sdpa")
    return impl if not hypers and impl in ("sdpa", "math") else None


def _ok_points(rows: Iterable[dict]) -> dict[tuple[str, str, str], dict[int, dict]]:
    """(label, pattern, mode) -> {seq_len: row}, over rows with status ok; refuses duplicated points."""
    points: dict[tuple[str, str, str], dict[int, dict]] = defaultdict(dict)
    for row in rows:
        if row.get("status") != "ok":
            continue
        key = (row["label"], row["pattern"], row["mode"])
        if row["seq_len"] in points[key]:
            raise FitError(
                f"two ok points for label={key[0]!r}, pattern={key[1]!r}, mode={key[2]!r}, seq_len={row['seq_len']}: "
                f"pass the rows of one bench run (one bench_id)"
            )
        points[key][row["seq_len"]] = row
    return points


def _curve(points: dict[int, dict], metric: str) -> tuple[list[int], list[float]]:
    column = _METRIC_COLUMN[metric]
    pairs = sorted((length, row[column]) for length, row in points.items() if row.get(column) is not None)
    return [length for length, _ in pairs], [float(value) for _, value in pairs]


def efficiency_table(rows: Iterable[dict], *, pattern: str | None = None) -> list[dict]:
    """Efficiency lengths of every non-attention label against each attention baseline in the rows.

    Baselines: ``attention`` (SDPA) and ``attention[impl=math]`` (CAB's materialized form), recognised by mixer and
    hypers. One entry per (label, baseline, metric, mode) where both were measured, as dicts with keys label,
    baseline, metric ("time" | "memory"), mode, length (float | None) and note. ``pattern`` keeps one pattern;
    without it, rows of several patterns get the pattern appended to the label, e.g. ``"mamba (causal_self)"``.
    """
    rows = [row for row in rows if pattern is None or row.get("pattern") == pattern]
    points = _ok_points(rows)
    baselines: dict[tuple[str, str], str] = {}  # (pattern, kind) -> label
    kind_of_label = {row["label"]: baseline_kind(row) for row in rows}
    for label, pat, _ in points:
        kind = kind_of_label.get(label)
        if kind is not None:
            baselines.setdefault((pat, kind), label)
    several_patterns = len({pat for _, pat, _ in points}) > 1
    mixer_of_label = {row["label"]: row.get("mixer") for row in rows}
    table = []
    for (label, pat, mode), mixer_points in sorted(points.items()):
        if mixer_of_label[label] == "attention":
            continue
        for kind in ("sdpa", "math"):
            baseline = baselines.get((pat, kind))
            if baseline is None or (baseline, pat, mode) not in points:
                continue
            for metric in EFFICIENCY_METRICS:
                mixer_curve = _curve(mixer_points, metric)
                baseline_curve = _curve(points[(baseline, pat, mode)], metric)
                if not mixer_curve[0] or not baseline_curve[0]:
                    continue
                crossing = efficiency_length(*baseline_curve, *mixer_curve)
                table.append({
                    "label": f"{label} ({pat})" if several_patterns else label,
                    "baseline": baseline,
                    "metric": metric,
                    "mode": mode,
                    "length": crossing.length,
                    "note": crossing.note,
                })
    return table


def scaling_table(rows: Iterable[dict]) -> list[dict]:
    """Scaling exponents of time and memory per (label, pattern, mode): dicts with keys label, pattern, mode,
    metric ("time" | "memory"), exponent (None with fewer than four lengths) and points (lengths fitted)."""
    table = []
    for (label, pat, mode), by_length in sorted(_ok_points(rows).items()):
        for metric in EFFICIENCY_METRICS:
            lengths, values = _curve(by_length, metric)
            positive = [length for length, value in zip(lengths, values, strict=True) if value > 0]
            table.append({
                "label": label,
                "pattern": pat,
                "mode": mode,
                "metric": metric,
                "exponent": scaling_exponent(lengths, values),
                "points": len(positive),
            })
    return table
