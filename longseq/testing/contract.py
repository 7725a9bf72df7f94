"""The Mixer contract as executable checks (DESIGN.md §4).

Each ``check_*`` takes a mixer instance (in eval mode, float64 unless stated) and raises ``AssertionError`` with a
message saying what broke. ``tests/test_mixer_contract.py`` runs them over the registry; a mixer written outside
longseq can run them on itself. Sizes are small (d_model 16, L 32) so the whole registry checks in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from longseq.mixers.base import Mixer, ModeNotSupported, SequenceTooLong
from longseq.state import State

EXACT_ATOL = 1e-9  # float64: streaming, padding and prefix results must match to rounding


@dataclasses.dataclass(frozen=True)
class Sizes:
    batch: int = 2
    seq_len: int = 32
    ctx_len: int = 24


def make_inputs(mixer: Mixer, sizes: Sizes, seed: int = 0,
                dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor | None]:
    """x: (B, L, D) and, for cross patterns, context: (B, S, D)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sizes.batch, sizes.seq_len, mixer.d_model, generator=g, dtype=torch.float64).to(dtype)
    ctx = None
    if mixer.pattern.is_cross:
        ctx = torch.randn(sizes.batch, sizes.ctx_len, mixer.d_model, generator=g, dtype=torch.float64).to(dtype)
    return x, ctx


def _close(a: Tensor, b: Tensor, atol: float, what: str) -> None:
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= atol, f"{what}: max abs difference {err:.3e} > {atol:.1e}"


def _stream_atol(mixer: Mixer) -> float:
    return EXACT_ATOL if mixer.exact_stream else mixer.stream_bound


# -- 1. causality -------------------------------------------------------------------------------------------------


def prefix_violation(mixer: Mixer, sizes: Sizes = Sizes()) -> float:
    """Largest change of an output at i when only positions > i change (0 for a causal mixer)."""
    x, ctx = make_inputs(mixer, sizes)
    y = mixer(x, context=ctx)
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for i in range(0, sizes.seq_len - 1, max(1, sizes.seq_len // 8)):
        x2 = x.clone()
        x2[:, i + 1:] = torch.randn(x2[:, i + 1:].shape, generator=g, dtype=x.dtype)
        y2 = mixer(x2, context=ctx)
        worst = max(worst, (y2[:, : i + 1] - y[:, : i + 1]).abs().max().item())
        # CAB's form of the test: the output on the prefix alone.
        y3 = mixer(x[:, : i + 1], context=ctx)
        worst = max(worst, (y3 - y[:, : i + 1]).abs().max().item())
    return worst


def check_causal_prefix(mixer: Mixer, sizes: Sizes = Sizes()) -> None:
    v = prefix_violation(mixer, sizes)
    assert v <= EXACT_ATOL, f"{mixer.name} ({mixer.pattern.value}): output at i changed with positions > i by {v:.3e}"


def check_causal_jacobian(mixer: Mixer, sizes: Sizes = Sizes()) -> None:
    """d y_i / d x_j = 0 for j > i: for each i, the gradient of a random projection of y[:, :i+1]."""
    x, ctx = make_inputs(mixer, sizes)
    x.requires_grad_(True)
    y = mixer(x, context=ctx)
    g = torch.Generator().manual_seed(2)
    for i in range(sizes.seq_len - 1):
        r = torch.randn(y[:, : i + 1].shape, generator=g, dtype=y.dtype)
        (grad,) = torch.autograd.grad((y[:, : i + 1] * r).sum(), x, retain_graph=True)
        leak = grad[:, i + 1:].abs().max().item()
        assert leak == 0.0, f"{mixer.name} ({mixer.pattern.value}): d y[:{i + 1}] / d x[{i + 1}:] = {leak:.3e} != 0"


def check_noncausal_sees_future(mixer: Mixer, sizes: Sizes = Sizes()) -> None:
    """The negative check: a non-causal self mixer that never looks ahead would be mislabelled (or broken)."""
    v = prefix_violation(mixer, sizes)
    assert v > 1e-6, f"{mixer.name} claims {mixer.pattern.value} but outputs never depend on later positions"


# -- 2. streaming and step ----------------------------------------------------------------------------------------


def random_splits(length: int, seed: int) -> list[int]:
    """Chunk sizes summing to ``length``: a mix of single tokens and longer chunks."""
    g = torch.Generator().manual_seed(seed)
    sizes, left = [], length
    while left:
        n = min(left, int(torch.randint(1, max(2, length // 3), (1,), generator=g)))
        sizes.append(n)
        left -= n
    return sizes


def stream(mixer: Mixer, x: Tensor, ctx: Tensor | None, chunks: list[int], *, mask: Tensor | None = None,
           context_mask: Tensor | None = None) -> tuple[Tensor, State]:
    state = mixer.init_state(x.shape[0], context=ctx, context_mask=context_mask)
    ys, t = [], 0
    for n in chunks:
        y, state = mixer.forward_stream(x[:, t:t + n], state, mask=None if mask is None else mask[:, t:t + n])
        ys.append(y)
        t += n
    return torch.cat(ys, dim=1), state


def check_stream_matches_forward(mixer: Mixer, sizes: Sizes = Sizes(), seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    x, ctx = make_inputs(mixer, sizes)
    y = mixer(x, context=ctx)
    for seed in seeds:
        chunks = random_splits(sizes.seq_len, seed)
        ys, _ = stream(mixer, x, ctx, chunks)
        _close(ys, y, _stream_atol(mixer), f"{mixer.name} ({mixer.pattern.value}) forward_stream {chunks} vs forward")


def check_step_matches_forward(mixer: Mixer, sizes: Sizes = Sizes()) -> None:
    x, ctx = make_inputs(mixer, sizes)
    y = mixer(x, context=ctx)
    state = mixer.init_state(x.shape[0], context=ctx)
    ys = []
    for t in range(sizes.seq_len):
        y_t, state = mixer.step(x[:, t], state)
        assert y_t.shape == x[:, t].shape, f"{mixer.name}: step returned {tuple(y_t.shape)}"
        ys.append(y_t)
    _close(torch.stack(ys, dim=1), y, _stream_atol(mixer), f"{mixer.name} ({mixer.pattern.value}) step vs forward")


# -- 3. padding and batch independence ----------------------------------------------------------------------------


def _padded_batch(x: Tensor, lengths: list[int], side: str, seed: int) -> tuple[Tensor, Tensor]:
    """Place x[b, :lengths[b]] at the left or right end of a row filled with junk; return (x_padded, mask)."""
    g = torch.Generator().manual_seed(seed)
    xp = 10 * torch.randn(x.shape, generator=g, dtype=x.dtype)  # loud junk: a leak cannot hide
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    length = x.shape[1]
    for b, n in enumerate(lengths):
        sl = slice(0, n) if side == "right" else slice(length - n, length)
        xp[b, sl], mask[b, sl] = x[b, :n], True
    return xp, mask


def check_padding(mixer: Mixer, sizes: Sizes = Sizes(), side: str = "left") -> None:
    """A padded batch equals each sequence alone at valid positions, and outputs 0 at padded ones.
    Cross patterns also pad the memory. Causal patterns check streaming with the same masks."""
    x, ctx = make_inputs(mixer, sizes)
    lengths = [sizes.seq_len - 3 * b - 5 for b in range(sizes.batch)]
    xp, mask = _padded_batch(x, lengths, side, seed=3)
    ctx_p, ctx_mask, ctx_lengths = None, None, None
    if ctx is not None:
        ctx_lengths = [sizes.ctx_len - 4 * b - 3 for b in range(sizes.batch)]
        ctx_p, ctx_mask = _padded_batch(ctx, ctx_lengths, "right" if side == "left" else "left", seed=4)
    runs = {"forward": mixer(xp, mask=mask, context=ctx_p, context_mask=ctx_mask)}
    if mixer.pattern.is_causal:
        runs["forward_stream"] = stream(mixer, xp, ctx_p, random_splits(sizes.seq_len, 5), mask=mask,
                                        context_mask=ctx_mask)[0]
    for mode, yp in runs.items():
        what = f"{mixer.name} ({mixer.pattern.value}, {side} padding, {mode})"
        assert yp[~mask].abs().max().item() == 0.0, f"{what}: padded positions output non-zero"
        for b, n in enumerate(lengths):
            c = None if ctx is None else ctx[b: b + 1, : ctx_lengths[b]]
            alone = mixer(x[b: b + 1, :n], context=c)[0]
            atol = EXACT_ATOL if mode == "forward" else _stream_atol(mixer)
            _close(yp[b][mask[b]], alone, atol, f"{what}: row {b} vs the sequence alone")


def check_batch_independence(mixer: Mixer, sizes: Sizes = Sizes()) -> None:
    """Row 0's output does not change, and has zero gradient, when row 1 changes."""
    x, ctx = make_inputs(mixer, sizes)
    x.requires_grad_(True)
    y = mixer(x, context=ctx)
    x2 = x.detach().clone()
    x2[1:] += 1.0
    ctx2 = None if ctx is None else torch.cat([ctx[:1], ctx[1:] + 1.0])
    _close(mixer(x2, context=ctx2)[0], y[0], 0.0, f"{mixer.name} ({mixer.pattern.value}): row 0 after changing row 1")
    (grad,) = torch.autograd.grad(y[0].sum(), x)
    assert grad[1:].abs().max().item() == 0.0, f"{mixer.name}: row 0's output has a gradient w.r.t. row 1"


# -- 4. refusals ---------------------------------------------------------------------------------------------------


def check_refuses_streaming(mixer: Mixer, sizes: Sizes = Sizes()) -> None:
    """Non-causal patterns: init_state, forward_stream and step each raise ModeNotSupported."""
    x, ctx = make_inputs(mixer, sizes)
    calls: dict[str, Callable[[], object]] = {
        "init_state": lambda: mixer.init_state(sizes.batch, context=ctx),
        "forward_stream": lambda: mixer.forward_stream(x, State()),
        "step": lambda: mixer.step(x[:, 0], State()),
    }
    for what, call in calls.items():
        try:
            call()
        except ModeNotSupported as e:
            assert mixer.name in str(e) and mixer.pattern.value in str(e), f"{what}: unclear message {e}"
        else:
            raise AssertionError(f"{mixer.name} ({mixer.pattern.value}): {what} did not raise ModeNotSupported")


def check_max_len(mixer: Mixer, sizes: Sizes = Sizes()) -> None:
    """Built with max_len = L/2: a longer forward, or streaming past it, raises SequenceTooLong."""
    assert mixer.max_len is not None and mixer.max_len < sizes.seq_len
    x, ctx = make_inputs(mixer, sizes)
    try:
        mixer(x, context=ctx)
    except SequenceTooLong as e:
        assert str(sizes.seq_len) in str(e) and str(mixer.max_len) in str(e), f"unclear message: {e}"
    else:
        raise AssertionError(f"{mixer.name}: forward beyond max_len={mixer.max_len} did not raise")
    if mixer.pattern.is_causal:
        state = mixer.init_state(sizes.batch, context=ctx)
        _, state = mixer.forward_stream(x[:, : mixer.max_len], state)
        try:
            mixer.step(x[:, mixer.max_len], state)
        except SequenceTooLong:
            return
        raise AssertionError(f"{mixer.name}: streaming beyond max_len={mixer.max_len} did not raise")


# -- 5. state size -------------------------------------------------------------------------------------------------


def check_state_size(mixer: Mixer, sizes: Sizes = Sizes()) -> None:
    x, ctx = make_inputs(mixer, sizes)
    state = mixer.init_state(sizes.batch, context=ctx)
    ctx_len = 0 if ctx is None else sizes.ctx_len
    t = 0
    for n in (1, sizes.seq_len // 2 - 1, sizes.seq_len // 2):
        _, state = mixer.forward_stream(x[:, t:t + n], state)
        t += n
        got, want = state.num_floats(), mixer.state_size(t, ctx_len)
        assert got == want, f"{mixer.name}: state_size({t}, {ctx_len}) = {want} but the state holds {got} floats"


# -- 6. dtypes -----------------------------------------------------------------------------------------------------


def check_dtype(mixer: Mixer, dtype: torch.dtype, sizes: Sizes = Sizes()) -> None:
    """The mixer (already cast to ``dtype``) runs, keeps the dtype and stays finite, in every mode it has."""
    x, ctx = make_inputs(mixer, sizes, dtype=dtype)
    outputs = {"forward": mixer(x, context=ctx)}
    if mixer.pattern.is_causal:
        outputs["forward_stream"] = stream(mixer, x, ctx, [sizes.seq_len // 2, sizes.seq_len // 2])[0]
        state = mixer.init_state(sizes.batch, context=ctx)
        outputs["step"] = mixer.step(x[:, 0], state)[0]
    for what, y in outputs.items():
        assert y.dtype == dtype, f"{mixer.name} {what}: output dtype {y.dtype} != input dtype {dtype}"
        assert torch.isfinite(y).all(), f"{mixer.name} {what}: non-finite output in {dtype}"
