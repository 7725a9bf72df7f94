"""EncoderDecoder: a non-causal encoder over the source; a decoder of causal self + causal cross mixers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longseq.mixers.base import Pattern
from longseq.models.backbone import Backbone
from longseq.models.config import ModelConfig
from longseq.models.lm import LMOutput, autoregress, init_embedding, supervised_output
from longseq.modules.aux_loss import collect_aux_losses


class EncoderDecoder(nn.Module):
    """src: (B, S) -> memory (B, S, D); tgt: (B, L) decoded causally against the memory. One shared vocabulary."""

    def __init__(self, config: ModelConfig, *, decoder: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Backbone(config, pattern=Pattern.NONCAUSAL_SELF)
        self.decoder = Backbone(decoder or config, pattern=Pattern.CAUSAL_SELF, cross=True)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_embedding(self.embed)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        return self.encoder(self.embed(src), mask=src_mask)

    def forward(self, src: Tensor, tgt: Tensor, labels: Tensor | None = None, *, src_mask: Tensor | None = None,
                tgt_mask: Tensor | None = None) -> LMOutput:
        with collect_aux_losses() as aux:
            memory = self.encode(src, src_mask)
            hidden = self.decoder(self.embed(tgt), mask=tgt_mask, context=memory, context_mask=src_mask)
        out = LMOutput(logits=self.head(hidden)) if labels is None else supervised_output(hidden, labels, self.head)
        out.aux_loss = aux.total()
        return out

    @torch.no_grad()
    def generate(self, src: Tensor, bos: Tensor, max_new_tokens: int, *, src_mask: Tensor | None = None,
                 temperature: float = 0.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """bos: (B, T) decoder prompt. The memory is encoded once, into the decoder's cross states."""
        was_training = self.training
        self.eval()
        memory = self.encode(src, src_mask)
        state = self.decoder.init_state(src.shape[0], context=memory, context_mask=src_mask,
                                        max_len=bos.shape[1] + max_new_tokens)
        out = autoregress(self.decoder, self.embed, self.head, state, bos, max_new_tokens,
                          temperature=temperature, top_k=top_k, generator=generator)
        self.train(was_training)
        return out
