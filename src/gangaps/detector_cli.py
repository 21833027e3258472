"""`train-classifier` and `evaluate-classifier`: the detector workflow outside the loop."""

from __future__ import annotations

import argparse


def add_detector_commands(sub: argparse._SubParsersAction) -> None:
    """Registered by the CLI; filled in with the classifier zoo."""
