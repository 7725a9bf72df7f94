"""Speed points measured in a child process, so that a crash or an out-of-memory ends the child, not the bench.

Both ends of one small protocol live here. The parent (``Worker``) starts ``python -m longseq.bench.isolate`` and
writes JSON lines to its stdin: first the job (a ``PointJob`` as a dict), then one ``{"seq_len": L}`` per point;
closing stdin ends the child. The child answers on its stdout: ``{"event": "ready", ...}`` once set up, then one
result dict per point (``measure_point``). The child moves its own stdout to stderr first, so that a mixer's prints
cannot corrupt the protocol. While waiting, the parent polls the child's resident memory (the watchdog) and the
point's deadline, and kills the child when either is exceeded.

What is measured (``measure_point``), after one or more warm-up calls, with repeats until both a minimum count and
a minimum time are reached; ``median_s`` and ``iqr_s`` over the repeats; ``peak_mem_bytes`` over the timed region:
- ``fwd``: ``forward`` under ``torch.no_grad``, ``tokens_per_s = batch * L / median``.
- ``fwdbwd``: ``forward`` then ``backward`` of a fixed random cotangent w.r.t. the parameters and the inputs.
- ``fwd_train``: ``forward`` in ``train()`` mode with gradients on and no backward — what CAB timed for its
  efficiency lengths (its efficiency_test.py calls the module, left in training mode, with autograd on). The output,
  and with it the graph of what autograd saved for backward, lives until the forward has returned, so
  ``peak_mem_bytes`` counts those saved activations; the inputs do not require gradients (CAB's did not).
- ``prefill``: ``init_state`` then ``forward_stream`` of the whole length, from an empty state.
- ``decode``: the per-token latency of ``step`` after a context of length L was prefilled with ``forward_stream``;
  ``tokens_per_s = batch / median``; ``state_floats`` = ``state.num_floats()`` after the context; the memory region
  covers init_state, the prefill and the steps.
Cross patterns use a memory ``context`` of the same length L. Modules are in ``eval()`` mode except in
``fwd_train``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from longseq.bench.memory import current_bytes, format_bytes, rss_bytes, track_peak_memory

# Decode: single steps timed at most this many times (a cache grows with every step); the state is preallocated
# for the context plus these steps and the warm-up steps.
DECODE_MAX_STEPS = 256
DECODE_WARMUP_STEPS = 2
DECODE_WARMUP_CONTEXT = 16
STARTUP_TIMEOUT_S = 180.0
WATCHDOG_POLL_S = 0.02
_STDERR_TAIL_CHARS = 3000
_ERROR_CHARS = 4000
DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class PointJob:
    """Everything a child needs to measure the points of one (mixer, hypers, pattern, mode) at any length."""

    mixer: str
    hypers: dict[str, Any]
    pattern: str
    mode: Literal["fwd", "fwdbwd", "fwd_train", "prefill", "decode"]
    d_model: int
    batch: int
    dtype: str
    device: str
    repeats: int
    min_time: float
    warmup: int = 1
    threads: int | None = None
    imports: tuple[str, ...] = ()
    seed: int = 0


# ----------------------------------------------------------------------------------------------------
# Loading modules that register extra mixers (tests, user plugins)


def import_extension(spec: str) -> None:
    """Import a module by dotted name, or a ``.py`` file by path, for the mixers it registers. A file already
    loaded in this process (under any module name) is not executed again, so its mixers register once."""
    if not (spec.endswith(".py") or os.sep in spec):
        importlib.import_module(spec)
        return
    path = Path(spec).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"imports: {spec!r} is not a file")
    for module in list(sys.modules.values()):
        module_file = getattr(module, "__file__", None)
        if module_file and Path(module_file).resolve() == path:
            return
    name = f"longseq_extension_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ImportError(f"imports: cannot load {spec!r} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


# ----------------------------------------------------------------------------------------------------
# Measuring, in the child


def time_calls(fn: Callable[[], object], *, repeats: int, min_time: float, sync: Callable[[], None],
               max_calls: int | None = None) -> list[float]:
    """Wall time of each call of ``fn``, calling until at least ``repeats`` calls AND ``min_time`` seconds (or
    ``max_calls`` calls). ``sync`` runs before and after each call (``torch.cuda.synchronize`` on CUDA)."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_time:
        if max_calls is not None and len(times) >= max_calls:
            break
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def median_and_iqr(times: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range (0 for a single time)."""
    if len(times) < 2:
        return float(times[0]), 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return float(statistics.median(times)), float(q3 - q1)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an exception is an allocation failure (CPU or CUDA) rather than a bug."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        hint in text for hint in ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")
    )


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure_point(job: PointJob, seq_len: int) -> dict[str, Any]:
    """Measure one point in this process. Never raises for a failing mixer: an exception becomes
    ``status="crashed"`` (``"oom"`` for an allocation failure) with the traceback in ``error``."""
    try:
        return _measure(job, seq_len)
    except Exception as err:
        text = "".join(traceback.format_exception(err))
        return {"status": "oom" if is_out_of_memory(err) else "crashed", "error": text[-_ERROR_CHARS:]}
    finally:
        if torch.cuda.is_available() and torch.device(job.device).type == "cuda":
            torch.cuda.empty_cache()


def _measure(job: PointJob, seq_len: int) -> dict[str, Any]:
    from longseq.mixers import build, mixer_class
    from longseq.mixers.registry import hyper_names

    device, dtype = torch.device(job.device), getattr(torch, job.dtype)
    hypers = dict(job.hypers)
    max_len = seq_len + DECODE_WARMUP_STEPS + DECODE_MAX_STEPS
    if "max_len" not in hypers and "max_len" in hyper_names(mixer_class(job.mixer)):
        hypers["max_len"] = max_len
    torch.manual_seed(job.seed)
    mixer = build(job.mixer, job.d_model, pattern=job.pattern, **hypers).to(device=device, dtype=dtype).eval()
    x = torch.randn(job.batch, seq_len, job.d_model, device=device, dtype=dtype)
    context = torch.randn_like(x) if mixer.pattern.is_cross else None
    sync = _sync_for(device)
    if job.mode == "decode":
        times, mem, state_floats = _measure_decode(job, mixer, x, context, max_len, sync)
    else:
        prefill_floats: list[int | None] = [None]
        fn = _point_function(job, mixer, x, context, prefill_floats)
        for _ in range(job.warmup):
            fn()
        with track_peak_memory(device) as mem:
            times = time_calls(fn, repeats=job.repeats, min_time=job.min_time, sync=sync)
        state_floats = prefill_floats[0]
    median, iqr = median_and_iqr(times)
    tokens = job.batch if job.mode == "decode" else job.batch * seq_len
    from longseq.kernels import kernel_status

    return {
        "status": "ok",
        "kernels": kernel_status(),  # after the point ran: which kernels this child built and used
        "median_s": median,
        "iqr_s": iqr,
        "repeats": len(times),
        "tokens_per_s": tokens / median if median > 0 else None,
        "peak_mem_bytes": mem.peak_bytes,
        "state_floats": state_floats,
        "error": mem.note,
        "baseline_mem_bytes": mem.baseline_bytes,
    }


def _point_function(job: PointJob, mixer: Any, x: torch.Tensor, context: torch.Tensor | None,
                    state_floats: list[int | None]) -> Callable[[], None]:
    """The computation timed for modes fwd, fwdbwd, fwd_train and prefill; prefill writes the size of its final
    state into ``state_floats[0]``."""
    if job.mode == "fwd":
        def forward() -> None:
            with torch.no_grad():
                mixer(x, context=context)
        return forward
    if job.mode == "fwd_train":
        mixer.train()  # training-mode randomness (dropout, feature redraws) is part of what CAB timed

        def forward_train() -> None:
            with torch.enable_grad():
                # The output holds the graph, and every tensor autograd saved for backward, until the forward has
                # finished: the peak counts them, where fwd frees each activation once used.
                mixer(x, context=context)
        return forward_train
    if job.mode == "prefill":
        def prefill() -> None:
            with torch.no_grad():
                state = mixer.init_state(x.shape[0], context=context, max_len=x.shape[1])
                state_floats[0] = mixer.forward_stream(x, state)[1].num_floats()
        return prefill
    if job.mode == "fwdbwd":
        inputs = [x.requires_grad_()] + ([context.requires_grad_()] if context is not None else [])
        cotangent = torch.randn_like(x)
        params = list(mixer.parameters())

        def forward_backward() -> None:
            for t in (*params, *inputs):
                t.grad = None
            mixer(x, context=context).backward(cotangent)
        return forward_backward
    raise ValueError(f"mode={job.mode!r}; allowed: fwd, fwdbwd, fwd_train, prefill, decode")


def _measure_decode(job: PointJob, mixer: Any, x: torch.Tensor, context: torch.Tensor | None, max_len: int,
                    sync: Callable[[], None]) -> tuple[list[float], Any, int]:
    batch = x.shape[0]
    x_t = torch.randn(batch, x.shape[2], device=x.device, dtype=x.dtype)
    with torch.no_grad():
        # Warm-up on a short throwaway context: the first calls pay for lazy initialisation.
        warm_len = min(DECODE_WARMUP_CONTEXT, x.shape[1])
        state = mixer.init_state(batch, context=context, max_len=warm_len + DECODE_WARMUP_STEPS)
        _, state = mixer.forward_stream(x[:, :warm_len], state)
        for _ in range(DECODE_WARMUP_STEPS):
            _, state = mixer.step(x_t, state)
        del state
        # Decode memory = what the state holds after the prefill + the peak of the steps on top of it; the
        # prefill's own transients (an L x L score matrix for materialized attention) belong to mode "prefill".
        before = current_bytes(x.device)
        state = mixer.init_state(batch, context=context, max_len=max_len)
        _, state = mixer.forward_stream(x, state)
        state_floats = state.num_floats()
        held = current_bytes(x.device)
        for _ in range(DECODE_WARMUP_STEPS):
            _, state = mixer.step(x_t, state)
        holder = [state]
        del state

        def one_step() -> None:
            holder[0] = mixer.step(x_t, holder[0])[1]

        with track_peak_memory(x.device) as mem:
            times = time_calls(one_step, repeats=job.repeats, min_time=job.min_time, sync=sync,
                               max_calls=DECODE_MAX_STEPS)
        if before is not None and held is not None and mem.peak_bytes is not None:
            mem.peak_bytes += max(0, held - before)
    return times, mem, state_floats


def _child_main() -> None:
    """The child: set up from the job line, then measure one point per request line until stdin closes."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed, from Python or C, goes to stderr
    job_fields = json.loads(sys.stdin.readline())
    job = PointJob(**{**job_fields, "imports": tuple(job_fields.get("imports", ()))})
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    for spec in job.imports:
        import_extension(spec)
    import longseq.mixers  # noqa: F401  (registers the built-in mixers)

    device = torch.device(job.device)
    device_memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    ready = {"event": "ready", "threads": torch.get_num_threads(), "device_memory_bytes": device_memory}
    protocol.write(json.dumps(ready) + "\n")
    for line in sys.stdin:
        if line.strip():
            result = measure_point(job, int(json.loads(line)["seq_len"]))
            protocol.write(json.dumps({"event": "point", **result}) + "\n")


# ----------------------------------------------------------------------------------------------------
# The parent's end: one child, watched


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a request ended. kind: "result" (the child answered: ``message``), "died" (it exited; ``signal_name``
    set when a signal ended it), "killed" (the watchdog killed it for memory) or "timeout"; ``detail`` explains the
    last three."""

    kind: Literal["result", "died", "killed", "timeout"]
    message: dict[str, Any] | None = None
    detail: str = ""
    signal_name: str | None = None


class Worker:
    """A child process measuring the points of one ``PointJob``; ``run(L)`` one point at a time.

    The watchdog kills the child when its resident memory exceeds ``max_rss_bytes``; a request that outlives its
    timeout kills it too. After a non-"result" outcome the worker is dead; start a new one to go on.
    """

    def __init__(self, job: PointJob, *, max_rss_bytes: int | None, poll_s: float = WATCHDOG_POLL_S) -> None:
        self.job = job
        self.max_rss_bytes = max_rss_bytes
        self.poll_s = poll_s
        self.ready: dict[str, Any] = {}
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the worker; close() closes it)
        env = dict(os.environ)
        # The child must find the same longseq (and extensions) as this process, installed or not.
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "longseq.bench.isolate"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, text=True, bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, name="isolate-reader", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> Outcome:
        """Send the job and wait for the child to be ready."""
        outcome = self._send_and_wait(dataclasses.asdict(self.job), timeout_s)
        if outcome.kind == "result":
            self.ready = outcome.message or {}
        return outcome

    def run(self, seq_len: int, timeout_s: float | None) -> Outcome:
        """Measure one point; the child's answer is ``outcome.message`` when ``outcome.kind == "result"``."""
        return self._send_and_wait({"seq_len": seq_len}, timeout_s)

    def _send_and_wait(self, request: dict[str, Any], timeout_s: float | None) -> Outcome:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone; the wait below reports how it ended
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=self.poll_s)
            except queue.Empty:
                line = ""
            if line is None:
                return self._died()
            if line.strip():
                try:
                    return Outcome("result", json.loads(line))
                except json.JSONDecodeError:
                    self.kill()
                    return Outcome("died", detail=f"the child wrote an unreadable answer: {line[:200]!r}")
            rss = rss_bytes(self._proc.pid)
            if self.max_rss_bytes is not None and rss is not None and rss > self.max_rss_bytes:
                self.kill()
                return Outcome("killed", detail=(
                    f"killed by the memory watchdog: resident memory {format_bytes(rss)} exceeded "
                    f"max_memory {format_bytes(self.max_rss_bytes)}"))
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                return Outcome("timeout", detail=f"killed after the point's timeout of {timeout_s:g} s")

    def _died(self) -> Outcome:
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # stdout closed but the process lingers
            self.kill()
            code = self._proc.returncode
        signal_name = None
        if code < 0:
            try:
                signal_name = signal.Signals(-code).name
            except ValueError:
                signal_name = f"signal {-code}"
        how = f"{signal_name} (exit code {code})" if signal_name else f"exit code {code}"
        tail = self.stderr_tail()
        return Outcome("died", detail=f"the child process died: {how}" + (f"\n{tail}" if tail else ""),
                       signal_name=signal_name)

    def stderr_tail(self) -> str:
        self._stderr.flush()
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - _STDERR_TAIL_CHARS))
        return self._stderr.read().decode("utf-8", errors="replace").strip()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()

    def close(self) -> None:
        """End the child: close its stdin so it exits, and kill it if it does not within a few seconds."""
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._stderr.close()


if __name__ == "__main__":
    _child_main()
