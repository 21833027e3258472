"""StyleGAN2 generator and discriminator (Karras et al. 2020), config-F style, pure PyTorch.

Computes the same function as NVIDIA's stylegan2-ada-pytorch `training/networks.py`
(c_dim = 0) and uses the same parameter and buffer names, so NVIDIA state dicts load with a
strict `load_state_dict` (see `stylegan2_import.import_nvidia`). Differences that do not
change the function: no custom CUDA kernels, no fp16 blocks (use `torch.autocast` with
bfloat16 instead; the mapping network, styles, demodulation coefficients, the skip-image
accumulation and D's 4x4 epilogue stay float32), and the modulated conv
defaults to NVIDIA's training path (`fused_modconv=False`).

Architectures: G 'skip' (default), 'orig', 'resnet'; D 'resnet' (default), 'skip', 'orig'.
Resolutions: powers of two >= 4 (8/16 for tiny tests; 32..1024 in practice).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gangaps.models.stylegan2_ops import (
    bias_act,
    conv2d_resample,
    downsample2d,
    minibatch_stddev,
    modulated_conv2d,
    no_autocast,
    setup_fir_filter,
    upsample2d,
)

__all__ = [
    "Generator",
    "MappingNetwork",
    "SynthesisNetwork",
    "Discriminator",
    "import_nvidia",
    "convert_nvidia_files",
    "load_converted",
]

_SQRT_HALF = math.sqrt(0.5)  # residual branches are summed with this gain to keep variance
NOISE_MODES = ("random", "const", "none")


def _channels(res: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // res, channel_max)


def _check_resolution(img_resolution: int) -> int:
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
    return int(math.log2(img_resolution))


# ----------------------------------------------------------------------------- layers


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalized learning rate: weights stored N(0,1)/lr_multiplier and
    scaled at run time by lr_multiplier/sqrt(fan_in); bias scaled by lr_multiplier."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias_gain != 1 else self.bias
        x = nn.functional.linear(x, w.to(x.dtype), b.to(x.dtype))
        return bias_act(x, None, self.activation) if self.activation != "linear" else x


class Conv2dLayer(nn.Module):
    """Equalized-LR convolution with optional 2x FIR resampling, bias, activation, clamp."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.activation = activation
        self.up, self.down = up, down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_fir_filter())
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        if self.activation == "linear" and gain == 1 and self.conv_clamp is None:
            # Nothing after the bias: let the convolution add it.
            b = self.bias.to(x.dtype) if self.bias is not None else None
            return conv2d_resample(x, w, self.resample_filter, self.up, self.down, bias=b)
        x = conv2d_resample(x, w, self.resample_filter, self.up, self.down)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=gain, clamp=clamp)


# ----------------------------------------------------------------------------- generator


class MappingNetwork(nn.Module):
    """z -> w: 2nd-moment normalization, `num_layers` lrelu FC layers with lr multiplier 0.01,
    broadcast to `num_ws`, optional truncation towards the tracked average `w_avg`."""

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 8,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
    ):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], "lrelu", lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [N, {self.z_dim}], got {list(z.shape)}")
        # Tiny compute, and w feeds every style: always float32, even under autocast.
        with no_autocast(z):
            x = z.float()
            x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
            for idx in range(self.num_layers):
                x = getattr(self, f"fc{idx}")(x)
            if update_w_avg:
                with torch.no_grad():
                    # w_avg <- lerp(mean(w), w_avg, beta): moving average used by truncation.
                    self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
            if truncation_psi != 1:
                if truncation_cutoff is None:
                    x = self.w_avg.lerp(x, truncation_psi)
                else:
                    head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                    x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional 2x up-sampling), per-pixel noise, bias, lrelu."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: int = 1,
        use_noise: bool = True,
        conv_clamp: float | None = None,
        kernel_size: int = 3,
    ):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_fir_filter())
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = False,
        gain: float = 1.0,
    ) -> torch.Tensor:
        with no_autocast(w):
            styles = self.affine(w.float())
        noise = None
        if self.use_noise and noise_mode == "random":
            r = self.resolution
            noise = torch.randn(x.shape[0], 1, r, r, device=x.device, dtype=x.dtype)
            noise = noise * self.noise_strength.to(x.dtype)
        elif self.use_noise and noise_mode == "const":
            noise = (self.noise_const * self.noise_strength).to(x.dtype)
        x = modulated_conv2d(
            x, self.weight, styles, noise=noise, up=self.up,
            resample_filter=self.resample_filter, fused=fused_modconv,
        )
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, "lrelu", gain=gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, no demodulation, linear."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = False):
        with no_autocast(w):
            styles = self.affine(w.float()) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias, "linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: [const | conv0 (up 2x)], conv1, [toRGB], [resnet skip]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        conv_clamp: float | None = None,
        use_noise: bool = True,
    ):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown generator architecture {architecture!r}")
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, architecture
        self.img_channels, self.is_last = img_channels, is_last
        self.register_buffer("resample_filter", setup_fir_filter())
        self.num_conv = self.num_torgb = 0
        kw = dict(w_dim=w_dim, resolution=resolution, use_noise=use_noise, conv_clamp=conv_clamp)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **kw)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **kw)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False, up=2)

    def forward(self, x, img, ws, noise_mode="random", fused_modconv=False):
        w_iter = iter(ws.unbind(dim=1))
        kw = dict(noise_mode=noise_mode, fused_modconv=fused_modconv)
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, next(w_iter), **kw)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=_SQRT_HALF)
            x = self.conv0(x, next(w_iter), **kw)
            x = self.conv1(x, next(w_iter), gain=_SQRT_HALF, **kw)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), **kw)
            x = self.conv1(x, next(w_iter), **kw)
        if img is not None:
            with no_autocast(img):  # the running image stays float32 (3 channels: cheap)
                img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.float().contiguous()
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R] (float32)."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        architecture: str = "skip",
        conv_clamp: float | None = None,
        use_noise: bool = True,
    ):
        super().__init__()
        log2 = _check_resolution(img_resolution)
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                _channels(res // 2, channel_base, channel_max) if res > 4 else 0,
                _channels(res, channel_base, channel_max),
                w_dim=w_dim, resolution=res, img_channels=img_channels,
                is_last=res == img_resolution, architecture=architecture,
                conv_clamp=conv_clamp, use_noise=use_noise,
            )
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(
        self, ws: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = False
    ) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim != 3 or tuple(ws.shape[1:]) != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        ws = ws.float()
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            # A block's toRGB shares its w with the next block's first conv (NVIDIA's layout).
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: `mapping` (z -> ws) then `synthesis` (ws -> image in ~[-1, 1])."""

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        img_resolution: int = 256,
        img_channels: int = 3,
        mapping_layers: int = 8,
        channel_base: int = 32768,
        channel_max: int = 512,
        architecture: str = "skip",
        conv_clamp: float | None = None,
        w_avg_beta: float = 0.995,
        use_noise: bool = True,
    ):
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channel_base=channel_base,
            channel_max=channel_max, architecture=architecture, conv_clamp=conv_clamp,
            use_noise=use_noise,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim, w_dim, self.num_ws, num_layers=mapping_layers, w_avg_beta=w_avg_beta
        )

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        update_w_avg: bool = False,
        fused_modconv: bool = False,
    ) -> torch.Tensor:
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg=update_w_avg)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)


# ----------------------------------------------------------------------------- discriminator


class DiscriminatorBlock(nn.Module):
    """One resolution: [fromRGB], conv0 3x3, conv1 3x3 down 2x, [resnet skip 1x1 down 2x]."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        conv_clamp: float | None = None,
    ):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown discriminator architecture {architecture!r}")
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, architecture
        self.register_buffer("resample_filter", setup_fir_filter())
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu",
                                       conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu",
                                 conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2,
                                 conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.in_channels == 0 or self.architecture == "skip":
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=_SQRT_HALF)
            x = self.conv1(self.conv0(x), gain=_SQRT_HALF)
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: [fromRGB], minibatch stddev, conv 3x3, fc, out -> logits [N, 1]."""

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.architecture = architecture
        self.mbstd_group_size, self.mbstd_num_channels = mbstd_group_size, mbstd_num_channels
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, 1, activation="lrelu")
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3,
                                activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, "lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x, img):
        # Always float32, as in NVIDIA's code: 4x4 maps are cheap, and the logits feed the
        # losses and the R1 gradient penalty.
        with no_autocast(x):
            x = x.float()
            if self.architecture == "skip":
                x = x + self.fromrgb(img.float())
            if self.mbstd_num_channels > 0:
                x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
            x = self.conv(x)
            x = self.fc(x.flatten(1))  # NCHW order, also for channels_last inputs
            return self.out(x)


class Discriminator(nn.Module):
    """StyleGAN2 discriminator: image [N, C, R, R] -> real/fake logits [N, 1]."""

    def __init__(
        self,
        img_resolution: int = 256,
        img_channels: int = 3,
        channel_base: int = 32768,
        channel_max: int = 512,
        architecture: str = "resnet",
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        log2 = _check_resolution(img_resolution)
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        ch = lambda r: _channels(r, channel_base, channel_max)  # noqa: E731
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                ch(res) if res < img_resolution else 0, ch(res), ch(res // 2),
                resolution=res, img_channels=img_channels, architecture=architecture,
                conv_clamp=conv_clamp,
            )
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(
            ch(4), resolution=4, img_channels=img_channels, architecture=architecture,
            mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels,
            conv_clamp=conv_clamp,
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        r = self.img_resolution
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, r, r):
            want = f"[N, {self.img_channels}, {r}, {r}]"
            raise ValueError(f"img must be {want}, got {list(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img)
        return self.b4(x, img)


# Re-exported public API of the importer (defined in its own module to keep this one short).
from gangaps.models.stylegan2_import import (  # noqa: E402
    convert_nvidia_files,
    import_nvidia,
    load_converted,
)
