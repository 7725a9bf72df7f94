"""Normalised linear attention (Katharopoulos et al. 2020) on feature-mapped queries and keys: the explicit oracle,
the non-causal form, the chunked causal form and the recurrence.

Shapes: phi_q: (B, H, Lq, m), phi_k: (B, H, Lk, m), v: (B, H, Lk, dv) -> o: (B, H, Lq, dv). The feature map phi
(elu+1, FAVOR+, cosFormer's re-weighted ReLU, ...) is the caller's; these functions compute

    o_i = sum_j A_ij v_j / (sum_j A_ij + eps),   A_ij = phi(q_i) . phi(k_j)     (j <= i when causal)

as o_i = phi(q_i) S / (phi(q_i) . z + eps) with the state S = sum_j phi(k_j) v_j^T: (m, dv) and z = sum_j phi(k_j):
(m,). Causal forms carry (S, z) as a prefix sum; ``initial_state`` continues a sequence from an earlier state and
``return_final_state`` gives the state after the last key (streaming = the chunked form with a state, step = the
one-token update). A causal call has Lq = Lk: query i is the token of key i.

The denominator (``denominator``, ``eps``), as the methods do it:
- ``"add"``: sum_j A_ij + eps (Katharopoulos et al.'s fast-transformers, eps = 1e-6). Smooth; with positive features
  (elu+1) the sum is positive and eps only matters when it is tiny.
- ``"clamp"``: max(sum_j A_ij, eps) (cosFormer's reference, eps = 1e-6). Exact above eps, so a positive factor per
  query (FAVOR+'s per-query stabilizer) cancels exactly; with ReLU features the sum can be 0, and then so is the
  numerator.
Either way a query that sees no valid key outputs exactly 0 with finite gradients.

Masks: ``k_valid``: bool (B, Lk), True = valid. A masked key's features and value are zeroed before anything is
summed, so it adds exactly 0 to S and z (an exact no-op on every state) and gets zero gradient. Queries are not
masked here: the caller zeroes the outputs of its padded queries.

Precision: computed in float32 at least (half-precision inputs are promoted, float64 stays float64): S and z are
sums over the whole sequence. o has v's dtype (``linear_attention_readout``: phi_q's); states are returned in the
compute dtype, so a prefill's final state continues without rounding.

The chunked form never builds the L x m x dv cumulative sum: per chunk of C tokens it forms the C x C scores and
one (m, dv) state, and prefix-sums the L / C chunk states.

Every function returns new tensors and modifies none of its arguments.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from longseq.ops.precision import compute_dtype, without_autocast

Denominator = Literal["add", "clamp"]
LinearState = tuple[Tensor, Tensor]  # (S: (B, H, m, dv), z: (B, H, m))


# -- checks and shared pieces ------------------------------------------------------------------------------------


def _check(fn: str, phi_q: Tensor, phi_k: Tensor, v: Tensor, k_valid: Tensor | None, state: LinearState | None,
           *, causal: bool) -> None:
    if phi_q.dim() != 4 or phi_k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{fn}: phi_q, phi_k and v must be 4-D (B, H, L, m) / (B, H, L, dv), got "
                         f"{tuple(phi_q.shape)}, {tuple(phi_k.shape)}, {tuple(v.shape)}")
    b, h, _, m = phi_q.shape
    if phi_k.shape[:2] != (b, h) or phi_k.shape[-1] != m:
        raise ValueError(f"{fn}: phi_k must have shape (B, H, Lk, m) = ({b}, {h}, Lk, {m}), got {tuple(phi_k.shape)}")
    if v.shape[:3] != phi_k.shape[:3]:
        raise ValueError(f"{fn}: v must have shape (B, H, Lk, dv) with (B, H, Lk) = {tuple(phi_k.shape[:3])}, "
                         f"got {tuple(v.shape)}")
    if causal and phi_q.shape[2] != phi_k.shape[2]:
        raise ValueError(f"{fn}: causal attention needs as many queries as keys, got Lq={phi_q.shape[2]}, "
                         f"Lk={phi_k.shape[2]}")
    if k_valid is not None and (k_valid.dtype != torch.bool or tuple(k_valid.shape) != (b, phi_k.shape[2])):
        raise ValueError(f"{fn}: k_valid must be a bool tensor of shape (B, Lk) = {(b, phi_k.shape[2])}, got "
                         f"{k_valid.dtype} {tuple(k_valid.shape)}")
    if state is not None:
        _check_state(fn, state, b, h, m, v.shape[-1])


def _check_state(fn: str, state: LinearState, b: int, h: int, m: int, dv: int) -> None:
    s, z = state
    if tuple(s.shape) != (b, h, m, dv) or tuple(z.shape) != (b, h, m):
        raise ValueError(f"{fn}: the state (S, z) must have shapes (B, H, m, dv) = {(b, h, m, dv)} and (B, H, m) = "
                         f"{(b, h, m)}, got {tuple(s.shape)} and {tuple(z.shape)}")


def _check_denominator(fn: str, eps: float, denominator: str) -> None:
    if denominator not in ("add", "clamp"):
        raise ValueError(f"{fn}: denominator={denominator!r} is not allowed; allowed: 'add', 'clamp'")
    if not eps > 0:
        raise ValueError(f"{fn}: eps={eps!r} must be > 0")


def _normalize(num: Tensor, den: Tensor, eps: float, denominator: Denominator) -> Tensor:
    """num: (..., dv), den: (...) -> num / (den + eps) or num / max(den, eps)."""
    den = den + eps if denominator == "add" else den.clamp_min(eps)
    return num / den[..., None]


def _masked_keys(phi_k: Tensor, v: Tensor, k_valid: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Keys and values in the compute dtype, zeroed where invalid (masked_fill: zero gradient there)."""
    phi_k, v = phi_k.to(dtype), v.to(dtype)
    if k_valid is None:
        return phi_k, v
    invalid = ~k_valid[:, None, :, None]
    return phi_k.masked_fill(invalid, 0.0), v.masked_fill(invalid, 0.0)


def _zero_state(phi_k: Tensor, dv: int, dtype: torch.dtype) -> LinearState:
    b, h, _, m = phi_k.shape
    return phi_k.new_zeros(b, h, m, dv, dtype=dtype), phi_k.new_zeros(b, h, m, dtype=dtype)


# -- the oracle ----------------------------------------------------------------------------------------------------


def linear_attention_ref(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, causal: bool = False,
                         k_valid: Tensor | None = None, initial_state: LinearState | None = None,
                         return_final_state: bool = False, eps: float = 1e-6,
                         denominator: Denominator = "add") -> Tensor | tuple[Tensor, LinearState]:
    """Oracle: the explicit quadratic form A = phi_q phi_k^T (keys masked, lower-triangular when causal),
    o = (A v + phi_q S0) / (rowsum A + phi_q . z0 (+) eps); final state S0 + sum_j phi(k_j) v_j^T, z0 + sum_j phi(k_j).
    Same contract as ``linear_attention_chunked`` (and as ``linear_attention`` when not causal)."""
    _check("linear_attention_ref", phi_q, phi_k, v, k_valid, initial_state, causal=causal)
    _check_denominator("linear_attention_ref", eps, denominator)
    dtype = compute_dtype(phi_q, phi_k, v, *(initial_state or ()))
    q = phi_q.to(dtype)
    k, vv = phi_k.to(dtype), v.to(dtype)
    scores = q @ k.transpose(-2, -1)  # (B, H, Lq, Lk)
    visible = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        visible = visible.tril()
    visible = visible[None, None] if k_valid is None else visible & k_valid[:, None, None, :]
    scores = scores.masked_fill(~visible, 0.0)
    s0, z0 = _zero_state(k, v.shape[-1], dtype) if initial_state is None else (t.to(dtype) for t in initial_state)
    num = scores @ vv + q @ s0
    den = scores.sum(dim=-1) + (q * z0[:, :, None]).sum(dim=-1)
    o = _normalize(num, den, eps, denominator).to(v.dtype)
    if not return_final_state:
        return o
    keep = torch.ones(k.shape[:3], dtype=torch.bool, device=k.device) if k_valid is None else k_valid[:, None]
    s_final = s0 + torch.einsum("bhlm,bhld,bhl->bhmd", k, vv, keep.to(dtype))
    z_final = z0 + torch.einsum("bhlm,bhl->bhm", k, keep.to(dtype))
    return o, (s_final, z_final)


# -- non-causal: the state of all keys, read by every query -------------------------------------------------------


@without_autocast  # an encoded memory is a state: its sums stay in the compute dtype (docs/design.md §5)
def linear_attention_state(phi_k: Tensor, v: Tensor, *, k_valid: Tensor | None = None) -> LinearState:
    """phi_k: (B, H, Lk, m), v: (B, H, Lk, dv) -> (S: (B, H, m, dv), z: (B, H, m)), the sums over the valid keys, in
    the compute dtype (a memory encoded once for cross attention)."""
    _check("linear_attention_state", phi_k, phi_k, v, k_valid, None, causal=False)
    k, vv = _masked_keys(phi_k, v, k_valid, compute_dtype(phi_k, v))
    return k.transpose(-2, -1) @ vv, k.sum(dim=-2)


def linear_attention_readout(phi_q: Tensor, state: LinearState, *, eps: float = 1e-6,
                             denominator: Denominator = "add") -> Tensor:
    """phi_q: (B, H, Lq, m), state (S, z) -> o: (B, H, Lq, dv) = phi_q S / (phi_q . z (+) eps), in phi_q's dtype."""
    s, z = state
    if phi_q.dim() != 4:
        raise ValueError(f"linear_attention_readout: phi_q must have shape (B, H, Lq, m), got {tuple(phi_q.shape)}")
    _check_state("linear_attention_readout", state, *phi_q.shape[:2], phi_q.shape[-1], s.shape[-1])
    _check_denominator("linear_attention_readout", eps, denominator)
    dtype = compute_dtype(phi_q, s, z)
    q = phi_q.to(dtype)
    num, den = q @ s.to(dtype), (q * z.to(dtype)[:, :, None]).sum(dim=-1)
    return _normalize(num, den, eps, denominator).to(phi_q.dtype)


def linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, k_valid: Tensor | None = None, eps: float = 1e-6,
                     denominator: Denominator = "add") -> Tensor:
    """Non-causal: every query sees every valid key. O((Lq + Lk) m dv). o in v's dtype."""
    _check("linear_attention", phi_q, phi_k, v, k_valid, None, causal=False)
    _check_denominator("linear_attention", eps, denominator)
    state = linear_attention_state(phi_k, v, k_valid=k_valid)
    return linear_attention_readout(phi_q, state, eps=eps, denominator=denominator).to(v.dtype)


# -- causal: chunked, recurrent, one token ---------------------------------------------------------------------


def linear_attention_chunked(phi_q: Tensor, phi_k: Tensor, v: Tensor, chunk_size: int, *,
                             k_valid: Tensor | None = None, initial_state: LinearState | None = None,
                             return_final_state: bool = False, eps: float = 1e-6,
                             denominator: Denominator = "add") -> Tensor | tuple[Tensor, LinearState]:
    """Causal linear attention by chunks of C = min(chunk_size, L) tokens (the last one padded with zero keys, an
    exact no-op, and its outputs cut). For chunk c, with (S_c, z_c) the state entering it:

        num = phi(Q_c) S_c + tril(phi(Q_c) phi(K_c)^T) V_c,   den = phi(Q_c) z_c + rowsum tril(...)

    and S_{c+1} = S_c + phi(K_c)^T V_c, z_{c+1} = z_c + colsum phi(K_c): the L / C chunk states are prefix-summed
    (starting from ``initial_state``), never the per-token states. Cost O(L C m + L m dv); memory O(L C + L/C m dv)
    per head. Returns o: (B, H, L, dv) in v's dtype and, when ``return_final_state``, (S, z) after the last token."""
    _check("linear_attention_chunked", phi_q, phi_k, v, k_valid, initial_state, causal=True)
    _check_denominator("linear_attention_chunked", eps, denominator)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"linear_attention_chunked: chunk_size={chunk_size!r} is not allowed; it must be an int >= 1")
    dtype = compute_dtype(phi_q, phi_k, v, *(initial_state or ()))
    length, dv = phi_q.shape[2], v.shape[-1]
    s0, z0 = _zero_state(phi_k, dv, dtype) if initial_state is None else (t.to(dtype) for t in initial_state)
    if length == 0:
        o = v.new_zeros(*phi_q.shape[:3], dv)
        return (o, (s0, z0)) if return_final_state else o
    q = phi_q.to(dtype)
    k, vv = _masked_keys(phi_k, v, k_valid, dtype)
    c = min(chunk_size, length)
    pad = math.ceil(length / c) * c - length
    q, k, vv = (rearrange(F.pad(t, (0, 0, 0, pad)), "b h (n c) d -> b h n c d", c=c) for t in (q, k, vv))
    chunk_s = k.transpose(-2, -1) @ vv  # (B, H, N, m, dv): each chunk's own contribution
    chunk_z = k.sum(dim=-2)  # (B, H, N, m)
    # The state entering chunk n: the initial state plus chunks 0..n-1 (an exclusive prefix sum over chunks).
    s_in = s0[:, :, None] + torch.cat([torch.zeros_like(chunk_s[:, :, :1]), chunk_s[:, :, :-1]], dim=2).cumsum(2)
    z_in = z0[:, :, None] + torch.cat([torch.zeros_like(chunk_z[:, :, :1]), chunk_z[:, :, :-1]], dim=2).cumsum(2)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-2, -1)).masked_fill(~causal, 0.0)  # (B, H, N, C, C)
    num = q @ s_in + scores @ vv
    den = (q * z_in[..., None, :]).sum(dim=-1) + scores.sum(dim=-1)
    o = rearrange(_normalize(num, den, eps, denominator), "b h n c d -> b h (n c) d")[:, :, :length].to(v.dtype)
    if not return_final_state:
        return o
    return o, (s_in[:, :, -1] + chunk_s[:, :, -1], z_in[:, :, -1] + chunk_z[:, :, -1])


def linear_attention_update(state: LinearState, phi_q: Tensor, phi_k: Tensor, v: Tensor, *,
                            k_valid: Tensor | None = None, eps: float = 1e-6,
                            denominator: Denominator = "add") -> tuple[Tensor, LinearState]:
    """One token (decoding): state (S: (B, H, m, dv), z: (B, H, m)), phi_q, phi_k: (B, H, m), v: (B, H, dv),
    k_valid: bool (B,) -> (o: (B, H, dv) in v's dtype, new state in the compute dtype).

    S' = S + phi(k) v^T, z' = z + phi(k) (unchanged, exactly, where the token is invalid); o = phi(q) S' /
    (phi(q) . z' (+) eps). The new state is a new tensor; ``state`` is not modified."""
    if phi_q.dim() != 3 or phi_k.shape != phi_q.shape or v.dim() != 3 or v.shape[:2] != phi_q.shape[:2]:
        raise ValueError(f"linear_attention_update: phi_q, phi_k must have shape (B, H, m) and v (B, H, dv), got "
                         f"{tuple(phi_q.shape)}, {tuple(phi_k.shape)}, {tuple(v.shape)}")
    if k_valid is not None and (k_valid.dtype != torch.bool or tuple(k_valid.shape) != phi_q.shape[:1]):
        raise ValueError(f"linear_attention_update: k_valid must be a bool tensor of shape (B,) = "
                         f"{tuple(phi_q.shape[:1])}, got {k_valid.dtype} {tuple(k_valid.shape)}")
    _check_state("linear_attention_update", state, *phi_q.shape, v.shape[-1])
    _check_denominator("linear_attention_update", eps, denominator)
    dtype = compute_dtype(phi_q, phi_k, v, *state)
    k, vv = _masked_keys(phi_k[:, :, None], v[:, :, None], None if k_valid is None else k_valid[:, None], dtype)
    s = state[0].to(dtype) + k[:, :, 0, :, None] * vv[:, :, 0, None, :]
    z = state[1].to(dtype) + k[:, :, 0]
    q = phi_q.to(dtype)
    o = _normalize((q[..., None] * s).sum(dim=-2), (q * z).sum(dim=-1), eps, denominator)
    return o.to(v.dtype), (s, z)


def linear_attention_recurrent(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, k_valid: Tensor | None = None,
                               initial_state: LinearState | None = None, return_final_state: bool = False,
                               eps: float = 1e-6,
                               denominator: Denominator = "add") -> Tensor | tuple[Tensor, LinearState]:
    """Causal linear attention as the recurrence: ``linear_attention_update`` token by token (a second oracle for
    the chunked form; O(L) sequential steps). Same contract as ``linear_attention_chunked``."""
    _check("linear_attention_recurrent", phi_q, phi_k, v, k_valid, initial_state, causal=True)
    _check_denominator("linear_attention_recurrent", eps, denominator)
    dtype = compute_dtype(phi_q, phi_k, v, *(initial_state or ()))
    state = _zero_state(phi_k, v.shape[-1], dtype) if initial_state is None else initial_state
    outs = []
    for t in range(phi_q.shape[2]):
        o, state = linear_attention_update(state, phi_q[:, :, t], phi_k[:, :, t], v[:, :, t],
                                           k_valid=None if k_valid is None else k_valid[:, t], eps=eps,
                                           denominator=denominator)
        outs.append(o)
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(*phi_q.shape[:3], v.shape[-1])
    state = tuple(t.to(dtype) for t in state)
    return (o, state) if return_final_state else o
