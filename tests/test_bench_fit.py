"""Efficiency length (ours and CAB's own computation), scaling exponents and log-log extrapolation, on synthetic
curves with known answers and on CAB's published measurements."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from longseq.bench.fit import (
    Crossing,
    FitError,
    baseline_kind,
    cab_efficiency_length,
    efficiency_length,
    efficiency_table,
    fit_loglog,
    format_cab_length,
    scaling_exponent,
    scaling_table,
)

LENGTHS = [256, 512, 1024, 2048, 4096, 8192]
CAB_COST = Path(__file__).parent / "data" / "cab_cost.json"


def quadratic(a: float, b: float, c: float) -> list[float]:
    return [a * n * n + b * n + c for n in LENGTHS]


def linear(d: float, e: float) -> list[float]:
    return [d * n + e for n in LENGTHS]


A, B, C, D, E = 2e-9, 1e-6, 1e-3, 4e-6, 2e-3
CROSSING = (-(B - D) + math.sqrt((B - D) ** 2 - 4 * A * (C - E))) / (2 * A)  # ~1781: inside LENGTHS


def test_efficiency_length_recovers_a_known_crossing_exactly():
    a, b, c, d, e = A, B, C, D, E
    expected = CROSSING
    crossing = efficiency_length(LENGTHS, quadratic(a, b, c), LENGTHS, linear(d, e))
    assert crossing.note is None
    assert crossing.length == pytest.approx(expected, rel=1e-9)
    # At the crossing the two fitted costs are equal.
    assert a * expected**2 + b * expected + c == pytest.approx(d * expected + e, rel=1e-9)


def test_efficiency_length_uses_each_curve_over_its_own_lengths():
    mixer_lengths = [512, 2048, 8192, 32768]
    crossing = efficiency_length(LENGTHS, quadratic(A, B, C), mixer_lengths, [D * n + E for n in mixer_lengths])
    assert crossing.length == pytest.approx(CROSSING, rel=1e-9)


def test_crossing_below_the_measured_range_is_a_note():
    # A mixer cheaper everywhere measured: the fits cross near L=100.
    crossing = efficiency_length(LENGTHS, quadratic(1e-8, 0.0, 0.0), LENGTHS, linear(1e-6, 0.0))
    assert crossing.length is None
    assert crossing.note == "< 256 (the fits cross at ~100)"


def test_crossing_above_the_measured_range_is_a_note():
    # The mixer only gets cheaper beyond L=20000.
    crossing = efficiency_length(LENGTHS, quadratic(1e-9, 0.0, 0.0), LENGTHS, linear(2e-5, 0.0))
    assert crossing.length is None
    assert crossing.note == "> 8192 (the fits cross at ~2e+04)"


def test_no_crossing_at_all_is_a_note():
    # A linear "baseline" that stays cheaper than the mixer: the fits never cross.
    crossing = efficiency_length(LENGTHS, linear(1e-6, 0.0), LENGTHS, linear(2e-6, 1e-3))
    assert crossing == crossing.__class__(None, "> 8192 (the fits do not cross)")


def test_a_mixer_cheaper_only_at_short_lengths_is_a_note():
    # A concave baseline crossed from below by a steep mixer: cheaper at the start, dearer at the end.
    crossing = efficiency_length(LENGTHS, quadratic(-1e-9, 1e-5, 0.0), LENGTHS, linear(9e-6, -1e-3))
    assert crossing.length is None and crossing.note.startswith("> 8192 (the mixer is cheaper only")


def test_efficiency_length_needs_enough_points():
    crossing = efficiency_length([256, 512], [1.0, 2.0], LENGTHS, linear(1e-6, 0.0))
    assert crossing.length is None and "too few points" in crossing.note
    with pytest.raises(FitError, match="equal size"):
        efficiency_length(LENGTHS, [1.0], LENGTHS, linear(1e-6, 0.0))


# ----- CAB's own computation -----


@pytest.mark.parametrize("metric", ["time", "memory"])
def test_cab_efficiency_length_reproduces_cabs_published_abc_figures(metric):
    """ABC against vanilla attention from CAB's cost.xlsx: CAB publishes 1,877 (time) and 70 (memory)."""
    cost = json.loads(CAB_COST.read_text())
    published = cost["published_efficiency_length"]["abc"][metric]
    crossing = cab_efficiency_length(cost["lengths"], cost[metric]["vanilla"], cost[metric]["abc"], metric)
    assert round(crossing.length) == published  # CAB's script prints int(round(L))
    # Time crosses inside 256..8192; memory's 70 tokens lies below the shortest length: an extrapolation, kept.
    assert crossing.extrapolated == (metric == "memory")
    assert crossing.note == (None if metric == "time" else "extrapolated below 256")


def test_cab_efficiency_length_is_unit_free_and_drops_the_shortest_length_for_time_only():
    cost = json.loads(CAB_COST.read_text())
    lengths, vanilla, abc = cost["lengths"], cost["time"]["vanilla"], cost["time"]["abc"]
    in_ms = cab_efficiency_length(lengths, [1e3 * t for t in vanilla], [1e3 * t for t in abc], "time")
    assert in_ms.length == pytest.approx(cab_efficiency_length(lengths, vanilla, abc, "time").length, rel=1e-9)
    # The memory rule (every length) on the same numbers gives another length: the time rule is what gives 1,877.
    assert round(cab_efficiency_length(lengths, vanilla, abc, "memory").length) == 1906
    # Order does not matter: the shortest length is dropped, not the first given.
    shuffled = [5, 0, 3, 1, 4, 2]
    again = cab_efficiency_length([lengths[i] for i in shuffled], [vanilla[i] for i in shuffled],
                                  [abc[i] for i in shuffled], "time")
    assert again.length == pytest.approx(in_ms.length, rel=1e-9)


def test_cab_efficiency_length_recovers_a_known_crossing_and_extrapolates_beyond():
    crossing = cab_efficiency_length(LENGTHS, quadratic(A, B, C), linear(D, E), "time")
    assert crossing == Crossing(pytest.approx(CROSSING, rel=1e-9))
    # The mixer only gets cheaper beyond L=20000: reported, marked extrapolated (ours says "> 8192" instead).
    beyond = cab_efficiency_length(LENGTHS, quadratic(1e-9, 0.0, 0.0), linear(2e-5, 0.0), "memory")
    assert beyond.length == pytest.approx(2e4, rel=1e-6)
    assert beyond.extrapolated and beyond.note == "extrapolated beyond 8192"


@pytest.mark.parametrize(
    ("baseline", "mixer", "note"),
    [
        # A concave baseline that stays below the mixer: the discriminant is negative.
        (quadratic(-1e-9, 0.0, 0.0), linear(1e-6, 1.0), "the fits do not cross: (b-d)^2 - 4a(c-e) < 0"),
        # The fits cross only at a negative length: the mixer is cheaper at every positive length.
        (quadratic(1e-9, 1e-3, 1.0), linear(1e-6, 0.5), "the fits cross at L = -500.8, not a positive length"),
        # A baseline whose fit has no L^2 term at all: CAB's formula would divide by 2a = 0.
        ([0.0] * len(LENGTHS), linear(1.0, 0.0), "the baseline's fit has no L^2 term (a = 0)"),
    ],
)
def test_cab_efficiency_length_without_a_positive_root_is_a_note(baseline, mixer, note):
    crossing = cab_efficiency_length(LENGTHS, baseline, mixer, "memory")
    assert crossing.length is None and not crossing.extrapolated
    assert crossing.note.startswith(note), crossing.note


def test_cab_efficiency_length_refuses_bad_input():
    assert cab_efficiency_length([256, 512], [1.0, 4.0], [1.0, 1.0], "time").note == (
        "too few points (CAB's fits need 3 lengths, got 2)")
    with pytest.raises(FitError, match="metric='latency'; allowed: time, memory"):
        cab_efficiency_length(LENGTHS, linear(1, 0), linear(1, 0), "latency")
    with pytest.raises(FitError, match="repeat a length"):
        cab_efficiency_length([256, 256, 512], [1.0, 1.0, 2.0], [1.0, 1.0, 1.0], "memory")
    with pytest.raises(FitError, match="equal size"):
        cab_efficiency_length(LENGTHS, linear(1, 0), [1.0], "memory")


def test_cab_lengths_are_shown_as_cab_publishes_them():
    assert [format_cab_length(v) for v in (1877.2584, 69.5066, 12345.6, None)] == ["1,877", "70", "12,346", "-"]
    # Only a far extrapolation (a rounding-noise L^2 term) gets this long: its digits would mislead.
    assert format_cab_length(1.3359e19) == "1.34e+19"


def test_scaling_exponent_of_power_laws():
    assert scaling_exponent(LENGTHS, [3e-9 * n**1.9 for n in LENGTHS]) == pytest.approx(1.9, abs=1e-12)
    assert scaling_exponent(LENGTHS[:4], [7.0 * n for n in LENGTHS[:4]]) == pytest.approx(1.0, abs=1e-12)
    assert scaling_exponent(LENGTHS[:3], [n**2 for n in LENGTHS[:3]]) is None  # fewer than four lengths
    assert scaling_exponent([256, 256, 512, 1024, 2048], [1.0, 1.0, 2.0, 4.0, 0.0]) is None  # 3 usable lengths


def test_loglog_fit_extrapolates():
    fit = fit_loglog([64, 128, 256], [5.0 * n**2 for n in (64, 128, 256)])
    assert fit.exponent == pytest.approx(2.0) and fit.predict(1024) == pytest.approx(5.0 * 1024**2)
    assert fit_loglog([64], [1.0]) is None
    assert fit_loglog([64, 128], [0.0, 0.0]) is None


# ----- tables over rows -----


def rows_for(label: str, mixer: str, hypers: dict, times: list[float], memory: list[float], *,
             pattern: str = "causal_self", mode: str = "fwd") -> list[dict]:
    return [
        {"label": label, "mixer": mixer, "hypers": hypers, "pattern": pattern, "mode": mode, "seq_len": n,
         "status": "ok", "median_s": t, "peak_mem_bytes": int(m)}
        for n, t, m in zip(LENGTHS, times, memory, strict=True)
    ]


def bench_rows() -> list[dict]:
    return [
        *rows_for("attention", "attention", {}, quadratic(1e-9, 0, 1e-3), linear(1000.0, 0)),
        *rows_for("attention[impl=math]", "attention", {"impl": "math"}, quadratic(A, B, C),
                  quadratic(16.0, 0, 1e6)),
        *rows_for("fastmix", "fastmix", {}, linear(D, E), linear(2000.0, 1e6)),
        {"label": "fastmix", "mixer": "fastmix", "hypers": {}, "pattern": "causal_self", "mode": "fwd",
         "seq_len": 16384, "status": "killed", "median_s": None, "peak_mem_bytes": None},
    ]


def test_baselines_are_recognised_by_mixer_and_hypers():
    assert baseline_kind({"mixer": "attention", "hypers": {}}) == "sdpa"
    assert baseline_kind({"mixer": "attention", "hypers": {"impl": "sdpa"}}) == "sdpa"
    assert baseline_kind({"mixer": "attention", "hypers": {"impl": "math"}}) == "math"
    assert baseline_kind({"mixer": "attention", "hypers": {"impl": "math", "n_heads": 8}}) is None
    assert baseline_kind({"mixer": "fastmix", "hypers": {}}) is None


def test_efficiency_table_against_both_baselines():
    table = efficiency_table(bench_rows())
    keys = {"label", "baseline", "metric", "mode", "length", "note", "cab_length", "cab_extrapolated", "cab_note"}
    assert all(set(entry) == keys for entry in table)
    by_key = {(e["baseline"], e["metric"]): e for e in table}
    assert set(by_key) == {(b, m) for b in ("attention", "attention[impl=math]") for m in ("time", "memory")}
    assert all(e["label"] == "fastmix" and e["mode"] == "fwd" for e in table)
    math_time = by_key[("attention[impl=math]", "time")]
    assert math_time["length"] == pytest.approx(CROSSING, rel=1e-9) and math_time["note"] is None
    # CAB's computation agrees inside the measured range (exact curves: dropping L=256 changes no fit).
    assert math_time["cab_length"] == pytest.approx(CROSSING, rel=1e-9) and math_time["cab_note"] is None
    # Memory: 16 L^2 + 1e6 against 2000 L + 1e6 crosses at L = 125, below the shortest length measured: ours says
    # so, CAB's reports the extrapolated length.
    math_memory = by_key[("attention[impl=math]", "memory")]
    assert math_memory["length"] is None and math_memory["note"].startswith("< 256")
    assert math_memory["cab_length"] == pytest.approx(125.0, rel=1e-9)
    assert math_memory["cab_extrapolated"] and math_memory["cab_note"] == "extrapolated below 256"
    # SDPA's memory is linear and cheaper than the mixer's: no crossing.
    sdpa_memory = by_key[("attention", "memory")]
    assert {k: sdpa_memory[k] for k in ("length", "note")} == {"length": None, "note": "> 8192 (the fits do not cross)"}
    # CAB's formula divides by the baseline's rounding-noise L^2 term: a far extrapolation or no positive root.
    assert sdpa_memory["cab_extrapolated"] or sdpa_memory["cab_length"] is None


def test_cab_columns_use_only_the_lengths_both_were_measured_at():
    # The baseline ran out of memory beyond 2048: CAB's fits use 256..2048 for both curves.
    rows = [r for r in bench_rows() if not (r["mixer"] == "attention" and r["seq_len"] > 2048)]
    math_memory = next(e for e in efficiency_table(rows)
                       if e["baseline"] == "attention[impl=math]" and e["metric"] == "memory")
    lengths = LENGTHS[:4]
    expected = cab_efficiency_length(lengths, [16.0 * n * n + 1e6 for n in lengths],
                                     [2000.0 * n + 1e6 for n in lengths], "memory")
    assert math_memory["cab_length"] == pytest.approx(expected.length, rel=1e-12)


def test_efficiency_table_without_a_baseline_is_empty():
    assert efficiency_table([r for r in bench_rows() if r["mixer"] != "attention"]) == []


def test_efficiency_table_names_the_pattern_when_rows_mix_patterns():
    rows = bench_rows()
    rows += [{**r, "pattern": "noncausal_self"} for r in rows]
    labels = {e["label"] for e in efficiency_table(rows)}
    assert labels == {"fastmix (causal_self)", "fastmix (noncausal_self)"}
    assert {e["label"] for e in efficiency_table(rows, pattern="noncausal_self")} == {"fastmix"}


def test_duplicated_points_are_refused():
    rows = bench_rows()
    with pytest.raises(FitError, match=r"two ok points for label='fastmix'.*seq_len=256.*one bench_id"):
        efficiency_table([*rows, rows[-2].copy() | {"seq_len": 256}])


def test_scaling_table():
    table = scaling_table(bench_rows())
    math_time = next(e for e in table if e["label"] == "attention[impl=math]" and e["metric"] == "time")
    assert math_time["exponent"] == scaling_exponent(LENGTHS, quadratic(A, B, C)) and math_time["points"] == 6
    fast_memory = next(e for e in table if e["label"] == "fastmix" and e["metric"] == "memory")
    assert fast_memory["exponent"] < 1.0
