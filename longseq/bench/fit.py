"""Fits over speed points: CAB's efficiency length, scaling exponents, and log-log extrapolation.

Efficiency length (CAB, Zhang et al. 2023; specs/attn_hybrid.md §2.3): fit the baseline attention's cost as
``a L^2 + b L + c`` and the efficient mixer's as ``d L + e`` by least squares; the efficiency length is the length
``L*`` from which the mixer is cheaper, the root of ``f(L) = a L^2 + (b - d) L + (c - e)`` where ``f`` turns
positive: ``L* = (-(b-d) + sqrt((b-d)^2 - 4a(c-e))) / 2a``.

Ours (``efficiency_length``) fits each curve over its own measured lengths and reports the crossing only inside the
lengths both curves were measured at; outside, a note says on which side it lies.

CAB's own computation (``cab_efficiency_length``, after Shark-NLP/CAB scripts/efficiency_length/efficiency_length.py)
differs in two ways: the mixer's *time* is fitted without the shortest length (the *memory* fit and the baseline's
fits use every length), and the root is reported wherever it falls, so a crossing below or beyond the measured
lengths is an extrapolation (CAB publishes ABC's memory efficiency length, 70, from lengths 256..8192).

Only ``attention[impl=math]`` is CAB's vanilla baseline: it materialises softmax(QK^T) as CAB's did; ``attention``
(fused SDPA, O(L) memory) is a stronger baseline than CAB's (``CAB_BASELINE_NOTE``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

EFFICIENCY_METRICS = ("time", "memory")
_METRIC_COLUMN = {"time": "median_s", "memory": "peak_mem_bytes"}
# CAB's fits need three lengths: the baseline's quadratic has three coefficients, and the line through the mixer's
# time drops the shortest length and still needs two.
CAB_MIN_POINTS = 3
# Efficiency lengths this long come only from extrapolating (a rounding-noise L^2 term): digits would mislead.
_SCIENTIFIC_FROM = 1e6
CAB_BASELINE_NOTE = (
    "Only attention[impl=math] is CAB's vanilla baseline (it materialises softmax(QK^T), as CAB's did); attention "
    "(fused SDPA, O(L) memory) is a stronger baseline than CAB's, so lengths against it are longer or absent."
)
CAB_METHOD_NOTE = (
    "CAB: CAB's own computation (scripts/efficiency_length/efficiency_length.py): baseline a L^2 + b L + c and "
    "mixer d L + e by least squares over the lengths both were measured at, the mixer's time without the shortest "
    "length; the crossing is reported even outside those lengths, marked extrapolated."
)
SCALING_MIN_POINTS = 4
# A fitted L^2 term contributing less than this fraction of the baseline's cost at the longest length is zero.
_NEGLIGIBLE = 1e-9


class FitError(ValueError):
    """Rows that cannot be fitted as asked: duplicated points, mismatched array lengths."""


@dataclasses.dataclass(frozen=True)
class Crossing:
    """An efficiency length in tokens, or None and a ``note`` saying why; ``extrapolated`` when ``length`` lies
    outside the lengths measured (only CAB's computation reports such a length)."""

    length: float | None
    note: str | None = None
    extrapolated: bool = False


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


def cab_efficiency_length(
    lengths: Sequence[float],
    baseline_values: Sequence[float],
    model_values: Sequence[float],
    metric: str,
) -> Crossing:
    """CAB's efficiency length of a model against its quadratic baseline, computed exactly as CAB's script does.

    lengths: the sequence lengths both were measured at, in tokens; baseline_values, model_values: their costs at
    those lengths, in any one unit for both (a common scale cancels in the root: CAB's ms and MB give the same
    length as seconds and bytes). metric: "time" or "memory".

    The baseline is fitted as ``a L^2 + b L + c`` over every length, the model as ``d L + e`` over every length for
    memory and over all but the shortest for time (CAB's rule), both by least squares; the result is
    ``(-(b-d) + sqrt((b-d)^2 - 4a(c-e))) / 2a`` (numpy's least squares, as CAB's sklearn fit: the same solution).
    It is reported even outside the measured lengths, with ``extrapolated=True`` and a note ("extrapolated below
    256"); a negative discriminant, a zero ``a`` or a root that is not positive give ``length=None`` and a note.
    CAB rounds the result to an integer when it publishes it.
    """
    if metric not in EFFICIENCY_METRICS:
        raise FitError(f"metric={metric!r}; allowed: {', '.join(EFFICIENCY_METRICS)}")
    x, base = _as_arrays(lengths, baseline_values, "cab_efficiency_length baseline")
    _, model = _as_arrays(lengths, model_values, "cab_efficiency_length model")
    if np.unique(x).size != x.size:
        raise FitError(f"cab_efficiency_length: lengths {x.tolist()} repeat a length; give one cost per length")
    if x.size < CAB_MIN_POINTS:
        return Crossing(None, f"too few points (CAB's fits need {CAB_MIN_POINTS} lengths, got {x.size})")
    order = np.argsort(x)
    x, base, model = x[order], base[order], model[order]
    a, b, c = np.polyfit(x, base, 2)
    fitted = slice(1, None) if metric == "time" else slice(None)  # CAB drops the shortest length from time fits
    d, e = np.polyfit(x[fitted], model[fitted], 1)
    if a == 0.0:
        return Crossing(None, "the baseline's fit has no L^2 term (a = 0): CAB's root divides by 2a")
    root = _upward_root(float(a), float(b - d), float(c - e))
    if root is None:
        return Crossing(None, "the fits do not cross: (b-d)^2 - 4a(c-e) < 0")
    if root <= 0:
        return Crossing(None, f"the fits cross at L = {root:.4g}, not a positive length")
    lo, hi = float(x[0]), float(x[-1])
    if root < lo:
        return Crossing(root, f"extrapolated below {_format_length(lo)}", extrapolated=True)
    if root > hi:
        return Crossing(root, f"extrapolated beyond {_format_length(hi)}", extrapolated=True)
    return Crossing(root)


def format_cab_length(length: float | None) -> str:
    """An efficiency length in tokens as CAB publishes one, rounded to an integer ("1,877"); past a million tokens,
    which only an extrapolation gives, in scientific notation; "-" for None."""
    if length is None:
        return "-"
    return f"{round(length):,}" if abs(length) < _SCIENTIFIC_FROM else f"{length:.3g}"


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


def _common_lengths(baseline_curve: tuple[list[int], list[float]],
                    mixer_curve: tuple[list[int], list[float]]) -> tuple[list[int], list[float], list[float]]:
    """The lengths both curves were measured at, with both costs there: CAB measures both at the same lengths."""
    baseline, mixer = dict(zip(*baseline_curve, strict=True)), dict(zip(*mixer_curve, strict=True))
    lengths = sorted(set(baseline) & set(mixer))
    return lengths, [baseline[n] for n in lengths], [mixer[n] for n in lengths]


def efficiency_table(rows: Iterable[dict], *, pattern: str | None = None) -> list[dict]:
    """Efficiency lengths of every non-attention label against each attention baseline in the rows, ours and CAB's.

    Baselines: ``attention`` (SDPA) and ``attention[impl=math]`` (CAB's materialized form), recognised by mixer and
    hypers. One entry per (label, baseline, metric, mode) where both were measured, as dicts with keys label,
    baseline, metric ("time" | "memory"), mode, length (float | None) and note from ``efficiency_length``, and
    cab_length (float | None), cab_extrapolated (bool) and cab_note from ``cab_efficiency_length`` over the lengths
    both were measured at. ``pattern`` keeps one pattern; without it, rows of several patterns get the pattern
    appended to the label, e.g. ``"mamba (causal_self)"``.
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
                ours = efficiency_length(*baseline_curve, *mixer_curve)
                cab = cab_efficiency_length(*_common_lengths(baseline_curve, mixer_curve), metric)
                table.append({
                    "label": f"{label} ({pat})" if several_patterns else label,
                    "baseline": baseline,
                    "metric": metric,
                    "mode": mode,
                    "length": ours.length,
                    "note": ours.note,
                    "cab_length": cab.length,
                    "cab_extrapolated": cab.extrapolated,
                    "cab_note": cab.note,
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
