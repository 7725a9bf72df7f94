"""Register the peer implementations whose packages are installed, as mixers named ``peer:...``.

Imported only on request, never by ``import longseq``:
    longseq bench speed --import benchmarks/peers/register.py --mixers attention,peer:hf-mamba,...
The speed bench imports it in its own process and in every child, so each registers the peers before building them.
A peer whose package is missing (or too old) is not registered, and one warning line says why.

Works both as a file path (the repository root is put on ``sys.path`` so that ``benchmarks.peers`` imports) and as
the module ``benchmarks.peers.register``; registering twice in one process is a no-op.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.peers.common import PeerMixer, PeerUnavailable  # noqa: E402  (needs the root on sys.path)
from benchmarks.peers.hf_mixers import HFMamba, HFMamba2, load_transformers  # noqa: E402
from benchmarks.peers.mamba_ssm_mixers import MambaSsmRef, MambaSsmSsd, load_mamba_ssm  # noqa: E402
from longseq.mixers import UnknownMixer, mixer_class, register  # noqa: E402

log = logging.getLogger("longseq.peers")

# Loaders in this order: transformers binds its kernel fallbacks when its modeling modules are imported, so it is
# imported before mamba_ssm's references (their stand-ins are gone by then anyway; see mamba_ssm_stubs).
PEERS: tuple[tuple[Callable[[], object], tuple[type[PeerMixer], ...]], ...] = (
    (load_transformers, (HFMamba, HFMamba2)),
    (load_mamba_ssm, (MambaSsmRef, MambaSsmSsd)),
)


def register_peers() -> list[str]:
    """Register every peer whose package loads; return the registered names. Idempotent within a process."""
    names = []
    for load, classes in PEERS:
        try:
            load()
        except PeerUnavailable as err:
            log.warning("not registered: %s (%s)", ", ".join(cls.name for cls in classes), err)
            continue
        for cls in classes:
            try:
                existing = mixer_class(cls.name)
            except UnknownMixer:
                register(cls.name)(cls)
            else:
                if existing is not cls:
                    raise ValueError(f"mixer name '{cls.name}' is already registered by {existing.__qualname__}")
            names.append(cls.name)
    return names


REGISTERED = register_peers()
