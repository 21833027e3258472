"""More GAN-classifier architectures: ResNets, a patch classifier, a spectrum classifier, DCGAN-D.

Imported at the bottom of `gangaps.models.classifiers`, so every builder here is registered
as soon as that module is imported. Each builder takes `(in_channels, resolution, **options)`,
validates its options (bad values raise UserError; unknown names raise TypeError, which
`build_classifier` turns into UserError) and returns a `GANClassifier` whose whole forward
pass, preprocessing included, is differentiable with respect to the input images.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision
from torch import nn

from gangaps.errors import UserError
from gangaps.models.classifiers import GANClassifier, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_STEMS = ("imagenet", "no_maxpool", "no_downsample")
RESNET_POOLS = ("avg", "flatten")
# Smallest side fed to an ImageNet-stem ResNet when the data are smaller: its total stride is
# 32, so 56 px still leaves a 2×2 map after layer4 (28 px would leave 1×1).
RESNET_MIN_INPUT = 56


def _check_int(arch: str, name: str, value: object, lo: int, hi: int | None = None) -> int:
    # bool is an int subclass; `width: true` in a YAML config is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
        hi is not None and value > hi
    ):
        bound = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise UserError(f"classifier {arch!r}: option {name} must be {bound}, got {value!r}")
    return value


def _check_choice(arch: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(
            f"classifier {arch!r}: option {name} must be one of {', '.join(choices)}, got {value!r}"
        )
    return value  # type: ignore[return-value]


def _check_data(arch: str, in_channels: int, resolution: int, min_resolution: int = 1) -> None:
    if in_channels not in (1, 3):
        raise UserError(f"classifier {arch!r}: in_channels must be 1 or 3, got {in_channels!r}")
    _check_int(arch, "resolution", resolution, min_resolution)


# ------------------------------------------------------------------------------------ ResNets


def default_resnet_input_size(resolution: int) -> int | None:
    """Input side for an ImageNet-stem ResNet: the data resolution if ≥ 64, else upsampled.

    Small images are upsampled by the smallest *integer* factor reaching RESNET_MIN_INPUT
    (28 → 56, 32 → 64, 48 → 96), so every source pixel maps onto the same sub-grid and a
    generator's periodic artifacts stay periodic after the resize.
    """
    if resolution >= 64:
        return None
    return resolution * math.ceil(RESNET_MIN_INPUT / resolution)


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a local PyTorch weights file, loaded without running any of its code.

    `torch.load(weights_only=True)` unpickles plain containers and tensors only: a file whose
    pickle would call anything else (a code-running payload) is refused with one line. Accepts
    the common wrappers ({"model": sd} as CNNDetection saves, {"state_dict": sd}) and the
    "module." prefix DataParallel adds. `what` names the file in errors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} {str(p)!r} is not a file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable, or a pickle that would run code: never executed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what} {str(p)!r}: cannot load it as plain tensors, refused "
                        f"({first[:160]})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{what} {str(p)!r} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_backbone_weights(net: nn.Module, arch: str, weights_path: str | Path) -> None:
    """Load a local ImageNet state dict into `net`; strict except the replaced `fc`."""
    path = Path(weights_path).expanduser()
    state = {k: v for k, v in read_state_dict(path, f"classifier {arch!r}: weights_path").items()
             if not k.startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches (e.g. resnet50 weights into a resnet18)
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(
            f"classifier {arch!r}: weights_path {str(path)!r} does not fit: {first}"
        ) from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise UserError(
            f"classifier {arch!r}: weights_path {str(path)!r} does not fit the network "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )


def _resnet(
    arch: str,
    in_channels: int,
    resolution: int,
    weights_path: str | Path | None,
    input_size: int | None,
    stem: str,
    pool: str,
) -> GANClassifier:
    _check_data(arch, in_channels, resolution)
    _check_choice(arch, "stem", stem, RESNET_STEMS)
    _check_choice(arch, "pool", pool, RESNET_POOLS)
    if input_size is not None:
        _check_int(arch, "input_size", input_size, 8, 4096)
    elif stem == "imagenet":
        input_size = default_resnet_input_size(resolution)
    # no_downsample (total stride 8) and no_maxpool (16) leave ≥ 2×2 maps even at 28 px: keep
    # the data resolution and avoid an interpolation that would smooth the very high
    # frequencies these variants exist to see.
    net = getattr(torchvision.models, arch)(num_classes=1)  # weights=None: never downloads
    if stem == "no_downsample":
        # Gragnaniello et al. 2021: drop the stem's stride and max-pool. The 7×7 kernel is
        # kept so ImageNet weights still load.
        net.conv1.stride = (1, 1)
    if stem in ("no_maxpool", "no_downsample"):
        # no_maxpool, the half-way point: layer1 sees 1/2 resolution instead of 1/4, at 4×
        # (not 16×) the compute of the ImageNet stem.
        net.maxpool = nn.Identity()
    if pool == "flatten":
        # A head that knows *where* in the image a feature is (on aligned faces position is
        # signal): flatten the last map into the fc instead of averaging it away. The map's
        # size is then fixed, so every input is resized to one side.
        input_size = input_size or resolution
        net.avgpool = nn.Identity()
        net.fc = nn.Linear(_feature_numel(net, input_size), 1)
    if weights_path is not None:
        _load_backbone_weights(net, arch, weights_path)
    # CNNDetection's head: a fresh single-logit fc with weights N(0, 0.02).
    nn.init.normal_(net.fc.weight, 0.0, 0.02)
    nn.init.zeros_(net.fc.bias)
    return GANClassifier(net, in_channels, input_size=input_size, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, net_channels=3, fixed_input=pool == "flatten")


@torch.no_grad()
def _feature_numel(net: nn.Module, side: int) -> int:
    """Values in the last feature map of a torchvision ResNet for side×side inputs."""
    was_training = net.training
    net.eval()  # no BatchNorm statistics updates from this probe
    x = torch.zeros(1, 3, side, side)
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
    net.train(was_training)
    return x.numel()


@register("resnet18")
def resnet18(
    in_channels: int,
    resolution: int,
    weights_path: str | Path | None = None,
    input_size: int | None = None,
    stem: str = "imagenet",
    pool: str = "avg",
) -> GANClassifier:
    """torchvision ResNet-18 with one logit; from scratch unless `weights_path` (local file).

    input_size: side the network sees (default: data resolution, upsampled by an integer
    factor to ≥ 56 px when below 64 px with the ImageNet stem). stem: 'imagenet',
    'no_maxpool' (stride-2 stem conv, no max-pool) or 'no_downsample' (neither), which keep
    more of the high frequencies. pool: 'avg' (global average, torchvision's) or 'flatten'
    (the last feature map flattened into the fc, so the head sees where features are).
    """
    return _resnet("resnet18", in_channels, resolution, weights_path, input_size, stem, pool)


@register("resnet50")
def resnet50(
    in_channels: int,
    resolution: int,
    weights_path: str | Path | None = None,
    input_size: int | None = None,
    stem: str = "imagenet",
    pool: str = "avg",
) -> GANClassifier:
    """torchvision ResNet-50 with one logit (the CNNDetection detector); options as resnet18."""
    return _resnet("resnet50", in_channels, resolution, weights_path, input_size, stem, pool)


# ------------------------------------------------------------------------------ patch classifier


class MeanOverLocations(nn.Module):
    """Average a N×1×H×W map of per-location logits into one logit per image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


@register("patch")
def patch(in_channels: int, resolution: int, depth: int = 4, width: int = 64) -> GANClassifier:
    """Patch classifier: `depth` unpadded 3×3 convs (receptive field 2·depth+1 px, no global
    context), a 1×1 conv to a logit per location, logits averaged over the image.

    Unpadded ('valid') convolutions so no location sees the zero border, i.e. every
    per-location decision is made from image content alone. Default depth 4 → 9×9 patches.
    """
    _check_int("patch", "depth", depth, 1, 8)
    _check_int("patch", "width", width, 1, 4096)
    _check_data("patch", in_channels, resolution, min_resolution=2 * depth + 1)
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3), nn.LeakyReLU(0.2)]
        c = width
    layers += [nn.Conv2d(width, width, 1), nn.LeakyReLU(0.2), nn.Conv2d(width, 1, 1),
               MeanOverLocations()]
    # He init for the LeakyReLU stack: PyTorch's default shrinks activations ~√3× per layer,
    # and a narrow, deep, averaged stack then sits on a flat start (seen at width 8).
    for m in layers[:-2]:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
            nn.init.zeros_(m.bias)
    return GANClassifier(nn.Sequential(*layers), in_channels)


# --------------------------------------------------------------------------- spectrum classifier


class LogSpectrum(nn.Module):
    """Log-magnitude of the centred 2-D FFT, standardised per image. Differentiable.

    gray: average the channels first (one spectrum) instead of one spectrum per channel.
    Orthonormal FFT so magnitudes do not scale with resolution; per-image standardisation
    keeps the spectrum's shape (where the peaks are) and drops overall contrast.
    """

    def __init__(self, gray: bool, eps: float = 1e-3) -> None:
        super().__init__()
        self.gray = gray
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gray:
            x = x.mean(dim=1, keepdim=True)
        spec = torch.fft.fftshift(torch.fft.fft2(x.float(), norm="ortho"), dim=(-2, -1))
        # eps keeps log finite where a frequency is exactly absent (flat MNIST backgrounds);
        # torch defines d|z|/dz = 0 at z = 0, so gradients stay finite too.
        s = torch.log(spec.abs() + self.eps)
        mean = s.mean(dim=(1, 2, 3), keepdim=True)
        std = s.std(dim=(1, 2, 3), keepdim=True)
        return (s - mean) / (std + 1e-6)


@register("spectrum")
def spectrum(
    in_channels: int, resolution: int, gray: bool | None = None, head: str = "cnn",
    width: int = 32,
) -> GANClassifier:
    """Classifier on the log-magnitude FFT spectrum (cf. Frank et al. 2020, Durall et al. 2020).

    gray: one spectrum of the channel mean (default: True for 1-channel data, else one spectrum
    per channel). head: 'cnn' (3×3 convs, then a 4×4 adaptive pool so coarse frequency
    position survives, then linear) or 'linear' (one weight per frequency; the input is
    resized to the build resolution so the weight count is fixed).
    """
    _check_data("spectrum", in_channels, resolution, min_resolution=4)
    _check_choice("spectrum", "head", head, ("cnn", "linear"))
    _check_int("spectrum", "width", width, 1, 4096)
    if gray is None:
        gray = in_channels == 1
    if not isinstance(gray, bool):
        raise UserError(f"classifier 'spectrum': option gray must be true or false, got {gray!r}")
    c = 1 if gray else in_channels
    if head == "linear":
        body = nn.Sequential(nn.Flatten(), nn.Linear(c * resolution * resolution, 1))
        input_size: int | None = resolution
    else:
        w = width
        # Global average pooling would throw away *where* in the spectrum the energy sits,
        # which is the whole signal here; a 4×4 adaptive pool keeps it coarsely.
        body = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * w * 16, 1),
        )
        input_size = None
    return GANClassifier(nn.Sequential(LogSpectrum(gray), body), in_channels,
                         input_size=input_size, fixed_input=head == "linear")


# ------------------------------------------------------------------------ DCGAN discriminator


@register("dcgan_d")
def dcgan_d(in_channels: int, resolution: int, width: int = 64) -> GANClassifier:
    """The DCGAN discriminator of paper.md §4 as an ablation classifier.

    Conv(w, 5×5, s2, same) → LReLU → Dropout 0.3 → Conv(2w, 5×5, s2, same) → LReLU →
    Dropout 0.3 → Flatten → Dense(1). LeakyReLU slope 0.3 is the Keras default the TF
    tutorial uses. Flatten+Dense needs a fixed size, so inputs are resized to `resolution`.
    """
    _check_data("dcgan_d", in_channels, resolution, min_resolution=4)
    _check_int("dcgan_d", "width", width, 1, 4096)
    side = math.ceil(math.ceil(resolution / 2) / 2)  # padding 2 reproduces TF 'same' sizes
    net = nn.Sequential(
        nn.Conv2d(in_channels, width, 5, stride=2, padding=2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
        nn.Conv2d(width, 2 * width, 5, stride=2, padding=2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(2 * width * side * side, 1),
    )
    return GANClassifier(net, in_channels, input_size=resolution, fixed_input=True)


# ----------------------------------------------------------------- released detectors (CNNDetection)


def load_released_detector(path: str | Path, arch: str, in_channels: int, resolution: int,
                           **options) -> GANClassifier:
    """A released real-vs-fake detector as a frozen-ready zoo classifier, by architecture mapping.

    CNNDetection (Wang et al. 2020) ships `blur_jpg_prob0.1.pth` and `blur_jpg_prob0.5.pth`:
    {"model": state_dict} of a torchvision-layout ResNet-50 (conv1, bn1, layer1-4, fc) whose fc
    has one output, trained on ImageNet-normalised RGB with 0_real = 0, 1_fake = 1, so its
    logit > 0 means *fake*. Here the same tensors fill the zoo's `arch` network (ImageNet
    mean/std inside its preprocessing, as CNNDetection's demo normalises), every key strictly,
    and the fc is negated so that logit > 0 means real, as for every gangaps classifier.
    Weights are read with `read_state_dict` (no pickle code ever runs).
    """
    if arch not in ("resnet18", "resnet50"):
        raise UserError(f"classifier {arch!r}: pretrained detectors load into resnet18 or resnet50 "
                        "(torchvision layout, as CNNDetection's)")
    from gangaps.models.classifiers import build_classifier  # registered builders, options checked

    model = build_classifier(arch, in_channels, resolution, **options)
    state = read_state_dict(path, f"classifier {arch!r}: pretrained")
    own = model.net.state_dict()
    # BatchNorm's step counter is absent from files saved before PyTorch 0.4.1; it is unused
    # in eval mode, so a missing one keeps the fresh network's
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise UserError(
            f"classifier {arch!r}: pretrained {str(path)!r} is not a {arch} with a 1-logit fc "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, other shape {wrong[:3]})")
    state = {k: (-v if k in ("fc.weight", "fc.bias") else v).to(own[k].dtype) for k, v in state.items()}
    model.net.load_state_dict({**own, **state})
    return model
