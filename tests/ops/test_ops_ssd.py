"""Mamba-2's SSD: the chunked algorithm vs the loop-over-time oracle (outputs, final states and gradients w.r.t. every
input, float64) at chunk sizes 1, 7, 64 and L, with every option; the quadratic masked form, written out here, as a
third oracle; continuation through initial_states; token-by-token decoding; dt = 0 as an exact no-op (masking);
segsum against its definition and its stability in float32; float32 at L = 4096; refusals."""

from __future__ import annotations

import pytest
import torch

from longseq.ops import ssd
from longseq.ops.ssd import segsum, ssd_chunked, ssd_ref, ssd_state_update
from longseq.testing.oracle import assert_same_function

F64 = torch.float64
BATCH, H, P, N, L = 2, 4, 3, 5, 40

# name -> keyword options; "D" is (H,), "D_hp" is (H, P).
OPTIONS = {
    "plain": {},
    "D": {"D": (H,)},
    "D_hp_z": {"D": (H, P), "z": True},
    "bias": {"dt_bias": True},
    "softplus_init": {"dt_bias": True, "dt_softplus": True, "initial_states": True},
    "all": {"D": (H, P), "z": True, "dt_bias": True, "dt_softplus": True, "initial_states": True},
}


def _inputs(length: int, groups: int, options: dict, seed: int = 0, batch: int = BATCH):
    """Leaf tensors (requires_grad) and the keyword arguments built from them. dt' = dt + dt_bias stays positive
    without softplus (dt in [0.05, 0.55], bias in [0, 0.1]); A in [-1.5, -0.5]."""
    g = torch.Generator().manual_seed(seed)

    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t.to(F64).requires_grad_()

    softplus = options.get("dt_softplus", False)
    x = leaf(torch.randn(batch, length, H, P, generator=g, dtype=F64))
    dt_raw = torch.randn(batch, length, H, generator=g, dtype=F64)
    dt = leaf(dt_raw if softplus else 0.05 + 0.5 * dt_raw.sigmoid())
    A = leaf(-0.5 - torch.rand(H, generator=g, dtype=F64))
    B = leaf(torch.randn(batch, length, groups, N, generator=g, dtype=F64))
    C = leaf(torch.randn(batch, length, groups, N, generator=g, dtype=F64))
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C}
    kwargs = {}
    if "D" in options:
        kwargs["D"] = leaf(torch.randn(*options["D"], generator=g, dtype=F64))
    if options.get("z"):
        kwargs["z"] = leaf(torch.randn(batch, length, H, P, generator=g, dtype=F64))
    if options.get("dt_bias"):
        bias = torch.randn(H, generator=g, dtype=F64) if softplus else 0.1 * torch.rand(H, generator=g, dtype=F64)
        kwargs["dt_bias"] = leaf(bias)
    if options.get("initial_states"):
        kwargs["initial_states"] = leaf(torch.randn(batch, H, P, N, generator=g, dtype=F64))
    kwargs["dt_softplus"] = softplus
    named |= {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    return named, kwargs


def _check(got, want, named):
    assert_same_function(got, want, list(named.values()), names=list(named))


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("chunk", [1, 7, 64, L])
def test_chunked_matches_reference(chunk, groups, option):
    """L = 40: chunk 7 leaves a partial last chunk, 64 is longer than the sequence, L is one chunk."""
    named, kwargs = _inputs(L, groups, OPTIONS[option], seed=chunk + 10 * groups)
    args = [named[k] for k in ("x", "dt", "A", "B", "C")]
    got = ssd_chunked(*args, chunk, **kwargs, return_final_states=True)
    want = ssd_ref(*args, **kwargs, return_final_states=True)
    _check(got, want, named)


@pytest.mark.parametrize(("length", "chunk"), [(1, 4), (5, 5), (17, 4), (33, 16)])
def test_chunked_matches_reference_other_lengths(length, chunk):
    named, kwargs = _inputs(length, 2, OPTIONS["all"], seed=length)
    args = [named[k] for k in ("x", "dt", "A", "B", "C")]
    _check(ssd_chunked(*args, chunk, **kwargs, return_final_states=True),
           ssd_ref(*args, **kwargs, return_final_states=True), named)


@pytest.mark.parametrize("chunk", [3, 8])
def test_long_sequences_run_in_segments_that_continue_exactly(monkeypatch, chunk):
    """Past SEGMENT_TOKENS the sequence is cut into segments (multiples of the chunk) carrying the state."""
    monkeypatch.setattr(ssd, "SEGMENT_TOKENS", 10)  # segments of 9 or 8 tokens over L = 40
    named, kwargs = _inputs(L, 2, OPTIONS["all"], seed=chunk)
    args = [named[k] for k in ("x", "dt", "A", "B", "C")]
    _check(ssd_chunked(*args, chunk, **kwargs, return_final_states=True),
           ssd_ref(*args, **kwargs, return_final_states=True), named)


def _quadratic_form(x, dt, A, B, C):
    """The dual ("attention") form: Y = (exp(segsum(dt A)) ∘ C Bᵀ)(dt x), per head, B and C read by head group."""
    rep = x.shape[2] // B.shape[2]
    b_h, c_h = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)  # (B, L, H, N)
    mask = torch.exp(segsum((dt * A).transpose(1, 2)))  # (B, H, L, L)
    scores = torch.einsum("bthn,bshn->bhts", c_h, b_h)
    return torch.einsum("bhts,bshp->bthp", mask * scores, dt[..., None] * x)


@pytest.mark.parametrize("groups", [1, 2])
def test_quadratic_form_matches_reference(groups):
    named, _ = _inputs(24, groups, {}, seed=3)
    args = [named[k] for k in ("x", "dt", "A", "B", "C")]
    _check(_quadratic_form(*args), ssd_ref(*args), named)


@pytest.mark.parametrize("d_shape", [(H,), (H, P)])
def test_options_are_the_formula(d_shape):
    """dt' = softplus(dt + dt_bias), y = (S C + D x) * silu(z), written by hand around the plain oracle (the options
    share their code between the oracle, the chunked form and the update, so the comparisons above cannot see it)."""
    named, kwargs = _inputs(L, 2, {"D": d_shape, "z": True, "dt_bias": True, "dt_softplus": True}, seed=4)
    x, dt, A, B, C = (named[k] for k in ("x", "dt", "A", "B", "C"))
    D, z = kwargs["D"], kwargs["z"]
    dt_eff = torch.log1p(torch.exp(dt + kwargs["dt_bias"]))
    skip = (D[:, None] if D.dim() == 1 else D) * x
    want = (ssd_ref(x, dt_eff, A, B, C) + skip) * z / (1 + torch.exp(-z))
    _check(ssd_ref(x, dt, A, B, C, **kwargs), want, named)


def test_segsum_is_the_definition():
    a = torch.randn(2, 3, 9, dtype=F64)
    out = segsum(a)
    for t in range(9):
        for s in range(9):
            want = a[..., s + 1:t + 1].sum(-1) if t >= s else torch.full_like(a[..., 0], -torch.inf)
            torch.testing.assert_close(out[..., t, s], want, atol=1e-14, rtol=0)


def test_segsum_is_stable_in_float32():
    """a ≈ -5 over L = 4096: cumulative sums reach -20480, where cumsum[t] - cumsum[s] has lost ~3 digits; the
    masked cumsum adds only the terms each entry needs. exp has no NaN, exact zeros above the diagonal, entries in
    [0, 1], and near the diagonal of the last rows (where exp is not negligible and the cumulative sums largest) it
    matches the float64 definition to float32 precision, where the naive difference does not."""
    g = torch.Generator().manual_seed(0)
    a = -5 + 0.5 * torch.randn(4096, generator=g, dtype=F64)
    out = segsum(a.float())
    assert not out.isnan().any()
    decay = out.exp()
    assert decay.min() >= 0 and decay.max() <= 1
    assert not decay.triu(1).any()
    cumsum = a.float().cumsum(0)
    worst_naive = 0.0
    for t in range(4088, 4096):
        for s in range(t - 8, t + 1):
            want = a[s + 1:t + 1].sum().exp()
            assert abs(decay[t, s].double() - want) <= 1e-5 * want
            worst_naive = max(worst_naive, abs((cumsum[t] - cumsum[s]).double().exp() - want) / want)
    assert worst_naive > 1e-4  # what the masked form avoids


@pytest.mark.parametrize("fn", [ssd_chunked, ssd_ref])
@pytest.mark.parametrize("split", [1, 13, 20, 39])
def test_continuation_equals_whole(fn, split):
    """The first part's final state as the second part's initial_states: outputs and final state of the whole."""
    named, kwargs = _inputs(L, 2, OPTIONS["all"], seed=split)
    x, dt, A, B, C = (named[k] for k in ("x", "dt", "A", "B", "C"))
    init = kwargs.pop("initial_states")
    z = kwargs.pop("z")
    extra = [] if fn is ssd_ref else [7]
    first, second = slice(0, split), slice(split, L)
    y1, s1 = fn(x[:, first], dt[:, first], A, B[:, first], C[:, first], *extra, z=z[:, first], **kwargs,
                initial_states=init, return_final_states=True)
    y2, s2 = fn(x[:, second], dt[:, second], A, B[:, second], C[:, second], *extra, z=z[:, second], **kwargs,
                initial_states=s1, return_final_states=True)
    want = ssd_ref(x, dt, A, B, C, z=z, **kwargs, initial_states=init, return_final_states=True)
    _check((torch.cat((y1, y2), dim=1), s2), want, named)


@pytest.mark.parametrize("groups", [1, 2])
def test_state_update_token_by_token_equals_reference(groups):
    length = 12
    named, kwargs = _inputs(length, groups, OPTIONS["all"], seed=5)
    x, dt, A, B, C = (named[k] for k in ("x", "dt", "A", "B", "C"))
    state, z = kwargs.pop("initial_states"), kwargs.pop("z")
    ys = []
    for t in range(length):
        y_t, state = ssd_state_update(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], z=z[:, t], **kwargs)
        ys.append(y_t)
    want = ssd_ref(x, dt, A, B, C, z=z, **kwargs, initial_states=named["initial_states"], return_final_states=True)
    _check((torch.stack(ys, dim=1), state), want, named)


def test_state_update_is_functional():
    """The state is not modified in place, and the new state aliases none of the arguments."""
    named, kwargs = _inputs(1, 2, OPTIONS["all"], seed=6)
    args = [t.detach().clone() for t in (named["initial_states"], named["x"][:, 0], named["dt"][:, 0], named["A"],
                                         named["B"][:, 0], named["C"][:, 0])]
    kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items() if k != "initial_states"}
    kwargs["z"] = kwargs["z"][:, 0]
    before = [t.clone() for t in args]
    y, new_state = ssd_state_update(*args, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(args, before, strict=True))
    kept_y, kept_state = y.clone(), new_state.clone()
    for t in args:
        t.fill_(123.0)
    assert torch.equal(y, kept_y) and torch.equal(new_state, kept_state)


@pytest.mark.parametrize(("fn", "chunk"), [(ssd_chunked, 7), (ssd_chunked, 64), (ssd_ref, None)])
def test_zero_dt_is_an_exact_no_op(fn, chunk):
    """dt = 0 at masked positions (holes at the start, a run longer than a chunk, the end): the final state and the
    outputs at the other positions equal those of the sequence with the masked positions removed, gradients
    included (w.r.t. everything but dt, whose masked entries act through d exp(dt A) / d dt)."""
    named, kwargs = _inputs(L, 2, {"D": (H, P), "z": True, "initial_states": True}, seed=8)
    x, dt, A, B, C = (named[k] for k in ("x", "dt", "A", "B", "C"))
    del named["dt"]
    masked = torch.zeros(L, dtype=torch.bool)
    masked[[0, 1, 5, 12, 13, 14, 15, 16, 17, 18, 19, 20, 30, 38, 39]] = True
    keep = (~masked).nonzero().squeeze(1)
    dt0 = dt.detach().masked_fill(masked[:, None], 0.0)
    extra = [] if chunk is None else [chunk]
    z = kwargs.pop("z")
    y, state = fn(x, dt0, A, B, C, *extra, z=z, **kwargs, return_final_states=True)
    y_short, state_short = fn(x[:, keep], dt0[:, keep], A, B[:, keep], C[:, keep], *extra, z=z[:, keep], **kwargs,
                              return_final_states=True)
    _check((y[:, keep], state), (y_short, state_short), named)


def test_float32_long_sequence_with_strong_decay():
    """L = 4096 in float32, decays up to exp(-16 · 1.5) per token and some heads with almost none: finite, and within
    float32 rounding of the float64 oracle (relative to the output's scale); gradients finite."""
    length, g = 4096, torch.Generator().manual_seed(0)
    x = torch.randn(1, length, H, P, generator=g, dtype=F64)
    dt = 1.5 * torch.rand(1, length, H, generator=g, dtype=F64)
    A = torch.tensor([-16.0, -4.0, -0.1, -1e-3], dtype=F64)
    B, C = (torch.randn(1, length, 2, N, generator=g, dtype=F64) for _ in range(2))
    y64, s64 = ssd_chunked(x, dt, A, B, C, 64, D=torch.ones(H, dtype=F64), return_final_states=True)
    y_ref = ssd_ref(x, dt, A, B, C, D=torch.ones(H, dtype=F64))
    torch.testing.assert_close(y64, y_ref, atol=1e-9, rtol=1e-9)
    leaves = [t.float().requires_grad_() for t in (x, dt, A, B, C)]
    for chunk in (64, 256):
        y32, s32 = ssd_chunked(*leaves, chunk, D=torch.ones(H), return_final_states=True)
        assert y32.dtype == torch.float32 and torch.isfinite(y32).all() and torch.isfinite(s32).all()
        assert (y32.double() - y64).abs().max() <= 1e-5 * y64.abs().max()
        assert (s32.double() - s64).abs().max() <= 1e-5 * s64.abs().max()
        grads = torch.autograd.grad(y32.square().mean() + s32.square().mean(), leaves)
        assert all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("fn", [ssd_chunked, ssd_ref])
def test_half_inputs_compute_in_float32(fn):
    named, kwargs = _inputs(L, 2, OPTIONS["all"], seed=9)
    half = {k: v.detach().bfloat16() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    args = [named[k].detach().bfloat16() for k in ("x", "dt", "A", "B", "C")]
    extra = [] if fn is ssd_ref else [16]
    y, state = fn(*args, *extra, **half, return_final_states=True)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    want, want_state = ssd_ref(*(t.double() for t in args),
                               **{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in half.items()},
                               return_final_states=True)
    torch.testing.assert_close(y.double(), want, atol=0.05 * want.abs().max().item(), rtol=0.02)
    torch.testing.assert_close(state.double(), want_state, atol=1e-4 * want_state.abs().max().item(), rtol=1e-4)


SEQ = {"x": (2, 6, 4, 3), "dt": (2, 6, 4), "A": (4,), "B": (2, 6, 2, 5), "C": (2, 6, 2, 5)}
BAD_SEQ = [
    ({"x": (2, 6, 12)}, ["x must have shape (B, L, H, P)"]),
    ({"x": (2, 0, 4, 3)}, ["x must have shape", "L >= 1", "(2, 0, 4, 3)"]),
    ({"dt": (2, 6, 3)}, ["dt must have shape (B, L, H) = (2, 6, 4)", "(2, 6, 3)"]),
    ({"A": (4, 1)}, ["A must have shape (H,) = (4,)", "(4, 1)"]),
    ({"B": (2, 6, 3, 5), "C": (2, 6, 3, 5)}, ["B must have shape", "G dividing H = 4", "(2, 6, 3, 5)"]),
    ({"B": (2, 5, 2, 5)}, ["B must have shape", "(2, 6)"]),
    ({"C": (2, 6, 2, 4)}, ["C must have B's shape (2, 6, 2, 5)", "(2, 6, 2, 4)"]),
    ({"D": (3,)}, ["D must have shape (H,) = (4,) or (H, P) = (4, 3)", "(3,)"]),
    ({"z": (2, 6, 4, 2)}, ["z must have x's shape (2, 6, 4, 3)", "(2, 6, 4, 2)"]),
    ({"dt_bias": (2, 4)}, ["dt_bias must have shape (H,) = (4,)", "(2, 4)"]),
    ({"initial_states": (2, 4, 3, 4)}, ["initial_states must have shape (B, H, P, N) = (2, 4, 3, 5)", "(2, 4, 3, 4)"]),
]


def _call_with(fn, shapes: dict, chunk_size=4):
    tensors = {k: torch.randn(*v) for k, v in (SEQ | shapes).items()}
    args = [tensors.pop(k) for k in ("x", "dt", "A", "B", "C")]
    if fn is ssd_chunked:
        return fn(*args, chunk_size, **tensors)
    return fn(*args, **tensors)


@pytest.mark.parametrize(("shapes", "words"), BAD_SEQ)
@pytest.mark.parametrize("fn", [ssd_chunked, ssd_ref])
def test_refusals_name_the_argument(fn, shapes, words):
    with pytest.raises(ValueError) as info:
        _call_with(fn, shapes)
    assert fn.__name__ in str(info.value)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.0, True])
def test_chunk_size_refused(chunk_size):
    with pytest.raises(ValueError, match=rf"chunk_size={chunk_size!r} is not allowed; it must be an int >= 1"):
        _call_with(ssd_chunked, {}, chunk_size=chunk_size)


TOKEN = {"state": (2, 4, 3, 5), "x": (2, 4, 3), "dt": (2, 4), "A": (4,), "B": (2, 2, 5), "C": (2, 2, 5)}


@pytest.mark.parametrize(("shapes", "words"), [
    ({"x": (2, 1, 4, 3)}, ["x must have shape (B, H, P)"]),
    ({"dt": (2, 1, 4)}, ["dt must have shape (B, H) = (2, 4)"]),
    ({"B": (2, 1, 2, 5), "C": (2, 1, 2, 5)}, ["B must have shape (B, G, N)"]),
    ({"z": (2, 4, 4)}, ["z must have x's shape (2, 4, 3)"]),
    ({"state": (2, 4, 5, 3)}, ["state must have shape (B, H, P, N) = (2, 4, 3, 5)", "(2, 4, 5, 3)"]),
])
def test_state_update_refusals_name_the_argument(shapes, words):
    tensors = {k: torch.randn(*v) for k, v in (TOKEN | shapes).items()}
    args = [tensors.pop(k) for k in ("state", "x", "dt", "A", "B", "C")]
    with pytest.raises(ValueError) as info:
        ssd_state_update(*args, **tensors)
    for word in ["ssd_state_update", *words]:
        assert word in str(info.value)


def test_segsum_refuses_a_scalar():
    with pytest.raises(ValueError, match="segsum: a must have shape"):
        segsum(torch.tensor(1.0))
