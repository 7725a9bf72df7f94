"""The `longseq` command: thin — parses, calls the library, prints."""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
import typer
import yaml
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="longseq: sub-quadratic token mixers, tasks, training and benchmarks.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def describe_error(e: BaseException) -> str:
    """One line for the user: pydantic errors as 'field: message (got value)', others as their message."""
    if isinstance(e, pydantic.ValidationError):
        parts = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {err['input']!r})" if where and not isinstance(err.get("input"), dict) else ""
            parts.append(f"{where}: {msg}{got}" if where else msg)
        return "; ".join(parts)
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split("\n"))


def cli_errors(fn: F) -> F:
    """Expected failures (bad input, missing files) become one line on stderr and exit code 2 — no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError) as e:
            typer.echo(f"error: {describe_error(e)}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """["n_heads=2", "impl=math"] -> {"n_heads": 2, "impl": "math"} (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} must look like KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command("list")
@cli_errors
def list_cmd() -> None:
    """List the registered mixers (patterns, modes, impls, complexity, state size) and the tasks."""
    from longseq.mixers import available
    from longseq.tasks import available_tasks

    table = Table(title="mixers")
    for col in ("name", "patterns", "modes", "impls", "complexity", "state size"):
        table.add_column(col)
    for info in available():
        table.add_row(info.name, ", ".join(sorted(p.value for p in info.patterns)),
                      ", ".join(m.value for m in info.modes), ", ".join(info.impls) or "-", info.complexity,
                      info.state_formula)
    console.print(table)
    tasks = Table(title="tasks")
    tasks.add_column("name")
    tasks.add_column("description")
    for name, desc in sorted(available_tasks().items()):
        tasks.add_row(name, desc)
    console.print(tasks)


@app.command()
@cli_errors
def train(
    config: Annotated[Path | None, typer.Option("--config", help="YAML with task/model/train sections.")] = None,
    task: Annotated[str, typer.Option(help="Task name (see `longseq list`).")] = "mqar",
    mixer: Annotated[str, typer.Option(help="Mixer or layer pattern, e.g. attention or 'mamba*3,attention'.")] = (
        "attention"),
    layers: Annotated[int, typer.Option(help="Number of blocks.")] = 2,
    d_model: Annotated[int, typer.Option(help="Model width.")] = 64,
    hyper: Annotated[list[str] | None, typer.Option(help="Mixer hyper KEY=VALUE (repeatable).")] = None,
    mlp_ratio: Annotated[float, typer.Option(help="GLU MLP width / d_model; 0 = no MLP.")] = 4.0,
    seq_len: Annotated[int | None, typer.Option(help="Task sequence length.")] = None,
    kv_pairs: Annotated[int | None, typer.Option(help="MQAR key-value pairs.")] = None,
    vocab: Annotated[int | None, typer.Option(help="Task vocabulary size.")] = None,
    train_examples: Annotated[int | None, typer.Option(help="Training-split size.")] = None,
    test_examples: Annotated[int | None, typer.Option(help="Test-split size.")] = None,
    task_param: Annotated[list[str] | None, typer.Option(help="Other task parameter KEY=VALUE.")] = None,
    steps: Annotated[int, typer.Option(help="Optimiser updates.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Examples per update.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    warmup_steps: Annotated[int, typer.Option(help="Linear warmup steps.")] = 100,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps.")] = 250,
    eval_examples: Annotated[int | None, typer.Option(help="Examples per periodic eval (default: all).")] = None,
    target: Annotated[float | None, typer.Option(help="Stop early when the metric reaches this.")] = 0.99,
    seed: Annotated[int, typer.Option(help="Seed of data order and init.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Run directory (checkpoints, metrics.jsonl).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in --out-dir.")] = False,
    store: Annotated[Path | None, typer.Option(help="Results database (default ./longseq-results/results.db).")] = (
        None),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a causal LM on a task and record the run. Flags build the config; --config FILE.yaml replaces them."""
    from longseq.results import ResultsStore
    from longseq.train.experiment import ExperimentConfig, default_out_dir, run_experiment

    if config is not None:
        exp = ExperimentConfig.from_yaml(config)
    else:
        if resume and out_dir is None:
            raise ValueError("--resume needs --out-dir (the run directory to continue)")
        params = {k: v for k, v in {"seq_len": seq_len, "num_kv_pairs": kv_pairs, "vocab_size": vocab,
                                    "num_train": train_examples, "num_test": test_examples}.items() if v is not None}
        params.update(parse_assignments(task_param, "--task-param"))
        mixer_hypers = parse_assignments(hyper, "--hyper")
        exp = ExperimentConfig.model_validate({
            "task": {"name": task, "params": params},
            "model": {"d_model": d_model, "n_layers": layers, "layers": mixer, "mlp_ratio": mlp_ratio,
                      "mixer_hypers": {mixer: mixer_hypers} if mixer_hypers else {}},
            "train": {"steps": steps, "batch_size": batch_size, "lr": lr,
                      "warmup_steps": min(warmup_steps, max(steps - 1, 0)),
                      "eval_every": eval_every, "eval_examples": eval_examples, "target_metric": target,
                      "seed": seed, "threads": threads, "checkpoint_every": checkpoint_every,
                      "out_dir": str(out_dir or default_out_dir(task, mixer))},
        })
    if exp.train.out_dir is None:
        exp = exp.model_copy(update={"train": exp.train.model_copy(
            update={"out_dir": default_out_dir(exp.task.name, exp.model.get("layers", "attention"))})})
    result = run_experiment(exp, store=ResultsStore(store), resume=resume, command=shlex.join(sys.argv),
                            progress=progress)
    table = Table(title=f"run {result.run_id}")
    for col in ("steps", *result.metrics, "wall time s", "tokens/s", "early stop"):
        table.add_column(col)
    table.add_row(str(result.steps), *(f"{v:.4f}" if isinstance(v, float) else str(v)
                                       for v in result.metrics.values()),
                  f"{result.wall_time_s:.1f}", f"{result.tokens_per_s:,.0f}", str(result.stopped_early))
    console.print(table)
    console.print(f"checkpoint: {result.checkpoint}")


@app.command()
@cli_errors
def demo(
    store: Annotated[Path | None, typer.Option(help="Results database (default ./longseq-results/results.db).")] = (
        None),
) -> None:
    """Train attention on a small MQAR (L=64, 4 key-value pairs) and print the result table."""
    from longseq.results import ResultsStore
    from longseq.train.experiment import ExperimentConfig, default_out_dir, run_experiment

    exp = ExperimentConfig.model_validate({
        "task": {"name": "mqar", "params": {"seq_len": 64, "num_kv_pairs": 4, "vocab_size": 256,
                                            "num_train": 20_000, "num_test": 500}},
        "model": {"d_model": 64, "n_layers": 2},
        "train": {"steps": 1500, "batch_size": 64, "lr": 3e-3, "warmup_steps": 100, "eval_every": 100,
                  "eval_examples": 500, "target_metric": 0.99, "out_dir": str(default_out_dir("mqar", "attention"))},
    })
    result = run_experiment(exp, store=ResultsStore(store), command=shlex.join(sys.argv))
    table = Table(title="longseq demo: MQAR (L=64, 4 kv pairs)")
    for col in ("mixer", "accuracy", "steps", "wall time s", "tokens/s"):
        table.add_column(col)
    table.add_row("attention", f"{result.metrics['accuracy']:.4f}", str(result.steps), f"{result.wall_time_s:.1f}",
                  f"{result.tokens_per_s:,.0f}")
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
