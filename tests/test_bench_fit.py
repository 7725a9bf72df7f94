"""Efficiency length (CAB), scaling exponents and log-log extrapolation, on synthetic curves with known answers."""

from __future__ import annotations

import math

import pytest

from longseq.bench.fit import (
    FitError,
    baseline_kind,
    efficiency_length,
    efficiency_table,
    fit_loglog,
    scaling_exponent,
    scaling_table,
)

LENGTHS = [256, 512, 1024, 2048, 4096, 8192]


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
    assert all(set(entry) == {"label", "baseline", "metric", "mode", "length", "note"} for entry in table)
    by_key = {(e["baseline"], e["metric"]): e for e in table}
    assert set(by_key) == {(b, m) for b in ("attention", "attention[impl=math]") for m in ("time", "memory")}
    assert all(e["label"] == "fastmix" and e["mode"] == "fwd" for e in table)
    math_time = by_key[("attention[impl=math]", "time")]
    assert math_time["length"] == pytest.approx(CROSSING, rel=1e-9) and math_time["note"] is None
    # Memory: 16 L^2 + 1e6 against 2000 L + 1e6 crosses at L = 125, below the shortest length measured.
    assert by_key[("attention[impl=math]", "memory")]["note"].startswith("< 256")
    # SDPA's memory is linear and cheaper than the mixer's: no crossing.
    assert by_key[("attention", "memory")] == {"label": "fastmix", "baseline": "attention", "metric": "memory",
                                               "mode": "fwd", "length": None, "note": "> 8192 (the fits do not cross)"}


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
