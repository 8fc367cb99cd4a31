"""Baseline inference speed of the paper's model: PSPNet ResNet-50 (OS 8) at 512x512.

Reports, in one run: median latency over several runs after warm-up in eager fp32 (NCHW) and in
channels_last, the achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter), and peak RSS.
These are the figures later speed work is compared against.

    python benchmarks/inference.py [--size 512] [--runs 5] [--warmup 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from pspnet import PSPNet


def cpu_name() -> str:
    """The processor's model name (Linux), else the architecture."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def median_latency(model: torch.nn.Module, x: torch.Tensor, runs: int, warmup: int) -> float:
    def sync():
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--encoder", default="resnet50_deepstem")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = PSPNet(args.classes, encoder=args.encoder).eval().to(device)
    x = torch.randn(1, 3, args.size, args.size, device=device)

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    gflop = counter.get_total_flops() / 1e9

    eager = median_latency(model, x, args.runs, args.warmup)
    model_cl = model.to(memory_format=torch.channels_last)
    channels_last = median_latency(model_cl, x.contiguous(memory_format=torch.channels_last), args.runs, args.warmup)

    print(f"PSPNet {args.encoder}, output stride {model.output_stride}, input 1x3x{args.size}x{args.size}, {args.device}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M, FLOPs per image: {gflop:.1f} GFLOP")
    print(f"{'mode':<16}{'median latency':>16}{'GFLOP/s':>10}")
    for name, seconds in (("eager fp32", eager), ("channels_last", channels_last)):
        print(f"{name:<16}{seconds * 1000:>13.0f} ms{gflop / seconds:>10.1f}")
    print(f"channels_last / eager latency ratio: {channels_last / eager:.2f}")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
