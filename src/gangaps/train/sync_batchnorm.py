"""BatchNorm over the global batch of a data-parallel job (`gan.sync_batchnorm`).

A job split over torchrun ranks gives each rank gan.batch_size / world images; plain
BatchNorm would normalise over those alone (32 images at 8 ranks instead of the 256 one
process sees) and leave every rank its own running statistics. `SyncBatchNorm` normalises
with the mean and variance of all ranks' images, so the split job computes what one process
would (up to float rounding) and the running statistics are the same on every rank.

torch.nn.SyncBatchNorm refuses CPU tensors ("expected input tensor to be on GPU", torch
2.14), so the gloo path that the tests run could not use it. This one all-reduces per-channel
moments with one differentiable all-reduce a forward (and one a backward) on any backend:
one code path on CPU and CUDA. Outside a process group, or in eval mode, it is plain BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from gangaps.train import distributed as ddp


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum of every rank's upstream gradient (each rank's
    loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d whose training statistics are those of the batch over all ranks."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and ddp.is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dims, c = [0, *range(2, x.dim())], x.shape[1]
        xf = x.float()
        var, mean = torch.var_mean(xf, dims, correction=0)  # this rank's, accurate (Welford)
        n = xf.new_tensor(x.numel() // c, dtype=torch.float64)
        # per-rank count, Σx and Σx² in float64: the global variance as E[x²] − E[x]² then
        # loses nothing worth counting (only the ranks' means are combined this way)
        m64, v64 = mean.double(), var.double()
        moments = _AllReduceSum.apply(torch.cat([n[None], n * m64, n * (v64 + m64 * m64)]))
        total = moments[0]
        g_mean = moments[1:1 + c] / total
        g_var = (moments[1 + c:] / total - g_mean * g_mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(g_mean.to(self.running_mean.dtype), f)
                unbiased = g_var * total / (total - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), f)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - g_mean.float().view(shape)) * torch.rsqrt(g_var.float().view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm1d/2d replaced by a SyncBatchNorm holding the same
    parameters and buffers (state-dict keys unchanged: checkpoints load either way)."""
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        return out.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
