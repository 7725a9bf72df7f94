"""HF transformers' Mamba and Mamba-2 mixers, on their pure-PyTorch CPU paths, as longseq mixers.

``peer:hf-mamba`` runs ``transformers.models.mamba.modeling_mamba.MambaMixer`` and ``peer:hf-mamba2`` runs
``transformers.models.mamba2.modeling_mamba2.Mamba2Mixer``: the whole mixer block (input projection, causal depthwise
conv, selective scan, gate, output projection), built from a one-layer config. On a machine without the CUDA
packages (mamba_ssm with its kernels, causal_conv1d) transformers binds its own PyTorch fallbacks when the modeling
module is imported: Mamba's scan is then a Python loop over the sequence, Mamba-2's the chunked SSD in einsums.

Streaming drives the peer's own cache (a ``DynamicCache`` built from the config), exactly as ``generate`` does:
- Mamba-2 continues any chunk from the cached conv window and SSM state (its chunk scan takes an initial state).
- Mamba's full-sequence scan always starts from a zero state, so transformers can only prefill from empty; after
  the first chunk the wrapper feeds the following tokens one at a time through the cached single-token path.

transformers is imported on first use (``load_transformers``), so this module imports without it; the wrappers are
written against the Cache API of transformers >= 5.24 and refuse older versions with ``PeerUnavailable``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import re
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Annotated, Any, Self

import torch
from pydantic import Field
from torch import Tensor

from benchmarks.peers.common import PeerMixer, PeerUnavailable
from longseq.mixers import InvalidHyper, Pattern
from longseq.state import State

MIN_TRANSFORMERS = (5, 24)


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


@functools.cache
def load_transformers() -> SimpleNamespace:
    """The transformers classes the wrappers use. Raises ``PeerUnavailable`` (saying why) when transformers is
    missing or older than ``MIN_TRANSFORMERS``."""
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        raise PeerUnavailable("transformers is not installed (pip install -e '.[peers]')") from None
    if _major_minor(version) < MIN_TRANSFORMERS:
        want = ".".join(map(str, MIN_TRANSFORMERS))
        raise PeerUnavailable(
            f"transformers {version} is installed; the wrappers drive the Cache API of transformers >= {want} "
            f"(pip install -e '.[peers]')"
        )
    try:
        from transformers import DynamicCache, Mamba2Config, MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    except ImportError as err:
        raise PeerUnavailable(f"transformers {version} is installed but does not import: {err}") from err

    return SimpleNamespace(version=version, DynamicCache=DynamicCache, MambaConfig=MambaConfig,
                           Mamba2Config=Mamba2Config, MambaMixer=MambaMixer, Mamba2Mixer=Mamba2Mixer)


@dataclasses.dataclass
class HFCacheState(State):
    """cache: the peer's own ``DynamicCache`` (one linear-attention layer: conv window (B, C, d_conv) and SSM state);
    seen: tokens streamed so far. The cache is created empty and filled by the first chunk."""

    cache: Any
    seen: int = 0

    def logical_tensors(self) -> Iterator[Tensor]:
        for tensor in (self.cache.get_conv_state(0), self.cache.get_recurrent_state(0)):
            if tensor is not None:
                yield tensor

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Self:
        raise ValueError(
            "a peer's HF cache state cannot be moved, reordered or detached through longseq (to/select/detach): "
            "it is transformers' own DynamicCache, driven only for timing"
        )


class _HFMixer(PeerMixer):
    """Shared driving of a transformers mixer module ``self.hf`` built from the one-layer config ``self.config``."""

    # Whether the peer's full-sequence path continues from a cached state (Mamba-2) or only prefills (Mamba).
    continues_chunks = False
    hf: torch.nn.Module

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        self._refuse_mask(mask)
        return self.hf(x)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        return HFCacheState(cache=load_transformers().DynamicCache(config=self.config))

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        self._refuse_mask(mask)
        assert isinstance(state, HFCacheState), f"{self.name}: expected HFCacheState, got {type(state).__name__}"
        if self.continues_chunks or state.seen == 0 or x.shape[1] == 1:
            y = self.hf(x, cache=state.cache)
        else:
            y = torch.cat([self.hf(x[:, t:t + 1], cache=state.cache) for t in range(x.shape[1])], dim=1)
        state.seen += x.shape[1]
        return y, state


class HFMamba(_HFMixer):
    """transformers' ``MambaMixer`` (Mamba-1 block), PyTorch fallback: x: (B, L, D) -> (B, L, D)."""

    name = "peer:hf-mamba"
    peer = "transformers' MambaMixer (PyTorch fallback)"
    complexity = "O(L·E·N), E = expand·d; the scan is a Python loop over L"
    state_formula = "E·(d_conv + N) (conv window and SSM state), E = expand·d"
    test_hypers = ({"d_state": 4, "d_conv": 4, "expand": 2},)

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: Annotated[int, Field(gt=0)] | None = None,
        d_state: Annotated[int, Field(gt=0)] = 16,
        d_conv: Annotated[int, Field(gt=0)] = 4,
        expand: Annotated[int, Field(gt=0)] = 2,
    ) -> None:
        """d_state: N; d_conv: the depthwise conv width; expand: E / d. dt rank is transformers' ceil(d / 16)."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        hf = load_transformers()
        self.config = hf.MambaConfig(hidden_size=d_model, state_size=d_state, conv_kernel=d_conv, expand=expand,
                                     num_hidden_layers=1, use_mambapy=False)
        self.hf = hf.MambaMixer(self.config, layer_idx=0)
        self.d_inner, self.d_state, self.d_conv = expand * d_model, d_state, d_conv

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        # transformers allocates the cache on the first chunk: nothing is held before it.
        return self.d_inner * (self.d_conv + self.d_state) if seq_len > 0 else 0


class HFMamba2(_HFMixer):
    """transformers' ``Mamba2Mixer`` (Mamba-2 block with gated RMSNorm), PyTorch fallback: x: (B, L, D) -> (B, L, D)."""

    name = "peer:hf-mamba2"
    peer = "transformers' Mamba2Mixer (PyTorch fallback)"
    complexity = "O(L·Q·(N + P)·H) chunked SSD in einsums, Q = chunk_size"
    state_formula = "(E + 2·G·N)·d_conv + H·P·N (conv window and SSM state), E = expand·d = H·P"
    test_hypers = ({"d_state": 8, "head_dim": 8, "chunk_size": 8, "expand": 2},)
    continues_chunks = True

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: Annotated[int, Field(gt=0)] | None = None,
        d_state: Annotated[int, Field(gt=0)] = 64,
        head_dim: Annotated[int, Field(gt=0)] = 64,
        expand: Annotated[int, Field(gt=0)] = 2,
        n_groups: Annotated[int, Field(gt=0)] = 1,
        d_conv: Annotated[int, Field(gt=0)] = 4,
        chunk_size: Annotated[int, Field(gt=0)] = 256,
    ) -> None:
        """d_state: N; head_dim: P (H = expand·d / P heads); n_groups: G groups sharing B and C; chunk_size: Q."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        d_inner = expand * d_model
        if d_inner % head_dim:
            raise InvalidHyper(f"mixer '{self.name}': head_dim={head_dim} must divide expand·d_model={d_inner}")
        n_heads = d_inner // head_dim
        if n_heads % n_groups:
            raise InvalidHyper(f"mixer '{self.name}': n_groups={n_groups} must divide the {n_heads} heads")
        hf = load_transformers()
        self.config = hf.Mamba2Config(hidden_size=d_model, state_size=d_state, head_dim=head_dim, num_heads=n_heads,
                                      expand=expand, n_groups=n_groups, conv_kernel=d_conv, chunk_size=chunk_size,
                                      num_hidden_layers=1)
        self.hf = hf.Mamba2Mixer(self.config, layer_idx=0)
        self.conv_dim = d_inner + 2 * n_groups * d_state
        self.d_inner, self.d_state, self.d_conv = d_inner, d_state, d_conv

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.conv_dim * self.d_conv + self.d_inner * self.d_state if seq_len > 0 else 0
