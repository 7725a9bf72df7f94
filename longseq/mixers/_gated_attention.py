"""The MEGA block (Ma et al., ICLR 2023) as a base: gated single-head attention behind a context module.

With x the (normed) input, D = d_model, z = ``z_dim``, h = ``h_dim``:

    m = context(x)                                   hook 1: MEGA's EMA (already SiLU'd), TCNCA's TCN then SiLU
    v = silu(W_v x)                                  (L, h)
    u, zr, hx = split(W_mx m, [D, z + h, D]);  u = sigmoid(u)
    Z, r = split(silu(zr), [z, h]);  q, k = OffsetScale(Z)     (shared Z, a scale and an offset each)
    o = attention(q, k, v)                           hook 2: MEGA's attention (``MegaAttention``), LongVQ's, ...
    H = silu(hx + W_h(o ⊙ r))
    y = u ⊙ (H - x)

**Residual.** MEGA's layer ends with its own gated residual out = x + u ⊙ (H - x), x the *raw* input, and its
pre-norm variant feeds the normed x̂ to everything else. Our backbone is pre-norm residual (``x + mixer(x̂)``), so
the mixer never sees the raw x; it returns u ⊙ (H - x̂), making the layer x + u ⊙ (H - x̂) = (x - u ⊙ x̂) + u ⊙ H:
MEGA's interpolation between "keep" and "update", with the normed input standing in for the raw one in the part
that is forgotten. (Returning u ⊙ H alone would lose the forgetting; MEGA's exact form needs the raw x.)

**Hooks.** A subclass calls ``build_block(context, attention, ...)``:
- ``context``: an nn.Module with the streaming interface of ``longseq/modules`` (``forward(x, mask=)``,
  ``init_state(batch)``, ``forward_stream(x, state, mask=)``, ``step(x_t, state, mask_t=)``), a masked token a
  no-op on its state and its output 0 there; ``activate_context`` applies SiLU to its output (MEGA's EMA mixer
  ends with its own SiLU, a TCN does not). MEGA composes the ``ema`` mixer, TCNCA a ``DilatedTCN``.
- ``attention``: an nn.Module with ``forward(q, k, v, mask) -> o``, ``init_state(batch, max_len, *, device,
  dtype) -> State``, ``forward_stream(q, k, v, state, mask) -> (o, state)`` (may update its state in place) and
  ``state_size(seq_len)``; q, k: (B, L, z), v: (B, L, h) -> o: (B, L, h), 0 at masked queries; positions are its
  business. ``MegaAttention`` is MEGA's (softmax, laplace or relu², relative bias or rotary, full or chunked);
  LongVQ swaps in vector-quantised attention here.
Everything else (projections, gates, state, modes, masks) is this class's. Patterns: the self ones; cross patterns
are refused (the block has no query/memory split).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.cache import FullCache, WindowCache
from longseq.mixers.base import SELF_PATTERNS, InvalidHyper, Mixer
from longseq.modules.offset_scale import OffsetScale
from longseq.modules.relative_bias import RelativePositionBias
from longseq.ops.biased_attention import Kernel, biased_attention, block_biased_attention
from longseq.ops.rotary import rotate_queries_keys, token_positions
from longseq.state import State

Positions = Literal["bias", "rotary"]


@dataclasses.dataclass
class GatedAttentionState(State):
    """context: the context module's state; attention: the attention part's; length: tokens so far."""

    context: State
    attention: State
    length: int = 0


@dataclasses.dataclass
class MegaAttentionState(State):
    """cache: keys (rotated when rotary) and values — every token's (``FullCache``), or the current chunk's (a
    tumbling ``WindowCache``); seen: (B,) valid tokens so far, the next token's position."""

    cache: FullCache | WindowCache
    seen: Tensor


def _ranks(valid: Tensor) -> Tensor:
    """bool (B, L) -> (B, L) int64: each position's index among its row's valid positions (its relative position)."""
    return valid.long().cumsum(dim=1) - 1


class MegaAttention(nn.Module):
    """MEGA's single-head attention: ``kernel`` over (q, k) with a relative position bias (``positions="bias"``) or
    rotary q, k (``"rotary"``); ``chunk`` None = over the whole sequence, else MEGA-chunk (attention only inside
    chunks of ``chunk`` valid tokens, positions relative inside the chunk). Positions count valid tokens, so each
    row of a padded batch computes what its valid tokens alone give."""

    def __init__(self, z_dim: int, h_dim: int, *, chunk: int | None, causal: bool, kernel: Kernel,
                 positions: Positions, max_positions: int | None, rope_base: float = 10000.0) -> None:
        super().__init__()
        self.z_dim, self.h_dim = z_dim, h_dim
        self.chunk, self.causal, self.kernel, self.rope_base = chunk, causal, kernel, rope_base
        self.bias = RelativePositionBias(max_positions) if positions == "bias" else None

    def _rotate(self, q: Tensor, k: Tensor, mask: Tensor | None, start: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.bias is not None:
            return q, k
        positions = token_positions(mask, q.shape[0], q.shape[2], q.device, start=start)
        return rotate_queries_keys(q, k, positions, base=self.rope_base)

    def _chunk_bias(self) -> Tensor | None:
        """(chunk, chunk): the bias between the i-th and the j-th token of a chunk."""
        if self.bias is None:
            return None
        i = torch.arange(self.chunk, device=self.bias.weight.device)
        return self.bias(i[None, :] - i[:, None])

    def _ranked(self, q: Tensor, k: Tensor, v: Tensor, q_rank: Tensor, k_rank: Tensor, q_valid: Tensor,
                k_valid: Tensor) -> Tensor:
        """Queries against keys given their relative positions: q: (B, 1, T, z) at ranks (B, T), keys (B, 1, S, z)
        at ranks (B, S); a query sees the valid keys (at or before it when causal)."""
        visible = q_valid[:, :, None] & k_valid[:, None, :]
        if self.causal:
            visible = visible & (k_rank[:, None, :] <= q_rank[:, :, None])
        bias = None
        if self.bias is not None:  # offsets of keys a query does not see may exceed the table: they are not used
            bias = self.bias((k_rank[:, None, :] - q_rank[:, :, None]).masked_fill(~visible, 0))[:, None]
        return biased_attention(q, k, v, visible[:, None], bias=bias, kernel=self.kernel)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """q, k: (B, L, z), v: (B, L, h), mask: bool (B, L) or None -> (B, L, h), 0 at masked positions."""
        q, k, v = q[:, None], k[:, None], v[:, None]  # one head
        q, k = self._rotate(q, k, mask)
        if self.chunk is not None:
            o = block_biased_attention(q, k, v, chunk=self.chunk, causal=self.causal, valid=mask,
                                       bias=self._chunk_bias(), kernel=self.kernel)
            return o[:, 0]
        # Without a mask every row has the same ranks: one (L, L) bias and visibility for the whole batch.
        valid = torch.ones(1, q.shape[2], dtype=torch.bool, device=q.device) if mask is None else mask
        rank = _ranks(valid)
        return self._ranked(q, k, v, rank, rank, valid, valid)[:, 0]

    def init_state(self, batch: int, max_len: int | None, *, device: torch.device,
                   dtype: torch.dtype) -> MegaAttentionState:
        z_dim, h_dim = self.z_dim, self.h_dim
        if self.chunk is None:
            cache = FullCache.empty(batch, 1, z_dim, h_dim, max_len=max_len, device=device, dtype=dtype)
        else:
            # A stream never holds more than max_len tokens: a shorter ring loses nothing (a chunk never completes).
            window = self.chunk if max_len is None else min(self.chunk, max_len)
            cache = WindowCache.empty(batch, 1, z_dim, h_dim, window=window, tumbling=True, device=device,
                                      dtype=dtype)
        return MegaAttentionState(cache=cache, seen=torch.zeros(batch, dtype=torch.long, device=device))

    def forward_stream(self, q: Tensor, k: Tensor, v: Tensor, state: MegaAttentionState,
                       mask: Tensor | None) -> tuple[Tensor, MegaAttentionState]:
        """The next chunk: q, k: (B, T, z), v: (B, T, h) -> (o: (B, T, h), state); the cache is updated in place."""
        b, t = q.shape[:2]
        cache = state.cache
        q, k, v = q[:, None], k[:, None], v[:, None]
        q, k = self._rotate(q, k, mask, start=state.seen)
        q_valid = torch.ones(b, t, dtype=torch.bool, device=q.device) if mask is None else mask
        if self.chunk is not None and t > 1:
            # The chunked attention of [the current chunk's cached entries, oldest first; the new tokens]: the cache
            # holds exactly the valid tokens of the current chunk, so valid-token ranks restart at its first one;
            # queries at the cached slots are zeros and their outputs dropped.
            past_k, past_v, past_valid = cache.ordered()
            n = past_k.shape[2]
            o = block_biased_attention(torch.cat([torch.zeros_like(past_k), q], dim=2), torch.cat([past_k, k], dim=2),
                                       torch.cat([past_v, v], dim=2), chunk=self.chunk, causal=True,
                                       valid=torch.cat([past_valid, q_valid], dim=1), bias=self._chunk_bias(),
                                       kernel=self.kernel)[:, :, n:]
            cache.append(k, v, valid=mask)
        else:
            cache.append(k, v, valid=mask)
            k_valid = cache.valid()
            if self.chunk is None:  # every token so far, in order: ranks over the whole row
                k_rank = _ranks(k_valid)
                q_rank = k_rank[:, -t:]
            else:  # one token; the tumbling ring's slot s holds the chunk's s-th valid token, the newest is fill - 1
                k_rank = torch.arange(cache.length, device=q.device).expand(b, -1)
                q_rank = (cache.fill() - 1)[:, None]
            o = self._ranked(q, cache.keys(), cache.values(), q_rank, k_rank, q_valid, k_valid)
        seen = state.seen + q_valid.sum(dim=1)
        return o[:, 0], MegaAttentionState(cache=cache, seen=seen)

    def state_size(self, seq_len: int) -> int:
        """K and V of every token, or of the current chunk: ((L - 1) mod c) + 1 of them."""
        held = seq_len if self.chunk is None or seq_len == 0 else (seq_len - 1) % self.chunk + 1
        return (self.z_dim + self.h_dim) * held


# The bias table's reach when it binds the sequence length and neither max_len nor max_positions is given: the
# default of the other mixers bound to a length (docs/design.md §6).
DEFAULT_MAX_POSITIONS = 1024


def default_z_dim(d_model: int) -> int:
    """MEGA's shared q/k dimension: d_model/2 capped at 64, rounded down to even (rotary pairs channels), >= 2."""
    return 2 * max(1, min(32, d_model // 4))


class GatedAttentionMixer(Mixer):
    """Base of MEGA and TCNCA (and LongVQ): see the module docstring. A subclass calls ``super().__init__`` and
    then ``self.build_block(...)`` (or ``self.build_mega(...)`` for MEGA's attention)."""

    patterns = SELF_PATTERNS

    @classmethod
    def resolve_positions(cls, *, chunk_size: int | None, positions: Positions, max_len: int | None,
                          max_positions: int | None) -> tuple[int | None, int | None]:
        """-> (max_len, max_positions) for MEGA's attention, before ``Mixer.__init__``. Chunked, the bias table
        reaches across a chunk: max_positions defaults to chunk_size and must cover it. Unchunked, it reaches across
        the sequence and so binds its length: max_positions defaults to max_len (else 1024) and max_len to it.
        Rotary positions have no table and no bound."""
        if positions == "rotary":
            if max_positions is not None:
                raise InvalidHyper(f"mixer '{cls.name}': max_positions={max_positions} sizes the relative bias, "
                                   f"which positions='rotary' does not have; allowed: None, or positions='bias'")
            return max_len, None
        if chunk_size is not None:
            reach = chunk_size if max_positions is None else max_positions
            if reach < chunk_size:
                raise InvalidHyper(f"mixer '{cls.name}': max_positions={reach} must be >= chunk_size={chunk_size} "
                                   f"(offsets inside a chunk reach chunk_size - 1)")
            return max_len, reach
        reach = max_positions if max_positions is not None else max_len or DEFAULT_MAX_POSITIONS
        if max_len is not None and reach < max_len:
            raise InvalidHyper(f"mixer '{cls.name}': max_positions={reach} must be >= max_len={max_len} (unchunked "
                               f"attention has offsets up to max_len - 1); allowed: >= {max_len}, or a chunk_size")
        return (reach if max_len is None else max_len), reach

    def build_mega(self, context: nn.Module, *, activate_context: bool, z_dim: int | None, h_dim: int | None,
                   chunk_size: int | None, attention: Kernel, positions: Positions, max_positions: int | None) -> None:
        """``build_block`` with MEGA's attention; max_positions as ``resolve_positions`` returned it."""
        z_dim = default_z_dim(self.d_model) if z_dim is None else z_dim
        if positions == "rotary" and z_dim % 2:
            raise InvalidHyper(f"mixer '{self.name}': positions='rotary' needs an even z_dim, got z_dim={z_dim}")
        h_dim = 2 * self.d_model if h_dim is None else h_dim
        part = MegaAttention(z_dim, h_dim, chunk=chunk_size, causal=self.pattern.is_causal, kernel=attention,
                             positions=positions, max_positions=max_positions)
        self.build_block(context, part, z_dim=z_dim, h_dim=h_dim, activate_context=activate_context)

    def build_block(self, context: nn.Module, attention: nn.Module, *, z_dim: int, h_dim: int,
                    activate_context: bool) -> None:
        """The two hooks (module docstring), the projections W_v, W_mx, W_h (MEGA's init: N(0, 0.02²) weights, zero
        biases) and the offset-scale reading q, k off the shared Z."""
        d = self.d_model
        self.z_dim, self.h_dim = z_dim, h_dim
        self.context_module, self.attention = context, attention
        self.context_activation = nn.SiLU() if activate_context else nn.Identity()
        self.v_proj = nn.Linear(d, h_dim)
        self.mx_proj = nn.Linear(d, 2 * d + z_dim + h_dim)
        self.h_proj = nn.Linear(h_dim, d)
        for linear in (self.v_proj, self.mx_proj, self.h_proj):  # MEGA's initialisation
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        self.qk = OffsetScale(z_dim, 2)

    def _gates(self, x: Tensor, m: Tensor) -> tuple[Tensor, ...]:
        """x, m: (B, T, D) -> q, k: (B, T, z), v: (B, T, h), u: (B, T, D), r: (B, T, h), hx: (B, T, D)."""
        v = F.silu(self.v_proj(x))
        u, zr, hx = self.mx_proj(self.context_activation(m)).split([self.d_model, self.z_dim + self.h_dim,
                                                                      self.d_model], dim=-1)
        z, r = F.silu(zr).split([self.z_dim, self.h_dim], dim=-1)
        q, k = self.qk(z)
        return q, k, v, torch.sigmoid(u), r, hx

    def _output(self, x: Tensor, o: Tensor, u: Tensor, r: Tensor, hx: Tensor, mask: Tensor | None) -> Tensor:
        """MEGA's output gate, mapped onto the pre-norm residual (module docstring): u ⊙ (H - x)."""
        y = u * (F.silu(hx + self.h_proj(o * r)) - x)
        return y if mask is None else y.masked_fill(~mask[..., None], 0.0)

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        q, k, v, u, r, hx = self._gates(x, self.context_module(x, mask=mask))
        return self._output(x, self.attention(q, k, v, mask), u, r, hx, mask)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        attention = self.attention.init_state(batch_size, max_len, device=self._device(), dtype=self._dtype())
        return GatedAttentionState(context=self.context_module.init_state(batch_size), attention=attention)

    def _advance(self, x: Tensor, m: Tensor, state: GatedAttentionState, context_state: State,
                 mask: Tensor | None) -> tuple[Tensor, State]:
        q, k, v, u, r, hx = self._gates(x, m)
        o, attention = self.attention.forward_stream(q, k, v, state.attention, mask)
        new = GatedAttentionState(context=context_state, attention=attention, length=state.length + x.shape[1])
        return self._output(x, o, u, r, hx, mask), new

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, GatedAttentionState, x.shape[1])
        m, context_state = self.context_module.forward_stream(x, state.context, mask=mask)
        return self._advance(x, m, state, context_state, mask)

    def _step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, GatedAttentionState, 1)
        m, context_state = self.context_module.step(x_t, state.context, mask_t=mask_t)  # the context's own fast step
        mask = None if mask_t is None else mask_t[:, None]
        y, new = self._advance(x_t[:, None], m[:, None], state, context_state, mask)
        return y[:, 0], new

