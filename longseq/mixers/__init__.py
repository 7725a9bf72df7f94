"""Token mixers behind one contract (base.py). Importing this package registers every mixer."""

from longseq.mixers import attention as _attention  # noqa: F401  (registers "attention")
from longseq.mixers.base import (
    InvalidHyper,
    Mixer,
    MixerInfo,
    Mode,
    ModeNotSupported,
    Pattern,
    PatternNotSupported,
    SequenceTooLong,
    UnknownMixer,
    available,
    build,
    info,
    mixer_class,
    register,
    validate_hypers,
)
from longseq.state import State

__all__ = [
    "InvalidHyper", "Mixer", "MixerInfo", "Mode", "ModeNotSupported", "Pattern", "PatternNotSupported",
    "SequenceTooLong", "State", "UnknownMixer", "available", "build", "info", "mixer_class", "register",
    "validate_hypers",
]
