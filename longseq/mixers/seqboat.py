"""SeqBoat: sparse modular activation of a MEGA-style gated attention (Ren et al., NeurIPS 2023, "Sparse Modular
Activation for Efficient Sequence Modeling").

A MEGA layer whose attention runs only on the tokens a router activates (``longseq.ops.sparse_activation``):

    m = SiLU(EMA(x) + ω x)                                # the ``ema`` mixer (MEGA's MultiHeadEMA), causal or not
    u, hx = split(W_hx m, [2, D])                         # 2 router logits, the residual branch
    act, gain = route(u, τ)                               # p = softmax(u/τ); act = argmax p == 1 (and valid);
                                                          # gain = p_max on activated tokens, else 0
    m_c = compress(m, act)                                # the activated tokens of each row, in order (Lc slots)
    Z, r, v = split(SiLU(W_mx m_c), [z, h, h]);  q, k = OffsetScale(Z)
    H_c = local attention of the slots, bias(original position of key - of query)
    y = extract(W_h(H_c ∘ r)) · gain                      # non-activated tokens get 0
    out = SiLU(hx + y + x)

- The router's decision is hard (no Gumbel noise, no straight-through): its parameters learn only through the gain,
  and the temperature τ = exp(θ) is learned, θ₀ = log(init_temp_scale·sqrt(D)).
- The window counts *activated* tokens: a causal slot sees itself and the previous ``window`` activated tokens (±
  ``window`` non-causal), however far back they are — SeqBoat's "infinite span". The relative bias (MEGA's simple
  bias, P = ``max_len``) sees their original distance; positions count valid tokens (docs/design.md §4), so the
  layer is bound to ``max_len`` (default 1024) as every kernel bound to a length is.
- Kernels: softmax (scale z^-1/2) or MEGA's relu² / laplace, whose length normaliser is the number of keys the slot
  sees (``ops/biased_attention``, one convention for the MEGA family), where the reference divides by the window w
  (2w non-causal) whatever the slot sees: the count keeps the first slots of a row, which see fewer keys, on the
  scale of the others.
- Initialisation as MEGA's: linear weights N(0, 0.02²), biases 0; so the router starts near p = (1/2, 1/2) and
  activates about half the tokens.
- Residual: our backbone is pre-norm, ``x + mixer(norm(x))``, and the mixer sees x̂ = norm(x). The paper's layer
  (pre-norm variant) outputs SiLU(hx + y + x) with x the un-normalised input; here x̂ takes its place inside the
  SiLU and the backbone adds the outer identity path. No dropout (the paper's is omitted: train() = eval()).
- Always compressed: the reference skips compression above a density threshold (0.9 / 1), an optimisation of the
  same function; when no row has an activated token the attention is skipped, y = 0 and out = SiLU(hx + x).
- Streaming (causal): the EMA's state, plus a ring buffer (``WindowCache``) of the last w activated tokens' k, v and,
  in a second ring kept in step, their original positions; a non-activated token only advances the EMA.
  ``state_size`` counts the ring's capacity min(L, w) slots: how many are filled depends on the router.
- ``activation_ratio``: the fraction of valid tokens the last forward or chunk activated, for benchmarks.
Cross patterns are refused: the router and the window act on one sequence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.cache import WindowCache
from longseq.mixers._gated_attention import default_z_dim
from longseq.mixers.base import SELF_PATTERNS, Mixer, Pattern, PositiveFloat, PositiveInt
from longseq.mixers.ema import EMA
from longseq.mixers.registry import register
from longseq.modules.offset_scale import OffsetScale
from longseq.modules.relative_bias import RelativePositionBias
from longseq.ops.biased_attention import Kernel
from longseq.ops.rotary import token_positions
from longseq.ops.sparse_activation import compress, extract, local_biased_attention, route
from longseq.state import State


@dataclasses.dataclass
class SeqBoatState(State):
    """ema: the EMA's state; cache: k (B, 1, ., z) and v (B, 1, ., h) of the last ``window`` activated tokens;
    positions: their original positions, int64 keys of a second ring appended with the same validity as ``cache``;
    n_valid: (B,) valid tokens so far (the next valid token's position); length: positions streamed, valid or not."""

    ema: State
    cache: WindowCache
    positions: WindowCache
    n_valid: Tensor
    length: int = 0

    def logical_tensors(self) -> Iterator[Tensor]:
        yield from self.ema.logical_tensors()
        slots = min(self.length, self.cache.window)  # the ring's capacity so far (its fill depends on the router)
        yield self.cache.k_buf[:, :, :slots]
        yield self.cache.v_buf[:, :, :slots]


@register("seqboat")
class SeqBoat(Mixer):
    patterns = SELF_PATTERNS
    complexity = "O(L log L · d) EMA + O(r·L·w·z) attention over the r·L activated tokens"
    state_formula = "d·ndim + (z_dim + h_dim)·min(L, w) (EMA state; k, v of the last w activated tokens)"
    test_hypers = ({"z_dim": 8, "ndim": 4, "window": 3},
                   {"z_dim": 4, "h_dim": 8, "ndim": 2, "window": 6, "kernel": "relu2"})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: PositiveInt = 1024,
        z_dim: PositiveInt | None = None,
        h_dim: PositiveInt | None = None,
        ndim: PositiveInt = 16,
        window: PositiveInt = 128,
        init_temp_scale: PositiveFloat = 0.3,
        kernel: Kernel = "softmax",
    ) -> None:
        """max_len: the longest sequence, also the relative bias's P (offsets reach across the whole sequence).
        z_dim: the shared query/key dim (default MEGA's, d_model/2 capped at 64). h_dim: the value dim (default
        2·d_model). ndim: EMA dims per channel. window: w, the activated tokens a slot sees before it (and after it,
        non-causal), itself besides. init_temp_scale: τ₀ / sqrt(d_model). kernel: MEGA's attention function."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.z_dim = default_z_dim(d_model) if z_dim is None else z_dim
        self.h_dim = 2 * d_model if h_dim is None else h_dim
        self.window, self.kernel = window, kernel
        self.ema = EMA(d_model, pattern=pattern, max_len=max_len, ndim=ndim)
        self.hx_proj = nn.Linear(d_model, 2 + d_model)  # W_hx: router logits and the residual branch
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temp_scale * math.sqrt(d_model))))
        self.mx_proj = nn.Linear(d_model, self.z_dim + 2 * self.h_dim)  # W_mx: Z, r, v of the activated tokens
        self.qk = OffsetScale(self.z_dim, heads=2)
        self.rel_bias = RelativePositionBias(max_len)
        self.h_proj = nn.Linear(self.h_dim, d_model)  # W_h
        for linear in (self.hx_proj, self.mx_proj, self.h_proj):  # MEGA's initialisation, as the reference's
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        self.last_activation: Tensor | None = None

    @property
    def activation_ratio(self) -> float | None:
        """Activated / valid tokens in the last forward or stream chunk (None before any)."""
        return None if self.last_activation is None else float(self.last_activation)

    # -- the layer's parts --------------------------------------------------------------------------------------

    def _route(self, m: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """m: (B, T, D) -> (hx: (B, T, D), act: bool (B, T), gain: (B, T))."""
        u, hx = self.hx_proj(m).split([2, self.d_model], dim=-1)
        act, gain = route(u, self.log_temperature.exp(), valid)
        self.last_activation = (act.sum() / valid.sum().clamp(min=1)).detach()
        return hx, act, gain

    def _project(self, m_c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """m_c: (B, Lc, D) -> q, k: (B, Lc, z), v, r: (B, Lc, h)."""
        z, r, v = F.silu(self.mx_proj(m_c)).split([self.z_dim, self.h_dim, self.h_dim], dim=-1)
        q, k = self.qk(z)
        return q, k, v, r

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, valid: Tensor) -> Tensor:
        right = 0 if self.pattern.is_causal else self.window
        return local_biased_attention(q, k, v, positions, valid, left=self.window, right=right, kernel=self.kernel,
                                      bias=self.rel_bias)

    def _output(self, hx: Tensor, h_c: Tensor | None, r: Tensor | None, act: Tensor, gain: Tensor, x: Tensor,
                mask: Tensor | None) -> Tensor:
        """SiLU(hx + extract(W_h(H_c ∘ r))·gain + x), 0 at masked positions; h_c None: no token was activated."""
        y = hx + x if h_c is None else hx + x + extract(self.h_proj(h_c * r), act) * gain[..., None]
        out = F.silu(y)
        return out if mask is None else out.masked_fill(~mask[..., None], 0.0)

    # -- modes ------------------------------------------------------------------------------------------------------

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        b, length, _ = x.shape
        m = self.ema(x, mask=mask)
        valid = torch.ones(b, length, dtype=torch.bool, device=x.device) if mask is None else mask
        hx, act, gain = self._route(m, valid)
        (m_c, valid_c), (pos_c, _) = compress(m, act), compress(token_positions(mask, b, length, x.device), act)
        if m_c.shape[1] == 0:
            return self._output(hx, None, None, act, gain, x, mask)
        q, k, v, r = self._project(m_c)
        return self._output(hx, self._attend(q, k, v, pos_c, valid_c), r, act, gain, x, mask)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        device, dtype = self._device(), self._dtype()
        cache = WindowCache.empty(batch_size, 1, self.z_dim, self.h_dim, window=self.window, device=device,
                                  dtype=dtype)
        positions = WindowCache.empty(batch_size, 1, 1, 0, window=self.window, device=device, dtype=torch.long)
        return SeqBoatState(ema=self.ema.init_state(batch_size), cache=cache, positions=positions,
                            n_valid=torch.zeros(batch_size, dtype=torch.long, device=device))

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, SeqBoatState, x.shape[1])
        m, state.ema = self.ema.forward_stream(x, state.ema, mask=mask)
        return self._advance(x, m, state, mask)

    def _step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None) -> tuple[Tensor, State]:
        state = self._check_stream(state, SeqBoatState, 1)
        m, state.ema = self.ema.step(x_t, state.ema, mask_t=mask_t)  # the EMA's own fast step
        y, state = self._advance(x_t[:, None], m[:, None], state, None if mask_t is None else mask_t[:, None])
        return y[:, 0], state

    def _advance(self, x: Tensor, m: Tensor, state: SeqBoatState, mask: Tensor | None) -> tuple[Tensor, State]:
        """The chunk x: (B, T, D) after the EMA (m: its output): route, attend with the ring, update the ring."""
        b, t, _ = x.shape
        valid = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask
        hx, act, gain = self._route(m, valid)
        positions = token_positions(mask, b, t, x.device, start=state.n_valid)
        state.n_valid = state.n_valid + valid.sum(dim=1)
        state.length += t
        (m_c, valid_c), (pos_c, _) = compress(m, act), compress(positions, act)
        if m_c.shape[1] == 0:  # no activated token: only the EMA moved
            return self._output(hx, None, None, act, gain, x, mask), state
        q, k, v, r = self._project(m_c)
        # The slots of [the ring's entries, oldest first; the chunk's activated tokens]: the ring's empty slots come
        # first and the chunk's after its tokens, so each row's valid slots are contiguous and the band counts them.
        past_k, past_v, past_valid = state.cache.ordered()
        past_pos = state.positions.ordered()[0][:, 0, :, 0]
        n = past_k.shape[2]
        h_c = self._attend(torch.cat([q.new_zeros(b, n, self.z_dim), q], dim=1), torch.cat([past_k[:, 0], k], dim=1),
                           torch.cat([past_v[:, 0], v], dim=1), torch.cat([past_pos, pos_c], dim=1),
                           torch.cat([past_valid, valid_c], dim=1))[:, n:]
        state.cache.append(k[:, None], v[:, None], valid=valid_c)
        state.positions.append(pos_c[:, None, :, None], pos_c.new_zeros(b, 1, pos_c.shape[1], 0), valid=valid_c)
        return self._output(hx, h_c, r, act, gain, x, mask), state

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model * self.ema.ndim + (self.z_dim + self.h_dim) * min(seq_len, self.window)
