"""What a training would cost, shown before it starts: parameters, FLOPs, memory and time per iteration.

FLOPs are counted by `torch.utils.flop_counter` on one forward pass at the training crop (batch 1);
a training step is taken as 3x the forward FLOPs (forward, and backward for inputs and weights). Memory is
the weights with their gradients and SGD momentum, plus every layer's output kept for the backward pass.
The time divides the step's FLOPs by this machine's measured float32 matmul rate: a lower bound that the
network's memory-bound layers stretch, typically by 1.5 to 3x on a CPU.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from ..config import Config

STEP_FLOPS_PER_FORWARD = 3
"""A training step's FLOPs as a multiple of the forward pass's."""


@functools.cache
def matmul_rate() -> float:
    """This process's float32 matmul rate in FLOP/s (best of a few 512x512 products)."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 512**3 / best


@torch.no_grad()
def training_cost(config: Config, processes: int = 1) -> dict[str, Any]:
    """Parameters, forward GFLOPs at the crop, and estimated memory (GiB per process) and seconds per iteration."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..classes import ClassInfo
    from ..models import create_model

    classes = ClassInfo.generic(config.model.num_classes or 2)
    model = create_model(config, classes).eval()
    height, width = config.data.augment.crop_size
    kept = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out: kept.append(out.numel() if torch.is_tensor(out) else 0))
        for module in model.modules()
        if not list(module.children())
    ]
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, config.model.in_channels, height, width))
    for hook in hooks:
        hook.remove()
    parameters = sum(p.numel() for p in model.parameters())
    forward_flops = counter.get_total_flops()
    per_process = config.train.batch_size // max(1, processes)
    memory = 4 * (3 * parameters + sum(kept) * per_process)
    seconds = STEP_FLOPS_PER_FORWARD * forward_flops * per_process / matmul_rate()
    return {
        "parameters": parameters,
        "forward_gflops": round(forward_flops / 1e9, 2),
        "memory_gib": round(memory / 2**30, 2),
        "seconds_per_iter": float(f"{seconds:.3g}"),
        "total_minutes": round(seconds * config.train.max_iters / 60, 1),
        "note": "lower bounds: matmul rate of this machine, activations of every layer kept once",
    }
