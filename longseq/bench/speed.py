"""``longseq bench speed``: time and memory of mixers per pattern x mode x length, each point in a child process.

``run_speed_bench`` plans the points, runs each (label, pattern, mode) group in increasing length in one child
process (``isolate.Worker``), and records one row per point — in the results store when given, and returned. A
point ends with one status: ``ok``; ``crashed`` (the mixer raised, or the child died: the error text says how);
``oom`` (an allocation failed, or the kernel killed the child); ``killed`` (its resident memory passed
``max_memory`` and the watchdog killed it); ``timeout``; or ``skipped`` (not run: its memory, extrapolated in
log-log from the three longest points measured before it in its group, would exceed ``max_memory``, or a shorter
length of its group already ended in oom/killed/timeout). Modes a pattern has no form for (prefill and decode of
non-causal patterns) and patterns a mixer does not support are not run and not recorded.

Mixer specs name a registered mixer with optional hypers: ``attention``, ``attention[impl=math]``,
``attention[impl=math,n_heads=8]``; the spec string is the row's label.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from longseq.bench.fit import fit_loglog
from longseq.bench.isolate import DTYPES, Outcome, PointJob, Worker, import_extension
from longseq.bench.memory import format_bytes, total_ram_bytes
from longseq.mixers import Mode, Pattern, PatternNotSupported, build, mixer_class, validate_hypers
from longseq.mixers.registry import hyper_names
from longseq.results.provenance import collect_provenance
from longseq.results.store import ResultsStore
from longseq.userinput import parse_assignments

log = logging.getLogger(__name__)

SPEED_MODES = ("fwd", "fwdbwd", "fwd_train", "prefill", "decode")
# The form of the mixer each mode runs (see isolate.py for what each mode times).
_MODE_NEEDS = {"fwd": Mode.PARALLEL, "fwdbwd": Mode.PARALLEL, "fwd_train": Mode.PARALLEL, "prefill": Mode.STREAM,
               "decode": Mode.STEP}
DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192)
ROW_KEYS = (
    "bench_id", "label", "mixer", "hypers", "pattern", "mode", "seq_len", "batch", "d_model", "dtype", "device",
    "status", "median_s", "iqr_s", "repeats", "tokens_per_s", "peak_mem_bytes", "state_floats", "error",
    "provenance",
)
_MEASURED_KEYS = ("median_s", "iqr_s", "repeats", "tokens_per_s", "peak_mem_bytes", "state_floats", "error")
# Memory is extrapolated from the group's longest points only: at short lengths fixed costs flatten the curve, and
# a fit through them underestimates the growth (materialized attention's fwdbwd measured 100 MiB at L=1024 and
# 3.2 GiB at 8192: exponent 1.7 over 1024..8192, 1.94 over the last three points).
_FIT_LAST = 3
# Statuses after which the longer lengths of the same group are not attempted: they would fail the same way.
_GIVE_UP_AFTER = ("oom", "killed", "timeout")


class SpeedBenchError(ValueError):
    """A speed-bench request that cannot be run: a malformed mixer spec, an unknown mixer or hyper, a bad option."""


# ----------------------------------------------------------------------------------------------------
# Mixer specs


_SPEC = re.compile(r"^(?P<name>[A-Za-z_][\w.:-]*)(?:\[(?P<hypers>[^\[\]]*)\])?$")
_RESERVED_HYPERS = ("pattern",)


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """One benchmarked configuration: a registered ``mixer``, its ``hypers``, and the ``label`` rows carry."""

    label: str
    mixer: str
    hypers: dict[str, Any]


def parse_mixer_spec(text: str) -> MixerSpec:
    """Parse ``NAME`` or ``NAME[key=value,...]`` and check the mixer and hypers against the registry.

    Raises ``SpeedBenchError`` for malformed specs, unknown mixers, unknown hypers and invalid values.
    """
    if not isinstance(text, str):
        raise SpeedBenchError(f"mixer spec {text!r} must be a string like 'attention[impl=math]'")
    spec = text.strip()
    match = _SPEC.match(spec)
    if match is None:
        raise SpeedBenchError(
            f"mixer spec {text!r} is malformed; expected NAME or NAME[key=value,...], e.g. 'attention[impl=math]'"
        )
    body = match.group("hypers")
    items = [] if body is None or not body.strip() else [item.strip() for item in body.split(",")]
    try:
        hypers = parse_assignments(items, "hyper", form="key=value, as in NAME[key=value,...]")
    except ValueError as error:
        raise SpeedBenchError(f"mixer spec {text!r}: {error}") from None
    for key in _RESERVED_HYPERS:
        if key in hypers:
            raise SpeedBenchError(f"mixer spec {text!r}: {key!r} is set by the bench's patterns option, not the spec")
    name = match.group("name")
    return MixerSpec(label=spec, mixer=name, hypers=_validated_hypers(name, hypers, spec))


def _validated_hypers(name: str, hypers: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        validate_hypers(name, hypers)
    except ValueError as err:  # UnknownMixer, InvalidHyper: their messages name the field, value and allowed
        raise SpeedBenchError(f"mixer spec {where!r}: {err}") from None
    # The hypers as written (not pydantic's coerced values) are what the rows record and the children rebuild.
    return dict(hypers)


def _resolve_specs(mixers: Sequence[str | MixerSpec],
                   extra_hypers: Mapping[str, Mapping[str, Any]] | None) -> list[MixerSpec]:
    if isinstance(mixers, str) or not mixers:
        raise SpeedBenchError(f"mixers={mixers!r} must be a non-empty list of mixer specs")
    specs = [m if isinstance(m, MixerSpec) else parse_mixer_spec(m) for m in mixers]
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise SpeedBenchError(f"mixers lists {', '.join(map(repr, duplicates))} more than once")
    extra_hypers = dict(extra_hypers or {})
    unused = sorted(set(extra_hypers) - {s.mixer for s in specs})
    if unused:
        raise SpeedBenchError(
            f"hypers given for {', '.join(map(repr, unused))}, which no mixer spec names; mixers: "
            f"{', '.join(sorted({s.mixer for s in specs}))}"
        )
    resolved = []
    for spec in specs:
        merged = {**extra_hypers.get(spec.mixer, {}), **spec.hypers}  # the spec's own hypers win
        resolved.append(dataclasses.replace(spec, hypers=_validated_hypers(spec.mixer, merged, spec.label)))
    return resolved


# ----------------------------------------------------------------------------------------------------
# Options


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpeedBenchError(f"{name}={value!r} must be a positive integer")
    return value


def _check_options(*, lengths: Sequence[int], modes: Sequence[str], patterns: Sequence[str | Pattern],
                   dtype: str, device: str, repeats: int, min_time: float, warmup: int, timeout: float | None,
                   max_memory: int | None, threads: int | None) -> tuple[list[int], list[str], list[Pattern]]:
    if isinstance(lengths, int | str) or not lengths:
        raise SpeedBenchError(f"lengths={lengths!r} must be a non-empty list of positive integers")
    sorted_lengths = sorted({_positive_int("lengths entry", length) for length in lengths})
    if isinstance(modes, str) or not modes or any(m not in SPEED_MODES for m in modes):
        raise SpeedBenchError(f"modes={modes!r}; allowed: a non-empty list of {', '.join(SPEED_MODES)}")
    if isinstance(patterns, str) or not patterns:
        raise SpeedBenchError(f"patterns={patterns!r} must be a non-empty list; allowed: "
                              f"{', '.join(p.value for p in Pattern)}")
    try:
        parsed_patterns = list(dict.fromkeys(Pattern.parse(p) for p in patterns))
    except ValueError as err:
        raise SpeedBenchError(str(err)) from None
    if dtype not in DTYPES:
        raise SpeedBenchError(f"dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
    try:
        parsed_device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SpeedBenchError(f"device={device!r} is not a device: {err}") from None
    if parsed_device.type not in ("cpu", "cuda"):
        raise SpeedBenchError(f"device={device!r}; allowed: cpu, cuda, cuda:N")
    if parsed_device.type == "cuda" and not torch.cuda.is_available():
        raise SpeedBenchError(f"device={device!r} but CUDA is not available to this PyTorch")
    _positive_int("repeats", repeats)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise SpeedBenchError(f"warmup={warmup!r} must be a non-negative integer")
    if not isinstance(min_time, int | float) or min_time < 0:
        raise SpeedBenchError(f"min_time={min_time!r} must be a non-negative number of seconds")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise SpeedBenchError(f"timeout={timeout!r} must be a positive number of seconds, or None for no limit")
    if max_memory is not None:
        _positive_int("max_memory", max_memory)
    if threads is not None:
        _positive_int("threads", threads)
    return sorted_lengths, list(dict.fromkeys(modes)), parsed_patterns


# ----------------------------------------------------------------------------------------------------
# The bench


@dataclasses.dataclass
class _Group:
    """The points of one (spec, pattern, mode), measured in increasing length."""

    spec: MixerSpec
    pattern: Pattern
    mode: str
    job: PointJob


@dataclasses.dataclass
class _MemoryHistory:
    """Memory of the group's points so far, for extrapolating the next one."""

    lengths: list[int] = dataclasses.field(default_factory=list)
    peaks: list[int] = dataclasses.field(default_factory=list)
    baseline: int = 0

    def add(self, length: int, message: dict[str, Any]) -> None:
        if message.get("status") == "ok" and message.get("peak_mem_bytes") is not None:
            self.lengths.append(length)
            self.peaks.append(int(message["peak_mem_bytes"]))
            self.baseline = int(message.get("baseline_mem_bytes") or 0)

    def refusal(self, length: int, limit: int | None) -> str | None:
        """Why ``length`` should be skipped (predicted peak above ``limit``), or None to run it."""
        lengths, peaks = self.lengths[-_FIT_LAST:], self.peaks[-_FIT_LAST:]
        fit = fit_loglog(lengths, peaks) if limit is not None else None
        if fit is None:
            return None
        predicted = fit.predict(length)
        if self.baseline + predicted <= limit:
            return None
        return (
            f"predicted peak memory {format_bytes(predicted)} (log-log fit over L={lengths}, exponent "
            f"{fit.exponent:.2f}) on top of {format_bytes(self.baseline)} already in use exceeds max_memory "
            f"{format_bytes(limit)}"
        )


def _probe_modes(spec: MixerSpec, pattern: Pattern, d_model: int, max_len: int) -> tuple[Mode, ...] | None:
    """The modes ``spec`` has in ``pattern`` (None if it does not support the pattern); building it here checks
    the hypers' combination (e.g. divisibility) before any child starts."""
    hypers = dict(spec.hypers)
    if "max_len" in hyper_names(mixer_class(spec.mixer)):
        hypers.setdefault("max_len", max_len)
    try:
        mixer = build(spec.mixer, d_model, pattern=pattern.value, **hypers)
    except PatternNotSupported as err:
        log.info("not run: %s", err)
        return None
    except ValueError as err:
        raise SpeedBenchError(
            f"mixer spec {spec.label!r} with pattern {pattern.value!r} cannot be built: {err}"
        ) from None
    return mixer.modes


def _plan(specs: list[MixerSpec], patterns: list[Pattern], modes: list[str], lengths: list[int],
          job_fields: dict[str, Any]) -> list[_Group]:
    groups = []
    for spec in specs:
        for pattern in patterns:
            available = _probe_modes(spec, pattern, job_fields["d_model"], max(lengths))
            if available is None:
                continue
            for mode in modes:
                if _MODE_NEEDS[mode] not in available:
                    log.info("not run: %s has no %s mode in pattern %s", spec.label, mode, pattern.value)
                    continue
                job = PointJob(mixer=spec.mixer, hypers=spec.hypers, pattern=pattern.value, mode=mode, **job_fields)
                groups.append(_Group(spec, pattern, mode, job))
    return groups


def _status_of(outcome: Outcome) -> tuple[str, dict[str, Any]]:
    """The row status and measured fields of a finished request."""
    if outcome.kind == "result":
        message = outcome.message or {}
        return str(message.get("status", "crashed")), {k: message.get(k) for k in (*_MEASURED_KEYS, "kernels")}
    if outcome.kind == "died" and outcome.signal_name == "SIGKILL":
        detail = outcome.detail + "\n(SIGKILL not sent by the bench: most likely the kernel's out-of-memory killer)"
        return "oom", {"error": detail}
    status = {"died": "crashed", "killed": "killed", "timeout": "timeout"}[outcome.kind]
    return status, {"error": outcome.detail}


class _Recorder:
    """Turns outcomes into rows: stores each at once (a later crash loses nothing) and reports it."""

    def __init__(self, *, bench_id: str, provenance: dict[str, Any], store: ResultsStore | None,
                 on_row: Callable[[dict], None] | None, shape: dict[str, Any]) -> None:
        self.bench_id, self.provenance, self.store, self.on_row, self.shape = bench_id, provenance, store, on_row, shape
        self.rows: list[dict] = []

    def record(self, group: _Group, seq_len: int, status: str, fields: dict[str, Any],
               threads: int | None = None) -> dict:
        row = {
            "bench_id": self.bench_id,
            "label": group.spec.label,
            "mixer": group.spec.mixer,
            "hypers": dict(group.spec.hypers),
            "pattern": group.pattern.value,
            "mode": group.mode,
            "seq_len": seq_len,
            **self.shape,
            "status": status,
            **{key: fields.get(key) for key in _MEASURED_KEYS},
            "provenance": {**self.provenance, **({"threads": threads} if threads is not None else {}),
                           # the measuring child's kernel status (the parent never builds one): "compiled" where used
                           **({"kernels": fields["kernels"]} if fields.get("kernels") else {})},
        }
        self.rows.append(row)
        if self.store is not None:
            self.store.add_speed_point(row)
        if self.on_row is not None:
            self.on_row(row)
        return row


def _run_group(group: _Group, lengths: list[int], *, max_memory: int | None, timeout: float | None,
               recorder: _Recorder) -> None:
    history = _MemoryHistory()
    worker: Worker | None = None
    threads: int | None = None
    device_memory: int | None = None
    given_up: str | None = None
    try:
        for seq_len in lengths:
            if given_up is not None:
                recorder.record(group, seq_len, "skipped", {"error": given_up}, threads)
                continue
            limit = device_memory if group.job.device.startswith("cuda") else max_memory
            refusal = history.refusal(seq_len, limit)
            if refusal is not None:
                recorder.record(group, seq_len, "skipped", {"error": refusal}, threads)
                continue
            if worker is None:
                worker = Worker(group.job, max_rss_bytes=max_memory)
                outcome = worker.start()
                if outcome.kind != "result":
                    status, fields = _status_of(outcome)
                    fields["error"] = f"the child process failed to start: {fields.get('error')}"
                    recorder.record(group, seq_len, status, fields, threads)
                    given_up = f"not run: the child process failed to start at L={seq_len}"
                    worker.close()
                    worker = None
                    continue
                threads = worker.ready.get("threads")
                device_memory = worker.ready.get("device_memory_bytes")
            outcome = worker.run(seq_len, timeout)
            status, fields = _status_of(outcome)
            recorder.record(group, seq_len, status, fields, threads)
            if outcome.kind == "result":
                history.add(seq_len, outcome.message or {})
            else:
                worker.close()  # it is dead: a new child serves the next length
                worker = None
            if status in _GIVE_UP_AFTER:
                given_up = f"not run: L={seq_len} of the same mixer, pattern and mode ended with status {status!r}"
        if worker is not None:
            worker.close()
            worker = None
    finally:
        if worker is not None:  # interrupted: do not wait for the child's current point
            worker.kill()
            worker.close()


def run_speed_bench(
    mixers: Sequence[str | MixerSpec],
    *,
    patterns: Sequence[str | Pattern] = ("causal_self",),
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    modes: Sequence[str] = SPEED_MODES,
    d_model: int = 256,
    batch: int = 1,
    dtype: str = "float32",
    device: str = "cpu",
    threads: int | None = None,
    repeats: int = 5,
    min_time: float = 0.5,
    warmup: int = 1,
    max_memory: int | None = None,
    timeout: float | None = 600.0,
    hypers: Mapping[str, Mapping[str, Any]] | None = None,
    imports: Sequence[str] = (),
    store: ResultsStore | str | Path | None = None,
    command: str | None = None,
    bench_id: str | None = None,
    seed: int = 0,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Time and measure every (mixer spec, pattern, mode, length) point, each in a child process; return the rows.

    mixers: specs like ``"attention"``, ``"attention[impl=math,n_heads=8]"`` (the label of their rows).
    patterns: CAB patterns; a mixer is run in those it supports. modes: fwd, fwdbwd, fwd_train (a training-mode
    forward with gradients on and no backward, what CAB timed), prefill, decode (prefill and decode only in causal
    patterns). lengths: sequence lengths (decode: the context length), run in increasing
    order. repeats / min_time: each point repeats until both a count and a time are reached, after ``warmup``
    untimed calls. threads: torch threads in the children (default: torch's). max_memory: bytes a child may hold
    resident (default: half the machine's RAM) — longer points predicted to exceed it are skipped and a child that
    exceeds it is killed. timeout: seconds per point (None: no limit). hypers: extra hypers per mixer name, under
    the spec's own. imports: modules (dotted names or .py paths) that register extra mixers, imported here and in
    every child. store: a ``ResultsStore`` or its path; every row is added as soon as it is measured. command: the
    command line recorded in the provenance. on_row: called with each row as it is recorded.

    Each row has the keys of ``ROW_KEYS``; see ``longseq.results.store.SpeedPoint`` for their meaning.
    """
    sorted_lengths, modes, parsed_patterns = _check_options(
        lengths=lengths, modes=modes, patterns=patterns, dtype=dtype, device=device, repeats=repeats,
        min_time=min_time, warmup=warmup, timeout=timeout, max_memory=max_memory, threads=threads,
    )
    _positive_int("d_model", d_model)
    _positive_int("batch", batch)
    imports = [imports] if isinstance(imports, str) else list(imports)
    for extension in imports:
        try:
            import_extension(extension)
        except (ImportError, OSError) as err:
            raise SpeedBenchError(f"imports: cannot import {extension!r}: {err}") from err
    specs = _resolve_specs(mixers, hypers)
    job_fields = dict(d_model=d_model, batch=batch, dtype=dtype, device=device, repeats=repeats,
                      min_time=float(min_time), warmup=warmup, threads=threads, imports=tuple(imports), seed=seed)
    groups = _plan(specs, parsed_patterns, modes, sorted_lengths, job_fields)
    limit = max_memory if max_memory is not None else total_ram_bytes() // 2
    owned_store = ResultsStore(store) if isinstance(store, str | Path) else None
    recorder = _Recorder(
        bench_id=bench_id or uuid.uuid4().hex,
        provenance=collect_provenance(command=command, dtype=dtype),
        store=owned_store or store,
        on_row=on_row,
        shape={"batch": batch, "d_model": d_model, "dtype": dtype, "device": device},
    )
    try:
        for group in groups:
            _run_group(group, sorted_lengths, max_memory=limit, timeout=timeout, recorder=recorder)
    finally:
        if owned_store is not None:
            owned_store.close()
    return recorder.rows


# ----------------------------------------------------------------------------------------------------
# Export


def _columns(rows: Sequence[dict]) -> list[str]:
    """ROW_KEYS first, then any further keys (a store adds id, created_at, provenance columns) as first seen."""
    extra = dict.fromkeys(key for row in rows for key in row if key not in ROW_KEYS)
    return [*ROW_KEYS, *extra]


def write_rows_json(rows: Iterable[dict], path: str | Path) -> Path:
    """Write the rows as one JSON array (nested hypers and provenance kept as objects)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=2) + "\n", encoding="utf-8")
    return path


def write_rows_csv(rows: Iterable[dict], path: str | Path) -> Path:
    """Write the rows as CSV, one column per key; hypers and provenance are JSON text in their cells."""
    rows = list(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=_columns(rows), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
                             for k, v in row.items()})
    return path
