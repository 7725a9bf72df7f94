"""WindowCache: the keys and values of each row's last ``window`` valid tokens, in a preallocated ring buffer.

Memory is O(window·d) whatever the length. An append writes only the new entries, with one scatter for the whole
chunk: amortised O(1) per token, never a copy of the cache. Rows of a padded batch advance by different numbers of
valid tokens (a masked token takes no slot), so each row keeps its own count ``seen``.

Ring layout: the n-th valid token of a row (n = 0, 1, ...) lives in slot ``n mod window``. Slot ``window`` is a
scratch slot that absorbs the writes a chunk makes but must not keep (its masked tokens, and its valid tokens that a
later token of the same chunk evicts), so that a chunk is one scatter whatever its mask; it is never read.

Two policies share the layout:
- sliding (default): the cache holds the last ``min(seen, window)`` valid tokens — sliding-window attention;
- tumbling (``tumbling=True``): it holds the tokens of the current block of ``window`` valid tokens, and empties when
  a block is complete and the next valid token arrives (lazily, so that the last query of a block, appended first,
  still sees its whole block) — block-local attention, MEGA-chunk's decoding cache.

``keys()``/``values()``/``valid()`` follow the ``KVCache`` protocol: slots ``[0, length)`` in ring order (not
chronological: softmax attention over a set of keys ignores their order, and rotary keys carry their positions),
with ``valid()`` saying which slots hold an entry of each row. ``length`` is the number of slots exposed: the largest
number of entries any row holds (rows that hold fewer have invalid slots). ``ordered()`` gives the same entries
oldest first, for attention that needs their order (a chunk of queries, each with its own window).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor

from longseq.state import State


@dataclasses.dataclass
class WindowCache(State):
    """k_buf: (B, H, window + 1, dk), v_buf: (B, H, window + 1, dv), seen: (B,) int64, valid tokens appended per
    row. Appends that autograd tracks scatter out of place instead of in place (see ``append``)."""

    k_buf: Tensor
    v_buf: Tensor
    seen: Tensor
    window: int
    tumbling: bool = False
    length: int = 0

    @classmethod
    def empty(cls, batch_size: int, n_heads: int, dk: int, dv: int, *, window: int, tumbling: bool = False,
              device: torch.device | None = None, dtype: torch.dtype | None = None) -> WindowCache:
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"WindowCache: window={window!r} must be a positive integer")
        # Zeros, not empty: slots a row has not filled yet are exposed (invalid) when another row has, and a masked
        # attention kernel still multiplies them by probability 0 — garbage NaNs there would poison its output.
        kw = dict(device=device, dtype=dtype)
        return cls(
            k_buf=torch.zeros(batch_size, n_heads, window + 1, dk, **kw),
            v_buf=torch.zeros(batch_size, n_heads, window + 1, dv, **kw),
            seen=torch.zeros(batch_size, dtype=torch.long, device=device),
            window=window,
            tumbling=tumbling,
        )

    def fill(self) -> Tensor:
        """(B,) entries each row holds: min(seen, window), or for a tumbling cache the valid tokens of the current
        block (1..window once a row has any)."""
        if self.tumbling:
            return self.seen - self.window * ((self.seen - 1).clamp(min=0) // self.window)
        return self.seen.clamp(max=self.window)

    def append(self, k: Tensor, v: Tensor, valid: Tensor | None = None) -> None:
        """k: (B, H, T, dk), v: (B, H, T, dv), valid: bool (B, T) or None (all valid); T may exceed the window."""
        b, _, t, _ = k.shape
        valid = torch.ones(b, t, dtype=torch.bool, device=k.device) if valid is None else valid
        rank = valid.long().cumsum(dim=1) - 1
        count = valid.sum(dim=1)
        # Only a chunk's last `window` valid tokens are kept: their slots are distinct, so the scatter is exact.
        keep = valid & (rank >= (count - self.window)[:, None])
        slot = torch.where(keep, (self.seen[:, None] + rank) % self.window, self.window)
        tracked = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self.k_buf.requires_grad)

        def write(buf: Tensor, new: Tensor) -> Tensor:
            index = slot[:, None, :, None].expand(-1, buf.shape[1], -1, buf.shape[3])
            # Under autograd an earlier chunk's attention saved views of the buffer for its backward: writing into
            # it would corrupt that graph (gradients through the state, for truncated BPTT). Scatter into a copy
            # instead; the graph holds every chunk's keys anyway.
            new = new.to(buf.dtype)  # under autocast the keys arrive in half precision; the ring stays float32
            return buf.scatter(2, index, new) if tracked else buf.scatter_(2, index, new)

        self.k_buf, self.v_buf = write(self.k_buf, k), write(self.v_buf, v)
        self.seen = self.seen + count
        self.length = int(self.fill().max()) if b else 0

    def keys(self) -> Tensor:
        return self.k_buf[:, :, : self.length]

    def values(self) -> Tensor:
        return self.v_buf[:, :, : self.length]

    def valid(self) -> Tensor:
        """bool (B, length): slot s of row b holds an entry. Entries fill slots from 0 (a tumbling block starts at
        slot 0 too), so they are the first fill() slots."""
        return torch.arange(self.length, device=self.seen.device)[None, :] < self.fill()[:, None]

    def ordered(self) -> tuple[Tensor, Tensor, Tensor]:
        """The entries oldest first, right-aligned: (k: (B, H, length, dk), v: (B, H, length, dv), valid: bool
        (B, length)); a row holding fewer than ``length`` entries has its invalid slots first. A gather: O(length·d)."""
        j = torch.arange(self.length, device=self.seen.device)[None, :]
        # Position j holds the row's valid token number seen - length + j (the newest at j = length - 1).
        slot = (self.seen[:, None] - self.length + j).remainder(self.window)
        valid = j >= (self.length - self.fill())[:, None]

        def gather(buf: Tensor) -> Tensor:
            return buf.gather(2, slot[:, None, :, None].expand(-1, buf.shape[1], -1, buf.shape[3]))

        return gather(self.k_buf), gather(self.v_buf), valid

    def logical_tensors(self) -> Iterator[Tensor]:
        yield self.keys()
        yield self.values()
