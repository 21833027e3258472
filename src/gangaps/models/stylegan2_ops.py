"""Low-level StyleGAN2 ops in plain PyTorch: FIR resampling, equalized-LR layers' math,
modulated convolution.

Every op reproduces the arithmetic of NVIDIA's stylegan2-ada-pytorch (`upfirdn2d`,
`conv2d_resample`, `bias_act`, `modulated_conv2d`) with stock `F.conv2d` /
`F.conv_transpose2d` calls, so it runs anywhere PyTorch does (CPU, CUDA, autocast,
channels_last, torch.compile) without custom CUDA kernels.

Conventions (as in NVIDIA's code): a 2-D FIR filter `f` is [k, k] with sum 1 (see
`setup_fir_filter`); up-sampling by 2 multiplies it by 4 so a constant image keeps its
value. The filters used here are symmetric, so convolution and correlation coincide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through leaky ReLU


def setup_fir_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """Separable taps -> normalized 2-D filter [k, k] (float32, sums to 1)."""
    t = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(t, t)
    return f / f.sum()


def no_autocast(ref: torch.Tensor) -> torch.autocast:
    """Context that turns autocast off on `ref`'s device: small ops kept in float32."""
    return torch.autocast(device_type=ref.device.type, enabled=False)


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None,
    act: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """x + b, activation, times (activation's default gain * gain), optional clamp.

    `b` is broadcast over dim 1 (channels / features), like NVIDIA's `bias_act`.
    """
    if b is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + b.to(x.dtype).reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
        gain = gain * LRELU_GAIN
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def _depthwise(f: torch.Tensor, channels: int, dtype: torch.dtype, gain: float = 1.0):
    # [C, 1, k, k] weight for a per-channel (groups=C) FIR convolution.
    w = f.to(dtype) if gain == 1 else (f * gain).to(dtype)
    return w[None, None].repeat(channels, 1, 1, 1)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR up-sampling (NVIDIA `upfirdn2d.upsample2d`): [N,C,H,W] -> [N,C,2H,2W].

    Zero insertion + padding + filtering is exactly a stride-2 transposed depthwise
    convolution; for an even filter size k the padding that keeps 2H outputs is k/2 - 1.
    """
    k = f.shape[-1]
    assert k % 2 == 0, "even-sized FIR filters only"
    c = x.shape[1]
    return F.conv_transpose2d(
        x, _depthwise(f, c, x.dtype, gain=4.0), stride=2, padding=k // 2 - 1, groups=c
    )


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR down-sampling (NVIDIA `upfirdn2d.downsample2d`): filter, keep every 2nd pixel."""
    k = f.shape[-1]
    assert k % 2 == 0, "even-sized FIR filters only"
    c = x.shape[1]
    return F.conv2d(x, _depthwise(f, c, x.dtype), stride=2, padding=k // 2 - 1, groups=c)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """'Same' convolution with optional 2x FIR up- or down-sampling (NVIDIA `conv2d_resample`).

    `w` is [O, I, kh, kw] used as a correlation kernel (what `F.conv2d` does) when not
    up-sampling. With up=2 NVIDIA's layers use it as a true convolution kernel, i.e. a
    transposed convolution with the same tensor; we follow that so imported weights match.
    `bias` (optional) is fused into the final convolution when that is exact.
    """
    kw = w.shape[-1]
    if up == 1 and down == 1:
        return F.conv2d(x, w, bias, padding=kw // 2)
    assert f is not None and (up, down) in ((2, 1), (1, 2)), "only 2x resampling is supported"
    kf = f.shape[-1]
    if down == 2:
        if kw == 1:  # 1x1: down-sample first (4x fewer MACs), then project
            return F.conv2d(downsample2d(x, f), w, bias)
        # Low-pass with enough padding for the strided 'same' conv that follows.
        pad = kw // 2 + kf // 2 - 1
        c = x.shape[1]
        x = F.conv2d(x, _depthwise(f, c, x.dtype), padding=pad, groups=c)
        return F.conv2d(x, w, bias, stride=2)
    # up == 2
    if kw == 1:  # 1x1: project first, then up-sample (fewer channels to filter)
        x = upsample2d(F.conv2d(x, w), f)
    else:
        # Stride-2 transposed conv ([I, O, k, k] weight layout), then FIR low-pass with the
        # padding NVIDIA's conv2d_resample arrives at (1 for a 3x3 kernel and 4-tap filter).
        x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
        p0 = kw // 2 + (kf + 1) // 2 - kw + 1
        p1 = kw // 2 + (kf - 2) // 2 - kw + 2
        c = x.shape[1]
        if p0 != p1:
            x = F.pad(x, [p0, p1, p0, p1])
            p0 = 0
        x = F.conv2d(x, _depthwise(f, c, x.dtype, gain=4.0), padding=p0, groups=c)
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, 1, 1)
    return x


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    fused: bool = False,
) -> torch.Tensor:
    """StyleGAN2 modulated (and demodulated) convolution, 'same' padding.

    x: [N, I, H, W]; weight: [O, I, k, k] (raw, un-scaled: demodulation normalizes it);
    styles: [N, I]; noise: broadcastable to the output, added after demodulation.

    fused=False (default, fastest for training batches): scale the input by the styles,
    run one ordinary convolution with the shared weight, scale the output by the
    demodulation coefficients. fused=True: per-sample weights and a grouped convolution
    (NVIDIA's inference path; good for batch 1). Both compute the same function.
    """
    n, i = styles.shape
    # Demodulation coefficients in float32 even under autocast: sum_{i,k} (W[o,i,k] s[n,i])^2
    # = (s^2) @ (sum_k W^2)^T, which avoids materializing per-sample weights.
    dcoefs = None
    if demodulate:
        with no_autocast(styles):
            s32 = styles.float()
            w2 = weight.float().square().sum(dim=[2, 3])  # [O, I]
            dcoefs = (s32.square() @ w2.t() + 1e-8).rsqrt()  # [N, O]

    if not fused:
        x = x * styles.to(x.dtype).reshape(n, i, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    o, _, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(n, 1, i, 1, 1).to(weight.dtype)  # [N, O, I, k, k]
    if dcoefs is not None:
        w = w * dcoefs.reshape(n, o, 1, 1, 1).to(w.dtype)
    h, wd = x.shape[2:]
    xg = x.reshape(1, n * i, h, wd)
    if up == 1:
        xg = F.conv2d(xg, w.reshape(n * o, i, kh, kw).to(x.dtype), padding=kw // 2, groups=n)
    else:
        # Grouped transposed conv expects [groups * I, O, k, k].
        wt = w.transpose(1, 2).reshape(n * i, o, kh, kw).to(x.dtype)
        xg = F.conv_transpose2d(xg, wt, stride=2, groups=n)
        kf = resample_filter.shape[-1]
        p0 = kw // 2 + (kf + 1) // 2 - kw + 1
        p1 = kw // 2 + (kf - 2) // 2 - kw + 2
        xg = F.pad(xg, [p0, p1, p0, p1])
        xg = F.conv2d(
            xg, _depthwise(resample_filter, n * o, xg.dtype, gain=4.0), groups=n * o
        )
    x = xg.reshape(n, o, *xg.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def minibatch_stddev(
    x: torch.Tensor, group_size: int | None, num_channels: int = 1
) -> torch.Tensor:
    """Append the minibatch standard-deviation feature maps (NVIDIA `MinibatchStdLayer`).

    Samples are grouped as NVIDIA does: sample j belongs to group j % (N // G), with
    G = min(group_size, N) (None = whole batch). NVIDIA fails when N is not a multiple of G;
    here G then falls back to the largest divisor of N not above it, so any batch size works
    and every batch size NVIDIA accepts gives NVIDIA's result.
    """
    n, c, h, w = x.shape
    g = n if group_size is None else min(group_size, n)
    while n % g:
        g -= 1
    nf = num_channels
    with no_autocast(x):  # variance of a handful of samples: keep it in float32
        y = x.float().reshape(g, -1, nf, c // nf, h, w)
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n/G, F, c, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(-1, nf, 1, 1)  # [n/G, F, 1, 1]
        y = y.repeat(g, 1, h, w)  # [N, F, H, W]
    return torch.cat([x, y.to(x.dtype)], dim=1)
