"""VectorQuantizer: Transformer-VQ's key quantiser (Lingle 2023) — nearest code, straight-through gradient, a
codebook learned by an exponential moving average, and a commitment loss.

Per head h, a codebook of S codes C_h: (S, d). A key k goes to its nearest code by squared Euclidean distance,
z = argmin_s ||k - C_s||² (formed as ||k||² - 2 k·C_s + ||C_s||², clamped at 0, in float32 at least — float64 stays
float64 — so that bfloat16 keys are not assigned by rounding noise). The forward value is the code row and the
gradient passes straight through: k̂ = sg(C[z]) + k - sg(k), so d k̂ / d k = I.

**Codebook** (no gradient): buffers ``c_sum`` (H, S, d) and ``c_count`` (H, S), C = c_sum / max(c_count, 0.01). A
learning call updates them with the keys assigned to each code in the batch (masked positions excluded), under
``torch.no_grad()``: c_sum ← γ c_sum + (1 - γ) Σ_{z_j = s} k_j, c_count ← γ c_count + (1 - γ) #{j: z_j = s}
(γ = ``gamma``, 0.99). Transformer-VQ writes this as a surrogate loss whose SGD step with learning rate 1 lands on
the same values; done directly here. The codebook used by the forward that triggers an update is the one from
before it (returned by the call), as in Transformer-VQ, where the step applies after the forward. Being buffers, the
codebook and its statistics are in ``state_dict`` and checkpointed (safetensors) with the model, so a resumed run
continues with exactly the codebook it stopped with. ``c_count`` starts at 1 and ``c_sum`` at N(0, init_std²) (the
caller passes the keys' scale).

**Commitment loss**: beta · mean over valid positions and heads of ||k - sg(k̂)||² (sum over d), beta = 1e-4 as
Transformer-VQ; added with ``longseq.modules.aux_loss.add_aux_loss`` under ``"vq_commit"``.

**When it learns**: only on a call with ``learn=True`` (the mixer passes it from its parallel ``forward``, never
from streaming or step, so a stream in training mode cannot update twice), in ``train()`` mode, inside an
aux-loss scope (``collect_aux_losses``, which every model opens around its forward). Elsewhere — ``eval()``, stream,
step, a bare module outside a model — the quantiser is a fixed function, so the contract's train-mode checks compare
like with like.

**Dead codes**: a code that stops receiving keys decays, c_sum and c_count by γ per update; the 0.01 floor on the
count keeps C finite (the code then shrinks toward the origin, where keys may find it again). No re-seeding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.modules.aux_loss import add_aux_loss, collecting
from longseq.ops.precision import compute_dtype

COUNT_FLOOR = 0.01


class VectorQuantizer(nn.Module):
    def __init__(self, n_heads: int, n_codes: int, dim: int, *, gamma: float = 0.99, beta: float = 1e-4,
                 init_std: float = 1.0) -> None:
        """n_heads: H codebooks; n_codes: S codes each; dim: d, the key size; gamma: EMA decay in (0, 1); beta:
        commitment-loss weight (>= 0); init_std: the initial codes' standard deviation."""
        super().__init__()
        for name, value in (("n_heads", n_heads), ("n_codes", n_codes), ("dim", dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"VectorQuantizer: {name}={value!r} must be a positive integer")
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"VectorQuantizer: gamma={gamma!r} must be in (0, 1)")
        if beta < 0.0:
            raise ValueError(f"VectorQuantizer: beta={beta!r} must be >= 0")
        self.n_heads, self.n_codes, self.dim, self.gamma, self.beta = n_heads, n_codes, dim, gamma, beta
        self.register_buffer("c_sum", init_std * torch.randn(n_heads, n_codes, dim))
        self.register_buffer("c_count", torch.ones(n_heads, n_codes))

    def codebook(self) -> Tensor:
        """C: (H, S, d), in float32 at least."""
        dtype = compute_dtype(self.c_sum)
        return self.c_sum.to(dtype) / self.c_count.to(dtype).clamp(min=COUNT_FLOOR)[..., None]

    def forward(self, k: Tensor, valid: Tensor | None = None, *,
                learn: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """k: (B, H, L, d), valid: bool (B, L) or None -> (k̂: (B, H, L, d) in k's dtype, z: (B, H, L) int64, the
        codebook C: (H, S, d) the codes were taken from). ``learn``: this call may update the codebook and add the
        commitment loss (see the module docstring for when it does)."""
        if k.dim() != 4 or k.shape[1] != self.n_heads or k.shape[-1] != self.dim:
            raise ValueError(f"VectorQuantizer: k must have shape (B, {self.n_heads}, L, {self.dim}), "
                             f"got {tuple(k.shape)}")
        codebook = self.codebook()
        dtype = compute_dtype(k, codebook)
        keys, codes = k.detach().to(dtype), codebook.to(dtype)
        distances = ((keys * keys).sum(-1, keepdim=True) - 2 * keys @ codes.transpose(-1, -2)
                     + (codes * codes).sum(-1)[:, None, :]).clamp(min=0)
        z = distances.argmin(dim=-1)
        chosen = codes[torch.arange(self.n_heads, device=k.device)[None, :, None], z].to(k.dtype)
        k_hat = chosen.detach() + (k - k.detach())
        if learn and self.training and collecting():
            keep = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device) if valid is None else valid
            add_aux_loss("vq_commit", self.commitment_loss(k, chosen, keep))
            self._ema_update(keys, z, keep)
        return k_hat, z, codebook

    def commitment_loss(self, k: Tensor, chosen: Tensor, keep: Tensor) -> Tensor:
        """beta · mean over the kept (B, L) positions and the heads of ||k - sg(chosen)||²; 0 when none is kept."""
        dtype = compute_dtype(k)
        error = (k.to(dtype) - chosen.detach().to(dtype)).pow(2).sum(-1)  # (B, H, L)
        weight = keep[:, None, :].to(dtype)
        return self.beta * (error * weight).sum() / (weight.sum() * self.n_heads).clamp(min=1)

    @torch.no_grad()
    def _ema_update(self, keys: Tensor, z: Tensor, keep: Tensor) -> None:
        """keys: (B, H, L, d) detached, z: (B, H, L), keep: bool (B, L)."""
        one_hot = F.one_hot(z, self.n_codes).to(keys.dtype) * keep[:, None, :, None].to(keys.dtype)
        counts = one_hot.sum(dim=(0, 2))  # (H, S)
        sums = torch.einsum("bhls,bhld->hsd", one_hot, keys)
        self.c_sum.mul_(self.gamma).add_((1 - self.gamma) * sums.to(self.c_sum.dtype))
        self.c_count.mul_(self.gamma).add_((1 - self.gamma) * counts.to(self.c_count.dtype))

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_codes={self.n_codes}, dim={self.dim}, gamma={self.gamma}, beta={self.beta}"
