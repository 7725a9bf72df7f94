"""Token mixers behind one contract (base.py), built by name from the registry (registry.py).

Importing this package registers every mixer: each module below is imported here, and a test fails for a module
under ``longseq/mixers/`` that registers nothing, so a forgotten import cannot drop a mixer from the contract suite.
"""

from longseq.mixers import attention as _attention  # noqa: F401  (registers "attention")
from longseq.mixers import ema as _ema  # noqa: F401  (registers "ema")
from longseq.mixers import hyena as _hyena  # noqa: F401  (registers "hyena")
from longseq.mixers import longconv as _longconv  # noqa: F401  (registers "longconv")
from longseq.mixers import mamba as _mamba  # noqa: F401  (registers "mamba")
from longseq.mixers import mamba2 as _mamba2  # noqa: F401  (registers "mamba2")
from longseq.mixers import s4 as _s4  # noqa: F401  (registers "s4")
from longseq.mixers import s4d as _s4d  # noqa: F401  (registers "s4d")
from longseq.mixers import sgconv as _sgconv  # noqa: F401  (registers "sgconv")
from longseq.mixers import tcn as _tcn  # noqa: F401  (registers "tcn")
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
