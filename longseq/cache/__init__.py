"""KV caches for attention-type mixers."""

from longseq.cache.base import KVCache
from longseq.cache.full import FullCache
from longseq.cache.window import WindowCache

__all__ = ["FullCache", "KVCache", "WindowCache"]
