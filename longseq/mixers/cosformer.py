"""cosFormer (Qin et al. 2022): linear attention with ReLU features and a cos re-weighting that favours nearby
tokens, per head:

    A_ij = relu(q_i) . relu(k_j) cos(pi (i - j) / 2M),   o_i = sum_j A_ij v_j / max(sum_j A_ij, eps), eps = 1e-6

decomposed as cos(a - b) = cos a cos b + sin a sin b into features [relu(x) sin(pi i / 2M), relu(x) cos(pi i / 2M)]
(``ops.feature_maps.cos_reweighted``), so it is normalised linear attention (``_linear``) over 2 d_h features.
Positions i = 1, 2, ... count the valid tokens of each sequence (queries and memory separately), so padding is
inert; the weights are non-negative for positions in 1..M.

M, the span of the re-weighting:
- ``max_positions=None`` (the paper's, CAB's): M = max(Lq, Lk) per call, over valid tokens, per row. Then M grows
  with the sequence: the weight between two early tokens changes when later tokens arrive, so no output is causal
  (CAB's prefix test fails), and the causal patterns are refused — non-causal self and cross only.
- ``max_positions=M`` fixed: the weight depends on i - j only, the features of a token on its own position only,
  so the causal prefix form (chunked op, streaming, step) is exact and causal self is supported. Causal cross is
  too: the memory's re-weighted (S, z) is fixed once its positions are counted, and each query i reads it with its
  own position, independent of later queries. Sequences (and memories) longer than M tokens, padding included, are
  refused with ``TooManyPositions`` (a ``SequenceTooLong``), since positions past M would get negative weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from longseq.mixers._linear import LinearAttentionMixer, LinearAttentionState
from longseq.mixers.base import ALL_PATTERNS, Pattern, PatternNotSupported, PositiveInt, SequenceTooLong
from longseq.mixers.registry import register
from longseq.ops.feature_maps import cos_reweighted, relu_feature
from longseq.ops.rotary import token_positions


class TooManyPositions(SequenceTooLong):
    def __init__(self, what: str, length: int, max_positions: int) -> None:
        ValueError.__init__(self, f"mixer 'cosformer' got {what} of {length} tokens but was built with "
                                  f"max_positions={max_positions}: its cos re-weighting covers positions 1..M only")


@dataclasses.dataclass
class CosformerState(LinearAttentionState):
    """seen: (B,) valid queries so far (the next one's position is seen + 1)."""

    seen: Tensor = dataclasses.field(kw_only=True)


def _positions(valid: Tensor | None, batch: int, length: int, device: torch.device,
               start: Tensor | None = None) -> Tensor:
    """(B, L) 1-based positions over the valid tokens (after ``start`` earlier ones)."""
    return token_positions(valid, batch, length, device, start=start) + 1


def _count(valid: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """(B,) number of valid tokens."""
    return torch.full((batch,), length, device=device) if valid is None else valid.sum(dim=1)


@register("cosformer")
class CosFormer(LinearAttentionMixer):
    denominator = "clamp"
    complexity = "O(L d^2 / H) (2 d_h features per head; causal: + O(L C d) within chunks of C)"
    state_formula = "2·d·(d/H + 1) (S and z per head over 2 d_h features, whatever L); cross: the same, of the memory"
    test_hypers = ({"n_heads": 2, "chunk_size": 8}, {"n_heads": 2, "chunk_size": 8, "max_positions": 512})

    @classmethod
    def supported_patterns(cls, **hypers: Any) -> frozenset[Pattern]:
        if hypers.get("max_positions") is not None:
            return ALL_PATTERNS
        return frozenset({Pattern.NONCAUSAL_SELF, Pattern.NONCAUSAL_CROSS})

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.NONCAUSAL_SELF,
        max_len: PositiveInt | None = None,
        n_heads: PositiveInt | None = None,
        max_positions: PositiveInt | None = None,
        chunk_size: PositiveInt = 64,
        bias: bool = False,
    ) -> None:
        """n_heads: default d_model // 64 (head size 64), at least 1. max_positions: a fixed span M of the
        re-weighting (needed for the causal patterns); None: M = max(Lq, Lk) per call. chunk_size: tokens per block
        of the causal chunked form."""
        try:
            super().__init__(d_model, pattern=pattern, max_len=max_len, hypers={"max_positions": max_positions})
        except PatternNotSupported as e:
            e.args = (f"{e} (the causal patterns need a fixed span: set max_positions)",)
            raise
        self.build_heads(n_heads, bias=bias)
        self.n_features, self.chunk_size, self.max_positions = 2 * self.head_dim, chunk_size, max_positions

    def _check_positions(self, what: str, length: int) -> None:
        if self.max_positions is not None and length > self.max_positions:
            raise TooManyPositions(what, length, self.max_positions)

    def feature_map(self, t: Tensor, *, is_query: bool) -> Tensor:
        """The position-free part of cosFormer's map, the same for queries and keys: ReLU. The feature hooks below
        re-weight it by position."""
        return relu_feature(t)

    def _features(self, t: Tensor, positions: Tensor, span: Tensor | float) -> Tensor:
        return cos_reweighted(self.feature_map(t, is_query=True), positions, span)

    def feature_pair(self, q: Tensor, k: Tensor, *, q_valid: Tensor | None,
                     k_valid: Tensor | None) -> tuple[Tensor, Tensor]:
        (b, _, lq, _), lk, dev = q.shape, k.shape[2], q.device
        self._check_positions("a sequence", lq)
        self._check_positions("a memory", lk)
        span = self.max_positions
        if span is None:  # max(Lq, Lk) over valid tokens, per row; at least 1 for empty rows
            span = torch.maximum(_count(q_valid, b, lq, dev), _count(k_valid, b, lk, dev)).clamp(min=1)
        return (self._features(q, _positions(q_valid, b, lq, dev), span),
                self._features(k, _positions(k_valid, b, lk, dev), span))

    def chunk_features(self, q: Tensor, k: Tensor | None, state: LinearAttentionState, *,
                       valid: Tensor | None) -> tuple[Tensor, Tensor | None]:
        (b, _, n, _), dev = q.shape, q.device
        self._check_positions("a sequence", state.length + n)
        positions = _positions(valid, b, n, dev, start=state.seen)
        phi_q = self._features(q, positions, self.max_positions)
        return phi_q, None if k is None else self._features(k, positions, self.max_positions)

    def memory_features(self, k: Tensor, *, k_valid: Tensor | None) -> Tensor:
        (b, _, lk, _), dev = k.shape, k.device
        self._check_positions("a memory", lk)
        return self._features(k, _positions(k_valid, b, lk, dev), self.max_positions)

    def make_state(self, kv: Tensor, z: Tensor) -> CosformerState:
        return CosformerState(kv=kv, z=z, seen=torch.zeros(kv.shape[0], dtype=torch.long, device=kv.device))

    def advance(self, state: LinearAttentionState, n: int, valid: Tensor | None) -> None:
        super().advance(state, n, valid)
        state.seen = state.seen + _count(valid, state.seen.shape[0], n, state.seen.device)
