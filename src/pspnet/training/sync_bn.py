"""Synchronized BatchNorm for the CPU (gloo): batch statistics over the batches of every process.

PyTorch's `nn.SyncBatchNorm` runs only on GPUs, and the `torch.distributed.nn` differentiable
collectives are deprecated, so the CPU version is written here: a custom autograd function that
all-reduces (sum, sum of squares, count) per channel in the forward pass and (sum of the gradient,
sum of the gradient times the normalised input) in the backward pass. The statistics are summed in
float64. The module subclasses `nn.BatchNorm2d`, so checkpoints keep plain BatchNorm keys, and in
eval mode it is exactly a BatchNorm (running statistics, no communication).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class _SyncBatchNormFunction(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with mean/var over every process's batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        channels = x.shape[1]
        x64 = x.transpose(0, 1).reshape(channels, -1).double()
        stats = torch.cat([x64.sum(1), (x64 * x64).sum(1), torch.full((1,), float(x64.shape[1]), dtype=torch.float64)])
        stats = _all_reduce(stats)
        total_sum, total_square, count = stats[:channels], stats[channels : 2 * channels], stats[-1]
        mean = total_sum / count
        var = (total_square / count - mean * mean).clamp_(min=0)  # biased: what normalises the batch
        invstd = torch.rsqrt(var + eps)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        x_hat = (x.double() - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(x_hat.to(x.dtype), weight, invstd.to(x.dtype))
        ctx.count = count
        y = x_hat.to(x.dtype) * weight.view(shape) + bias.view(shape)
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var, _grad_count):
        x_hat, weight, invstd = ctx.saved_tensors
        channels = x_hat.shape[1]
        shape = (1, channels) + (1,) * (x_hat.dim() - 2)
        dims = [0] + list(range(2, x_hat.dim()))
        local = torch.cat([grad_y.double().sum(dims), (grad_y.double() * x_hat.double()).sum(dims)])
        # this process's share
        grad_bias, grad_weight = local[:channels].to(weight.dtype), local[channels:].to(weight.dtype)
        total = _all_reduce(local.clone())
        sum_dy, sum_dy_xhat = total[:channels], total[channels:]
        count = ctx.count
        grad_x = (weight.double() * invstd.double()).view(shape) * (
            grad_y.double() - (sum_dy / count).view(shape) - x_hat.double() * (sum_dy_xhat / count).view(shape)
        )
        return grad_x.to(grad_y.dtype), grad_weight, grad_bias, None


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the batches of every process (CPU, gloo or any backend)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            or not self.affine
            or not dist.is_available()
            or not dist.is_initialized()
            or dist.get_world_size() == 1
        ):
            return super().forward(x)
        y, mean, var, count = _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1)) if count > 1 else var
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach().to(self.running_var.dtype), alpha=momentum)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of `module` synchronized across processes: PyTorch's SyncBatchNorm on CUDA (NCCL),
    ours elsewhere. Weights and buffers are kept (same tensors, same state-dict keys)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm):
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias  # the same parameters (optimizer groups stay valid)
            sync.running_mean, sync.running_var, sync.num_batches_tracked = (
                child.running_mean,
                child.running_var,
                child.num_batches_tracked,
            )
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return module
