"""MLM-U (Nolte, Kitouni et al. 2024, "Transformers Can Navigate Mazes With Multi-Step Prediction", arXiv
2412.05117): a model trained to fill in randomly hidden path tokens under a uniformly drawn masking rate, and its
next-token baseline; both decode a path left to right at evaluation.

**Training objective** (``sample_hidden``, ``MLMU.masked_loss``): per sequence a visibility rate r ~ U(0, 1); each
path token (a supervised position: ``labels != -100``) stays visible with probability r and is hidden otherwise, so
the masking rate 1 - r is uniform on [0, 1]. Everything before the path (the maze, origin and target) is never
hidden. The loss is the cross-entropy on the hidden path tokens only, averaged over the hidden tokens of the batch
(the reference's default, ``scale_loss=False``).

**Model** (PAST, the paper's encoder-decoder): the encoder reads the sequence with every hidden token replaced by
``[MASK]``; the decoder has one learned query vector, placed at each position to predict, whose blocks
cross-attend to the encoder's output with rotary positions on both sides (``RotaryCrossAttention``): a query at
position i scores memory position s by content and by i - s, which is how identical queries find their own
place. No self-attention between queries, so each predicted position depends on the memory alone and a subset of
positions can be decoded without the others. Tied input embedding and output head.

Two choices differ from the reference's code, for longseq's mixers:

- The reference removes hidden tokens from the encoder's attention (a key mask); here they are ``[MASK]`` tokens
  at their own positions. longseq's attention counts rotary positions over valid tokens only and a convolution or
  a scan has no positions but the order, so removing tokens would shift every position after them; ``[MASK]``
  keeps the positions for any mixer (``layers`` chooses the encoder's, e.g. a sub-quadratic one), carrying the
  same information (which positions are hidden).
- Padding after the path is ``[MASK]`` too, not a masked-out pad: in the reference hidden and padded positions are
  equally invisible, so the model does not learn the path's length from where the padding starts; with ``[MASK]``
  for both it does not either.

**Evaluation** (``decode_left_to_right``; in ``eval()`` with labels): every path position starts hidden; step k
fills each row's k-th path position with the argmax there, left to right, the earlier decisions visible. The path
length is the ground truth's (the paper decodes up to it). ``PathCausalLM``, the next-token baseline, decodes the
same way (greedy, one token per step). ``loss`` is then the cross-entropy of the logits each decision was taken
from. Greedy decoding gets a whole path right exactly when teacher forcing predicts every token right (by
induction over the path), so full-path accuracy is the same under both; token accuracy is not.

**Sizes** (the parameter rule): ``ModelConfig.n_layers`` counts all blocks. MLM-U splits them evenly between the
encoder (the ``layers`` pattern, non-causal) and the decoder (rotary cross-attention + MLP, the attention hypers'
``n_heads``); the next-token baseline is a ``CausalLM`` of all ``n_layers``. A cross-attention block has the
parameters of a self-attention block, so the two differ by the query vector and the decoder's final norm: exactly
2·d parameters (0.05% at d_model 64 on 5x5 mazes; ``tests/test_mlmu.py``). MLM-U's training step is the cheaper
one: its decoder runs on the hidden positions only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from longseq.mixers._heads import HeadsMixer
from longseq.mixers.base import InvalidHyper, Pattern, PatternNotSupported
from longseq.models.backbone import Backbone
from longseq.models.block import GLU, make_norm
from longseq.models.config import ModelConfig
from longseq.models.lm import IGNORE_INDEX, CausalLM, LMOutput, cross_entropy, init_embedding
from longseq.modules.aux_loss import collect_aux_losses
from longseq.ops.attention import softmax_attention
from longseq.ops.rotary import apply_rotary, rotary_cos_sin, token_positions

LogitsAt = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(rows: (b,), tokens: (b, L), at: (b,)) -> (b, V)``: a model's logits at position ``at[i]`` of row ``rows[i]``,
whose current tokens are ``tokens[i]``."""


def sample_hidden(path: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """MLM-U's masking. path: bool (B, L), the positions that may be hidden -> hidden: bool (B, L).

    Per row a visibility rate r ~ U(0, 1); a path position is visible when its u ~ U(0, 1) is below r (the
    reference's rule), hidden otherwise; positions off the path are never hidden."""
    rate = torch.rand(path.shape[0], 1, device=path.device, generator=generator)
    u = torch.rand(path.shape, device=path.device, generator=generator)
    return path & (u >= rate)


def select_positions(select: Tensor) -> tuple[Tensor, Tensor]:
    """select: bool (B, L) -> positions: (B, P) the selected columns of each row in increasing order, left-aligned
    (0 in the slots past a row's count), and valid: bool (B, P); P is the largest count of a row."""
    counts = select.sum(dim=1)
    width = int(counts.max()) if select.numel() else 0
    order = torch.sort((~select).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=select.device) < counts[:, None]
    return order.masked_fill(~valid, 0), valid


def decode_left_to_right(tokens: Tensor, positions: Tensor, valid: Tensor, logits_at: LogitsAt, *,
                         shift: int) -> Tensor:
    """Greedy decoding of each row's selected positions, one per step, left to right.

    tokens: (B, L), what the model starts from, filled in place; positions, valid: (B, P) from
    ``select_positions``. At step k every row with a k-th position t takes the argmax of ``logits_at`` there and
    writes it at t + ``shift`` (0: the token at t itself, MLM-U; 1: the next token, a causal LM), so that later
    steps see it. Returns the logits of every decision: (B, P, V), 0 in the slots of ``~valid``."""
    if positions.shape[1] == 0:
        raise ValueError("decode_left_to_right: no position to decode (every label is -100)")
    steps = []
    for k in range(positions.shape[1]):
        rows = valid[:, k].nonzero()[:, 0]
        at = positions[rows, k]
        logits = logits_at(rows, tokens[rows], at)
        tokens[rows, at + shift] = logits.argmax(dim=-1)
        steps.append(logits.new_zeros(positions.shape[0], logits.shape[-1]).index_copy(0, rows, logits))
    return torch.stack(steps, dim=1)


def path_output(logits: Tensor, labels: Tensor, positions: Tensor, valid: Tensor) -> LMOutput:
    """The trainer's output for the selected positions: logits (N, V) of the slots ``valid`` marks in
    ``positions: (B, P)``, row by row; targets from ``labels: (B, L)``; loss their mean cross-entropy."""
    targets = labels.gather(1, positions)[valid]
    loss = cross_entropy(logits, targets) if targets.numel() else logits.sum() * 0.0
    return LMOutput(logits=logits, loss=loss, predictions=logits.argmax(dim=-1), targets=targets,
                    example_index=valid.nonzero()[:, 0])


class RotaryCrossAttention(HeadsMixer):
    """Non-causal cross-attention with rotary positions on the queries and on the memory (PAST's decoder).

    Not registered: longseq's ``attention`` gives cross patterns no positions (its two sequences are not aligned);
    here queries and memory are positions of one sequence. ``forward`` counts positions over valid tokens on
    each side, as attention's self patterns do; the model calls ``attend`` with explicit positions."""

    name = "rotary_cross_attention"
    patterns = frozenset({Pattern.NONCAUSAL_CROSS})

    def __init__(self, d_model: int, *, n_heads: int | None = None, rope_base: float = 10000.0) -> None:
        super().__init__(d_model, pattern=Pattern.NONCAUSAL_CROSS)
        self.build_heads(n_heads)
        if self.head_dim % 2:
            raise InvalidHyper(f"mixer '{self.name}': RoPE needs an even head size, got d_model/n_heads="
                               f"{self.head_dim}")
        self.rope_base = rope_base

    def attend(self, x: Tensor, positions: Tensor, context: Tensor, context_positions: Tensor,
               context_mask: Tensor | None = None) -> Tensor:
        """x: (B, T, D) queries at positions (B, T); context: (B, S, D) at context_positions (B, S), valid where
        context_mask: bool (B, S) (None: all). Returns (B, T, D)."""
        q, (k, v) = self.queries(x), self.keys_values(context)
        q = apply_rotary(q, *rotary_cos_sin(positions, self.head_dim, base=self.rope_base, dtype=q.dtype))
        k = apply_rotary(k, *rotary_cos_sin(context_positions, self.head_dim, base=self.rope_base, dtype=k.dtype))
        return self.finish(softmax_attention(q, k, v, k_valid=context_mask), None)

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        positions = token_positions(mask, x.shape[0], x.shape[1], x.device)
        context_positions = token_positions(context_mask, context.shape[0], context.shape[1], x.device)
        y = self.attend(x, positions, context, context_positions, context_mask)
        return y if mask is None else y.masked_fill(~mask[..., None], 0.0)


class QueryBlock(nn.Module):
    """A decoder block: pre-norm residual rotary cross-attention to the memory, then pre-norm residual GLU MLP
    (as ``Block``, whose self mixer it lacks: queries do not attend to each other)."""

    def __init__(self, config: ModelConfig, *, n_heads: int | None, rope_base: float) -> None:
        super().__init__()
        d, hidden = config.d_model, int(config.mlp_ratio * config.d_model)
        self.norm_cross = make_norm(config.norm, d, config.norm_eps)
        self.cross = RotaryCrossAttention(d, n_heads=n_heads, rope_base=rope_base)
        self.norm_mlp, self.mlp = None, None
        if hidden:
            self.norm_mlp, self.mlp = make_norm(config.norm, d, config.norm_eps), GLU(d, hidden)

    def forward(self, x: Tensor, positions: Tensor, memory: Tensor, memory_positions: Tensor) -> Tensor:
        """x: (B, T, D) at positions (B, T); memory: (B, S, D) at memory_positions (B, S)."""
        x = x + self.cross.attend(self.norm_cross(x), positions, memory, memory_positions)
        return x if self.mlp is None else x + self.mlp(self.norm_mlp(x))


class MLMU(nn.Module):
    """PAST, the MLM-U encoder-decoder (module docstring). ``forward(input_ids, labels, mask=)``: in ``train()``
    the MLM-U loss on a fresh random masking; in ``eval()`` left-to-right decoding of the path (the positions with
    labels); without labels, the logits at every position with the inputs as given ([MASK] where the caller put
    it)."""

    def __init__(self, config: ModelConfig, *, mask_id: int) -> None:
        super().__init__()
        if config.n_layers % 2:
            raise ValueError(f"MLMU: n_layers={config.n_layers} counts the encoder and decoder blocks together, "
                             "split evenly; allowed: an even n_layers")
        if not 0 <= mask_id < config.vocab_size:
            raise ValueError(f"MLMU: mask_id={mask_id} is not a token id; allowed: 0..{config.vocab_size - 1}")
        if config.cross_mixer != "attention":
            raise ValueError(f"MLMU: cross_mixer={config.cross_mixer!r}: the decoder's attention is rotary "
                             "cross-attention (PAST's), configured by the 'attention' hypers; allowed: 'attention'")
        self.config, self.mask_id = config, mask_id
        half = config.model_copy(update={"n_layers": config.n_layers // 2})
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        try:
            self.encoder = Backbone(half, pattern=Pattern.NONCAUSAL_SELF)
        except PatternNotSupported as error:
            raise ValueError(f"MLMU: the encoder reads the whole sequence (noncausal_self): {error}") from None
        attention = config.mixer_hypers.get("attention", {})
        self.decoder = nn.ModuleList(
            QueryBlock(config, n_heads=attention.get("n_heads"), rope_base=attention.get("rope_base", 10000.0))
            for _ in range(half.n_layers)
        )
        self.decoder_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.query = nn.Parameter(torch.empty(config.d_model))
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_embedding(self.embed)
        nn.init.normal_(self.query, std=0.02)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def encoder_input(self, input_ids: Tensor, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """input_ids: (B, L) with [MASK] where ``hidden`` (bool (B, L)) and at padding (``mask`` False)."""
        return input_ids.masked_fill(hidden if mask is None else hidden | ~mask, self.mask_id)

    def predict(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens: (B, L), the encoder's input; positions: (B, T) -> the decoder's hidden states (B, T, D) there."""
        memory = self.encoder(self.embed(tokens))
        memory_positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        x = self.query.expand(*positions.shape, -1)
        for block in self.decoder:
            x = block(x, positions, memory, memory_positions)
        return self.decoder_norm(x)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, *, mask: Tensor | None = None) -> LMOutput:
        """input_ids: (B, L) int64; labels: (B, L), the path tokens at their own positions and -100 elsewhere;
        mask: bool (B, L), False at padding."""
        with collect_aux_losses() as aux:
            if labels is None:
                tokens = self.encoder_input(input_ids, torch.zeros_like(input_ids, dtype=torch.bool), mask)
                positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
                out = LMOutput(logits=self.head(self.predict(tokens, positions)))
            elif self.training:
                out = self.masked_loss(input_ids, labels, sample_hidden(labels != IGNORE_INDEX), mask=mask)
            else:
                out = self.decode(input_ids, labels, mask=mask)
        out.aux_loss = aux.total()
        return out

    def masked_loss(self, input_ids: Tensor, labels: Tensor, hidden: Tensor, *, mask: Tensor | None = None) -> LMOutput:
        """The MLM-U loss with the path positions ``hidden: bool (B, L)`` hidden: cross-entropy at the hidden
        positions, averaged over them; predictions and targets there."""
        if bool((hidden & (labels == IGNORE_INDEX)).any()):
            raise ValueError("MLMU.masked_loss: hidden positions must be path positions (labels != -100)")
        positions, valid = select_positions(hidden)
        if positions.shape[1] == 0:  # nothing hidden in the whole batch (every rate drawn near 1): a zero loss
            return path_output(self.head(self.query.new_zeros(0, self.config.d_model)), labels, positions, valid)
        states = self.predict(self.encoder_input(input_ids, hidden, mask), positions)
        return path_output(self.head(states[valid]), labels, positions, valid)

    def decode(self, input_ids: Tensor, labels: Tensor, *, mask: Tensor | None = None) -> LMOutput:
        """Left-to-right decoding of the path positions (``labels != -100``), all hidden at the start."""
        path = labels != IGNORE_INDEX
        positions, valid = select_positions(path)

        def logits_at(rows: Tensor, tokens: Tensor, at: Tensor) -> Tensor:
            return self.head(self.predict(tokens, at[:, None])[:, 0])

        logits = decode_left_to_right(self.encoder_input(input_ids, path, mask), positions, valid, logits_at, shift=0)
        return path_output(logits[valid], labels, positions, valid)


class PathCausalLM(CausalLM):
    """The next-token baseline: a ``CausalLM`` trained by teacher forcing on the labels (each path token predicted
    from the tokens before it), whose evaluation forward (``eval()``, with labels) decodes the path greedily left
    to right, one token per step, from the tokens before it."""

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, *, mask: Tensor | None = None) -> LMOutput:
        if self.training or labels is None:
            return super().forward(input_ids, labels, mask=mask)
        positions, valid = select_positions(labels != IGNORE_INDEX)

        def logits_at(rows: Tensor, tokens: Tensor, at: Tensor) -> Tensor:
            end = int(at.max()) + 1  # causal: the logits at t read the tokens up to t only
            hidden = self.backbone(self.embed(tokens[:, :end]), mask=None if mask is None else mask[rows, :end])
            return self.head(hidden[torch.arange(len(rows), device=hidden.device), at])

        logits = decode_left_to_right(input_ids.clone(), positions, valid, logits_at, shift=1)
        return path_output(logits[valid], labels, positions, valid)
