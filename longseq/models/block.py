"""Block: pre-norm residual mixer (+ optional cross mixer) + pre-norm residual GLU MLP."""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from longseq.mixers.base import Mixer
from longseq.state import State


def make_norm(kind: str, d_model: int, eps: float | None = None) -> nn.Module:
    """RMSNorm or LayerNorm over d_model; ``eps=None``: torch's default (the dtype's eps for RMSNorm, 1e-5 for
    LayerNorm)."""
    if kind == "rms":
        return nn.RMSNorm(d_model, eps=eps)
    return nn.LayerNorm(d_model) if eps is None else nn.LayerNorm(d_model, eps=eps)


class GLU(nn.Module):
    """SwiGLU MLP: x -> W_down(silu(W_gate x) * W_up x). x: (B, L, D)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


@dataclasses.dataclass
class BlockState(State):
    mixer: State
    cross: State | None = None


class Block(nn.Module):
    """x: (B, L, D) -> (B, L, D). The MLP is position-wise, so only the mixers carry state."""

    def __init__(self, mixer: Mixer, *, cross: Mixer | None = None, mlp_hidden: int = 0, norm: str = "rms",
                 norm_eps: float | None = None) -> None:
        super().__init__()
        d = mixer.d_model
        self.norm_mixer, self.mixer = make_norm(norm, d, norm_eps), mixer
        self.norm_cross, self.cross = (make_norm(norm, d, norm_eps), cross) if cross is not None else (None, None)
        self.norm_mlp, self.mlp = (make_norm(norm, d, norm_eps), GLU(d, mlp_hidden)) if mlp_hidden else (None, None)

    def _mlp(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.mlp is None:
            return x
        h = self.mlp(self.norm_mlp(x))
        return x + (h if mask is None else h * mask[..., None])

    def forward(self, x: Tensor, *, mask: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        x = x + self.mixer(self.norm_mixer(x), mask=mask)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), mask=mask, context=context, context_mask=context_mask)
        return self._mlp(x, mask)

    def init_state(self, batch_size: int, *, context: Tensor | None = None, context_mask: Tensor | None = None,
                   max_len: int | None = None) -> BlockState:
        cross = None
        if self.cross is not None:
            cross = self.cross.init_state(batch_size, context=context, context_mask=context_mask, max_len=max_len)
        return BlockState(mixer=self.mixer.init_state(batch_size, max_len=max_len), cross=cross)

    def forward_stream(self, x: Tensor, state: BlockState, *, mask: Tensor | None = None) -> tuple[Tensor, BlockState]:
        y, state.mixer = self.mixer.forward_stream(self.norm_mixer(x), state.mixer, mask=mask)
        x = x + y
        if self.cross is not None:
            y, state.cross = self.cross.forward_stream(self.norm_cross(x), state.cross, mask=mask)
            x = x + y
        return self._mlp(x, mask), state

    def step(self, x_t: Tensor, state: BlockState, *, mask_t: Tensor | None = None) -> tuple[Tensor, BlockState]:
        """x_t: (B, D), mask_t: bool (B,)."""
        y, state.mixer = self.mixer.step(self.norm_mixer(x_t), state.mixer, mask_t=mask_t)
        x_t = x_t + y
        if self.cross is not None:
            y, state.cross = self.cross.step(self.norm_cross(x_t), state.cross, mask_t=mask_t)
            x_t = x_t + y
        return self._mlp(x_t, mask_t), state
