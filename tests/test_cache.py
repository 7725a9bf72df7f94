"""FullCache and WindowCache: in-place appends, amortised growth, preallocation, logical size, State operations;
the window cache's ring against a plain list of the tokens each row has seen (sliding and tumbling, masks, chunks
longer than the window, appends under autograd)."""

from __future__ import annotations

import pytest
import torch

from longseq.cache import FullCache, KVCache, WindowCache
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


# -- WindowCache ----------------------------------------------------------------------------------------------------


def _expected_window(tokens: list[torch.Tensor], window: int, tumbling: bool) -> list[torch.Tensor]:
    """What the cache must hold, from a plain list of a row's valid tokens (oldest first)."""
    if not tokens:
        return []
    if tumbling:
        return tokens[window * ((len(tokens) - 1) // window):]
    return tokens[-window:]


def _check_window(cache: WindowCache, seen: list[list[torch.Tensor]], tumbling: bool) -> None:
    """ordered() = each row's expected entries oldest first, right-aligned; keys()/valid() = the same set."""
    k_ord, v_ord, valid_ord = cache.ordered()
    for b, tokens in enumerate(seen):
        want = _expected_window(tokens, cache.window, tumbling)
        n = len(want)
        assert cache.length >= n and valid_ord[b].tolist() == [False] * (cache.length - n) + [True] * n
        assert cache.valid()[b].sum().item() == n
        if n:
            want_k = torch.stack([t[0] for t in want], dim=1)  # (H, n, d)
            torch.testing.assert_close(k_ord[b][:, cache.length - n:], want_k)
            torch.testing.assert_close(v_ord[b][:, cache.length - n:], torch.stack([t[1] for t in want], dim=1))
            ring = cache.keys()[b][:, cache.valid()[b]]  # the same entries in ring order
            order = torch.argsort(ring[0, :, 0])
            torch.testing.assert_close(ring[:, order], want_k[:, torch.argsort(want_k[0, :, 0])])
    assert cache.length == max(len(_expected_window(t, cache.window, tumbling)) for t in seen)


@pytest.mark.parametrize("tumbling", [False, True])
def test_window_cache_holds_each_rows_window_through_masks_and_long_chunks(tumbling):
    """Chunks shorter and longer than the window, with masks that make the rows advance differently."""
    cache = WindowCache.empty(3, 2, 4, 4, window=5, tumbling=tumbling)
    assert isinstance(cache, KVCache)
    seen: list[list[torch.Tensor]] = [[], [], []]
    g = torch.Generator().manual_seed(0)
    ptr = cache.k_buf.data_ptr()
    for t in (1, 3, 12, 1, 1, 4, 7, 2, 1):
        k, v = torch.randn(3, 2, t, 4, generator=g), torch.randn(3, 2, t, 4, generator=g)
        valid = torch.rand(3, t, generator=g) > 0.3
        valid[2] = True  # one row never masked
        cache.append(k, v, valid=valid)
        for b in range(3):
            seen[b] += [(k[b, :, i], v[b, :, i]) for i in range(t) if valid[b, i]]
        _check_window(cache, seen, tumbling)
    assert cache.k_buf.data_ptr() == ptr and cache.k_buf.shape[2] == 6  # one buffer, window + the scratch slot
    assert cache.seen.tolist() == [len(s) for s in seen]


def test_window_cache_memory_stays_the_window_and_appends_are_in_place():
    cache = WindowCache.empty(2, 2, 4, 4, window=8)
    ptr = cache.k_buf.data_ptr()
    for _ in range(1000):
        cache.append(*_kv())
    assert cache.k_buf.data_ptr() == ptr and cache.k_buf.shape == (2, 2, 9, 4)
    assert cache.length == 8 and cache.num_floats() == 2 * 2 * 8 * 4  # K and V of the window; scratch not counted


def test_tumbling_cache_empties_lazily_when_a_block_is_complete():
    cache = WindowCache.empty(1, 2, 4, 4, window=4, tumbling=True)
    lengths = []
    for _ in range(9):
        cache.append(*_kv(b=1))
        lengths.append(cache.length)
    assert lengths == [1, 2, 3, 4, 1, 2, 3, 4, 1]  # a full block stays until the next token arrives
    assert cache.num_floats() == 2 * 2 * 1 * 4


def test_window_cache_select_to_detach():
    cache = WindowCache.empty(3, 2, 4, 4, window=4)
    k, v = _kv(b=3, t=6)
    cache.append(k, v, valid=torch.tensor([[True] * 6, [False] * 6, [True, False] * 3]))
    sel = cache.select([2, 0])
    assert sel.seen.tolist() == [3, 6] and cache.seen.tolist() == [6, 0, 3]
    torch.testing.assert_close(sel.ordered()[0][1], k[0, :, 2:])
    assert sel.ordered()[2].tolist() == [[False, True, True, True], [True, True, True, True]]
    assert all(t.shape[0] == 3 for t in cache.tensors())
    assert cache.to(dtype=torch.float64).keys().dtype == torch.float64
    assert cache.to(dtype=torch.float64).seen.dtype == torch.long


def test_window_cache_appends_under_autograd_keep_earlier_graphs_intact():
    """An earlier chunk's attention saved views of the ring; a later append that overwrites those slots must not
    change them, and gradients flow through the cache to the keys that are still in it."""
    cache = WindowCache.empty(2, 2, 4, 4, window=3)
    k1, v1 = (t.requires_grad_(True) for t in _kv(t=3))
    cache.append(k1, v1)
    first = (cache.keys() * 2).sum()
    k2, v2 = _kv(t=2)
    cache.append(k2, v2)  # evicts k1's first two tokens
    (grad,) = torch.autograd.grad(first + cache.keys().sum(), k1)
    want = torch.full_like(k1, 2.0)
    want[:, :, 2] = 3.0  # the last token of chunk 1 is still cached
    torch.testing.assert_close(grad, want)
    with torch.no_grad():  # back to in-place writes
        ptr = cache.k_buf.data_ptr()
        cache.append(*_kv(t=5))
        assert cache.k_buf.data_ptr() == ptr


def test_window_cache_refuses_an_empty_window():
    with pytest.raises(ValueError, match="window=0"):
        WindowCache.empty(1, 1, 2, 2, window=0)
