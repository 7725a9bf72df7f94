"""Token mixers behind one contract (base.py), built by name from the registry (registry.py).

Importing this package registers every mixer: each module below is imported here, and a test fails for a module
under ``longseq/mixers/`` that registers nothing, so a forgotten import cannot drop a mixer from the contract suite.
"""

from longseq.mixers import abc as _abc  # noqa: F401  (registers "abc")
from longseq.mixers import attention as _attention  # noqa: F401  (registers "attention")
from longseq.mixers import block_local as _block_local  # noqa: F401  (registers "block_local")
from longseq.mixers import cosformer as _cosformer  # noqa: F401  (registers "cosformer")
from longseq.mixers import ema as _ema  # noqa: F401  (registers "ema")
from longseq.mixers import hyena as _hyena  # noqa: F401  (registers "hyena")
from longseq.mixers import lara as _lara  # noqa: F401  (registers "lara")
from longseq.mixers import linear_attention as _linear_attention  # noqa: F401  (registers "linear_attention")
from longseq.mixers import longconv as _longconv  # noqa: F401  (registers "longconv")
from longseq.mixers import longvq as _longvq  # noqa: F401  (registers "longvq")
from longseq.mixers import mamba as _mamba  # noqa: F401  (registers "mamba")
from longseq.mixers import mamba2 as _mamba2  # noqa: F401  (registers "mamba2")
from longseq.mixers import mega as _mega  # noqa: F401  (registers "mega")
from longseq.mixers import nystromformer as _nystromformer  # noqa: F401  (registers "nystromformer")
from longseq.mixers import performer as _performer  # noqa: F401  (registers "performer")
from longseq.mixers import probsparse as _probsparse  # noqa: F401  (registers "probsparse")
from longseq.mixers import s4 as _s4  # noqa: F401  (registers "s4")
from longseq.mixers import s4d as _s4d  # noqa: F401  (registers "s4d")
from longseq.mixers import seqboat as _seqboat  # noqa: F401  (registers "seqboat")
from longseq.mixers import sgconv as _sgconv  # noqa: F401  (registers "sgconv")
from longseq.mixers import sliding_window as _sliding_window  # noqa: F401  (registers "sliding_window")
from longseq.mixers import tcn as _tcn  # noqa: F401  (registers "tcn")
from longseq.mixers import tcnca as _tcnca  # noqa: F401  (registers "tcnca")
from longseq.mixers import transformer_ls as _transformer_ls  # noqa: F401  (registers "transformer_ls")
from longseq.mixers import transformer_vq as _transformer_vq  # noqa: F401  (registers "transformer_vq")
from longseq.mixers.base import (
    ALL_PATTERNS,
    SELF_PATTERNS,
    InvalidHyper,
    Mixer,
    Mode,
    ModeNotSupported,
    Pattern,
    PatternNotSupported,
    SequenceTooLong,
    UnknownMixer,
)
from longseq.mixers.registry import (
    MixerInfo,
    available,
    build,
    hyper_names,
    info,
    mixer_class,
    register,
    validate_hypers,
)
from longseq.state import State

__all__ = [
    "ALL_PATTERNS", "SELF_PATTERNS", "InvalidHyper", "Mixer", "MixerInfo", "Mode", "ModeNotSupported", "Pattern",
    "PatternNotSupported", "SequenceTooLong", "State", "UnknownMixer", "available", "build", "hyper_names", "info",
    "mixer_class", "register", "validate_hypers",
]
