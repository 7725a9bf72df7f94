"""Mamba-1's selective scan: the chunked scan and the one-token update vs the loop-over-time oracle (outputs, last
states and gradients w.r.t. every input, float64), for any chunk size and L, grouped and shared B/C, channel blocks;
continuation from a state; dt = 0 as an exact no-op; float32 at L = 4096 with strong decays (where a cumulative
log-sum overflows); torch.compile against the plain path; refusals."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import longseq.ops.selective_scan as ss
from longseq.ops.selective_scan import selective_scan, selective_scan_ref, selective_state_update
from longseq.testing.oracle import assert_same_function
from longseq.testing.scan_inputs import call_scan, scan_leaves, selective_scan_inputs

F64 = torch.float64
B, D, N, L = 2, 6, 4, 40
OPTIONAL = ("D", "z", "delta_bias", "initial_state")
_inputs = functools.partial(selective_scan_inputs, batch=B, d=D, n=N, length=L)
_call = call_scan
_grad_inputs = scan_leaves


def _assert_matches_reference(t, use, softplus, *, fns=(selective_scan, ss.selective_scan_chunked), **kwargs):
    """Both paths: ``selective_scan`` (the compiled kernel where it builds) and the plain chunked scan."""
    inputs, names = _grad_inputs(t, use)
    for fn in fns:
        want = _call(selective_scan_ref, t, use, delta_softplus=softplus)  # a fresh graph for each comparison
        assert_same_function(_call(fn, t, use, delta_softplus=softplus, **kwargs), want, inputs, names=names)
        with torch.no_grad():  # the in-place path (no autograd) computes the same values
            for a, b in zip(_call(fn, t, use, delta_softplus=softplus, **kwargs), want, strict=True):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


CHUNKS = [1, 3, 7, 64, L]  # 3 and 7 do not divide L; 64 > L


@pytest.mark.parametrize(("chunk_size", "groups", "full"), list(itertools.product(CHUNKS, [None, 3], [False, True])))
def test_fast_matches_reference(chunk_size, groups, full):
    """Bare scan, and with every option (D, z, delta_bias, softplus, initial_state) at once."""
    t = _inputs(groups=groups, softplus=full, seed=chunk_size)
    _assert_matches_reference(t, OPTIONAL if full else (), full, chunk_size=chunk_size)


@pytest.mark.parametrize(("use", "softplus", "groups"), [
    (("D",), False, None), (("z",), False, None), (("delta_bias",), False, None), ((), True, None),
    (("initial_state",), False, None), (("delta_bias", "initial_state"), True, 1), (OPTIONAL, True, 2),
    (OPTIONAL, True, D)])
def test_each_option_matches_reference(use, softplus, groups):
    """One option at a time; groups 1 (B of shape (B, 1, N, L)), 2 and D (one group per channel)."""
    _assert_matches_reference(_inputs(groups=groups, softplus=softplus, seed=11), use, softplus, chunk_size=7)


@pytest.mark.parametrize(("max_elements", "groups"), [(1, 3), (1, None), (2 * 6 * 4 * 2, None),
                                                       (2 * 6 * 4 * 2, 3), (2 * 6 * 4 * 5, 3)])
def test_channel_blocks_match_reference(monkeypatch, max_elements, groups):
    """Channels in blocks (chunk 7 gives c = 6 chunks, so a channel's step tensor has B c N = 48 elements): one channel
    per block, 2 channels (pieces of a group of 2 or of 6), 5 channels (whole groups of 2, the last block short)."""
    monkeypatch.setattr(ss, "MAX_BLOCK_ELEMENTS", max_elements)  # the plain path's channel blocks
    _assert_matches_reference(_inputs(groups=groups, softplus=True, seed=5), OPTIONAL, True,
                              fns=(ss.selective_scan_chunked,), chunk_size=7)


def test_non_contiguous_inputs():
    """Inputs as a Mamba block makes them: (B, L, D) tensors seen as (B, D, L), B and C as views, A transposed."""
    t = {k: v.detach() for k, v in _inputs(groups=3, softplus=True, seed=14).items()}
    views = dict(t)
    for k in ("u", "delta", "z", "B", "C"):
        views[k] = t[k].movedim(-1, 1).contiguous().movedim(1, -1)
    views["A"] = t["A"].t().contiguous().t()
    views["initial_state"] = t["initial_state"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not any(views[k].is_contiguous() for k in ("u", "delta", "z", "B", "C", "A", "initial_state"))
    views = {k: v.requires_grad_() for k, v in views.items()}
    inputs, names = _grad_inputs(views, OPTIONAL)
    assert_same_function(_call(selective_scan, views, OPTIONAL, delta_softplus=True, chunk_size=7),
                         _call(selective_scan_ref, views, OPTIONAL, delta_softplus=True), inputs, names=names)


def test_continuation_from_last_state():
    """scan(x1), then scan(x2, initial_state=last) == scan([x1, x2]), outputs, last states and gradients."""
    t = _inputs(groups=3, softplus=True, seed=3)
    cut = 17
    first = {k: (v[..., :cut] if v.dim() >= 3 and v.shape[-1] == L else v) for k, v in t.items()}
    second = {k: (v[..., cut:] if v.dim() >= 3 and v.shape[-1] == L else v) for k, v in t.items()}
    use = ("D", "z", "delta_bias")
    y1, h1 = _call(selective_scan, first, (*use, "initial_state"), delta_softplus=True, chunk_size=7)
    second["initial_state"] = h1
    y2, h2 = _call(selective_scan, second, (*use, "initial_state"), delta_softplus=True, chunk_size=7)
    want = _call(selective_scan_ref, t, (*use, "initial_state"), delta_softplus=True)
    inputs, names = _grad_inputs(t, (*use, "initial_state"))
    assert_same_function((torch.cat((y1, y2), dim=-1), h2), want, inputs, names=names)


@pytest.mark.parametrize("groups", [None, 3])
def test_state_update_token_by_token_matches_reference(groups):
    t = _inputs(length=12, groups=groups, softplus=True, seed=4)
    state, ys = t["initial_state"], []
    for i in range(12):
        y_i, state = selective_state_update(state, t["u"][..., i], t["delta"][..., i], t["A"], t["B"][..., i],
                                            t["C"][..., i], D=t["D"], z=t["z"][..., i], dt_bias=t["delta_bias"],
                                            dt_softplus=True)
        ys.append(y_i)
    want = _call(selective_scan_ref, t, OPTIONAL, delta_softplus=True)
    inputs, names = _grad_inputs(t, OPTIONAL)
    assert_same_function((torch.stack(ys, dim=-1), state), want, inputs, names=names)


def test_state_update_is_functional():
    """A new state; no argument written to; the old state still usable by autograd (gradients flow through it)."""
    t = _inputs(length=1, groups=3, seed=6)
    args = [t["initial_state"], t["u"][..., 0], t["delta"][..., 0], t["A"], t["B"][..., 0], t["C"][..., 0]]
    before = [a.detach().clone() for a in args]
    y, new_state = selective_state_update(*args, D=t["D"], z=t["z"][..., 0])
    y2, newer = selective_state_update(new_state, *args[1:])
    for a, b in zip(args, before, strict=True):
        assert torch.equal(a, b)
    assert new_state.data_ptr() != args[0].data_ptr() and newer.data_ptr() != new_state.data_ptr()
    (y.sum() + y2.sum() + newer.sum()).backward()
    assert t["initial_state"].grad is not None and torch.isfinite(t["initial_state"].grad).all()


def test_state_update_formula():
    """One token by hand: h' = exp(dt A) h + dt B x, y = (<C, h'> + D x) silu(z), dt = softplus(dt + bias)."""
    t = _inputs(length=1, seed=8)
    x, dt_raw, z = t["u"][..., 0], t["delta"][..., 0], t["z"][..., 0]
    y, h = selective_state_update(t["initial_state"], x, dt_raw, t["A"], t["B"][..., 0], t["C"][..., 0], D=t["D"],
                                  z=z, dt_bias=t["delta_bias"], dt_softplus=True)
    dt = torch.log1p(torch.exp(dt_raw + t["delta_bias"]))
    want_h = torch.exp(dt[..., None] * t["A"]) * t["initial_state"] + (dt * x)[..., None] * t["B"][:, None, :, 0]
    want_y = ((want_h * t["C"][:, None, :, 0]).sum(-1) + t["D"] * x) * z * torch.sigmoid(z)
    torch.testing.assert_close(h, want_h, atol=1e-13, rtol=0)
    torch.testing.assert_close(y, want_y, atol=1e-13, rtol=0)


@pytest.mark.parametrize("fn", [selective_scan, selective_scan_ref])
@pytest.mark.parametrize("chunk_size", [4, 64])
def test_zero_step_is_a_no_op(fn, chunk_size):
    """delta = 0 (no softplus, no bias): the same last state, and the same outputs at the other positions, as the
    sequence with those positions removed; at a removed position the output is <C, h> + D u with h the state so
    far."""
    t = {k: v.detach() for k, v in _inputs(length=30, groups=3, seed=9).items()}
    holes = torch.tensor([0, 5, 6, 7, 8, 9, 20, 29])
    keep = torch.tensor([i for i in range(30) if i not in holes.tolist()])
    t["delta"][..., holes] = 0.0
    kwargs = {"chunk_size": chunk_size} if fn is selective_scan else {}
    use = ("D", "initial_state")
    y, h = _call(fn, t, use, **kwargs)
    short = {k: (v[..., keep] if v.dim() >= 3 and v.shape[-1] == 30 else v) for k, v in t.items()}
    y_short, h_short = _call(fn, short, use, **kwargs)
    torch.testing.assert_close(y[..., keep], y_short, atol=1e-12, rtol=0)
    torch.testing.assert_close(h, h_short, atol=1e-12, rtol=0)
    # Position 20 comes after the valid tokens 0..19 less the holes: 14 of them.
    prefix = {k: (v[..., :14] if v.dim() >= 3 and v.shape[-1] == len(keep) else v) for k, v in short.items()}
    _, h_20 = _call(fn, prefix, use, **kwargs)
    want_20 = (h_20 * t["C"][:, :, None, :, 20].repeat_interleave(2, dim=1)[:, :, 0]).sum(-1) + t["D"] * t["u"][..., 20]
    torch.testing.assert_close(y[..., 20], want_20, atol=1e-12, rtol=0)


def test_float32_long_sequence_strong_decay():
    """L = 4096, dt A around -5 per step: the decay over the sequence is e^-20000, so exp(-cumulative log-decay)
    overflows float32 (checked below); the chunked scan stays finite and equals the float64 loop."""
    t = {k: v.detach() for k, v in _inputs(length=4096, d=2, n=3, batch=1, seed=10).items()}
    t["delta"] = t["delta"] * 2 + 4.5  # 4.5 .. 5.5
    t["A"] = -(torch.rand(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.4 + 0.8)
    cum_log_decay = torch.cumsum(t["delta"][..., None] * t["A"][:, None, :], dim=2)
    assert torch.isinf(torch.exp(-cum_log_decay.float())).any()  # the shortcut this test guards against
    use = ("D", "z", "initial_state")
    y64, h64 = _call(selective_scan_ref, t, use)
    t32 = {k: v.float() for k, v in t.items()}
    for chunk_size in (64, 4096):
        y, h = _call(selective_scan, t32, use, chunk_size=chunk_size)
        assert y.dtype == torch.float32 and torch.isfinite(y).all() and torch.isfinite(h).all()
        torch.testing.assert_close(y.double(), y64, atol=1e-5 * y64.abs().max().item(), rtol=1e-5)
        torch.testing.assert_close(h.double(), h64, atol=1e-5 * h64.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("fn", [selective_scan, selective_scan_ref])
def test_half_precision_dtypes(fn):
    """bfloat16 inputs: y in bfloat16, the last state in float32 (the compute dtype), close to the float64 scan."""
    t = {k: v.detach() for k, v in _inputs(groups=3, softplus=True, seed=12).items()}
    want_y, want_h = _call(selective_scan_ref, t, OPTIONAL, delta_softplus=True)
    y, h = _call(fn, {k: v.bfloat16() for k, v in t.items()}, OPTIONAL, delta_softplus=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    torch.testing.assert_close(y.double(), want_y, atol=0.1, rtol=0.05)
    torch.testing.assert_close(h.double(), want_h, atol=0.1, rtol=0.05)


@settings(max_examples=20, deadline=None)
@given(length=st.integers(1, 30), chunk_size=st.integers(1, 35), groups=st.sampled_from([None, 1, 2, 3, 6]),
       max_elements=st.sampled_from([1, 50, 1 << 22]), with_state=st.booleans())
def test_any_length_chunk_and_block_values(length, chunk_size, groups, max_elements, with_state):
    """Values only (no autograd): padding to whole chunks, the last chunk short, channel blocks of any size."""
    t = {k: v.detach() for k, v in _inputs(length=length, groups=groups, softplus=True, seed=length).items()}
    use = ("D", "initial_state") if with_state else ("D",)
    want = _call(selective_scan_ref, t, use, delta_softplus=True)
    old = ss.MAX_BLOCK_ELEMENTS
    ss.MAX_BLOCK_ELEMENTS = max_elements  # not monkeypatch: hypothesis reruns the body within one test
    try:
        got = _call(ss.selective_scan_chunked, t, use, delta_softplus=True, chunk_size=chunk_size)
    finally:
        ss.MAX_BLOCK_ELEMENTS = old
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def _compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (e.g. no C++ compiler), or None."""
    try:
        torch.compile(lambda x: torch.exp2(x) * 2)(torch.ones(3))
    except Exception as err:  # any failure of the toolchain: the test below skips and says why
        return f"torch.compile does not work on this machine: {type(err).__name__}: {err}"[:300]
    return None


def test_compiled_steps_match_plain():
    """compile=True against the plain path: values and gradients, float64, with and without autograd. Tiny sizes:
    the compilation (two step functions, forward and backward) is what this test pays for, ~10-20 s cold."""
    reason = _compile_unavailable()
    if reason:
        pytest.skip(reason)
    t = _inputs(length=10, groups=3, softplus=True, seed=13, d=6, n=2, batch=1)
    inputs, names = _grad_inputs(t, OPTIONAL)
    got = _call(selective_scan, t, OPTIONAL, delta_softplus=True, chunk_size=4, compile=True)
    want = _call(selective_scan, t, OPTIONAL, delta_softplus=True, chunk_size=4)
    assert_same_function(got, want, inputs, names=names)
    with torch.no_grad():
        got = _call(selective_scan, t, OPTIONAL, delta_softplus=True, chunk_size=4, compile=True)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def _bad(**changes):
    t = {k: v.detach() for k, v in _inputs(groups=3).items()}
    t.update(changes)
    return t


@pytest.mark.parametrize("fn", [selective_scan, selective_scan_ref])
@pytest.mark.parametrize(("changes", "match"), [
    ({"u": torch.zeros(B, D)}, r"u must have shape \(B, D, L\).*got \(2, 6\)"),
    ({"u": torch.zeros(B, D, 0), "delta": torch.zeros(B, D, 0), "B": torch.zeros(B, 3, N, 0),
      "C": torch.zeros(B, 3, N, 0), "z": torch.zeros(B, D, 0)}, r"u must have shape \(B, D, L\) with L >= 1"),
    ({"delta": torch.zeros(B, D, L - 1)}, r"delta must have u's shape \(2, 6, 40\), got \(2, 6, 39\)"),
    ({"A": torch.zeros(D + 1, N)}, r"A must have shape \(D, N\) with D = 6.*got \(7, 4\)"),
    ({"A": torch.zeros(D, N, dtype=torch.complex64)}, r"A must be a real floating-point tensor, got torch.complex64"),
    ({"u": torch.zeros(B, D, L, dtype=torch.long)}, r"u must be a real floating-point tensor, got torch.int64"),
    ({"B": torch.zeros(B, 3, N + 1, L)}, r"B must have shape \(B, N, L\) or \(B, G, N, L\) with B = 2, N = 4"),
    ({"B": torch.zeros(B, 4, N, L), "C": torch.zeros(B, 4, N, L)},
     r"B must have shape.*G dividing D = 6.*\(2, 4, 4, 40\)"),
    ({"B": torch.zeros(B, N, L)}, r"C must have B's shape \(2, 4, 40\), got \(2, 3, 4, 40\)"),
    ({"D": torch.zeros(D, 1)}, r"D must have shape \(D,\) = \(6,\), got \(6, 1\)"),
    ({"z": torch.zeros(B, D, L + 1)}, r"z must have u's shape"),
    ({"delta_bias": torch.zeros(D + 1)}, r"delta_bias must have shape \(D,\) = \(6,\), got \(7,\)"),
    ({"initial_state": torch.zeros(B, D, N + 1)}, r"initial_state must have shape \(B, D, N\) = \(2, 6, 4\)"),
])
def test_bad_shapes_refused(fn, changes, match):
    with pytest.raises(ValueError, match=match):
        _call(fn, _bad(**changes), OPTIONAL)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"chunk_size": 0}, r"chunk_size=0 is not allowed; allowed: an int >= 1"),
    ({"chunk_size": True}, r"chunk_size=True is not allowed"),
    ({"chunk_size": 2.5}, r"chunk_size=2.5 is not allowed"),
    ({"compile": "yes"}, r"compile='yes' is not allowed; allowed: True or False"),
])
def test_bad_options_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _call(selective_scan, _bad(), (), **kwargs)


@pytest.mark.parametrize(("changes", "match"), [
    ({"x": torch.zeros(B, D, 1)}, r"x must have shape \(B, D\), got \(2, 6, 1\)"),
    ({"dt": torch.zeros(B, D + 1)}, r"dt must have x's shape \(2, 6\), got \(2, 7\)"),
    ({"B": torch.zeros(B, N, 1)}, r"B must have shape \(B, N\) or \(B, G, N\) with B = 2, N = 4"),
    ({"state": torch.zeros(B, D, N - 1)}, r"state must have shape \(B, D, N\) = \(2, 6, 4\), got \(2, 6, 3\)"),
    ({"dt_bias": torch.zeros(1)}, r"dt_bias must have shape \(D,\) = \(6,\), got \(1,\)"),
])
def test_state_update_bad_shapes_refused(changes, match):
    args = {"state": torch.zeros(B, D, N), "x": torch.zeros(B, D), "dt": torch.zeros(B, D), "A": torch.zeros(D, N),
            "B": torch.zeros(B, N), "C": torch.zeros(B, N), "dt_bias": torch.zeros(D)}
    args.update(changes)
    with pytest.raises(ValueError, match=match):
        selective_state_update(**args)
