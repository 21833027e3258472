"""One instance's training log: log.jsonl, and optionally TensorBoard events beside it.

TensorBoard (`gan.tensorboard: true`, `pip install gangaps[tensorboard]`) writes under
`<instance dir>/tensorboard/`: every numeric field of every log line as a scalar (losses,
loss_fool and fool_weight, img_per_s, mfu), snapshot grids and snapshot metrics
(gangaps.train.snapshots), and FID when it is measured (`add_scalars`).
A resumed job truncates log.jsonl to its checkpoint and rewrites the training and snapshot
events from its files, in one new file: TensorBoard orders event files by name (a timestamp in seconds, then the
pid), so events appended by the resumed process could otherwise be read before older ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gangaps.errors import UserError
from gangaps.io import append_jsonl, atomic_write_text, read_jsonl
from gangaps.train.snapshots import replay_events

TENSORBOARD = "tensorboard"


def _writer(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("gan.tensorboard: true needs TensorBoard: "
                        "pip install 'gangaps[tensorboard]'") from None
    return SummaryWriter(str(out_dir / TENSORBOARD))


class InstanceLog:
    def __init__(self, out_dir: Path, step: int, tensorboard: bool, enabled: bool = True) -> None:
        self.path, self.enabled = out_dir / "log.jsonl", enabled
        self.tb = None
        if not enabled:
            return
        kept = _truncate(self.path, step)  # lines after the checkpoint (none: all) are replayed
        if tensorboard:
            shutil.rmtree(out_dir / TENSORBOARD, ignore_errors=True)
            self.tb = _writer(out_dir)
            for record in kept:
                self._add(record)
            replay_events(out_dir, self.tb)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        if self.tb is not None:
            self._add(record)

    def _add(self, record: dict) -> None:
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def add_scalars(out_dir: Path, scalars: dict[str, float], step: int) -> None:
    """Scalars measured after training (FID) into the instance's TensorBoard events."""
    with _writer(out_dir) as tb:
        for k, v in scalars.items():
            tb.add_scalar(k, v, step)


def _truncate(path: Path, step: int) -> list[dict]:
    """Drop log lines past `step` (written after the checkpoint a resume starts from); the
    lines kept."""
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    if path.exists():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept
