"""What every peer wrapper shares: causal self pattern only, no padding masks, and the state-size bookkeeping.

A peer wrapper times someone else's module through the longseq ``Mixer`` interface, so that the speed bench can
put it in the same table as longseq's own mixers. It offers what the peer offers: Mamba-style peers are causal
sequence models (causal self only), and their reference paths have no masked-position semantics matching
longseq's (a masked position must be an exact no-op on the state), so masks are refused rather than approximated.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from longseq.mixers import Mixer, Pattern


class PeerUnavailable(ImportError):
    """The peer's optional package is missing, or is a version the wrapper was not written for."""


class PeerMixer(Mixer):
    """Base of the peer wrappers: causal self only; ``mask`` is refused with a message naming the peer.

    Subclasses set ``peer``: a few words saying whose code runs and which path of it (used in refusals).
    """

    peer: ClassVar[str] = ""

    @classmethod
    def supported_patterns(cls, **hyper: object) -> frozenset[Pattern]:
        return frozenset({Pattern.CAUSAL_SELF})

    def _refuse_mask(self, mask: Tensor | None) -> None:
        if mask is not None:
            raise ValueError(
                f"mixer '{self.name}' wraps {self.peer}, which has no exact masked-position semantics; "
                f"mask must be None (got a bool tensor of shape {tuple(mask.shape)})"
            )
