"""Frozen generators: load a finished generator job and draw reproducible samples from it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gangaps.config import GANConfig
from gangaps.data import to_uint8
from gangaps.errors import CorruptFile, UserError
from gangaps.io import load_state
from gangaps.train.family import get_family


def load_generator(checkpoint: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The sampling network (G_ema if the family keeps one) of a generator checkpoint, frozen.

    The file's checksum is verified; a damaged or foreign file raises CorruptFile.
    """
    state = load_state(checkpoint)
    try:
        spec = state["spec"]
        family = get_family(spec["gan"]["family"])
        nets = family.build(GANConfig.model_validate(spec["gan"]), spec["channels"],
                            spec["resolution"])
        nets.load_state_dict(state["nets"])
    except (KeyError, TypeError, ValueError, RuntimeError, UserError) as e:
        raise CorruptFile(checkpoint, f"not a generator checkpoint ({e.__class__.__name__})") from None
    G = family.sampler(nets).to(device).eval().requires_grad_(False)
    G.z_dim = spec["gan"]["z_dim"]
    return G


@torch.no_grad()
def generate(G: nn.Module, n: int, seed: int, batch_size: int = 500,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """n samples as uint8 [n, C, H, W] (quantized like saved images); same seed, same images.

    Latents come from a CPU generator (same images on any device); randomness inside G
    (StyleGAN2's noise inputs) from the global RNG, seeded here and restored afterwards.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = [to_uint8(G(z[i:i + batch_size].to(device))).cpu() for i in range(0, n, batch_size)]
    return torch.cat(out)
