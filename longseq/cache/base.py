"""The KV-cache protocol shared by every attention-type mixer."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class KVCache(Protocol):
    """Keys and values of the tokens seen so far, per batch row and head.

    ``append`` writes new entries in place (a cache is never copied whole per token); ``keys``/``values`` return
    views of the cached entries and ``valid`` says which of them are real tokens (False = a masked position, which
    must receive no attention: it is the "no KV entry" of docs/design.md §4 for a batch whose rows advance together).
    """

    @property
    def length(self) -> int:
        """Number of cached positions (valid or not)."""
        ...

    def append(self, k: Tensor, v: Tensor, valid: Tensor | None = None) -> None:
        """k: (B, H, T, dk), v: (B, H, T, dv), valid: bool (B, T) or None (all valid)."""
        ...

    def keys(self) -> Tensor:
        """(B, H, length, dk)"""
        ...

    def values(self) -> Tensor:
        """(B, H, length, dv)"""
        ...

    def valid(self) -> Tensor:
        """bool (B, length)"""
        ...
