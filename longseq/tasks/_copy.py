"""What copying and selective copying share: M data tokens from [1, V-1) to reproduce at the end of the sequence,
token 0 as filler and V-1 as the cue, and the checks of their parameters (the two differ in where the data sit)."""

from __future__ import annotations

from typing import ClassVar

from longseq.tasks._tokens import SyntheticTokenTask


class CopyTask(SyntheticTokenTask):
    """A subclass names the roles of its tokens for the refusals and calls ``set_layout`` from its constructor."""

    filler: ClassVar[str]  # token 0
    cue: ClassVar[str]  # token vocab_size - 1
    data: ClassVar[str]  # tokens [1, vocab_size - 1)
    seq_len_reason: ClassVar[str]  # why seq_len >= 2*num_tokens + 1; formatted with m = num_tokens

    def set_layout(self, *, vocab_size: int, seq_len: int, num_tokens: int, num_train: int, num_test: int,
                   seed: int) -> None:
        """Check the parameters (every problem in one ``TaskParameterError``), then keep them."""
        problems = []
        if vocab_size < 4:
            problems.append(f"vocab_size={vocab_size} must be >= 4 (the {self.filler} 0, the {self.cue} vocab_size-1 "
                            f"and >= 2 {self.data} [1, vocab_size-1))")
        if seq_len < 2 * num_tokens + 1:
            problems.append(f"seq_len={seq_len} must be >= 2*num_tokens + 1 = {2 * num_tokens + 1} "
                            f"({self.seq_len_reason.format(m=num_tokens)})")
        self.refuse(problems)
        self.vocab_size, self.seq_len, self.num_tokens = vocab_size, seq_len, num_tokens
        self.num_train, self.num_test, self.seed = num_train, num_test, seed
