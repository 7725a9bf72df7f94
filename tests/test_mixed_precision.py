"""Mixed precision (docs/design.md §5): every registered mixer x test_hypers x supported pattern, in float32 under
``torch.autocast``, stays within the tolerance it declares (``Mixer.bfloat16_tolerance`` on the CPU,
``Mixer.float16_tolerance`` on CUDA, at ``Mixer.autocast_len``) of the same weights and inputs without autocast,
and the states of causal mixers stay float32 (scans, decays and states accumulate in float32).

The error is relative in the L2 norm over the whole output (batch 2): ||y_autocast - y_32|| / ||y_32||.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor

from longseq.cache import WindowCache
from longseq.mixers import Mixer, Pattern, State, available, build
from longseq.testing.inputs import Sizes, layout_masks, long_splits, make_inputs, padded_batch, run_schedule
from longseq.testing.report import D_MODEL


def _cases(causal_only: bool = False) -> list:
    cases = []
    for info in available():
        for i, hypers in enumerate(info.cls.test_hypers):
            for pattern in sorted(info.cls.supported_patterns(**hypers)):
                if causal_only and not pattern.is_causal:
                    continue
                cases.append(pytest.param(info.name, hypers, pattern, id=f"{info.name}-{i}-{pattern.value}"))
    return cases


def _any_window_cache(state: State) -> bool:
    if isinstance(state, WindowCache):
        return True
    values = [getattr(state, f.name) for f in dataclasses.fields(state)]
    return any(_any_window_cache(v) for value in values for v in (value if isinstance(value, list) else [value])
               if isinstance(v, State))


def _mixer(name: str, hypers: dict, pattern: Pattern, device: str) -> Mixer:
    torch.manual_seed(0)
    return build(name, D_MODEL, pattern=pattern, **hypers).to(device).eval()


def _runs(mixer: Mixer, device: str) -> Iterator[tuple[str, Callable[[], Tensor]]]:
    """Forward, forward with holes (one row empty), and (causal) streamed in two near-halves with the holes."""
    sizes = Sizes(batch=2, seq_len=mixer.autocast_len, ctx_len=mixer.autocast_len)
    x, ctx = make_inputs(mixer, sizes, dtype=torch.float32)
    mask = layout_masks("holes", sizes.batch, sizes.seq_len, seed=3)
    x, xp, ctx, mask = (None if t is None else t.to(device) for t in (x, padded_batch(x, mask, seed=3), ctx, mask))
    yield "forward", lambda: mixer(x, context=ctx)
    yield "forward with holes", lambda: mixer(xp, mask=mask, context=ctx)
    if mixer.pattern.is_causal:
        schedule = [("stream", n) for n in long_splits(sizes.seq_len)[1]]
        yield f"forward_stream {schedule}", lambda: run_schedule(mixer, xp, ctx, schedule, mask=mask)[0]


@torch.no_grad()
def _check_autocast(name: str, hypers: dict, pattern: Pattern, device: str, dtype: torch.dtype) -> None:
    mixer = _mixer(name, hypers, pattern, device)
    tolerance = mixer.bfloat16_tolerance if dtype == torch.bfloat16 else mixer.float16_tolerance
    for mode, run in _runs(mixer, device):
        want = run()
        with torch.autocast(device, dtype=dtype):
            got = run()
        what = f"{name} ({pattern.value}) {mode} under {dtype} autocast at L={mixer.autocast_len}"
        assert torch.isfinite(got).all(), f"{what}: non-finite outputs"
        err = ((got.float() - want).norm() / want.norm()).item()
        attr = "bfloat16_tolerance" if dtype == torch.bfloat16 else "float16_tolerance"
        assert err <= tolerance, f"{what}: relative L2 error {err:.2e} vs float32 > {attr}={tolerance}"


@pytest.mark.parametrize(("name", "hypers", "pattern"), _cases())
def test_bfloat16_autocast_within_declared_tolerance(name, hypers, pattern):
    _check_autocast(name, hypers, pattern, "cpu", torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 autocast is held on CUDA; no CUDA device here")
@pytest.mark.parametrize(("name", "hypers", "pattern"), _cases())
def test_float16_autocast_on_cuda_within_declared_tolerance(name, hypers, pattern):
    _check_autocast(name, hypers, pattern, "cuda", torch.float16)


def _float_tensors(state: State, path: str = "state") -> Iterator[tuple[str, Tensor]]:
    """Every floating tensor the state's traversal reaches, with its field path."""
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            where = f"{path}.{field.name}" + ("" if i is None else f"[{i}]")
            if isinstance(item, State):
                yield from _float_tensors(item, where)
            elif isinstance(item, Tensor) and item.is_floating_point():
                yield where, item


@pytest.mark.parametrize(("name", "hypers", "pattern"), _cases(causal_only=True))
def test_states_stay_float32_under_autocast(name, hypers, pattern):
    """A float32 input under bfloat16 autocast: the state after ``forward_stream`` (with a padded token), after
    ``step`` and after a masked ``step`` holds only float32 tensors."""
    mixer = _mixer(name, hypers, pattern, "cpu")
    x, ctx = make_inputs(mixer, Sizes(batch=2, seq_len=12, ctx_len=8), dtype=torch.float32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 3] = False
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = mixer.init_state(2, context=ctx)
        calls = {
            "forward_stream": lambda s: mixer.forward_stream(x[:, :10], s, mask=mask)[1],
            "step": lambda s: mixer.step(x[:, 10], s)[1],
            "masked step": lambda s: mixer.step(x[:, 11], s, mask_t=torch.tensor([True, False]))[1],
        }
        for call, advance in calls.items():
            state = advance(state)
            wrong = [f"{where} {t.dtype}" for where, t in _float_tensors(state) if t.dtype != torch.float32]
            assert not wrong, f"{name} ({pattern.value}) after {call} under bfloat16 autocast: {', '.join(wrong)}"
