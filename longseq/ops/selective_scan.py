"""Mamba-1's selective scan: a diagonal linear recurrence whose decay and input depend on the token, per channel.

For every batch row, channel d and state index n:

    dt_t   = softplus(delta_t + delta_bias) if delta_softplus else delta_t + delta_bias       (delta_bias: 0 if None)
    h_t    = exp(dt_t A[d, n]) h_{t-1} + dt_t B_t[n] u_t                                     (h_0: initial_state)
    y_t    = sum_n C_t[n] h_t[n] + D[d] u_t,   then   y_t *= silu(z_t)   when z is given

Layouts are those of mamba_ssm's ``selective_scan_fn`` (code written against it runs by changing the import):
u, delta, z: (B, D, L); A: (D, N), real; B, C: (B, N, L), or grouped (B, G, N, L) with G dividing D, channel d
reading group d // (D / G); D, delta_bias: (D,); initial_state and the last state: (B, D, N). B and C have the same
shape. ``selective_state_update`` is the one-token form for decoding: x, dt, z: (B, D); B, C: (B, N) or (B, G, N).

Forms of one function:
- ``selective_scan_ref``: the oracle, a loop over time.
- ``selective_scan_chunked``: the two-level chunked scan, in plain PyTorch (``compile=True`` fuses its per-step
  work with ``torch.compile``); see its docstring for the algorithm and why this formulation.
- ``selective_scan``: the public entry: the compiled CPU kernel (``longseq.kernels.selective_scan``, forward and
  backward) when it is available, else ``selective_scan_chunked``.
- ``selective_state_update``: one token; functional, it returns a new state and never writes into its arguments
  (one compiled call when decoding on the CPU with the kernel available).

Masks: a masked (padded) position is an exact no-op when the caller passes dt = 0 there *after* its own bias and
softplus (that is: delta = 0 with ``delta_softplus=False`` and ``delta_bias=None``): exp(0 A) = 1 keeps the state
and dt B u = 0 adds nothing, so every later output and the last state equal those of the sequence with that position
removed. The output at such a position is sum_n C h + D u (the mixer zeroes it), and u there must be finite
(0 * inf is NaN). ``selective_scan_chunked`` pads the sequence to whole chunks in exactly this way.

Precision: the scan runs in float32 at least: half-precision inputs are promoted, float64 stays float64 (the
compute dtype promotes float32 with every tensor argument). y has u's dtype; the last state is returned in the
compute dtype (a float32 state under bfloat16 inputs, as mamba_ssm does). Decays are exp(dt A) <= 1 for dt >= 0 and
A <= 0 (Mamba's A = -exp(A_log)); no cumulative sum of log-decays is ever exponentiated with a positive sign (that
form overflows float32 once the decay over a sequence passes e^-88).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.kernels import selective_scan as compiled
from longseq.ops.precision import compute_dtype

# Channel blocking: ``selective_scan`` works on one (B, channels, L/chunk_size, N) tensor per step (the states of
# all chunks at once) and keeps a few of them; channels are processed in blocks so that one such tensor has at most
# this many elements (16 MiB in float32), whatever B, D and L. A block holds at least one channel.
MAX_BLOCK_ELEMENTS = 1 << 22

_LOG2E = math.log2(math.e)  # exp(x) = exp2(x log2(e)): PyTorch's CPU exp2 is ~4x faster than exp (float32)


# ----------------------------------------------------------------------------------------------------------------
# Checks


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check(fn: str, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
           delta_bias: Tensor | None, state: Tensor | None, *, one_token: bool = False) -> None:
    """Sequence form (names u, delta, delta_bias, initial_state; u: (B, D, L)) or, with ``one_token``, the decoding
    form (names x, dt, dt_bias, state; x: (B, D))."""
    u_name, delta_name, bias_name, state_name = (("x", "dt", "dt_bias", "state") if one_token
                                                 else ("u", "delta", "delta_bias", "initial_state"))
    for name, t in ((u_name, u), (delta_name, delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    (bias_name, delta_bias), (state_name, state)):
        if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point()):
            what = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{fn}: {name} must be a real floating-point tensor, got {what}")
    if one_token:
        if u.dim() != 2:
            raise ValueError(f"{fn}: x must have shape (B, D), got {_shape(u)}")
    elif u.dim() != 3 or u.shape[2] == 0:
        raise ValueError(f"{fn}: u must have shape (B, D, L) with L >= 1, got {_shape(u)}")
    b, d = u.shape[:2]
    if delta.shape != u.shape:
        raise ValueError(f"{fn}: {delta_name} must have {u_name}'s shape {_shape(u)}, got {_shape(delta)}")
    if A.dim() != 2 or A.shape[0] != d or A.shape[1] == 0:
        raise ValueError(f"{fn}: A must have shape (D, N) with D = {d} ({u_name}'s channels) and N >= 1, "
                         f"got {_shape(A)}")
    n = A.shape[1]
    time = () if one_token else (u.shape[2],)
    layouts = f"(B, N{', L' if time else ''}) or (B, G, N{', L' if time else ''})"
    if B.dim() == 2 + len(time):
        groups = 1
        ok = B.shape == (b, n, *time)
    elif B.dim() == 3 + len(time):
        groups = B.shape[1]
        ok = B.shape[0] == b and groups >= 1 and d % groups == 0 and B.shape[2:] == (n, *time)
    else:
        ok, groups = False, 1
    if not ok:
        sizes = f"B = {b}, N = {n} (A's state size)" + (f", L = {time[0]}" if time else "")
        raise ValueError(f"{fn}: B must have shape {layouts} with {sizes} and G dividing D = {d}, "
                         f"got {_shape(B)}")
    if C.shape != B.shape:
        raise ValueError(f"{fn}: C must have B's shape {_shape(B)}, got {_shape(C)}")
    if D is not None and D.shape != (d,):
        raise ValueError(f"{fn}: D must have shape (D,) = ({d},), got {_shape(D)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"{fn}: z must have {u_name}'s shape {_shape(u)}, got {_shape(z)}")
    if delta_bias is not None and delta_bias.shape != (d,):
        raise ValueError(f"{fn}: {bias_name} must have shape (D,) = ({d},), got {_shape(delta_bias)}")
    if state is not None and state.shape != (b, d, n):
        raise ValueError(f"{fn}: {state_name} must have shape (B, D, N) = {(b, d, n)}, got {_shape(state)}")


def _check_options(fn: str, chunk_size: object, compile: object) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size={chunk_size!r} is not allowed; allowed: an int >= 1")
    if not isinstance(compile, bool):
        raise ValueError(f"{fn}: compile={compile!r} is not allowed; allowed: True or False")


# ----------------------------------------------------------------------------------------------------------------
# Pieces the three forms share



def _step_size(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    """dt = softplus(delta + bias) or delta + bias, in ``dtype``; delta: (B, D, ...), bias: (D,)."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype).view(-1, *([1] * (delta.dim() - 2)))
    return F.softplus(dt) if delta_softplus else dt


def _per_channel(bc: Tensor, d: int, one_token: bool) -> Tensor:
    """B or C with one row per channel: (B, D, N[, L]) from (B, N[, L]) or (B, G, N[, L])."""
    if bc.dim() == (2 if one_token else 3):
        return bc.unsqueeze(1).expand(bc.shape[0], d, *bc.shape[1:])
    return bc.repeat_interleave(d // bc.shape[1], dim=1)


def _skip_and_gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """(y + D u) * silu(z) in y's dtype, then cast to u's; D: (D,) acts on dim 1 of u: (B, D) or (B, D, L)."""
    if D is not None:
        y = y + D.to(y.dtype).view(-1, *([1] * (u.dim() - 2))) * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(u.dtype)


# ----------------------------------------------------------------------------------------------------------------
# The one-token form and the oracle


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                           dt_softplus: bool = False) -> tuple[Tensor, Tensor]:
    """One token: state: (B, D, N), x, dt, z: (B, D), A: (D, N), B, C: (B, N) or (B, G, N), D, dt_bias: (D,) ->
    (y: (B, D) in x's dtype, new_state: (B, D, N) in the compute dtype).

    mamba_ssm's ``selective_state_update`` argument order, but functional: the new state is a new tensor, no
    argument is modified (the caller may overwrite its inputs afterwards, and autograd may still need the old
    state). One compiled call (``longseq.kernels.selective_scan``) when the kernel is available, every tensor is on
    the CPU and autograd does not record (decoding); else the PyTorch form below.
    """
    _check("selective_state_update", x, dt, A, B, C, D, z, dt_bias, state, one_token=True)
    dtype = compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    step = _step_size(dt, dt_bias, dt_softplus, dtype)  # (B, D)
    ext = compiled.extension_for(state, x, dt, A, B, C, D, z, dt_bias, needs_backward=False)
    if ext is not None:
        y, new_state = compiled.state_update(ext, state, x, step, A, B, C, D, z, dtype=dtype)
        return y.to(x.dtype), new_state
    d = x.shape[1]
    b_ch, c_ch = _per_channel(B.to(dtype), d, True), _per_channel(C.to(dtype), d, True)  # (B, D, N)
    new_state = torch.addcmul(torch.exp(step[..., None] * A.to(dtype)) * state.to(dtype),
                              (step * x.to(dtype))[..., None], b_ch)
    y = (new_state * c_ch).sum(dim=-1)
    return _skip_and_gate(y, x, D, z), new_state


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False,
                       initial_state: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Oracle: the recurrence of the module docstring as a loop over time, with the decays exp(dt A) and inputs
    dt B u precomputed for the whole sequence. Same contract as ``selective_scan``."""
    _check("selective_scan_ref", u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    b, d, length = u.shape
    dt = _step_size(delta, delta_bias, delta_softplus, dtype)  # (B, D, L)
    b_ch, c_ch = _per_channel(B.to(dtype), d, False), _per_channel(C.to(dtype), d, False)  # (B, D, N, L)
    decay = torch.exp(dt[..., None] * A.to(dtype)[:, None, :])  # (B, D, L, N)
    inputs = (dt * u.to(dtype))[..., None] * b_ch.transpose(2, 3)  # (B, D, L, N)
    h = u.new_zeros(b, d, A.shape[1], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    ys = []
    for t in range(length):
        h = decay[:, :, t] * h + inputs[:, :, t]
        ys.append((h * c_ch[..., t]).sum(dim=-1))
    y = _skip_and_gate(torch.stack(ys, dim=-1), u, D, z)
    return (y, h) if return_last_state else y


# ----------------------------------------------------------------------------------------------------------------
# The chunked scan
#
# Layouts inside a channel block (G' groups of D' channels, c chunks of Q steps, A2 = A log2(e)):
#   dt, du: (Q, B, G', D', c)   the step within the chunk leads: step q of every chunk is one contiguous slice
#   Bs, Cs: (Q, B, G', c, N)
#   h:      (B, G', D', c, N)   the states of all chunks at one step


def _decay_step(h: Tensor, dt_q: Tensor, du_q: Tensor, b_q: Tensor, a2: Tensor) -> Tensor:
    """One step of every chunk: h <- exp2(dt A2) h + du B (out of place)."""
    return torch.addcmul(torch.exp2(dt_q[..., None] * a2) * h, du_q[..., None], b_q[:, :, None])


def _output_step(h: Tensor, dt_q: Tensor, du_q: Tensor, b_q: Tensor, c_q: Tensor, a2: Tensor) -> tuple[Tensor, Tensor]:
    """``_decay_step`` then the outputs <C, h>: (B, G', D', c)."""
    h = _decay_step(h, dt_q, du_q, b_q, a2)
    return h, (h * c_q[:, :, None]).sum(dim=-1)


_COMPILED: dict[str, Callable] = {}  # torch.compile'd step functions, built on first use of compile=True


def _compiled(name: str) -> Callable:
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile({"decay": _decay_step, "output": _output_step}[name])
    return _COMPILED[name]


class _Steps:
    """The per-step work of a channel block in one of three ways: in place on preallocated buffers (no autograd),
    out of place (autograd records every step), or out of place through the torch.compile'd step functions."""

    def __init__(self, a2: Tensor, *, inplace: bool, compile: bool) -> None:
        self.a2, self.compile = a2, compile
        self.inplace = inplace and not compile
        self.buffers: dict[tuple[int, ...], Tensor] = {}  # the decays of one step, by shape

    def decay(self, h: Tensor, dt_q: Tensor, du_q: Tensor, b_q: Tensor) -> Tensor:
        if self.compile:
            return _compiled("decay")(h, dt_q, du_q, b_q, self.a2)
        if not self.inplace:
            return _decay_step(h, dt_q, du_q, b_q, self.a2)
        buffer = self.buffers.get(h.shape)
        if buffer is None:
            buffer = self.buffers[h.shape] = torch.empty_like(h)
        torch.mul(dt_q[..., None], self.a2, out=buffer).exp2_()
        return h.mul_(buffer).addcmul_(du_q[..., None], b_q[:, :, None])

    def output(self, h: Tensor, dt_q: Tensor, du_q: Tensor, b_q: Tensor, c_q: Tensor) -> tuple[Tensor, Tensor]:
        if self.compile:
            return _compiled("output")(h, dt_q, du_q, b_q, c_q, self.a2)
        h = self.decay(h, dt_q, du_q, b_q)
        # einsum beats the fused mul-and-sum here (it runs as a batched matrix product).
        return h, torch.einsum("bgdcn,bgcn->bgdc", h, c_q)


def _scan_block(dt: Tensor, du: Tensor, dt_sum: Tensor, bs: Tensor, cs: Tensor, a2: Tensor, h0: Tensor | None, *,
                inplace: bool, compile: bool) -> tuple[Tensor, Tensor]:
    """One channel block, layouts above; dt_sum: (B, G', D', c), the sum of dt over each chunk; a2: (G', D', 1, N);
    h0: (B, G', D', N) or None (zeros) -> (y: (B, G', D', c, Q), last state: (B, G', D', N))."""
    q_len, b, g, dg, c = dt.shape
    n = a2.shape[-1]
    steps = _Steps(a2, inplace=inplace, compile=compile)
    start0 = dt.new_zeros(b, g, dg, n) if h0 is None else h0
    if c == 1:
        h = start0.unsqueeze(3) if not steps.inplace else start0.unsqueeze(3).clone()
    else:
        # 1. Each chunk but the last from a zero state: its end state (the last chunk's end is not needed).
        first = slice(0, c - 1)
        h = du[0][..., first, None] * bs[0][:, :, None, first]
        for q in range(1, q_len):
            h = steps.decay(h, dt[q][..., first], du[q][..., first], bs[q][:, :, first])
        # 2. The carries, chunk after chunk: start_j = exp(A sum of dt over chunk j-1) start_{j-1} + end_{j-1}.
        #    The exponent is non-positive: this is the product of the chunk's step decays, not a ratio of them.
        total = torch.exp2(dt_sum[..., first, None] * a2)  # (B, G', D', c-1, N)
        if steps.inplace:
            starts = dt.new_empty(b, g, dg, c, n)
            starts[..., 0, :] = start0
            for j in range(1, c):
                torch.addcmul(h[..., j - 1, :], total[..., j - 1, :], starts[..., j - 1, :], out=starts[..., j, :])
        else:
            carried = [start0]
            for j in range(1, c):
                carried.append(torch.addcmul(h[..., j - 1, :], total[..., j - 1, :], carried[-1]))
            starts = torch.stack(carried, dim=3)
        h = starts
    # 3. Every chunk again from its true start state: the exact states, and the outputs from them.
    ys: list[Tensor] = []
    for q in range(q_len):
        h, y_q = steps.output(h, dt[q], du[q], bs[q], cs[q])
        ys.append(y_q)
    return torch.stack(ys, dim=-1), h[..., c - 1, :]


def _channel_blocks(b: int, g: int, dg: int, c: int, n: int) -> list[list[tuple[slice, slice]]]:
    """Blocks of (groups, channels within each group), one list per row of the result: either whole groups, or
    (when a group is too large for ``MAX_BLOCK_ELEMENTS``) pieces of one group."""
    most = max(1, MAX_BLOCK_ELEMENTS // (b * c * n))  # channels per block
    if most >= dg:
        k = most // dg
        return [[(slice(g0, min(g0 + k, g)), slice(0, dg))] for g0 in range(0, g, k)]
    return [[(slice(gi, gi + 1), slice(d0, min(d0 + most, dg))) for d0 in range(0, dg, most)] for gi in range(g)]


def _cat(parts: list[Tensor], dim: int) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, initial_state: Tensor | None = None, *, chunk_size: int = 64,
                   compile: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """u, delta: (B, D, L), A: (D, N), B, C: (B, N, L) or (B, G, N, L), D, delta_bias: (D,), z: (B, D, L),
    initial_state: (B, D, N) -> y: (B, D, L) in u's dtype, and the last state (B, D, N) in the compute dtype when
    ``return_last_state``. The recurrence of the module docstring; any chunk_size >= 1 and any L.

    Runs the compiled kernel (``longseq.kernels.selective_scan``) when it is available and every tensor is on the
    CPU; there ``chunk_size`` is the backward's checkpoint interval (the forward keeps the state every chunk_size
    steps, the backward recomputes each chunk from it) and the result is not differentiable twice. Otherwise, or
    with ``compile=True`` (which asks for the PyTorch form through ``torch.compile``), ``selective_scan_chunked``.
    """
    _check("selective_scan", u, delta, A, B, C, D, z, delta_bias, initial_state)
    _check_options("selective_scan", chunk_size, compile)
    ext = None if compile else compiled.extension_for(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if ext is None:
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                      initial_state, chunk_size=chunk_size, compile=compile)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dt = _step_size(delta, delta_bias, delta_softplus, dtype)
    y, last = compiled.scan(ext, u, dt, A, B, C, D, z, initial_state, chunk_size=chunk_size, dtype=dtype)
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                           z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                           return_last_state: bool = False, initial_state: Tensor | None = None, *,
                           chunk_size: int = 64, compile: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The PyTorch form of ``selective_scan`` (same contract), the path without compiled kernels.

    Two-level chunked scan with Q = min(chunk_size, L), the sequence padded with no-op steps (dt = 0) to c whole
    chunks of Q steps:
    1. a loop over the Q steps of a chunk, all chunks at once, from a zero state: each chunk's end state;
    2. a loop over the c chunks: the true start state of each, start_j = exp(A * sum of dt over chunk j-1)
       start_{j-1} + end_{j-1} (start_0 = initial_state);
    3. the Q-step loop again from the true start states: exact states, and y_t = <C_t, h_t> at each step.
    Only exponentials of non-positive numbers occur (for dt >= 0, A <= 0), computed as exp2(dt * A log2(e)): PyTorch's
    CPU exp2 is ~4x faster than its exp in float32 (~3x in float64), for one more rounding in the exponent. Step 3
    recomputes the step decays rather than keeping them from step 1, and never forms a (B, D, L, N) tensor: measured
    on 2 CPU threads, keeping them (or correcting step 1's states with exp of the within-chunk cumulative sums) is
    2-4x slower, because the (B, D, L, N) tensors do not fit in cache. Python runs 2Q + c steps per channel block;
    channels are processed in blocks of at most ``MAX_BLOCK_ELEMENTS`` elements per step tensor (module constant),
    so the working set is a few such tensors whatever L (autograd, when recording, keeps each step's tensors for
    the backward: O(B D L N) floats, as any autograd-through-the-loop scan).

    Without autograd the steps run in place on preallocated buffers; with it, out of place (autograd differentiates
    through every step). ``compile=True`` runs the per-step work through ``torch.compile`` (compiled once per
    shape set and cached in this module; the first call pays the compilation).
    """
    _check("selective_scan_chunked", u, delta, A, B, C, D, z, delta_bias, initial_state)
    _check_options("selective_scan_chunked", chunk_size, compile)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    b, d, length = u.shape
    n = A.shape[1]
    bg, cg = (t.to(dtype) if t.dim() == 4 else t.to(dtype).unsqueeze(1) for t in (B, C))  # (B, G, N, L)
    g = bg.shape[1]
    dg = d // g
    q_len = min(chunk_size, length)
    c = -(-length // q_len)
    pad = c * q_len - length  # padded steps: dt = 0 and du = 0, exact no-ops (module docstring)

    dt = _step_size(delta, delta_bias, delta_softplus, dtype)
    du = dt * u.to(dtype)

    def chunked(x: Tensor, inner: int) -> Tensor:
        """(B, G * inner or G, inner, L) -> (B, G, inner, c, Q), padded with zeros."""
        x = x.reshape(b, g, inner, length)
        return (F.pad(x, (0, pad)) if pad else x).reshape(b, g, inner, c, q_len)

    dt_c = chunked(dt, dg)
    dt_sum = dt_c.sum(dim=-1)  # (B, G, D', c)
    dt_s, du_s = (x.permute(4, 0, 1, 2, 3).contiguous() for x in (dt_c, chunked(du, dg)))  # (Q, B, G, D', c)
    b_s, c_s = (chunked(x, n).permute(4, 0, 1, 3, 2).contiguous() for x in (bg, cg))  # (Q, B, G, c, N)
    a2 = (A.to(dtype) * _LOG2E).reshape(g, dg, 1, n)
    h0 = None if initial_state is None else initial_state.to(dtype).reshape(b, g, dg, n)
    inplace = not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias, initial_state)))

    y_rows, last_rows = [], []
    for row in _channel_blocks(b, g, dg, c, n):
        y_parts, last_parts = [], []
        for gs, ds in row:
            y_blk, last_blk = _scan_block(dt_s[:, :, gs, ds], du_s[:, :, gs, ds], dt_sum[:, gs, ds], b_s[:, :, gs],
                                          c_s[:, :, gs], a2[gs, ds], None if h0 is None else h0[:, gs, ds],
                                          inplace=inplace, compile=compile)
            y_parts.append(y_blk)
            last_parts.append(last_blk)
        y_rows.append(_cat(y_parts, dim=2))
        last_rows.append(_cat(last_parts, dim=2))
    y = _cat(y_rows, dim=1).reshape(b, d, c * q_len)[..., :length]  # from (B, G, D', c, Q)
    y = _skip_and_gate(y, u, D, z).contiguous()
    if not return_last_state:
        return y
    # A copy: a view would pin the per-step buffer of the last block.
    return y, _cat(last_rows, dim=1).reshape(b, d, n).contiguous()
