"""Shuffled minibatch indices whose position is part of the checkpoint, so resume is exact."""

from __future__ import annotations

import torch


class EpochSampler:
    """Endless shuffled batches over n items; each epoch's order depends only on (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        assert n > 0 and batch_size > 0
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos = 0, 0
        self._perm: torch.Tensor | None = None
        self.device: torch.device | None = None  # where the order lives (data on the device)

    def _order(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=g)
            if self.device is not None:  # once an epoch: a step's slice is then a device view
                self._perm = self._perm.to(self.device)
        return self._perm

    def next(self) -> torch.Tensor:
        """Next batch of indices; an epoch ends when fewer than batch_size items remain
        (unless the whole set is smaller than one batch)."""
        if self.pos + self.batch_size > self.n and self.pos > 0:
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        idx = self._order()[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos, self._perm = state["epoch"], state["pos"], None
