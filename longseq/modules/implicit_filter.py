"""ImplicitFilter: a long convolution filter given by a small network of the position (Hyena's HyenaFilter).

Instead of storing one weight per lag, the filter is a function of the lag: positional features of each lag go
through an FFN with sine activations, and the result is multiplied by a decaying exponential window, so the
parameter count does not grow with the length. For lag l = 0..max_len-1 and output channel c:

    z[l]    = [t_l, cos(f·ω_l), -sin(f·ω_l)]        t_l = l / (max_len-1), ω_l = 2π l / max_len,
                                                    f = linspace(1e-4, bands-1, bands), bands = (emb_dim-1)/2
    h[l]    = Linear(F -> C, no bias)( Sin(Linear(F -> F)( ... Sin(Linear(emb_dim -> F)(z[l])) )) )
    h[c, l] = h[l, c] · (exp(-t_l |δ_c|) + shift)  δ = linspace(ln(1e-2)/1.5, ln(1e-2)/0.3, C)

with Sin(x) = sin(freq ⊙ x), one trainable frequency vector (initialised to ``w``) shared by every activation, as
the reference reuses one Sin module. z, t and δ are buffers (the reference's default trains z with lr 1e-5;
HyenaDNA freezes it, as here). The window decays from attenuation 4.6e-2 (slowest channel) to 2e-7 (fastest) at
the last lag. Everything is per lag, so the filter at a length is the first lags of the filter at ``max_len``.

As the reference trains them, the FFN's parameters carry their own learning rate (``lr``, when given) and no
weight decay (``longseq.modules.optim``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from longseq.modules.optim import set_optim

# The exponential window's range: attenuation TARGET after a fraction SLOW_PCT (slowest channel) to FAST_PCT
# (fastest) of max_len.
TARGET, FAST_PCT, SLOW_PCT = 1e-2, 0.3, 1.5


class Sin(nn.Module):
    """sin(freq ⊙ x): Hyena's periodic activation, freq: (dim,) trainable, initialised to w."""

    def __init__(self, dim: int, w: float) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.full((dim,), float(w)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


def positional_features(max_len: int, emb_dim: int) -> Tensor:
    """z: (max_len, emb_dim) = [t, cos(f·ω), -sin(f·ω)] per lag (the module docstring's formula)."""
    t = torch.linspace(0, 1, max_len)[:, None]
    omega = 2 * math.pi * torch.arange(max_len)[:, None] / max_len
    bands = (emb_dim - 1) // 2
    f = torch.linspace(1e-4, bands - 1, bands)
    return torch.cat((t, torch.cos(f * omega), -torch.sin(f * omega)), dim=-1)


class ImplicitFilter(nn.Module):
    def __init__(self, channels: int, max_len: int, *, emb_dim: int = 3, width: int = 64, num_inner_mlps: int = 2,
                 w: float = 1.0, shift: float = 0.0, lr: float | None = None) -> None:
        """channels: C, the filters produced; max_len: the lags the filter is defined on; emb_dim: the positional
        features (odd >= 3: time, then cosine and sine bands); width: F, the FFN's width (the reference's
        filter ``order``); num_inner_mlps: the F -> F layers; w: the sine activation's initial frequency;
        shift: added to the exponential window; lr: the FFN's own learning rate (None: the trainer's)."""
        super().__init__()
        for name, value in (("channels", channels), ("max_len", max_len), ("width", width)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ImplicitFilter: {name}={value!r} must be a positive integer")
        if not isinstance(emb_dim, int) or emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"ImplicitFilter: emb_dim={emb_dim!r} must be an odd integer >= 3 "
                             f"(time, then as many cosine as sine bands)")
        if not isinstance(num_inner_mlps, int) or num_inner_mlps < 0:
            raise ValueError(f"ImplicitFilter: num_inner_mlps={num_inner_mlps!r} must be an integer >= 0")
        self.channels, self.max_len, self.shift = channels, max_len, shift
        self.register_buffer("z", positional_features(max_len, emb_dim))
        self.register_buffer("t", torch.linspace(0, 1, max_len)[:, None])
        self.register_buffer("deltas", torch.linspace(math.log(TARGET) / SLOW_PCT, math.log(TARGET) / FAST_PCT,
                                                      channels))
        self.layers = nn.ModuleList([nn.Linear(emb_dim, width),
                                     *(nn.Linear(width, width) for _ in range(num_inner_mlps))])
        self.act = Sin(width, w)
        self.out = nn.Linear(width, channels, bias=False)
        for p in self.parameters():
            set_optim(p, lr=lr, weight_decay=0.0)

    def filter(self, length: int) -> Tensor:
        """The first ``length`` lags: (C, length)."""
        if not isinstance(length, int) or not 0 <= length <= self.max_len:
            raise ValueError(f"ImplicitFilter: length={length!r} is outside 0..max_len={self.max_len}: the filter "
                             f"is defined on lags 0..max_len-1 only")
        h = self.z[:length]
        for layer in self.layers:
            h = self.act(layer(h))
        window = torch.exp(-self.t[:length] * self.deltas.abs()) + self.shift  # (length, C)
        return (self.out(h) * window).T

    def extra_repr(self) -> str:
        return f"channels={self.channels}, max_len={self.max_len}, shift={self.shift}"
