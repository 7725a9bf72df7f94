"""Ranking quality runs: the best run over learning rates of each cell (Zoology's protocol).

A *cell* is a run's full config without what varies inside a cell (``lr``) or only per run (``out_dir``,
``time_budget_s``): it tells apart task parameters (MQAR's ``seq_len``), model sizes and mixer hypers, which
grouping by name or parameter count would merge. Shared by the quality runner's leaderboard and the report.

Runs are ranked by their *primary metric*: ``metrics["primary_metric"]`` names the key of ``metrics`` to use,
``accuracy`` when absent; names containing loss/perplexity/ppl/error/mse are lower-is-better.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

RUNNER_TRAIN_FIELDS = ("out_dir", "time_budget_s")
_LOWER_IS_BETTER_HINTS = ("loss", "perplexity", "ppl", "error", "mse")
# Leaderboard columns of their own; the other config values that vary go into "setting".
_OWN_COLUMNS = ("model.layers", "model.d_model")


def primary_metric(metrics: dict | None) -> tuple[str, float] | None:
    """(name, value) of a run's primary metric, or None when it has none."""
    if not metrics:
        return None
    name = metrics.get("primary_metric", "accuracy")
    value = metrics.get(name) if isinstance(name, str) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return name, float(value)


def lower_is_better(metric: str) -> bool:
    """Whether a metric name reads as a cost (loss, perplexity, error) rather than a score."""
    return any(hint in metric.lower() for hint in _LOWER_IS_BETTER_HINTS)


def format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_identity(run: dict[str, Any]) -> dict[str, Any]:
    """A run's config without the learning rate and the runner-only training fields."""
    config = dict(run["config"])
    train = {k: v for k, v in config.get("train", {}).items() if k not in ("lr", *RUNNER_TRAIN_FIELDS)}
    return {**config, "train": train}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree) if isinstance(tree, list) else tree}


def _settings(rows: list[dict[str, Any]], flats: list[dict[str, Any]]) -> list[str]:
    """Per row, the config values that vary among the rows of its task (mixer hypers: of its task and mixer)."""
    keys = sorted({k for flat in flats for k in flat} - set(_OWN_COLUMNS))

    def varies(key: str, among: list[int]) -> bool:
        return len({json.dumps(flats[i].get(key), sort_keys=True) for i in among}) > 1

    everyone = list(range(len(rows)))
    out = []
    for row, flat in zip(rows, flats, strict=True):
        same_task = [j for j in everyone if rows[j]["task"] == row["task"]]
        same_mixer = [j for j in same_task if rows[j]["mixer"] == row["mixer"]]
        shown = []
        for key in keys:
            hyper = key.startswith("model.mixer_hypers.")
            if key in flat and varies(key, same_mixer if hyper else same_task):
                name = key.removeprefix("model.mixer_hypers.").removeprefix("model.").removeprefix("train.")
                shown.append(f"{name}={format_value(flat[key])}")
        out.append(" ".join(shown))
    return out


def _sortable(value: Any) -> tuple[int, Any]:
    """Numbers before, and apart from, everything else, so mixed values sort without a TypeError."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def rank_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best completed run of each (cell, metric), ranked by task, the task's settings, then best value first.

    Row keys: task, setting (the config values that vary among the rows, e.g. ``task.seq_len=64``), mixer,
    d_model, lr (of the best run), metric, value, n_params, state_floats, wall_time_s, tokens_per_s, runs (how
    many runs the best is over), run_id, stopped_by.
    """
    groups: dict[tuple[str, str, str, str], list[tuple[float, dict]]] = defaultdict(list)
    for run in runs:
        scored = primary_metric(run["metrics"]) if run["status"] == "completed" else None
        if scored is not None:
            metric, value = scored
            cell = json.dumps(cell_identity(run), sort_keys=True, default=str)
            groups[(run["task"], run["mixer"], cell, metric)].append((value, run))
    rows: list[dict[str, Any]] = []
    flats: list[dict[str, Any]] = []
    for (_, _, _, metric), scored_runs in groups.items():
        pick = min if lower_is_better(metric) else max
        value, run = pick(scored_runs, key=lambda pair: pair[0])
        config = run["config"]
        rows.append({
            "task": run["task"],
            "mixer": run["mixer"],
            "d_model": config.get("model", {}).get("d_model"),
            "lr": config.get("train", {}).get("lr"),
            "metric": metric,
            "value": value,
            "n_params": run["n_params"],
            "state_floats": run["state_floats"],
            "wall_time_s": run["wall_time_s"],
            "tokens_per_s": run["tokens_per_s"],
            "runs": len(scored_runs),
            "run_id": run["run_id"],
            "stopped_by": (run["metrics"] or {}).get("stopped_by"),
        })
        flats.append(_flatten(cell_identity(run)))
    for row, setting in zip(rows, _settings(rows, flats), strict=True):
        row["setting"] = setting
    task_params = [tuple(_sortable(flat[k]) for k in sorted(flat) if k.startswith("task.")) for flat in flats]

    def order(i: int) -> tuple:
        row = rows[i]
        best_first = row["value"] if lower_is_better(row["metric"]) else -row["value"]
        return (row["task"], task_params[i], row["metric"], best_first, row["mixer"])

    return [rows[i] for i in sorted(range(len(rows)), key=order)]
