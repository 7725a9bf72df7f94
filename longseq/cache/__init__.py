"""KV caches for attention-type mixers."""

from longseq.cache.base import KVCache
from longseq.cache.full import FullCache

__all__ = ["FullCache", "KVCache"]
