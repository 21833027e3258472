"""The exceptions a user can cause; the CLI turns each into one line on stderr and exit 2."""

from __future__ import annotations

import sys
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (config, paths, data). Programmer errors stay asserts."""

    def __str__(self) -> str:  # one line, whatever went in (a key with a newline, torch's text)
        return " ".join(line.strip() for line in super().__str__().splitlines() if line.strip())


class CorruptFile(UserError):
    """A file gangaps wrote (or was given) that is truncated, damaged or not what it claims."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class NonFiniteLoss(UserError):
    """A NaN or inf loss: the job stops before it writes a checkpoint of garbage."""


class DiskFull(UserError):
    """A write failed for lack of space (or a file-size limit); the previous file is kept."""


def warn(message: str) -> None:
    """One warning line on stderr (not `warnings.warn`, which adds a source line)."""
    print(f"gangaps: warning: {message}", file=sys.stderr, flush=True)
