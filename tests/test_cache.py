"""FullCache: in-place appends, amortised growth, preallocation, logical size, State operations."""

from __future__ import annotations

import pytest
import torch

from longseq.cache import FullCache, KVCache
from longseq.mixers import SequenceTooLong, build


def _kv(b: int = 2, t: int = 1):
    return torch.randn(b, 2, t, 4), torch.randn(b, 2, t, 4)


def test_appends_are_in_place_and_growth_is_amortised():
    cache = FullCache.empty(2, 2, 4, 4)
    assert isinstance(cache, KVCache)
    reallocations, ptr = 0, cache.k_buf.data_ptr()
    ks = []
    for _ in range(1000):
        k, v = _kv()
        ks.append(k)
        cache.append(k, v)
        if cache.k_buf.data_ptr() != ptr:
            reallocations, ptr = reallocations + 1, cache.k_buf.data_ptr()
    assert cache.length == 1000
    assert reallocations <= 5  # 64 -> 128 -> ... -> 1024: doubling, never per token
    torch.testing.assert_close(cache.keys(), torch.cat(ks, dim=2))


def test_preallocated_cache_never_reallocates_and_refuses_overflow():
    cache = FullCache.empty(2, 2, 4, 4, max_len=8)
    ptr = cache.k_buf.data_ptr()
    for _ in range(8):
        cache.append(*_kv())
    assert cache.k_buf.data_ptr() == ptr
    with pytest.raises(ValueError, match="max_len=8"):
        cache.append(*_kv())


def test_valid_mask_and_logical_size():
    cache = FullCache.empty(2, 2, 4, 4)
    cache.append(*_kv(t=3), valid=torch.tensor([[True, False, True], [True, True, True]]))
    assert not cache.all_valid
    assert cache.valid().tolist() == [[True, False, True], [True, True, True]]
    assert cache.num_floats() == 2 * 2 * 3 * 4  # K and V of 3 positions, per sequence; capacity not counted


def test_state_select_to_detach():
    cache = FullCache.empty(3, 2, 4, 4)
    k, v = _kv(b=3, t=5)
    cache.append(k, v)
    sel = cache.select([2, 0])
    torch.testing.assert_close(sel.keys(), k[[2, 0]])
    assert sel.length == 5 and cache.keys().shape[0] == 3
    assert cache.to(dtype=torch.float64).keys().dtype == torch.float64
    assert cache.to(dtype=torch.float64).valid().dtype == torch.bool


def test_attention_decode_writes_into_one_preallocated_buffer():
    m = build("attention", 16, n_heads=2).eval()
    state = m.init_state(1, max_len=50)
    ptr = state.cache.k_buf.data_ptr()
    with torch.no_grad():
        for _ in range(50):
            _, state = m.step(torch.randn(1, 16), state)
        assert state.cache.k_buf.data_ptr() == ptr
        with pytest.raises(SequenceTooLong, match="51"):
            m.step(torch.randn(1, 16), state)


def test_selected_state_decodes_like_the_original_rows():
    torch.manual_seed(0)
    m = build("attention", 16, n_heads=2).double().eval()
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    _, state = m.forward_stream(x[:, :5], m.init_state(3))
    y_all, _ = m.step(x[:, 5], state.select([0, 1, 2]))
    y_sel, _ = m.step(x[[2, 0], 5], state.select([2, 0]))
    torch.testing.assert_close(y_sel, y_all[[2, 0]])


def test_appends_under_autograd_keep_earlier_graphs_intact():
    """Chunk 1's attention saved views of the cache for its backward; chunk 2's append must not overwrite them."""
    cache = FullCache.empty(2, 2, 4, 4, max_len=8)
    k1, v1 = (t.requires_grad_(True) for t in _kv(t=3))
    cache.append(k1, v1)
    first = (cache.keys() * 2).sum()
    k2, v2 = _kv(t=2)
    cache.append(k2, v2)
    (grad,) = torch.autograd.grad(first + cache.keys().sum(), k1)
    torch.testing.assert_close(grad, torch.full_like(k1, 3.0))
    with torch.no_grad():  # back to in-place writes, within max_len
        cache.append(*_kv(t=3))
    assert cache.length == 8
    with pytest.raises(ValueError, match="exceeds max_len=8"):
        cache.append(*_kv(t=1))
