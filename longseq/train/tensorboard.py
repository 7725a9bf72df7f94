"""TensorBoard scalars beside ``metrics.jsonl`` (``TrainConfig.tensorboard_dir``).

Each record the trainer logs becomes scalars tagged ``<kind>/<field>`` (``train/loss``, ``eval/accuracy``, with the
split in the tag for an evaluation: ``eval_val/accuracy``) at the record's step. A resumed run opens the writer with
``purge_step`` at the checkpoint's step, so TensorBoard drops what the interrupted session logged after it, as the
trainer does for ``metrics.jsonl``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


class TensorBoardLog:
    """Writes the numeric fields of metrics records to a TensorBoard event file in ``directory``."""

    def __init__(self, directory: str | Path, *, resume_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                f"tensorboard_dir={str(directory)!r} needs the tensorboard package, which is not installed; install "
                "it with: pip install -e '.[tensorboard]' (or leave tensorboard_dir unset)"
            ) from None
        self._writer = SummaryWriter(log_dir=str(directory), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
        group = record["kind"] if record.get("split", "test") == "test" else f"{record['kind']}_{record['split']}"
        for name, value in record.items():
            if name in ("kind", "step", "split") or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(f"{group}/{name}", value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
