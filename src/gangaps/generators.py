"""Frozen generators: load a finished generator job and draw reproducible samples from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from gangaps.config import GANConfig
from gangaps.data import to_uint8
from gangaps.errors import CorruptFile, UserError
from gangaps.io import load_state
from gangaps.train.family import get_family


def load_generator_state(checkpoint: str | Path) -> dict:
    """A generator checkpoint's state ({"spec", "nets", ...}): a gangaps generator job's, or a
    network converted from NVIDIA's files (`convert-nvidia`), made into the same form."""
    state = load_state(checkpoint)
    if "spec" not in state and "config" in state and "G" in state:
        from gangaps.models.stylegan2_import import as_generator_checkpoint
        state = as_generator_checkpoint(state, checkpoint)
    return state


def load_generator(checkpoint: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The sampling network (G_ema if the family keeps one) of a generator checkpoint (ours or
    converted from NVIDIA's), frozen.

    The file's checksum is verified; a damaged or foreign file raises CorruptFile.
    """
    state = load_generator_state(checkpoint)
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
def iter_samples(G: nn.Module, n: int, seed: int, batch_size: int = 500,
                 device: torch.device | str = "cpu", z: torch.Tensor | None = None,
                 **g_kwargs) -> Iterator[torch.Tensor]:
    """n samples as uint8 batches [b, C, H, W] (quantized like saved images), in order.

    Latents come from a CPU generator (same images on any device, any batch size), or are the
    first n rows of `z`; randomness inside G (StyleGAN2's noise inputs) from the global RNG,
    seeded here and restored once the last batch is out (so consume it whole before drawing
    other random numbers). g_kwargs go to G (StyleGAN2: noise_mode, truncation_psi).
    """
    if z is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(n, G.z_dim, generator=gen)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, n, batch_size):
            yield to_uint8(G(z[i:min(i + batch_size, n)].to(device), **g_kwargs)).cpu()


def load_latents(path: str | Path, n: int, z_dim: int) -> torch.Tensor:
    """The first n latents [n, z_dim] of a .npy file or a .pt file (a tensor, or a dict with
    "z" as NVIDIA's reference_io.pt); read without executing code."""
    import numpy as np
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--latents {path}: not found")
    try:
        if path.suffix == ".npy":
            z = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            z = torch.load(path, map_location="cpu", weights_only=True)
            z = z["z"] if isinstance(z, dict) and "z" in z else z
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's
        raise UserError(f"--latents {path}: cannot read ({e.__class__.__name__}); expected a "
                        ".npy array or a .pt tensor [N, z_dim]") from None
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != z_dim:
        shape = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise UserError(f"--latents {path}: expected [N, {z_dim}] latents, got {shape}")
    if len(z) < n:
        raise UserError(f"--latents {path} holds {len(z)} latents; --n {n} needs as many")
    return z[:n].float()


def generate(G: nn.Module, n: int, seed: int, batch_size: int = 500,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """n samples as uint8 [n, C, H, W]; same seed, same images (see `iter_samples`)."""
    return torch.cat(list(iter_samples(G, n, seed, batch_size, device)))


def export_samples(G: nn.Module, n: int, seed: int, out: Path, batch_size: int = 500,
                   device: torch.device | str = "cpu", progress: bool = True,
                   z: torch.Tensor | None = None, **g_kwargs) -> Path:
    """Write n samples for other tools (clean-fid, torch-fidelity, pytorch-fid, detectors):
    `out` ending in .npz: one uint8 array [n, H, W, C] named arr_0, written atomically;
    otherwise a folder of 000000.png, 000001.png, ... (8-bit gray or RGB)."""
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="img", desc=f"generate {out.name}", disable=not progress,
               leave=False, dynamic_ncols=True)
    batches, index = [], 0
    if out.suffix != ".npz":
        out.mkdir(parents=True, exist_ok=True)
    for batch in iter_samples(G, n, seed, batch_size, device, z, **g_kwargs):
        images = batch.permute(0, 2, 3, 1).numpy()  # NHWC, the layout image tools read
        if out.suffix == ".npz":
            batches.append(images)
        else:
            for img in images:
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
                    out / f"{index:06d}.png")
                index += 1
        bar.update(len(images))
    bar.close()
    if out.suffix == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.npz")
        np.savez(tmp, np.concatenate(batches))
        tmp.replace(out)
    return out
