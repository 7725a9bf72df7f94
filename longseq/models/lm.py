"""CausalLM: token embedding -> causal backbone -> output head, with streaming generation."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.mixers.base import Pattern
from longseq.models.backbone import Backbone, BackboneState
from longseq.models.config import ModelConfig
from longseq.modules.aux_loss import collect_aux_losses

IGNORE_INDEX = -100


@dataclasses.dataclass
class LMOutput:
    """With labels: loss (mean cross-entropy over supervised positions), logits (N, V) at those positions,
    predictions/targets (N,), example_index (N,) = the batch row of each. Without: logits (B, L, V).
    aux_loss: the sum of the auxiliary losses the modules added during a training forward
    (``longseq.modules.aux_loss``), None when there were none; ``loss`` stays the task loss."""

    logits: Tensor
    loss: Tensor | None = None
    predictions: Tensor | None = None
    targets: Tensor | None = None
    example_index: Tensor | None = None
    aux_loss: Tensor | None = None


def init_embedding(embed: nn.Embedding) -> None:
    """GPT-2's N(0, 0.02) token embedding (PyTorch's N(0, 1) is too large for a tied output head). Mixers and the
    MLP keep their own initialisation (SSMs need theirs)."""
    nn.init.normal_(embed.weight, std=0.02)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy, computed in float32 at least (half-precision logits lose the loss)."""
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)


def supervised_output(hidden: Tensor, labels: Tensor, head: nn.Module) -> LMOutput:
    """Gather the supervised positions *before* the head: vocabularies are large, most positions carry no label.
    hidden: (B, L, D), labels: (B, L) with IGNORE_INDEX elsewhere."""
    where = labels != IGNORE_INDEX
    logits = head(hidden[where])  # (N, V)
    targets = labels[where]
    loss = cross_entropy(logits, targets) if targets.numel() else logits.sum() * 0.0
    return LMOutput(logits=logits, loss=loss, predictions=logits.argmax(dim=-1), targets=targets,
                    example_index=where.nonzero()[:, 0])


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.backbone = Backbone(config, pattern=Pattern.CAUSAL_SELF)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_embedding(self.embed)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, *, mask: Tensor | None = None) -> LMOutput:
        """input_ids: (B, L) int64; labels: (B, L) with -100 on unsupervised positions; mask: bool (B, L)."""
        with collect_aux_losses() as aux:
            hidden = self.backbone(self.embed(input_ids), mask=mask)
        out = LMOutput(logits=self.head(hidden)) if labels is None else supervised_output(hidden, labels, self.head)
        out.aux_loss = aux.total()
        return out

    def state_size(self, seq_len: int) -> int:
        return self.backbone.state_size(seq_len)

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """prompt: (B, T) int64 -> (B, T + max_new_tokens). Prefills once through ``forward_stream``, then feeds one
        token at a time through ``step``: cost per token is the mixers' step, not a forward over the whole prefix.
        temperature 0 = greedy."""
        if prompt.dim() != 2 or prompt.shape[1] == 0:
            raise ValueError(f"generate: prompt must have shape (B, T) with T >= 1, got {tuple(prompt.shape)}")
        if max_new_tokens < 0 or temperature < 0 or (top_k is not None and top_k <= 0):
            raise ValueError(f"generate: need max_new_tokens >= 0, temperature >= 0, top_k > 0 or None; got "
                             f"{max_new_tokens}, {temperature}, {top_k}")
        was_training = self.training
        self.eval()
        state = self.backbone.init_state(prompt.shape[0], max_len=prompt.shape[1] + max_new_tokens)
        out = autoregress(self.backbone, self.embed, self.head, state, prompt, max_new_tokens,
                          temperature=temperature, top_k=top_k, generator=generator)
        self.train(was_training)
        return out


def autoregress(backbone: Backbone, embed: nn.Module, head: nn.Module, state: BackboneState, prompt: Tensor,
                max_new_tokens: int, *, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> Tensor:
    """Prefill ``prompt: (B, T)`` into ``state`` with one ``forward_stream``, then sample and ``step`` token by
    token. Returns (B, T + max_new_tokens)."""
    hidden, state = backbone.forward_stream(embed(prompt), state)
    out, logits = [prompt], head(hidden[:, -1])
    for i in range(max_new_tokens):
        token = sample(logits, temperature=temperature, top_k=top_k, generator=generator)
        out.append(token[:, None])
        if i + 1 < max_new_tokens:
            hidden, state = backbone.step(embed(token), state)
            logits = head(hidden)
    return torch.cat(out, dim=1)


def sample(logits: Tensor, *, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """logits: (B, V) -> token ids (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]
