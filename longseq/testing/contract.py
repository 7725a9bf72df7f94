"""The Mixer contract as executable checks (docs/design.md §4).

Each ``check_*`` takes a mixer instance (float64, ``eval()``, built with the mixer's ``test_hypers``) and raises
``AssertionError`` with a message saying what broke. ``CHECKS`` lists them with the patterns they apply to;
``tests/test_mixer_contract.py`` runs each over the registry, and ``longseq.testing.check_mixer`` runs them all on
one mixer and reports every failure. Each check compares against the baseline closest to the property it tests
(interleaved streams against each stream alone, a stream with overwritten inputs against the same stream without,
...), so that one bug fails the checks about it and not every check that happens to stream.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from longseq.mixers.base import Mixer, ModeNotSupported, Pattern, SequenceTooLong
from longseq.state import State
from longseq.testing.inputs import (
    SIZES,
    MaskLayout,
    Schedule,
    Sizes,
    all_splits,
    layout_masks,
    long_splits,
    make_inputs,
    mixed_schedules,
    padded_batch,
    random_splits,
    run_schedule,
    schedule_calls,
    step_all,
    stream,
)

# FFT convolutions are causal in exact arithmetic; their float64 round-off leaks ~1e-17 to later positions.
JACOBIAN_ATOL = 1e-12
EXACT_ATOL = 1e-9  # float64: results must match to rounding; bit-identity is eval_deterministic's alone


def _max_err(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def _close(a: Tensor, b: Tensor, atol: float, what: str) -> None:
    if a.shape != b.shape or a.dtype != b.dtype:
        raise AssertionError(f"{what}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
    err = _max_err(a, b)
    assert err <= atol, f"{what}: max abs difference {err:.3e} > {atol:.1e}"


def _stream_atol(mixer: Mixer) -> float:
    return EXACT_ATOL if mixer.exact_stream else mixer.stream_bound


def _who(mixer: Mixer) -> str:
    return f"{mixer.name} ({mixer.pattern.value})"


@contextlib.contextmanager
def training_mode(mixer: Mixer) -> Iterator[Mixer]:
    """Run the body with the mixer in ``train()``; restore its mode after."""
    was_training = mixer.training
    mixer.train()
    try:
        yield mixer
    finally:
        mixer.train(was_training)


# -- 1. causality -------------------------------------------------------------------------------------------------


def prefix_violation(mixer: Mixer, sizes: Sizes = SIZES) -> float:
    """Largest change of an output at i when only positions > i change (0 for a causal mixer)."""
    x, ctx = make_inputs(mixer, sizes)
    y = mixer(x, context=ctx)
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for i in range(0, sizes.seq_len - 1, max(1, sizes.seq_len // 8)):
        x2 = x.clone()
        x2[:, i + 1:] = torch.randn(x2[:, i + 1:].shape, generator=g, dtype=x.dtype)
        y2 = mixer(x2, context=ctx)
        worst = max(worst, _max_err(y2[:, : i + 1], y[:, : i + 1]))
        # CAB's form of the test: the output on the prefix alone.
        worst = max(worst, _max_err(mixer(x[:, : i + 1], context=ctx), y[:, : i + 1]))
    return worst


def check_causal_prefix(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    v = prefix_violation(mixer, sizes)
    assert v <= EXACT_ATOL, f"{_who(mixer)}: output at i changed with positions > i by {v:.3e}"


def check_causal_jacobian(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """d y_i / d x_j = 0 for j > i: for each i, the gradient of a random projection of y[:, :i+1]."""
    x, ctx = make_inputs(mixer, sizes)
    x.requires_grad_(True)
    y = mixer(x, context=ctx)
    g = torch.Generator().manual_seed(2)
    for i in range(sizes.seq_len - 1):
        r = torch.randn(y[:, : i + 1].shape, generator=g, dtype=y.dtype)
        (grad,) = torch.autograd.grad((y[:, : i + 1] * r).sum(), x, retain_graph=True)
        leak = grad[:, i + 1:].abs().max().item()
        assert leak <= JACOBIAN_ATOL, f"{_who(mixer)}: d y[:{i + 1}] / d x[{i + 1}:] = {leak:.3e} (not 0)"


def check_noncausal_sees_future(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """The negative check: a non-causal self mixer that never looks ahead would be mislabelled (or broken)."""
    v = prefix_violation(mixer, sizes)
    assert v > 1e-6, f"{mixer.name} claims {mixer.pattern.value} but outputs never depend on later positions"


# -- 2. streaming and step ----------------------------------------------------------------------------------------


@torch.no_grad()
def check_stream_matches_forward(mixer: Mixer, sizes: Sizes = SIZES,
                                 splits: Sequence[Sequence[int]] | None = None) -> None:
    """``forward_stream`` over each of ``splits`` (chunk sizes) equals ``forward``. By default random short chunks,
    and chunks longer than any internal block (``long_splits``)."""
    x, ctx = make_inputs(mixer, sizes)
    y = mixer(x, context=ctx)
    for chunks in all_splits(sizes.seq_len) if splits is None else splits:
        _close(stream(mixer, x, ctx, chunks)[0], y, _stream_atol(mixer), f"{_who(mixer)} forward_stream {chunks}")


@torch.no_grad()
def check_step_matches_forward(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    x, ctx = make_inputs(mixer, sizes)
    _close(step_all(mixer, x, ctx)[0], mixer(x, context=ctx), _stream_atol(mixer), f"{_who(mixer)} step")


@torch.no_grad()
def check_mixed_modes(mixer: Mixer, sizes: Sizes = SIZES, schedules: Sequence[Schedule] | None = None) -> None:
    """Each of ``schedules`` (by default a prefill with ``forward_stream`` then ``step``, ``step`` then
    ``forward_stream``, alternations) equals forward."""
    x, ctx = make_inputs(mixer, sizes)
    y = mixer(x, context=ctx)
    for schedule in mixed_schedules(sizes.seq_len) if schedules is None else schedules:
        ys, _ = run_schedule(mixer, x, ctx, schedule)
        _close(ys, y, _stream_atol(mixer), f"{_who(mixer)} mixed modes {schedule}")


@torch.no_grad()
def check_no_aliasing(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """The caller may overwrite its inputs (x, masks, context) in place once a call returns, and earlier outputs
    are the caller's: the results equal the same run without overwriting. Run without masks (where a mixer may
    keep a view of x) and with all-True masks (where it may keep the mask)."""
    for masked in (False, True):
        _check_no_aliasing(mixer, sizes, masked)


def _check_no_aliasing(mixer: Mixer, sizes: Sizes, masked: bool) -> None:
    x, ctx = make_inputs(mixer, sizes)
    schedule = mixed_schedules(sizes.seq_len)[1]
    valid = torch.ones(x.shape[:2], dtype=torch.bool) if masked else None
    ctx_valid = torch.ones(ctx.shape[:2], dtype=torch.bool) if masked and ctx is not None else None
    want, _ = run_schedule(mixer, x, ctx, schedule, mask=valid, context_mask=ctx_valid)

    g = torch.Generator().manual_seed(7)

    def clobber(*tensors: Tensor | None) -> None:
        for t in tensors:
            if t is None:
                continue
            if t.dtype == torch.bool:
                t.logical_not_()
            else:
                t.copy_(100 * torch.randn(t.shape, generator=g, dtype=t.dtype))

    def fresh(t: Tensor | None, i: int, width: int) -> Tensor | None:
        return None if t is None else t[:, i:i + width].clone()

    ctx_in = None if ctx is None else ctx.clone()
    ctx_valid_in = None if ctx_valid is None else ctx_valid.clone()
    state = mixer.init_state(x.shape[0], context=ctx_in, context_mask=ctx_valid_in)
    clobber(ctx_in, ctx_valid_in)
    outputs = []
    for mode, i, width in schedule_calls(schedule):
        x_in, m_in = fresh(x, i, width), fresh(valid, i, width)
        if mode == "stream":
            y, state = mixer.forward_stream(x_in, state, mask=m_in)
        else:
            y_t, state = mixer.step(x_in[:, 0], state, mask_t=None if m_in is None else m_in[:, 0])
            y = y_t[:, None]
        outputs.append(y)
        clobber(x_in, m_in)
    _close(torch.cat(outputs, dim=1), want, EXACT_ATOL,
           f"{_who(mixer)}: outputs changed when the caller overwrote its inputs{' and masks' if masked else ''}, "
           f"or an earlier output, after the call returned (a state or output aliases the caller's tensors or is "
           f"updated in place)")


@torch.no_grad()
def check_interleaved_streams(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """No state outside the ``State``: two streams with their own states, advanced alternately chunk by chunk (and
    step by step), each equal the same stream run alone."""
    (xa, ca), (xb, cb) = make_inputs(mixer, sizes, seed=0), make_inputs(mixer, sizes, seed=5)
    schedule = mixed_schedules(sizes.seq_len)[2]
    alone = [run_schedule(mixer, xa, ca, schedule)[0], run_schedule(mixer, xb, cb, schedule)[0]]
    states = [mixer.init_state(xa.shape[0], context=ca), mixer.init_state(xb.shape[0], context=cb)]
    outs: list[list[Tensor]] = [[], []]
    for mode, i, width in schedule_calls(schedule):
        for k, x in enumerate((xa, xb)):
            ys, states[k] = run_schedule(mixer, x[:, i:i + width], None, [(mode, width)], state=states[k])
            outs[k].append(ys)
    for k, name in enumerate(("first", "second")):
        _close(torch.cat(outs[k], dim=1), alone[k], EXACT_ATOL,
               f"{_who(mixer)}: the {name} of two interleaved streams differs from it run alone "
               f"(state kept outside the State, e.g. on the module)")


def _unreached_tensors(state: object, path: str = "state") -> Iterator[str]:
    """Tensors a ``State`` holds where its traversal (``_map``: tensors, nested states, lists) cannot reach them:
    in tuples, dicts or attributes that are not dataclass fields. ``select``, ``to`` and ``detach`` miss those."""
    fields = {f.name for f in dataclasses.fields(state)} if dataclasses.is_dataclass(state) else set()
    for name, value in vars(state).items():
        where = f"{path}.{name}"
        if name not in fields:
            if _holds_tensor(value):
                yield f"{where} (not a dataclass field)"
            continue
        for item, item_path in ([(v, f"{where}[{i}]") for i, v in enumerate(value)] if isinstance(value, list)
                                else [(value, where)]):
            if isinstance(item, State):
                yield from _unreached_tensors(item, item_path)
            elif not isinstance(item, Tensor) and _holds_tensor(item):
                yield f"{item_path} ({type(item).__name__})"


def _holds_tensor(value: object) -> bool:
    if isinstance(value, Tensor | State):
        return True
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    if isinstance(value, list | tuple | set):
        return any(_holds_tensor(v) for v in value)
    return False


@torch.no_grad()
def check_state_select(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """``state.select(index)`` mid-stream, then continuing, equals streaming the reordered (or reduced) batch.
    With batch 3, so that no other dimension equals the batch: every tensor the traversal reaches has batch in
    dim 0, and no tensor hides where the traversal cannot reach it."""
    sizes = dataclasses.replace(sizes, batch=3)
    x, ctx = make_inputs(mixer, sizes)
    head = 13
    state = mixer.init_state(3, context=ctx)
    _, state = mixer.forward_stream(x[:, :head], state)
    hidden = list(_unreached_tensors(state))
    assert not hidden, f"{_who(mixer)}: state tensors out of the State's traversal: {', '.join(hidden)}"
    wrong = [tuple(t.shape) for t in state.tensors() if t.dim() == 0 or t.shape[0] != 3]
    assert not wrong, f"{_who(mixer)}: with batch 3, state tensors of shapes {wrong} do not have batch in dim 0"
    rest: list[tuple[str, int]] = [("stream", 7), ("step", sizes.seq_len - head - 7)]
    for index in ([2, 0, 1], [2, 0]):
        selected = state.select(index)
        got, _ = run_schedule(mixer, x[index, head:], None, rest, state=selected)
        c = None if ctx is None else ctx[index]
        want, _ = run_schedule(mixer, x[index], c, [("stream", head), *rest])
        _close(got, want[:, head:], _stream_atol(mixer),
               f"{_who(mixer)}: state.select({index}) after {head} tokens, then continuing")


# -- 3. padding, masks and batch independence ---------------------------------------------------------------------


def check_padding(mixer: Mixer, layout: MaskLayout = "left", sizes: Sizes = SIZES) -> None:
    """``check_masks`` on a padded batch of one layout (``layout_masks``). ``holes`` pads inside the sequence and has
    a row with no valid token; cross patterns pad the memory too (``holes``: one row's memory fully masked)."""
    batch = 3 if layout == "holes" else sizes.batch
    sizes = dataclasses.replace(sizes, batch=batch)
    mask = layout_masks(layout, batch, sizes.seq_len, seed=3)
    ctx_mask = None
    if mixer.pattern.is_cross:
        other = {"left": "right", "right": "left", "holes": "holes"}[layout]
        ctx_mask = layout_masks(other, batch, sizes.ctx_len, seed=4)
        if layout == "holes":  # the empty query row gets a valid memory; row 1 gets none
            ctx_mask = ctx_mask[[0, 2, 1]]
    check_masks(mixer, mask, ctx_mask, sizes, what=f"{layout} padding")


def _schedule_name(schedule: Schedule) -> str:
    if all(mode == "stream" for mode, _ in schedule):
        return f"forward_stream {[n for _, n in schedule]}"
    return "step" if len(schedule) == 1 else f"schedule {schedule}"


def _default_padding_schedules(length: int) -> list[Schedule]:
    """Short random chunks, chunks longer than any internal block, and step by step."""
    splits = (random_splits(length, 5), long_splits(length)[-1])
    return [*([("stream", n) for n in chunks] for chunks in splits), [("step", length)]]


def check_masks(mixer: Mixer, mask: Tensor, context_mask: Tensor | None = None, sizes: Sizes = SIZES, *,
                schedules: Sequence[Schedule] | None = None, what: str = "padding") -> None:
    """A padded batch (``mask: (B, L)``, and ``context_mask: (B, S)`` in cross patterns, sized as ``sizes``) equals
    each row's valid tokens run alone, at valid positions, in forward and (causal patterns) in each of
    ``schedules`` (default: short random chunks, chunks longer than any internal block, step by step); padded
    positions output exactly 0; outputs and gradients are finite and padded inputs get exactly zero gradient. A row
    with no valid token leaves its stream's state as it was: continuing that state equals a fresh stream."""
    x, ctx = make_inputs(mixer, sizes)
    xp = padded_batch(x, mask, seed=sizes.seed + 3)
    ctx_p = None
    if ctx is not None:
        ctx_p = ctx if context_mask is None else padded_batch(ctx, context_mask, seed=sizes.seed + 4)
    xp.requires_grad_(True)
    runs: dict[str, Callable[[], tuple[Tensor, State | None]]] = {
        "forward": lambda: (mixer(xp, mask=mask, context=ctx_p, context_mask=context_mask), None)}
    if mixer.pattern.is_causal:
        for schedule in _default_padding_schedules(sizes.seq_len) if schedules is None else schedules:
            runs[_schedule_name(schedule)] = lambda s=schedule: run_schedule(mixer, xp, ctx_p, s, mask=mask,
                                                                             context_mask=context_mask)
    g = torch.Generator().manual_seed(6)
    for mode, run in runs.items():
        where = f"{_who(mixer)}, {what}, {mode}"
        yp, state = run()
        assert torch.isfinite(yp).all(), f"{where}: non-finite outputs"
        assert _max_err(yp.detach()[~mask], torch.zeros(())) == 0.0, f"{where}: padded positions output non-zero"
        (grad,) = torch.autograd.grad((yp * torch.randn(yp.shape, generator=g, dtype=yp.dtype)).sum(), xp)
        assert torch.isfinite(grad).all(), f"{where}: non-finite gradient w.r.t. the input"
        leak = _max_err(grad[~mask], torch.zeros(()))
        assert leak == 0.0, f"{where}: padded inputs have gradient {leak:.3e} (a padded token is not a no-op)"
        atol = EXACT_ATOL if mode == "forward" else _stream_atol(mixer)
        with torch.no_grad():
            for b in range(mask.shape[0]):
                c = _row_memory(ctx_p, context_mask, b)
                if c is not None and c.shape[1] == 0:
                    continue  # a query row over an empty memory: finite and independent is all the contract says
                if mask[b].any():
                    alone = mixer(xp.detach()[b: b + 1, mask[b]], context=c)[0]
                    _close(yp.detach()[b][mask[b]], alone, atol, f"{where}: row {b} vs its valid tokens alone")
                elif state is not None:
                    _check_state_kept(mixer, state, x, b, c, atol, where)


def _row_memory(ctx: Tensor | None, context_mask: Tensor | None, row: int) -> Tensor | None:
    """Row ``row``'s valid memory tokens: (1, S_valid, D), or None in self patterns."""
    if ctx is None:
        return None
    return ctx[row: row + 1] if context_mask is None else ctx[row: row + 1, context_mask[row]]


def _check_state_kept(mixer: Mixer, state: State, x: Tensor, row: int, ctx: Tensor | None, atol: float,
                      where: str) -> None:
    """Row ``row`` had no valid token: continuing its final ``state`` with a few valid tokens (x's first ones)
    equals a fresh stream of them."""
    more = x[:, : min(5, x.shape[1])]
    got, _ = mixer.forward_stream(more, state.detach())
    _close(got[row], mixer(more[row: row + 1], context=ctx)[0], atol,
           f"{where}: row {row} has no valid token, yet continuing its state differs from a fresh stream "
           f"(padding changed the state)")


def check_batch_independence(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """Row 0's output does not change, and has zero gradient, when row 1 changes."""
    x, ctx = make_inputs(mixer, sizes)
    x.requires_grad_(True)
    y = mixer(x, context=ctx)
    x2 = x.detach().clone()
    x2[1:] += 1.0
    ctx2 = None if ctx is None else torch.cat([ctx[:1], ctx[1:] + 1.0])
    _close(mixer(x2, context=ctx2)[0], y[0], EXACT_ATOL, f"{_who(mixer)}: row 0 after changing row 1")
    (grad,) = torch.autograd.grad(y[0].sum(), x)
    assert grad[1:].abs().max().item() == 0.0, f"{mixer.name}: row 0's output has a gradient w.r.t. row 1"


# -- 4. train mode, determinism, precision ------------------------------------------------------------------------


def check_train_matches_eval(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """With its dropouts at 0 (the test hypers), a mixer computes the same function in train() as in eval()."""
    x, ctx = make_inputs(mixer, sizes)
    y_eval = mixer(x, context=ctx)
    with training_mode(mixer):
        y_train = mixer(x, context=ctx)
    _close(y_train, y_eval, EXACT_ATOL, f"{_who(mixer)}: train() vs eval() forward")


def check_train_mode_stream(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    with training_mode(mixer):
        check_stream_matches_forward(mixer, sizes)
        check_mixed_modes(mixer, sizes)


def check_train_mode_padding(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    with training_mode(mixer):
        check_padding(mixer, "holes", sizes)


@torch.no_grad()
def check_eval_deterministic(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """Two eval forwards (and two step-by-step runs) on the same input are bit-identical."""
    x, ctx = make_inputs(mixer, sizes)
    assert torch.equal(mixer(x, context=ctx), mixer(x, context=ctx)), f"{_who(mixer)}: two forwards differ"
    if mixer.pattern.is_causal:
        assert torch.equal(step_all(mixer, x, ctx)[0], step_all(mixer, x, ctx)[0]), (
            f"{_who(mixer)}: two step-by-step runs differ")


def check_float32_long(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """``check_float32`` at the mixer's ``float32_len`` (512 unless it declares longer), batch 1, streamed (causal
    patterns) in two near-halves."""
    sizes = dataclasses.replace(sizes, batch=1, seq_len=mixer.float32_len)
    check_float32(mixer, sizes, schedules=[[("stream", n) for n in long_splits(sizes.seq_len)[1]]])


@torch.no_grad()
def check_float32(mixer: Mixer, sizes: Sizes = SIZES, *, mask: Tensor | None = None,
                  context_mask: Tensor | None = None, schedules: Sequence[Schedule] = ()) -> None:
    """In float32, outputs are finite and within the mixer's ``float32_tolerance`` of float64 (relative to the
    largest float64 output), in forward and (causal patterns) in each of ``schedules``, with the masks given."""
    x, ctx = make_inputs(mixer, sizes)
    if mask is not None:
        x = padded_batch(x, mask, seed=sizes.seed + 3)
    if ctx is not None and context_mask is not None:
        ctx = padded_batch(ctx, context_mask, seed=sizes.seed + 4)
    m32 = copy.deepcopy(mixer).float()
    masks = {"mask": mask, "context_mask": context_mask}
    runs: dict[str, Callable[[Mixer, Tensor, Tensor | None], Tensor]] = {
        "forward": lambda m, a, c: m(a, context=c, **masks)}
    if mixer.pattern.is_causal:
        for schedule in schedules:
            runs[_schedule_name(schedule)] = lambda m, a, c, s=schedule: run_schedule(m, a, c, s, **masks)[0]
    for mode, run in runs.items():
        y64 = run(mixer, x, ctx)
        y32 = run(m32, x.float(), None if ctx is None else ctx.float())
        what = f"{_who(mixer)} float32 {mode} at L={sizes.seq_len}"
        assert y32.dtype == torch.float32, f"{what}: output dtype {y32.dtype}"
        assert torch.isfinite(y32).all(), f"{what}: non-finite outputs (overflow?)"
        scale = y64.abs().max().item() or 1.0
        err = _max_err(y32.double(), y64) / scale
        assert err <= mixer.float32_tolerance, (
            f"{what}: relative error {err:.2e} vs float64 > float32_tolerance={mixer.float32_tolerance:.1e}")


# -- 5. gradients against finite differences -----------------------------------------------------------------------


def _gradcheck(what: str, loss_fn: Callable[[], Tensor], named: list[tuple[str, Tensor]], seed: int) -> None:
    """For each named leaf tensor, the directional derivative along a random direction: autograd against a central
    finite difference (float64). A wrong gradient of any one tensor fails, naming it."""
    tensors = [t for _, t in named]
    grads = torch.autograd.grad(loss_fn(), tensors, allow_unused=True)
    g = torch.Generator().manual_seed(seed)
    eps = 1e-6
    for (name, t), grad in zip(named, grads, strict=True):
        direction = torch.randn(t.shape, generator=g, dtype=t.dtype)
        analytic = 0.0 if grad is None else (grad * direction).sum().item()
        with torch.no_grad():
            t.add_(eps * direction)
            up = loss_fn().item()
            t.sub_(2 * eps * direction)
            down = loss_fn().item()
            t.add_(eps * direction)
        numeric = (up - down) / (2 * eps)
        tol = 1e-6 * max(1.0, abs(numeric), abs(analytic))
        assert abs(analytic - numeric) <= tol, (
            f"{what}: gradient of {name} along a random direction: autograd {analytic:.6e}, finite differences "
            f"{numeric:.6e}")


def _inputs_and_parameters(mixer: Mixer, x: Tensor, ctx: Tensor | None) -> list[tuple[str, Tensor]]:
    named = [("x", x.requires_grad_(True))]
    if ctx is not None:
        named.append(("context", ctx.requires_grad_(True)))
    return named + [(f"parameter {n}", p) for n, p in mixer.named_parameters() if p.requires_grad]


def check_gradients_forward(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """Gradients of forward w.r.t. the input (and context) and every parameter equal finite differences."""
    x, ctx = make_inputs(mixer, sizes)
    r = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=x.dtype)
    _gradcheck(f"{_who(mixer)} forward", lambda: (mixer(x, context=ctx) * r).sum(),
               _inputs_and_parameters(mixer, x, ctx), seed=9)


def check_gradients_stream(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    """Gradients flow through the state: through chained ``forward_stream`` calls, the gradients w.r.t. the whole
    input and every parameter equal finite differences (truncated backpropagation through time needs them)."""
    x, ctx = make_inputs(mixer, sizes)
    r = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=x.dtype)
    chunks = long_splits(sizes.seq_len)[-1]
    _gradcheck(f"{_who(mixer)} chained forward_stream {chunks}", lambda: (stream(mixer, x, ctx, chunks)[0] * r).sum(),
               _inputs_and_parameters(mixer, x, ctx), seed=10)


# -- 6. refusals, max_len, state size, dtypes ----------------------------------------------------------------------


def check_refuses_streaming(mixer: Mixer, sizes: Sizes = SIZES) -> None:
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
            raise AssertionError(f"{_who(mixer)}: {what} did not raise ModeNotSupported")


def check_max_len(mixer: Mixer, sizes: Sizes = SIZES) -> None:
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


@torch.no_grad()
def check_state_size(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    x, ctx = make_inputs(mixer, sizes)
    state = mixer.init_state(sizes.batch, context=ctx)
    ctx_len = 0 if ctx is None else sizes.ctx_len
    t = 0
    for n in (1, sizes.seq_len // 2 - 1, sizes.seq_len // 2):
        _, state = mixer.forward_stream(x[:, t:t + n], state)
        t += n
        got, want = state.num_floats(), mixer.state_size(t, ctx_len)
        assert got == want, f"{mixer.name}: state_size({t}, {ctx_len}) = {want} but the state holds {got} floats"


def check_dtype(mixer: Mixer, dtype: torch.dtype, sizes: Sizes = SIZES) -> None:
    """A copy of the mixer cast to ``dtype`` runs, keeps the dtype and stays finite, in every mode it has."""
    mixer = copy.deepcopy(mixer).to(dtype)
    x, ctx = make_inputs(mixer, sizes, dtype=dtype)
    outputs = {"forward": mixer(x, context=ctx)}
    if mixer.pattern.is_causal:
        outputs["forward_stream"] = stream(mixer, x, ctx, [sizes.seq_len // 2, sizes.seq_len // 2])[0]
        state = mixer.init_state(sizes.batch, context=ctx)
        outputs["step"] = mixer.step(x[:, 0], state)[0]
    for what, y in outputs.items():
        assert y.dtype == dtype, f"{mixer.name} {what}: output dtype {y.dtype} != input dtype {dtype}"
        assert torch.isfinite(y).all(), f"{mixer.name} {what}: non-finite output in {dtype}"


def check_dtypes(mixer: Mixer, sizes: Sizes = SIZES) -> None:
    for dtype in (torch.float64, torch.bfloat16):
        check_dtype(mixer, dtype, sizes)


# -- the table ------------------------------------------------------------------------------------------------------


def _any(pattern: Pattern) -> bool:
    return True


def _causal(pattern: Pattern) -> bool:
    return pattern.is_causal


def _noncausal(pattern: Pattern) -> bool:
    return not pattern.is_causal


def _noncausal_self(pattern: Pattern) -> bool:
    return pattern == Pattern.NONCAUSAL_SELF


def _always(cls: type[Mixer]) -> str | None:
    return None


def _unless_stochastic(cls: type[Mixer]) -> str | None:
    return "declared stochastic_in_training" if cls.stochastic_in_training else None


def _unless_surrogate_gradients(cls: type[Mixer]) -> str | None:
    return None if cls.exact_gradients else "declared exact_gradients=False"


@dataclasses.dataclass(frozen=True)
class ContractCheck:
    """One check of the contract: the patterns it is about, ``waived`` (a reason when the mixer class declared
    the check away, else None) and ``build``, extra constructor arguments it needs (``max_len``)."""

    name: str
    run: Callable[[Mixer], None]
    patterns: Callable[[Pattern], bool] = _any
    waived: Callable[[type[Mixer]], str | None] = _always
    build: tuple[tuple[str, int], ...] = ()


CHECKS: tuple[ContractCheck, ...] = (
    ContractCheck("causal_prefix", check_causal_prefix, _causal),
    ContractCheck("causal_jacobian", check_causal_jacobian, _causal),
    ContractCheck("noncausal_sees_future", check_noncausal_sees_future, _noncausal_self),
    ContractCheck("stream", check_stream_matches_forward, _causal),
    ContractCheck("step", check_step_matches_forward, _causal),
    ContractCheck("mixed_modes", check_mixed_modes, _causal),
    ContractCheck("no_aliasing", check_no_aliasing, _causal),
    ContractCheck("interleaved_streams", check_interleaved_streams, _causal),
    ContractCheck("state_select", check_state_select, _causal),
    ContractCheck("padding_left", lambda m: check_padding(m, "left")),
    ContractCheck("padding_right", lambda m: check_padding(m, "right")),
    ContractCheck("padding_holes", lambda m: check_padding(m, "holes")),
    ContractCheck("batch_independence", check_batch_independence),
    ContractCheck("train_matches_eval", check_train_matches_eval, waived=_unless_stochastic),
    ContractCheck("train_mode_stream", check_train_mode_stream, _causal, _unless_stochastic),
    ContractCheck("train_mode_padding", check_train_mode_padding, waived=_unless_stochastic),
    ContractCheck("eval_deterministic", check_eval_deterministic),
    ContractCheck("float32_long", check_float32_long),
    ContractCheck("gradients_forward", check_gradients_forward, waived=_unless_surrogate_gradients),
    ContractCheck("gradients_stream", check_gradients_stream, _causal, _unless_surrogate_gradients),
    ContractCheck("refuses_streaming", check_refuses_streaming, _noncausal),
    ContractCheck("max_len", check_max_len, build=(("max_len", SIZES.seq_len // 2),)),
    ContractCheck("state_size", check_state_size, _causal),
    ContractCheck("dtypes", check_dtypes),
)
