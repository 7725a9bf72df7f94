"""FullCache: every key and value, in a buffer that grows in amortised chunks or is preallocated to max_len."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor

from longseq.state import State

# Growth when no max_len is known: double, but at least this many positions, so appends are amortised O(1).
_MIN_CAPACITY = 64


@dataclasses.dataclass
class FullCache(State):
    """k_buf: (B, H, capacity, dk), v_buf: (B, H, capacity, dv), valid_buf: bool (B, capacity).

    Positions ``[0, length)`` are filled. With ``max_len`` the buffers are allocated once at that size and an append
    beyond it raises; without, they double when full (amortised O(1) per token, never a per-token copy). Appends
    that autograd tracks concatenate instead of writing in place (see ``append``).
    """

    k_buf: Tensor
    v_buf: Tensor
    valid_buf: Tensor
    length: int = 0
    max_len: int | None = None
    all_valid: bool = True  # no masked position cached yet: attention may skip the key-validity mask

    @classmethod
    def empty(cls, batch_size: int, n_heads: int, dk: int, dv: int, *, max_len: int | None = None,
              device: torch.device | None = None, dtype: torch.dtype | None = None) -> FullCache:
        capacity = max_len if max_len is not None else _MIN_CAPACITY
        kw = dict(device=device, dtype=dtype)
        return cls(
            k_buf=torch.empty(batch_size, n_heads, capacity, dk, **kw),
            v_buf=torch.empty(batch_size, n_heads, capacity, dv, **kw),
            valid_buf=torch.zeros(batch_size, capacity, dtype=torch.bool, device=device),
            max_len=max_len,
        )

    @property
    def capacity(self) -> int:
        return self.k_buf.shape[2]

    def append(self, k: Tensor, v: Tensor, valid: Tensor | None = None) -> None:
        t = k.shape[2]
        end = self.length + t
        if self.max_len is not None and end > self.max_len:
            raise ValueError(f"FullCache: appending {t} positions to {self.length} exceeds max_len={self.max_len}")
        valid = torch.ones(k.shape[0], t, dtype=torch.bool, device=k.device) if valid is None else valid
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self.k_buf.requires_grad):
            # Under autograd an earlier chunk's attention saved views of the buffers for its backward: writing into
            # them would corrupt that graph (gradients through the state, for truncated BPTT). Concatenate instead;
            # the graph holds every chunk's keys anyway, so this costs no more memory than training does.
            self.k_buf = torch.cat([self.keys(), k], dim=2)
            self.v_buf = torch.cat([self.values(), v], dim=2)
            self.valid_buf = torch.cat([self.valid(), valid], dim=1)
        else:
            if end > self.capacity:
                grown = max(end, 2 * self.capacity)
                self._grow(grown if self.max_len is None else min(grown, self.max_len))
            self.k_buf[:, :, self.length:end] = k
            self.v_buf[:, :, self.length:end] = v
            self.valid_buf[:, self.length:end] = valid
        self.all_valid = self.all_valid and bool(valid.all())
        self.length = end

    def _grow(self, capacity: int) -> None:
        def grown(buf: Tensor, dim: int) -> Tensor:
            shape = list(buf.shape)
            shape[dim] = capacity
            new = buf.new_zeros(shape) if buf.dtype == torch.bool else buf.new_empty(shape)
            new.narrow(dim, 0, self.length).copy_(buf.narrow(dim, 0, self.length))
            return new

        self.k_buf, self.v_buf, self.valid_buf = grown(self.k_buf, 2), grown(self.v_buf, 2), grown(self.valid_buf, 1)

    def keys(self) -> Tensor:
        return self.k_buf[:, :, : self.length]

    def values(self) -> Tensor:
        return self.v_buf[:, :, : self.length]

    def valid(self) -> Tensor:
        return self.valid_buf[:, : self.length]

    def logical_tensors(self) -> Iterator[Tensor]:
        yield self.keys()
        yield self.values()
