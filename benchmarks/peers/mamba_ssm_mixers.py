"""mamba_ssm's pure-PyTorch references (2.3.2.post1) as longseq mixers.

- ``peer:mamba-ssm-ref``: mamba_ssm's own Mamba block (``modules.mamba_simple.Mamba``) on its slow path, with the
  scan done by ``ops.selective_scan_interface.selective_scan_ref`` (a Python loop over the sequence). This is the
  whole block: in_proj, depthwise causal conv, x_proj/dt_proj, scan, SiLU gate, out_proj. Decoding uses the block's
  own ``step`` on its pure-PyTorch branch.
- ``peer:mamba-ssm-ssd``: the SSD reference ``modules.ssd_minimal.ssd_minimal_discrete`` (Listing 1 of the Mamba-2
  paper: chunked, quadratic within a chunk) timed as the bare scan. mamba_ssm ships no pure-PyTorch Mamba-2 block
  (its Mamba2 modules need triton for the scan and the gated norm), so the wrapper adds only what a scan needs to
  map (B, L, D) to (B, L, D): one linear projection to x, dt, B and C (one group), softplus(dt + dt_bias), the D
  skip, and one output projection. No conv, no gate, no norm: this row is the scan's cost, not a Mamba-2 block's.

The modules are imported with ``mamba_ssm_stubs.gpu_free_import`` (see there). ``mamba_simple`` looks up its
kernels as module globals and falls back to PyTorch where they are None; ``load_mamba_ssm`` sets them so for this
process: ``selective_scan_fn`` (the CUDA scan, same signature) becomes ``selective_scan_ref``, and
``causal_conv1d_fn``, ``causal_conv1d_update`` and ``selective_state_update`` become None, which is what they are
on any machine without the CUDA packages.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
from types import SimpleNamespace
from typing import Annotated

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from benchmarks.peers.common import PeerMixer, PeerUnavailable
from benchmarks.peers.mamba_ssm_stubs import gpu_free_import
from longseq.mixers import InvalidHyper, Pattern
from longseq.state import State

TESTED_MAMBA_SSM = "2.3.2.post1"


@functools.cache
def load_mamba_ssm() -> SimpleNamespace:
    """The mamba_ssm references the wrappers use. Raises ``PeerUnavailable`` when mamba_ssm is not installed."""
    try:
        version = importlib.metadata.version("mamba_ssm")
    except importlib.metadata.PackageNotFoundError:
        raise PeerUnavailable(
            f"mamba_ssm is not installed (MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE pip install "
            f"--no-build-isolation --no-deps mamba-ssm=={TESTED_MAMBA_SSM})"
        ) from None
    try:
        scan_interface, mamba_simple, ssd_minimal = gpu_free_import(
            "mamba_ssm.ops.selective_scan_interface", "mamba_ssm.modules.mamba_simple", "mamba_ssm.modules.ssd_minimal"
        )
    except ImportError as err:
        raise PeerUnavailable(f"mamba_ssm {version}: its references do not import here ({err})") from err
    mamba_simple.selective_scan_fn = scan_interface.selective_scan_ref
    mamba_simple.causal_conv1d_fn = None
    mamba_simple.causal_conv1d_update = None
    mamba_simple.selective_state_update = None
    return SimpleNamespace(version=version, Mamba=mamba_simple.Mamba,
                           ssd_minimal_discrete=ssd_minimal.ssd_minimal_discrete)


# ----------------------------------------------------------------------------------------------------
# peer:mamba-ssm-ref


@dataclasses.dataclass
class MambaBlockState(State):
    """conv: (B, E, d_conv) the last inputs of the conv; ssm: (B, E, N); seen: tokens so far. Updated in place."""

    conv: Tensor
    ssm: Tensor
    seen: int = 0


@dataclasses.dataclass
class _InferenceParams:
    """What ``Mamba.forward`` reads from mamba_ssm's ``InferenceParams`` (whose module imports transformers)."""

    key_value_memory_dict: dict[int, tuple[Tensor, Tensor]]
    seqlen_offset: int = 0


class MambaSsmRef(PeerMixer):
    """mamba_ssm's ``Mamba`` block with ``selective_scan_ref``: x: (B, L, D) -> (B, L, D)."""

    name = "peer:mamba-ssm-ref"
    peer = "mamba_ssm's Mamba block with selective_scan_ref"
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
        """d_state: N; d_conv: the depthwise conv width; expand: E / d. dt rank is mamba_ssm's ceil(d / 16)."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        refs = load_mamba_ssm()
        self.block = refs.Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, use_fast_path=False,
                                layer_idx=0)
        self.d_inner, self.d_state, self.d_conv = expand * d_model, d_state, d_conv

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        self._refuse_mask(mask)
        return self.block(x)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        conv, ssm = self.block.allocate_inference_cache(batch_size, max_seqlen=max_len or 0)
        return MambaBlockState(conv=conv, ssm=ssm)

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        self._refuse_mask(mask)
        assert isinstance(state, MambaBlockState), f"{self.name}: expected MambaBlockState, got {type(state).__name__}"
        if state.seen == 0:
            # Prefill: the parallel path, which writes the final conv window and SSM state into the cache.
            y = self.block(x, inference_params=_InferenceParams({0: (state.conv, state.ssm)}))
        else:
            # mamba_ssm continues a sequence only token by token (Mamba.step updates both states in place).
            y = torch.cat([self.block.step(x[:, t:t + 1], state.conv, state.ssm)[0] for t in range(x.shape[1])], dim=1)
        state.seen += x.shape[1]
        return y, state

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_inner * (self.d_conv + self.d_state)


# ----------------------------------------------------------------------------------------------------
# peer:mamba-ssm-ssd


@dataclasses.dataclass
class SsdState(State):
    """ssm: (B, H, P, N) the SSD state after the tokens so far."""

    ssm: Tensor


class MambaSsmSsd(PeerMixer):
    """mamba_ssm's ``ssd_minimal_discrete`` between an input and an output projection: x: (B, L, D) -> (B, L, D)."""

    name = "peer:mamba-ssm-ssd"
    peer = "mamba_ssm's ssd_minimal_discrete (bare SSD scan)"
    complexity = "O(L·Q·(N + P)·H) chunked SSD in einsums, Q = chunk_size"
    state_formula = "H·P·N (SSM state; the bare scan has no conv window), H·P = expand·d"
    test_hypers = ({"d_state": 8, "head_dim": 8, "chunk_size": 8, "expand": 2},)

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: Annotated[int, Field(gt=0)] | None = None,
        d_state: Annotated[int, Field(gt=0)] = 64,
        head_dim: Annotated[int, Field(gt=0)] = 64,
        expand: Annotated[int, Field(gt=0)] = 2,
        chunk_size: Annotated[int, Field(gt=0)] = 256,
    ) -> None:
        """d_state: N; head_dim: P (H = expand·d / P heads); chunk_size: Q, the reference's block_len."""
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        d_inner = expand * d_model
        if d_inner % head_dim:
            raise InvalidHyper(f"mixer '{self.name}': head_dim={head_dim} must divide expand·d_model={d_inner}")
        self.ssd_minimal_discrete = load_mamba_ssm().ssd_minimal_discrete
        self.n_heads, self.head_dim, self.d_state, self.chunk_size = d_inner // head_dim, head_dim, d_state, chunk_size
        self.d_inner = d_inner
        self.in_proj = nn.Linear(d_model, d_inner + 2 * d_state + self.n_heads, bias=False)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        # Mamba-2's initialisation: A = -(1..H), dt = softplus(dt_bias) log-uniform in [1e-3, 1e-1], D = 1.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.n_heads + 1, dtype=torch.float32)))
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.D = nn.Parameter(torch.ones(self.n_heads))

    def _scan(self, x: Tensor, initial: Tensor | None) -> tuple[Tensor, Tensor]:
        """x: (B, T, D) -> (y: (B, T, D), final state: (B, H, P, N)), starting from ``initial`` (zero if None)."""
        length = x.shape[1]
        xs, b, c, dt = self.in_proj(x).split([self.d_inner, self.d_state, self.d_state, self.n_heads], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, T, H)
        xs = rearrange(xs, "b t (h p) -> b t h p", p=self.head_dim)
        b = b[:, :, None].expand(-1, -1, self.n_heads, -1)  # one group: every head reads the same B and C
        c = c[:, :, None].expand(-1, -1, self.n_heads, -1)
        a = -torch.exp(self.A_log) * dt  # (B, T, H)
        # The reference needs whole blocks: a sequence up to one chunk is one block; a longer one is padded at the
        # end with zero input and zero decay (a = 0), which leaves the final state exactly as after the last token.
        block = min(self.chunk_size, length)
        pad = -length % block
        inputs = [xs * dt[..., None], a, b, c]
        if pad:
            inputs = [F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in inputs]
        initial_states = None if initial is None else initial[:, None]  # (B, 1, H, P, N): one "previous chunk"
        y, final = self.ssd_minimal_discrete(*inputs, block, initial_states=initial_states)
        y = y[:, :length] + xs * self.D[:, None]
        return self.out_proj(rearrange(y, "b t h p -> b t (h p)")), final

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        self._refuse_mask(mask)
        return self._scan(x, None)[0]

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        p = self.D
        return SsdState(ssm=torch.zeros(batch_size, self.n_heads, self.head_dim, self.d_state, device=p.device,
                                        dtype=p.dtype))

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        self._refuse_mask(mask)
        assert isinstance(state, SsdState), f"{self.name}: expected SsdState, got {type(state).__name__}"
        y, state.ssm = self._scan(x, state.ssm)
        return y, state

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.n_heads * self.head_dim * self.d_state
