"""Backbone: blocks built from a layer pattern, so hybrids (Samba, SCOUT, SambaY) are configuration."""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from longseq.mixers.base import Pattern
from longseq.models.block import Block, BlockState, make_norm
from longseq.models.config import ModelConfig
from longseq.state import State


@dataclasses.dataclass
class BackboneState(State):
    blocks: list[BlockState]


class Backbone(nn.Module):
    """x: (B, L, D) -> (B, L, D): the blocks, then a final norm. ``pattern`` is the self pattern of every mixer;
    ``cross`` adds a cross mixer (pattern ``cross_pattern``) to each block, for decoders."""

    def __init__(self, config: ModelConfig, *, pattern: Pattern = Pattern.CAUSAL_SELF, cross: bool = False) -> None:
        super().__init__()
        cross_pattern = Pattern.CAUSAL_CROSS if pattern.is_causal else Pattern.NONCAUSAL_CROSS
        hidden = int(config.mlp_ratio * config.d_model)
        self.blocks = nn.ModuleList(
            Block(
                config.build_mixer(name, pattern),
                cross=config.build_mixer(config.cross_mixer, cross_pattern) if cross else None,
                mlp_hidden=hidden,
                norm=config.norm,
                norm_eps=config.norm_eps,
            )
            for name in config.layer_names
        )
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, mask=mask, context=context, context_mask=context_mask)
        return self.norm(x)

    def init_state(self, batch_size: int, *, context: Tensor | None = None, context_mask: Tensor | None = None,
                   max_len: int | None = None) -> BackboneState:
        return BackboneState([b.init_state(batch_size, context=context, context_mask=context_mask, max_len=max_len)
                              for b in self.blocks])

    def forward_stream(self, x: Tensor, state: BackboneState, *,
                       mask: Tensor | None = None) -> tuple[Tensor, BackboneState]:
        for i, block in enumerate(self.blocks):
            x, state.blocks[i] = block.forward_stream(x, state.blocks[i], mask=mask)
        return self.norm(x), state

    def step(self, x_t: Tensor, state: BackboneState, *,
             mask_t: Tensor | None = None) -> tuple[Tensor, BackboneState]:
        """x_t: (B, D) -> (B, D): one token through every block's ``step``."""
        for i, block in enumerate(self.blocks):
            x_t, state.blocks[i] = block.step(x_t, state.blocks[i], mask_t=mask_t)
        return self.norm(x_t), state

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        """Floats per sequence in all mixer states after ``seq_len`` tokens."""
        total = 0
        for b in self.blocks:
            total += b.mixer.state_size(seq_len)
            if b.cross is not None:
                total += b.cross.state_size(seq_len, context_len)
        return total
