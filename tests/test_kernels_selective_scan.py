"""The compiled selective scan (longseq/kernels/csrc/selective_scan.cpp) against the oracle and the plain paths it
replaces: the scan's outputs, last states and gradients w.r.t. every input in float64 (rounding-level agreement,
gradcheck on tiny sizes) and float32, grouped and shared B/C, each option alone, dt = 0 as an exact no-op, strided
inputs as a Mamba block passes them, the checkpoint interval, strong decays over 4096 float32 steps; the one-token
update and the whole block's token step; results independent of the thread count; the fallback with kernels off;
and the mamba mixer's forward, stream and step through the compiled path equal to the plain path. Skipped when the
kernel cannot be built here."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from longseq import kernels
from longseq.kernels import selective_scan as compiled
from longseq.mixers import build
from longseq.ops.mamba_step import MambaStepWeights, mamba_block_step
from longseq.ops.selective_scan import (
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update,
)
from longseq.testing.oracle import assert_same_function
from longseq.testing.scan_inputs import call_scan, scan_leaves, selective_scan_inputs

F64, F32 = torch.float64, torch.float32
B, D, N, L = 2, 6, 4, 37
OPTIONAL = ("D", "z", "delta_bias", "initial_state")
_inputs = functools.partial(selective_scan_inputs, batch=B, d=D, n=N, length=L)
_call = call_scan
_leaves = scan_leaves
NAMES = ("u", "delta", "A", "B", "C", *OPTIONAL)


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch):
    """These tests are about the compiled path: on even when the suite runs with LONGSEQ_KERNELS=off (a test that
    wants the plain path switches it off itself)."""
    monkeypatch.setenv(kernels.KERNELS_ENV, "auto")


@pytest.fixture(scope="module")
def ext():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.KERNELS_ENV, "auto")
        module = kernels.load(compiled.NAME)
    if module is None:
        pytest.skip(f"compiled kernel 'selective_scan' unavailable: {kernels._notices.get(compiled.NAME, 'off')}")
    return module


@pytest.fixture
def threads():
    """threads(n): set torch's thread count for the rest of the test (restored after)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _grads(outputs: tuple[torch.Tensor, ...], inputs: list[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype) for o in outputs]
    return list(torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True, materialize_grads=True))


# ------------------------------------------------------------------------------------------------ the exp


def test_exp_is_accurate_and_exact_where_the_scan_needs_it(ext):
    """Within 2 ulp of exp in float64 and float32; exp(0) = 1 exactly (dt = 0 keeps the state bit for bit); 0 below
    the smallest normal number; finite above the largest (silu of a very negative z)."""
    for dtype, lo, hi, ulp in ((F64, -700.0, 700.0, 2.3e-16), (F32, -87.0, 88.0, 1.2e-7)):
        x = torch.linspace(lo, hi, 20001, dtype=dtype)
        want = torch.exp(x.double())
        rel = ((ext.exp(x).double() - want).abs() / want).max().item()
        assert rel <= 2 * ulp, f"{dtype}: relative error {rel:.2e}"
        assert torch.equal(ext.exp(torch.zeros(5, dtype=dtype)), torch.ones(5, dtype=dtype))
        assert torch.equal(ext.exp(torch.tensor([-1e4, -800.0], dtype=dtype)), torch.zeros(2, dtype=dtype))
        assert torch.isfinite(ext.exp(torch.tensor([1e4], dtype=dtype))).all()


# ------------------------------------------------------------------------------------------------ the scan, float64


@pytest.mark.parametrize(("groups", "full", "chunk_size"),
                         list(itertools.product([None, 1, 3, D], [False, True], [1, 7, 64])))
def test_scan_matches_reference(calls, groups, full, chunk_size):
    """Bare, and with every option at once (D, z, delta_bias, softplus, initial_state); B, C shared (None), one group,
    3 groups, one per channel; checkpoint every 1, 7 and 64 (> L) steps. Outputs, last states and gradients."""
    forward, backward = calls("scan_forward"), calls("scan_backward")
    t = _inputs(groups=groups, softplus=full, seed=chunk_size)
    use = OPTIONAL if full else ()
    got = _call(selective_scan, t, use, delta_softplus=full, chunk_size=chunk_size)
    want = _call(selective_scan_ref, t, use, delta_softplus=full)
    inputs, names = _leaves(t, use)
    assert_same_function(got, want, inputs, names=names)
    assert forward and backward, "the compiled path did not run"


@pytest.mark.parametrize(("use", "softplus"), [(("D",), False), (("z",), False), (("delta_bias",), False),
                                               ((), True), (("initial_state",), False), (("D", "z"), True)])
def test_each_option_matches_reference(ext, use, softplus):
    t = _inputs(groups=2, softplus=softplus, seed=11)
    inputs, names = _leaves(t, use)
    assert_same_function(_call(selective_scan, t, use, delta_softplus=softplus, chunk_size=5),
                         _call(selective_scan_ref, t, use, delta_softplus=softplus), inputs, names=names)


def test_gradcheck(ext):
    """Finite differences on a tiny problem, every input at once, the last state as an output too."""
    t = _inputs(length=6, groups=2, softplus=True, seed=3, d=2, n=3, batch=1)

    def fn(*args):
        kw = dict(zip(NAMES, args, strict=True))
        return selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"], kw["delta_bias"],
                              True, True, kw["initial_state"], chunk_size=4)

    assert torch.autograd.gradcheck(fn, tuple(t[k] for k in NAMES))


def test_chunk_size_changes_nothing_but_memory(ext):
    """The checkpoint interval: the backward recomputes each chunk from its checkpoint with the forward's own
    operations and sums in the same order, so outputs and gradients are identical bit for bit."""
    t = _inputs(groups=3, softplus=True, seed=2)
    inputs, _ = _leaves(t, OPTIONAL)
    results = []
    for chunk_size in (1, 5, 64, L + 3):
        out = _call(selective_scan, t, OPTIONAL, delta_softplus=True, chunk_size=chunk_size)
        results.append([*out, *_grads(out, inputs)])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_zero_step_is_an_exact_no_op(ext):
    """dt = 0 at holes (how a mixer masks): the last state and the other outputs are those of the sequence without
    them, and with no gradient flowing in at the holes, so are the gradients of A, B's and C's kept steps, D and
    the initial state."""
    t = {k: v.detach() for k, v in _inputs(length=30, groups=3, seed=9).items()}
    holes = torch.tensor([0, 5, 6, 7, 8, 20, 29])
    keep = torch.tensor([i for i in range(30) if i not in holes.tolist()])
    t["delta"][..., holes] = 0.0
    short = {k: (v[..., keep] if v.shape[-1] == 30 and v.dim() >= 3 else v).clone() for k, v in t.items()}
    use = ("D", "initial_state")
    outs, grads = [], []
    for inputs, positions in ((t, keep), (short, slice(None))):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y, h = _call(selective_scan, leaves, use, chunk_size=4)
        outs.append((y[..., positions], h))
        wrt = [leaves[k] for k in ("A", "D", "initial_state")]
        g = torch.autograd.grad((y[..., positions].sum() + h.sum()), [*wrt, leaves["B"], leaves["C"]])
        grads.append([*g[:3], g[3][..., positions], g[4][..., positions]])
    for a, b in zip([*outs[0], *grads[0]], [*outs[1], *grads[1]], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("d", "dtype"), [(6, F64), (16, F64), (32, F32)])
def test_strided_inputs_as_a_mamba_block_passes_them(calls, d, dtype):
    """u, delta, z: (B, L, D) tensors seen as (B, D, L), z a slice of a wider tensor, B and C views of (B, L, N), A
    transposed: read through their strides (or made dense where small), the same function as the oracle's. D = 6
    fills part of a tile of channels; 16 (float64) and 32 (float32) fill whole tiles, read a step at a time."""
    forward = calls("scan_forward")
    t = {k: v.detach().to(dtype) for k, v in _inputs(groups=None, softplus=True, seed=14, d=d).items()}
    views = dict(t)
    for k in ("u", "delta", "B", "C"):
        views[k] = t[k].mT.contiguous().mT
    wide = torch.cat((torch.randn(B, L, d, dtype=dtype), t["z"].mT), dim=-1)  # like in_proj(x).chunk(2)
    views["z"] = wide[..., d:].mT
    views["A"] = t["A"].t().contiguous().t()
    assert not any(views[k].is_contiguous() for k in ("u", "delta", "z", "B", "C", "A"))
    views = {k: v.requires_grad_() for k, v in views.items()}
    inputs, names = _leaves(views, OPTIONAL)
    tol = {} if dtype == F64 else {"atol": 1e-4, "rtol": 1e-4}
    assert_same_function(_call(selective_scan, views, OPTIONAL, delta_softplus=True, chunk_size=7),
                         _call(selective_scan_ref, views, OPTIONAL, delta_softplus=True), inputs, names=names, **tol)
    assert forward


def test_compile_true_asks_for_the_pytorch_path(calls, monkeypatch):
    """compile=True is a request for the torch.compile'd PyTorch form: the kernel is not called (the plain function
    is replaced by a stand-in here, so that no torch.compile toolchain is needed)."""
    forward = calls("scan_forward")
    t = {k: v.detach() for k, v in _inputs(seed=1).items()}
    selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])
    assert len(forward) == 1
    monkeypatch.setattr("longseq.ops.selective_scan.selective_scan_chunked", lambda *args, **kwargs: "plain")
    assert selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], compile=True) == "plain"
    assert len(forward) == 1


def test_meta_tensors_are_not_for_the_kernel(ext):
    assert compiled.extension_for(torch.empty(2, device="meta"), None) is None
    assert compiled.extension_for(torch.empty(2), None) is ext


# ------------------------------------------------------------------------------------------------ float32, bf16


@pytest.mark.parametrize(("groups", "n"), [(None, N), (3, N), (None, 16)])
def test_float32_matches_float64_reference(ext, groups, n):
    """float32 in, float32 out: outputs, last state and gradients within float32 rounding of the float64 oracle."""
    t64 = _inputs(groups=groups, softplus=True, seed=4, n=n, d=42)
    t32 = {k: v.detach().float().requires_grad_() for k, v in t64.items()}
    got = _call(selective_scan, t32, OPTIONAL, delta_softplus=True, chunk_size=8)
    want = _call(selective_scan_ref, t64, OPTIONAL, delta_softplus=True)
    assert all(o.dtype == F32 for o in got)
    got_g, want_g = _grads(got, _leaves(t32, OPTIONAL)[0]), _grads(want, _leaves(t64, OPTIONAL)[0])
    for name, a, b in zip(["y", "last", *NAMES], [*got, *got_g], [*want, *want_g], strict=True):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b, atol=2e-5 * scale, rtol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_float32_long_sequence_strong_decay(ext):
    """L = 4096 with dt A around -5 per step: decays far below float32's smallest number must come out as 0, not
    garbage; the scan stays finite and equals the float64 loop."""
    t = {k: v.detach() for k, v in _inputs(length=4096, d=2, n=3, batch=1, seed=10).items()}
    t["delta"] = t["delta"] * 2 + 4.5
    t["delta"][..., 100] = 200.0  # exp(dt A) < e^-100: an underflow inside the exp
    use = ("D", "z", "initial_state")
    y64, h64 = _call(selective_scan_ref, t, use)
    y, h = _call(selective_scan, {k: v.float() for k, v in t.items()}, use, chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y.double(), y64, atol=1e-5 * y64.abs().max().item(), rtol=1e-5)
    torch.testing.assert_close(h.double(), h64, atol=1e-5 * h64.abs().max().item(), rtol=1e-5)


def test_bfloat16_inputs(ext, calls):
    """Half-precision inputs are promoted: y in bfloat16, the last state in float32, close to the float64 scan."""
    forward = calls("scan_forward")
    t = {k: v.detach() for k, v in _inputs(groups=3, softplus=True, seed=12).items()}
    want_y, want_h = _call(selective_scan_ref, t, OPTIONAL, delta_softplus=True)
    y, h = _call(selective_scan, {k: v.bfloat16() for k, v in t.items()}, OPTIONAL, delta_softplus=True)
    assert y.dtype == torch.bfloat16 and h.dtype == F32 and forward
    torch.testing.assert_close(y.double(), want_y, atol=0.1, rtol=0.05)
    torch.testing.assert_close(h.double(), want_h, atol=0.1, rtol=0.05)


# ------------------------------------------------------------------------------------------------ one token


@pytest.mark.parametrize(("groups", "full", "dtype", "n"), [(None, False, F64, N), (None, True, F64, N),
                                                            (3, True, F64, N), (3, True, F32, N), (2, True, F32, 37)])
def test_state_update_matches_plain_path(calls, monkeypatch, groups, full, dtype, n):
    """Token by token with D, z, dt_bias and softplus (or none of them): y and the state equal the plain update's.
    N = 37: more than one vector of state per channel, and a remainder."""
    update = calls("state_update")
    t = {k: v.detach().to(dtype) for k, v in _inputs(length=5, groups=groups, softplus=full, seed=6, n=n).items()}
    kwargs = ({"D": t["D"], "dt_bias": t["delta_bias"], "dt_softplus": True} if full else {})
    results = {}
    for mode in ("auto", "off"):
        monkeypatch.setenv(kernels.KERNELS_ENV, mode)
        state, ys = t["initial_state"], []
        with torch.no_grad():
            for i in range(5):
                y, state = selective_state_update(state, t["u"][..., i], t["delta"][..., i], t["A"], t["B"][..., i],
                                                  t["C"][..., i], z=t["z"][..., i] if full else None, **kwargs)
                ys.append(y)
        results[mode] = (torch.stack(ys, -1), state)
    assert len(update) == 5
    tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == F64 else {"atol": 1e-5, "rtol": 1e-5}
    for a, b in zip(results["auto"], results["off"], strict=True):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a, b, **tol)


def test_state_update_is_functional_and_promotes(ext, calls):
    """A new state, no argument written to; bfloat16 inputs give y in bfloat16 and a float32 state."""
    update = calls("state_update")
    t = {k: v.detach().bfloat16() for k, v in _inputs(length=1, groups=3, seed=6).items()}
    args = [t["initial_state"].float(), t["u"][..., 0], t["delta"][..., 0], t["A"], t["B"][..., 0], t["C"][..., 0]]
    before = [a.clone() for a in args]
    y, state = selective_state_update(*args, D=t["D"], z=t["z"][..., 0])
    assert update and y.dtype == torch.bfloat16 and state.dtype == F32
    assert state.data_ptr() != args[0].data_ptr()
    for a, b in zip(args, before, strict=True):
        assert torch.equal(a, b)


def test_state_update_under_autograd_takes_the_plain_path(ext, calls):
    """The one-token kernel has no backward: while autograd records, the plain update runs and gradients flow."""
    update = calls("state_update")
    t = _inputs(length=1, seed=8)
    y, state = selective_state_update(t["initial_state"], t["u"][..., 0], t["delta"][..., 0], t["A"],
                                      t["B"][..., 0], t["C"][..., 0], D=t["D"], z=t["z"][..., 0])
    (y.sum() + state.sum()).backward()
    assert not update and t["initial_state"].grad is not None


# ------------------------------------------------------------------------------------------------ threads, fallback


def test_results_do_not_depend_on_the_thread_count(ext, threads):
    """Forward, backward (dB, dC summed over channel blocks, dA over the batch) and the one-token update (big
    enough to run threaded): bit for bit the same on 1 and 2 threads."""
    t = _inputs(batch=3, d=40, n=5, length=70, groups=2, softplus=True, seed=21, dtype=F32)
    inputs, _ = _leaves(t, OPTIONAL)
    g = torch.Generator().manual_seed(0)
    big = [torch.randn(*s, generator=g) for s in ((2, 2048, 16), (2, 2048), (2, 2048), (2048, 16), (2, 16), (2, 16))]
    big[2], big[3] = big[2].abs(), -big[3].abs()
    results = []
    for n in (1, 2):
        threads(n)
        out = _call(selective_scan, t, OPTIONAL, delta_softplus=True, chunk_size=16)
        with torch.no_grad():
            step = selective_state_update(*big)
        results.append([*out, *_grads(out, inputs), *step])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_kernels_off_runs_the_plain_path(ext, calls, monkeypatch):
    """LONGSEQ_KERNELS=off (checked on every call): the kernel is not called, selective_scan is the chunked scan bit
    for bit, and the status says so."""
    forward, update = calls("scan_forward"), calls("state_update")
    monkeypatch.setenv(kernels.KERNELS_ENV, "off")
    t = {k: v.detach() for k, v in _inputs(groups=3, softplus=True, seed=5).items()}
    for a, b in zip(_call(selective_scan, t, OPTIONAL, delta_softplus=True, chunk_size=7),
                    _call(selective_scan_chunked, t, OPTIONAL, delta_softplus=True, chunk_size=7), strict=True):
        assert torch.equal(a, b)
    selective_state_update(t["initial_state"], t["u"][..., 0], t["delta"][..., 0], t["A"], t["B"][..., 0],
                           t["C"][..., 0])
    assert not forward and not update
    assert compiled.extension_for(t["u"]) is None
    assert kernels.kernel_status() == {"all": f"pytorch: {kernels.KERNELS_ENV}=off"}


# ------------------------------------------------------------------------------------------------ the mamba mixer


def _mamba_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, 16, generator=g, dtype=F64)
    mask = torch.rand(2, 24, generator=g) > 0.3
    mask[0] = True
    return x, mask


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self"])
def test_mamba_forward_and_gradients_equal_the_plain_path(ext, calls, monkeypatch, pattern):
    forward = calls("scan_forward")
    torch.manual_seed(0)
    mixer = build("mamba", 16, d_state=4, chunk_size=8, pattern=pattern).double()
    x, mask = _mamba_inputs()
    results = []
    for mode in ("auto", "off"):
        monkeypatch.setenv(kernels.KERNELS_ENV, mode)
        leaf = x.clone().requires_grad_()
        y = mixer(leaf, mask=mask)
        params = [leaf, *mixer.parameters()]
        results.append([y, *_grads((y,), params)])
    assert forward
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_mamba_stream_and_step_equal_the_plain_path(ext, calls, monkeypatch):
    """Chunks of 10 then token by token, with holes: the compiled path's outputs and final state equal the plain
    path's, and each step was one call of the whole block's kernel."""
    update = calls("block_step")
    torch.manual_seed(1)
    mixer = build("mamba", 16, d_state=4, chunk_size=8).double().eval()
    x, mask = _mamba_inputs(seed=1)
    results = []
    with torch.no_grad():
        for mode in ("auto", "off"):
            monkeypatch.setenv(kernels.KERNELS_ENV, mode)
            state = mixer.init_state(2)
            y_stream, state = mixer.forward_stream(x[:, :10], state, mask=mask[:, :10])
            steps = []
            for i in range(10, 24):
                y_t, state = mixer.step(x[:, i], state, mask_t=mask[:, i])
                steps.append(y_t)
            results.append([y_stream, torch.stack(steps, 1), state.ssm, state.conv.window])
    assert len(update) == 14
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


# -------------------------------------------------------------------------------------------- the block's token step


def _block_step_inputs(dtype: torch.dtype, *, biases: bool, seed: int = 0, batch: int = 3, d_model: int = 8,
                       e: int = 12, n: int = 5, rank: int = 3, width: int = 4):
    """u_t, conv_state, state, MambaStepWeights (A < 0; biases on every projection or only dt_proj's)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.5):
        return scale * torch.randn(*shape, generator=g, dtype=dtype)
    weights = MambaStepWeights(
        rand(2 * e, d_model), rand(2 * e) if biases else None, rand(e, width), rand(e) if biases else None,
        rand(rank + 2 * n, e), rand(e, rank), rand(e), -torch.rand(e, n, generator=g, dtype=dtype) - 0.1,
        rand(e) if biases else None, rand(d_model, e), rand(d_model) if biases else None)
    return rand(batch, d_model, scale=1.0), rand(batch, e, width - 1), rand(batch, e, n), weights


@pytest.mark.parametrize(("dtype", "biases"), [(F64, True), (F64, False), (F32, True)])
def test_block_step_equals_the_composition(ext, calls, monkeypatch, dtype, biases):
    """One compiled call equals the composition of the ops (kernels off) in outputs and both states; a masked row
    keeps both states bit for bit and outputs 0; the arguments are not modified."""
    fused = calls("block_step")
    u_t, conv_state, state, weights = _block_step_inputs(dtype, biases=biases)
    mask_t = torch.tensor([True, False, True])
    before = [t.clone() for t in (u_t, conv_state, state)]
    results = []
    with torch.no_grad():
        for mode in ("auto", "off"):
            monkeypatch.setenv(kernels.KERNELS_ENV, mode)
            results.append(mamba_block_step(u_t, conv_state, state, weights, mask_t))
    assert fused == ["block_step"]
    tol = {"atol": 1e-12, "rtol": 1e-10} if dtype == F64 else {"atol": 2e-6, "rtol": 2e-5}
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **tol)
    y, new_conv, new_state = results[0]
    assert (y[1] == 0).all() and torch.equal(new_conv[1], conv_state[1]) and torch.equal(new_state[1], state[1])
    assert all(torch.equal(a, b) for a, b in zip(before, (u_t, conv_state, state), strict=True))


def test_block_step_under_autograd_or_mixed_dtypes_runs_the_composition(ext, calls):
    """Under autograd the op is the composition (gradients reach the weights); a float32 state with float64 weights
    is not the kernel's either (it returns None and the composition runs)."""
    fused = calls("block_step")
    u_t, conv_state, state, weights = _block_step_inputs(F64, biases=True)
    leaf = weights.in_proj_weight.clone().requires_grad_()
    y, _, _ = mamba_block_step(u_t, conv_state, state, weights._replace(in_proj_weight=leaf))
    y.sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    with torch.no_grad():
        mixed = mamba_block_step(u_t, conv_state, state.float(), weights)
    assert len(fused) == 1  # the mixed call reached the kernel, which declined
    assert mixed[2].dtype == F64  # the composition promotes the state to the compute dtype


@pytest.mark.parametrize("kernels_mode", ["auto", "off"])
def test_block_step_names_a_wrong_shape(ext, monkeypatch, kernels_mode):
    monkeypatch.setenv(kernels.KERNELS_ENV, kernels_mode)
    u_t, conv_state, state, weights = _block_step_inputs(F64, biases=True)
    with torch.no_grad(), pytest.raises(ValueError, match=r"mamba_block_step: D must have shape \(12,\)"):
        mamba_block_step(u_t, conv_state, state, weights._replace(D=weights.D[:5]))
    with torch.no_grad(), pytest.raises(ValueError, match="mamba_block_step: conv_state must have shape"):
        mamba_block_step(u_t, conv_state[:, :, :2], state, weights)
    with torch.no_grad(), pytest.raises(ValueError, match="mamba_block_step: mask_t must be bool"):
        mamba_block_step(u_t, conv_state, state, weights, torch.ones(2, dtype=torch.bool))


def test_block_step_does_not_depend_on_the_thread_count(ext, threads):
    """Big enough for the update to run threaded: bit for bit the same on 1 and 2 threads."""
    u_t, conv_state, state, weights = _block_step_inputs(F32, biases=True, batch=2, d_model=64, e=2048, n=16)
    results = []
    for count in (1, 2):
        threads(count)
        with torch.no_grad():
            results.append(mamba_block_step(u_t, conv_state, state, weights))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
