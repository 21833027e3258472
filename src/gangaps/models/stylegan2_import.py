"""Import StyleGAN2 weights saved by NVIDIA's stylegan2-ada-pytorch.

Our modules use NVIDIA's parameter and buffer names, so importing is: build G and D from
the config, check that the key sets and every shape agree (a clear `UserError` otherwise:
no silent partial loads), check the FIR filters are the standard [1, 3, 3, 1], then a
strict `load_state_dict`. State dicts must come from NVIDIA's own code (see
docs/stylegan2.md); we never unpickle NVIDIA's network pickles ourselves.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gangaps.errors import UserError

REQUIRED_KEYS = (
    "z_dim", "w_dim", "img_resolution", "img_channels", "mapping_layers",
    "channel_base", "channel_max",
)
OPTIONAL_KEYS = {
    "g_architecture": "skip",
    "d_architecture": "resnet",
    "mbstd_group_size": 4,
    "mbstd_num_channels": None,  # None: read from the shape of D's b4.conv.weight
    "conv_clamp": None,
    "use_noise": None,  # None: True iff G's state dict has noise_strength entries
}
# Keys NVIDIA configs carry that do not change the function computed in float32.
IGNORED_KEYS = {
    "num_fp16_res": "fp16 blocks are not used; run under torch.autocast(bfloat16) instead",
    "fp16_channels_last": "memory layout only",
    "c_dim": "must be 0 (unconditional); checked",
}


def _normalized_config(
    config: Mapping[str, Any],
    g_state: Mapping[str, torch.Tensor],
    d_state: Mapping[str, torch.Tensor],
) -> dict:
    for name, sd in (("G", g_state), ("D", d_state)):
        if not isinstance(sd, Mapping):
            raise UserError(f"{name} state dict must map names to tensors, got {type(sd).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise UserError(f"StyleGAN2 config is missing required key(s): {', '.join(missing)}")
    if config.get("c_dim", 0) not in (0, None):
        raise UserError(f"conditional StyleGAN2 (c_dim={config['c_dim']}) is not supported")
    unknown = sorted(set(config) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS) - set(IGNORED_KEYS))
    ignored = sorted(k for k in config if k in IGNORED_KEYS and k != "c_dim")
    if unknown or ignored:
        notes = [f"{k} ({IGNORED_KEYS[k]})" for k in ignored] + [f"{k} (unknown)" for k in unknown]
        warnings.warn("StyleGAN2 import ignores config key(s): " + "; ".join(notes), stacklevel=3)
    cfg = {k: config[k] for k in REQUIRED_KEYS}
    for k in REQUIRED_KEYS:
        if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] <= 0:
            raise UserError(f"StyleGAN2 config {k} must be a positive integer, got {cfg[k]!r}")
    r = cfg["img_resolution"]
    if r < 4 or r & (r - 1):
        raise UserError(f"StyleGAN2 config img_resolution must be a power of two >= 4, got {r}")
    for k, default in OPTIONAL_KEYS.items():
        cfg[k] = config.get(k, default)
    for k in ("g_architecture", "d_architecture"):
        if cfg[k] not in ("orig", "skip", "resnet"):
            raise UserError(
                f"StyleGAN2 config {k} must be 'orig', 'skip' or 'resnet', got {cfg[k]!r}"
            )
    if cfg["mbstd_num_channels"] is None:
        # D's epilogue conv sees in_channels + mbstd_num_channels inputs.
        w = d_state.get("b4.conv.weight")
        if w is None:
            raise UserError("D state dict has no 'b4.conv.weight' (is this a StyleGAN2 D?)")
        cfg["mbstd_num_channels"] = int(w.shape[1] - w.shape[0])
    # NVIDIA's use_noise=False leaves out noise_const/noise_strength: follow the file.
    if cfg["use_noise"] is None:
        cfg["use_noise"] = any(k.endswith(".noise_strength") for k in g_state)
    return cfg


def _build(cfg: dict):
    from gangaps.models.stylegan2 import Discriminator, Generator  # late: avoid import cycle

    G = Generator(
        z_dim=cfg["z_dim"], w_dim=cfg["w_dim"], img_resolution=cfg["img_resolution"],
        img_channels=cfg["img_channels"], mapping_layers=cfg["mapping_layers"],
        channel_base=cfg["channel_base"], channel_max=cfg["channel_max"],
        architecture=cfg["g_architecture"], conv_clamp=cfg["conv_clamp"],
        use_noise=cfg.get("use_noise", True),
    )
    D = Discriminator(
        img_resolution=cfg["img_resolution"], img_channels=cfg["img_channels"],
        channel_base=cfg["channel_base"], channel_max=cfg["channel_max"],
        architecture=cfg["d_architecture"], mbstd_group_size=cfg["mbstd_group_size"],
        mbstd_num_channels=cfg["mbstd_num_channels"], conv_clamp=cfg["conv_clamp"],
    )
    return G, D


def _load_strict(module: torch.nn.Module, state: Mapping[str, Any], name: str) -> None:
    if not isinstance(state, Mapping):
        raise UserError(f"{name} state dict must map names to tensors, got {type(state).__name__}")
    ours = module.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:8])}")
        raise UserError(
            f"{name} state dict does not match the config ({'; '.join(parts)}). "
            "Check the config (resolution, mapping_layers, architectures) and that the file "
            f"holds {name}'s state_dict()."
        )
    for key, ref in ours.items():
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise UserError(f"{name} state dict entry {key!r} is not a tensor ({type(t).__name__})")
        if tuple(t.shape) != tuple(ref.shape):
            raise UserError(
                f"{name} state dict shape mismatch at {key!r}: file has {list(t.shape)}, "
                f"the config implies {list(ref.shape)} (check channel_base/channel_max, "
                "z_dim/w_dim, img_channels)"
            )
        if not t.is_floating_point():
            raise UserError(f"{name} state dict entry {key!r} is not floating point ({t.dtype})")
        if key.endswith("resample_filter") and not torch.allclose(t.float(), ref, atol=1e-6):
            raise UserError(f"{name} {key!r} is not the standard [1,3,3,1] FIR filter")
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def import_nvidia(
    g_state_dict: Mapping[str, torch.Tensor],
    d_state_dict: Mapping[str, torch.Tensor],
    **config: Any,
):
    """Build our (Generator, Discriminator) holding NVIDIA stylegan2-ada-pytorch weights.

    g_state_dict / d_state_dict: `G_ema.state_dict()` (or `G`) and `D.state_dict()` from
    NVIDIA's code. config: z_dim, w_dim, img_resolution, img_channels, mapping_layers,
    channel_base, channel_max (required); g_architecture ('skip'), d_architecture
    ('resnet'), mbstd_group_size (4), mbstd_num_channels (read from D's shapes),
    conv_clamp (None; NVIDIA's `stylegan2`/`paper*` training configs use 256, and it does
    change outputs whenever an activation exceeds it), use_noise (read from G's keys).
    num_fp16_res and other unknown keys
    are ignored with a warning. Raises UserError on any missing/unexpected key or shape
    mismatch. Returns modules in eval mode on CPU, float32.
    """
    cfg = _normalized_config(config, g_state_dict, d_state_dict)
    G, D = _build(cfg)
    _load_strict(G, g_state_dict, "G")
    _load_strict(D, d_state_dict, "D")
    G.eval()
    D.eval()
    G.config = cfg  # what load_converted needs to rebuild them
    D.config = cfg
    return G, D


def _load_pt(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file as a user error
        raise UserError(
            f"cannot read {what} {path} as a plain state dict ({str(e).strip().splitlines()[0]}). "
            "Export it with "
            "torch.save(net.state_dict(), path) inside NVIDIA's code (see docs/stylegan2.md)."
        ) from e


def convert_nvidia_files(
    g_path: str | Path, d_path: str | Path, config_path: str | Path, out_path: str | Path
) -> Path:
    """Load NVIDIA G/D state dicts (.pt) + config.json, import, save a gangaps checkpoint
    {"config", "G", "D"} with `gangaps.io.save_state`. Returns out_path."""
    from gangaps.io import save_state

    config_path = Path(config_path)
    if not config_path.is_file():
        raise UserError(f"StyleGAN2 config not found: {config_path}")
    try:
        config = json.loads(config_path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"StyleGAN2 config {config_path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise UserError(f"StyleGAN2 config {config_path} must be a JSON object")
    G, D = import_nvidia(_load_pt(g_path, "G state dict"), _load_pt(d_path, "D state dict"),
                         **config)
    save_state(out_path, {"config": G.config, "G": G.state_dict(), "D": D.state_dict()})
    return Path(out_path)


def load_converted(path: str | Path):
    """Rebuild (G, D) from a checkpoint written by `convert_nvidia_files` (eval mode, CPU)."""
    from gangaps.io import load_state

    path = Path(path)
    if not path.is_file():
        raise UserError(f"converted StyleGAN2 checkpoint not found: {path}")
    state = load_state(path)
    for k in ("config", "G", "D"):
        if k not in state:
            raise UserError(f"{path} is not a converted StyleGAN2 checkpoint (no {k!r})")
    cfg = dict(state["config"])
    G, D = _build(_normalized_config(cfg, state["G"], state["D"]))
    _load_strict(G, state["G"], "G")
    _load_strict(D, state["D"], "D")
    G.eval()
    D.eval()
    G.config = D.config = cfg
    return G, D


# ----------------------------------------------------------------------------- interop
# A converted network is a StyleGAN2 generator like ours: the same checkpoint (spec + nets)
# once its NVIDIA config is written as gan.options, so generate / metrics / iteration0_from /
# init all go through `gangaps.generators.load_generator_state`.

_OPTION_KEYS = ("w_dim", "mapping_layers", "channel_base", "channel_max", "mbstd_group_size",
                "conv_clamp", "g_architecture", "d_architecture", "mbstd_num_channels",
                "use_noise")


def spec_from_config(cfg: Mapping[str, Any]) -> dict:
    """The `spec` of a gangaps generator checkpoint for a (normalized) NVIDIA config."""
    from gangaps.config import GANConfig

    gan = GANConfig(family="stylegan2", z_dim=cfg["z_dim"],
                    options={k: cfg[k] for k in _OPTION_KEYS})
    return {"gan": gan.model_dump(mode="json"), "channels": cfg["img_channels"],
            "resolution": cfg["img_resolution"], "seed": None, "source": "nvidia"}


def config_from_spec(spec: Mapping[str, Any]) -> dict:
    """The NVIDIA config (what `convert-nvidia` reads) of a gangaps StyleGAN2 checkpoint spec."""
    from gangaps.config import GANConfig
    from gangaps.train.family import get_family

    gan = GANConfig.model_validate(spec["gan"])
    if gan.family != "stylegan2":
        raise UserError(f"only StyleGAN2 generators have an NVIDIA layout (this is {gan.family})")
    o = get_family("stylegan2").resolve_options(gan)
    return {"z_dim": gan.z_dim, "img_resolution": spec["resolution"],
            "img_channels": spec["channels"], **{k: o[k] for k in _OPTION_KEYS}, "c_dim": 0}


def as_generator_checkpoint(state: Mapping[str, Any], where: str | Path) -> dict:
    """A `convert_nvidia_files` checkpoint {"config", "G", "D"} as a gangaps generator
    checkpoint {"spec", "nets"} (G and G_ema: NVIDIA's G; D: theirs), after the importer's
    strict key, shape and filter checks."""
    from gangaps.config import GANConfig
    from gangaps.train.family import get_family

    for k in ("config", "G", "D"):
        if k not in state:
            raise UserError(f"{where} is not a converted StyleGAN2 checkpoint (no {k!r})")
    cfg = _normalized_config(dict(state["config"]), state["G"], state["D"])
    G, D = _build(cfg)
    _load_strict(G, state["G"], "G")
    _load_strict(D, state["D"], "D")
    spec = spec_from_config(cfg)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: keep the RNG
        nets = get_family("stylegan2").build(GANConfig.model_validate(spec["gan"]),
                                             spec["channels"], spec["resolution"])
    nets["G"].load_state_dict(G.state_dict())
    nets["G_ema"].load_state_dict(G.state_dict())
    nets["D"].load_state_dict(D.state_dict())
    return {"spec": spec, "nets": nets.state_dict()}


def export_nvidia(state: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write a gangaps StyleGAN2 generator checkpoint (ours or converted) in NVIDIA's layout:
    G_state_dict.pt (G_ema: the network NVIDIA's generate.py and calc_metrics.py sample),
    D_state_dict.pt, config.json (what `convert-nvidia` reads; see docs/stylegan2.md for the
    Generator(...) call in NVIDIA's code). Plain tensors via torch.save, no code."""
    from gangaps.io import atomic_write_json

    cfg = config_from_spec(state["spec"])
    nets = state["nets"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, prefix in (("G_state_dict.pt", "G_ema."), ("D_state_dict.pt", "D.")):
        sd = {k[len(prefix):]: v.detach().cpu().contiguous() for k, v in nets.items()
              if k.startswith(prefix)}
        if not sd:
            raise UserError(f"checkpoint has no {prefix.rstrip('.')} network to export")
        tmp = out / f".{name}.tmp"
        torch.save(sd, tmp)
        tmp.replace(out / name)
        files.append(out / name)
    atomic_write_json(out / "config.json", cfg)
    return [*files, out / "config.json"]
