"""Softmax pooling of a sequence into m slots, and attention over the slots (ABC's bounded memory).

Each position j scores every slot r with alpha[j, r]; slot r holds the softmax-over-positions weighted mean of x:

    pooled[r] = sum_j exp(alpha[j, r]) x[j] / sum_j exp(alpha[j, r])

and a query attends over the m slots: o = softmax_r(scale · q·k~[r]) v~[r], with k~ pooled from the keys and v~
from the values (each with its own scores). ``softmax_pool`` takes the sums over all valid positions (non-causal
patterns, a cross memory) and ``slot_attention`` reads the slots. The causal form pools, at every t, over j <= t
only, carried by a state per slot: the numerator num (m, d), the denominator den (m) and the running maximum max (m)
of the scores, both sums taken relative to max:

    max_t = max(max_{t-1}, alpha_t);  den_t = exp(max_{t-1} - max_t) den_{t-1} + exp(alpha_t - max_t)
    num_t = exp(max_{t-1} - max_t) num_{t-1} + exp(alpha_t - max_t) x_t;   pooled_t = num_t / den_t

Every exponent is <= 0 and the shift is each position's own running maximum, so no sum over- or underflows whatever
the range of the scores (log-space safe). The maximum is a stabilizer that cancels in num / den: it is computed
without gradient. ``prefix_softmax_pool_ref`` is this as an explicit softmax over each prefix, and
``prefix_slot_attention_ref`` the causal attention over its per-position slots. ``prefix_slot_attention`` computes
the same in chunks of C tokens without ever forming the (L, m, d) slots of every position: within a chunk the
weights exp(alpha_j - max_t), j <= t, form a C x C lower-triangular matrix per slot (each position keeps its own
shift), and q_t·k~_t[r] is the carried q_t·num[r] plus those weights times the chunk's q_t·k_j; likewise for the
values. Cost O(L (C m + C d + m d)) per head; the state is carried from chunk to chunk, and on one token this is
one step of the recurrence (decoding).

Shapes: alpha: (..., L, m), x: (..., L, d), valid: bool broadcastable to (..., L) (True = valid; None = all),
states: ``SoftmaxPoolState`` with num (..., m, d), den (..., m), max (..., m). A masked position is an exact no-op:
its score is -inf, so it changes neither max nor the sums. An empty prefix (no valid position yet: max = -inf,
den = 0) pools to 0, and zero slots attend to 0. Computed in float32 at least (float64 stays float64); outputs and
states are returned in that compute dtype. Every function returns new tensors and modifies none of its arguments.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from longseq.ops.masked_softmax import masked_softmax
from longseq.ops.precision import compute_dtype, without_autocast


class SoftmaxPoolState(NamedTuple):
    """num: (..., m, d), den: (..., m), max: (..., m) (-inf before any valid position)."""

    num: Tensor
    den: Tensor
    max: Tensor


def empty_pool_state(shape: tuple[int, ...], n_slots: int, dim: int, *, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> SoftmaxPoolState:
    """The state before any position: num 0, den 0, max -inf. shape: the leading dims (e.g. (B, H))."""
    return SoftmaxPoolState(
        num=torch.zeros(*shape, n_slots, dim, device=device, dtype=dtype),
        den=torch.zeros(*shape, n_slots, device=device, dtype=dtype),
        max=torch.full((*shape, n_slots), -math.inf, device=device, dtype=dtype),
    )


def _positive(den: Tensor) -> Tensor:
    """A denominator safe to divide by: 1 where it is 0 (an empty prefix, whose numerators are 0 too)."""
    return torch.where(den > 0, den, 1.0)


def pool_read(num: Tensor, den: Tensor) -> Tensor:
    """The slots of a state: num / den: (..., m, d); 0 where den = 0 (an empty prefix)."""
    return num / _positive(den)[..., None]


def _finite(m: Tensor) -> Tensor:
    """The running max as the shift of the new scores: -inf (nothing valid seen) becomes 0, which only shifts masked
    scores (-inf). The old max is not shifted this way: exp(-inf - max_t) = 0 is the right factor for an empty
    state, whereas exp(0 - max_t) overflows for a very negative max_t (and multiplies the empty sums into NaN)."""
    return torch.where(torch.isinf(m), 0.0, m)


def _prepare(alpha: Tensor, x: Tensor, valid: Tensor | None, state: SoftmaxPoolState | None,
             fn: str) -> tuple[Tensor, Tensor, SoftmaxPoolState]:
    """Checks shapes; masked scores -> -inf and masked x -> 0 (garbage there cannot reach a sum or a gradient); the
    compute dtype; the empty state when none is given."""
    if alpha.dim() < 2 or x.dim() != alpha.dim() or alpha.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"{fn}: alpha (..., L, m) and x (..., L, d) must share their leading dims, got "
                         f"{tuple(alpha.shape)} and {tuple(x.shape)}")
    dtype = compute_dtype(alpha, x)
    alpha, x = alpha.to(dtype), x.to(dtype)
    if valid is not None:
        keep = valid.expand(alpha.shape[:-1])[..., None]
        alpha, x = alpha.masked_fill(~keep, -math.inf), x.masked_fill(~keep, 0.0)
    m, d = alpha.shape[-1], x.shape[-1]
    if state is None:
        state = empty_pool_state(tuple(alpha.shape[:-2]), m, d, device=alpha.device, dtype=dtype)
    elif state.num.shape != (*alpha.shape[:-2], m, d):
        raise ValueError(f"{fn}: the state's num must have shape {(*alpha.shape[:-2], m, d)}, "
                         f"got {tuple(state.num.shape)}")
    return alpha, x, SoftmaxPoolState(*(t.to(dtype) for t in state))


@without_autocast  # an encoded memory is a state: its sums stay in the compute dtype (docs/design.md §5)
def softmax_pool(alpha: Tensor, x: Tensor, valid: Tensor | None = None) -> Tensor:
    """alpha: (..., L, m), x: (..., L, d) -> (..., m, d): every slot's softmax-over-valid-positions mean of x
    (0 when no position is valid), in the compute dtype."""
    dtype = compute_dtype(alpha, x)
    alpha, x = alpha.to(dtype), x.to(dtype)
    if valid is None:
        return torch.softmax(alpha.transpose(-1, -2), dim=-1) @ x
    keep = valid.expand(alpha.shape[:-1])
    weights = masked_softmax(alpha.transpose(-1, -2), keep[..., None, :], dim=-1)  # (..., m, L)
    return weights @ x.masked_fill(~keep[..., None], 0.0)


def prefix_softmax_pool_ref(alpha: Tensor, x: Tensor, valid: Tensor | None = None,
                            initial_state: SoftmaxPoolState | None = None) -> tuple[Tensor, SoftmaxPoolState]:
    """The oracle: for each t, an explicit softmax over the valid positions j <= t, the initial state counted as
    one more weighted entry (its numerator and denominator relative to its max). Returns (pooled: (..., L, m, d),
    final state with max = the largest valid score seen)."""
    alpha, x, s0 = _prepare(alpha, x, valid, initial_state, "prefix_softmax_pool_ref")
    pooled = []
    for t in range(alpha.shape[-2]):
        a = alpha[..., : t + 1, :]  # (..., t+1, m)
        top = torch.maximum(a.amax(dim=-2), s0.max).detach()
        w = torch.exp(a - _finite(top)[..., None, :])  # (..., t+1, m)
        carry = torch.exp(s0.max - _finite(top))
        num = carry[..., None] * s0.num + torch.einsum("...jm,...jd->...md", w, x[..., : t + 1, :])
        den = carry * s0.den + w.sum(dim=-2)
        pooled.append(pool_read(num, den))
    return torch.stack(pooled, dim=-3), SoftmaxPoolState(num, den, top)


def _chunk_weights(a: Tensor, prev_max: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk's scores a: (..., C, m) (-inf at masked positions) after a state with max prev_max: (..., m) ->
    (w: (..., C, C, m) = exp(a_j - max_t) for j <= t and 0 above the diagonal, carry: (..., C, m) =
    exp(prev_max - max_t), top: (..., C, m) = max_t)."""
    c = a.shape[-2]
    top = torch.maximum(prev_max[..., None, :], a.detach().cummax(dim=-2).values)
    # -inf above the diagonal before exp (not a 0 after it, whose backward would multiply by an overflowed
    # exp(a_j - max_t) for a future j).
    above = torch.ones(c, c, dtype=torch.bool, device=a.device).triu(1)[:, :, None]
    w = torch.exp((a[..., None, :, :] - _finite(top)[..., :, None, :]).masked_fill(above, -math.inf))
    return w, torch.exp(prev_max[..., None, :] - _finite(top)), top


def _advance(state: SoftmaxPoolState, w: Tensor, carry: Tensor, top: Tensor, den: Tensor,
             x: Tensor) -> SoftmaxPoolState:
    """The state after a chunk: its last position's sums (den: (..., C, m) already formed)."""
    num = carry[..., -1, :, None] * state.num + torch.einsum("...jm,...jd->...md", w[..., -1, :, :], x)
    return SoftmaxPoolState(num, den[..., -1, :], top[..., -1, :])


def prefix_slot_attention(q: Tensor, k: Tensor, v: Tensor, alpha_k: Tensor, alpha_v: Tensor,
                          valid: Tensor | None = None, k_state: SoftmaxPoolState | None = None,
                          v_state: SoftmaxPoolState | None = None, *, chunk_size: int = 64,
                          scale: float | None = None) -> tuple[Tensor, SoftmaxPoolState, SoftmaxPoolState]:
    """Causal attention over prefix-pooled slots, chunked (see the module docstring). q, k: (..., L, d),
    v: (..., L, dv), alpha_k, alpha_v: (..., L, m) -> (o: (..., L, dv), final key state, final value state)."""
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"prefix_slot_attention: chunk_size={chunk_size!r} must be a positive integer")
    alpha_k, k, k_state = _prepare(alpha_k, k, valid, k_state, "prefix_slot_attention")
    alpha_v, v, v_state = _prepare(alpha_v, v, valid, v_state, "prefix_slot_attention")
    q = q.to(k.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    outputs = [v.new_zeros(*v.shape[:-2], 0, v.shape[-1])]  # an empty chunk attends to nothing
    for start in range(0, q.shape[-2], chunk_size):
        qc, kc, vc = (t[..., start:start + chunk_size, :] for t in (q, k, v))
        wk, ck, top_k = _chunk_weights(alpha_k[..., start:start + chunk_size, :], k_state.max)
        wv, cv, top_v = _chunk_weights(alpha_v[..., start:start + chunk_size, :], v_state.max)
        den_k = ck * k_state.den[..., None, :] + wk.sum(dim=-2)  # (..., C, m)
        den_v = cv * v_state.den[..., None, :] + wv.sum(dim=-2)
        # q_t·k~_t[r] = (carry · q_t·num[r] + sum_j w_tjr q_t·k_j) / den_tr
        qk = qc @ kc.transpose(-1, -2)  # (..., C, C)
        dots = ck * (qc @ k_state.num.transpose(-1, -2)) + torch.einsum("...tj,...tjr->...tr", qk, wk)
        # o_t = sum_r p_tr v~_t[r] = sum_r a_tr (carry · num_v[r] + sum_j w_tjr v_j), a = p / den_v
        a = torch.softmax(scale * dots / _positive(den_k), dim=-1) / _positive(den_v)
        outputs.append((a * cv) @ v_state.num + torch.einsum("...tr,...tjr->...tj", a, wv) @ vc)
        k_state = _advance(k_state, wk, ck, top_k, den_k, kc)
        v_state = _advance(v_state, wv, cv, top_v, den_v, vc)
    return torch.cat(outputs, dim=-2), k_state, v_state


def prefix_slot_attention_ref(q: Tensor, k: Tensor, v: Tensor, alpha_k: Tensor, alpha_v: Tensor,
                              valid: Tensor | None = None, k_state: SoftmaxPoolState | None = None,
                              v_state: SoftmaxPoolState | None = None, *,
                              scale: float | None = None) -> tuple[Tensor, SoftmaxPoolState, SoftmaxPoolState]:
    """The oracle: every position's slots by ``prefix_softmax_pool_ref``, then a softmax over them per query."""
    slot_k, k_state = prefix_softmax_pool_ref(alpha_k, k, valid, k_state)  # (..., L, m, d)
    slot_v, v_state = prefix_softmax_pool_ref(alpha_v, v, valid, v_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs = torch.softmax(scale * torch.einsum("...ld,...lmd->...lm", q.to(slot_k.dtype), slot_k), dim=-1)
    return torch.einsum("...lm,...lmd->...ld", probs, slot_v), k_state, v_state


def slot_attention(q: Tensor, slot_k: Tensor, slot_v: Tensor, *, scale: float | None = None) -> Tensor:
    """softmax over the m slots of scale · q·k~, times v~: q: (..., L, d), slot_k: (..., m, d), slot_v: (..., m, dv)
    -> (..., L, dv) in the compute dtype. All-zero slots (an empty memory) give 0."""
    dtype = compute_dtype(q, slot_k, slot_v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(scale * q.to(dtype) @ slot_k.to(dtype).transpose(-1, -2), dim=-1) @ slot_v.to(dtype)
