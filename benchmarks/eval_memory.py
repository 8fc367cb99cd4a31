"""Peak memory (RSS) of evaluating one 1024x2048 image with PSPNet-50 (19 classes, random weights) on the CPU.

`slide` is semseg's Cityscapes protocol (713x713 windows at stride 476, flip) at the given scales;
`whole` runs the full image at once with the same scales and flip. Each case runs in a fresh
process, because ru_maxrss is the high-water mark of a process's whole life. "baseline" is the
peak before inference (interpreter, torch, model, image), "peak" the peak after it.

    python benchmarks/eval_memory.py [--cases slide whole] [--size 1024 2048] [--scales 1.0] [--no-flip] [--model pointwise]

A smaller --size means fewer windows and a quicker run while developing (e.g. --size 713 1189: 3 windows).
The defaults measure the real case: 1024x2048, 8 windows, each run with its mirror image.
`--model pointwise` swaps the network for one 1x1 convolution to 19 classes: what remains is the
protocol's own memory (probability maps, window accumulators), in seconds even for six scales.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from machine import cpu_name, peak_rss_mb

from pspnet import PSPNet
from pspnet.config import EvalConfig
from pspnet.inference.protocol import Inferencer, scaled_size, window_grid


def settings_for(case: str, args: argparse.Namespace) -> EvalConfig:
    if case == "slide":
        # base size = the image's long side: semseg's 2048 for a Cityscapes image, no resizing for a smaller --size
        return EvalConfig(
            protocol="semseg-cityscapes",
            base_size=max(args.size),
            scales=args.scales,
            flip=args.flip,
            window_batch=args.window_batch,
        )
    return EvalConfig(mode="whole", scales=args.scales, flip=args.flip)


def window_count(settings: EvalConfig, height: int, width: int) -> int:
    """Forward-pass inputs (windows, or whole images) over all scales, before flipping."""
    if settings.mode == "whole":
        return len(settings.scales)
    sizes = [scaled_size(height, width, scale, settings.base_size, settings.resize) for scale in settings.scales]
    return sum(len(window_grid(*size, settings.crop_size, settings.window_stride)) for size in sizes)


def run_case(case: str, args: argparse.Namespace) -> dict:
    """Measure one case in this process."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PSPNet(19).eval() if args.model == "pspnet50" else torch.nn.Conv2d(3, 19, 1)
    image = torch.randn(1, 3, *args.size)
    settings = settings_for(case, args)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    probs = Inferencer(model, settings).probabilities(image)
    seconds = time.perf_counter() - start
    assert probs.shape == (1, 19, *args.size)
    return {
        "case": case,
        "inputs": window_count(settings, *args.size),
        "seconds": seconds,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=["slide", "whole"], default=["slide", "whole"])
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--window-batch", type=int, default=EvalConfig().window_batch)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--model", choices=["pspnet50", "pointwise"], default="pspnet50")
    parser.add_argument("--child", choices=["slide", "whole"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args)))
        return

    network = "PSPNet-50" if args.model == "pspnet50" else "a 1x1 convolution (protocol overhead only)"
    print(
        f"{network}, 19 classes, one {args.size[0]}x{args.size[1]} image, scales {args.scales}, "
        f"flip={args.flip}, window_batch={args.window_batch}, threads={args.threads}, torch {torch.__version__}, "
        f"{cpu_name()}"
    )
    options = [
        "--size",
        *map(str, args.size),
        "--scales",
        *map(str, args.scales),
        "--flip" if args.flip else "--no-flip",
        "--window-batch",
        str(args.window_batch),
        "--threads",
        str(args.threads),
        "--model",
        args.model,
    ]
    for case in args.cases:
        output = subprocess.run(
            [sys.executable, __file__, *options, "--child", case], check=True, capture_output=True, text=True
        ).stdout
        result = json.loads(output.splitlines()[-1])
        protocol = "semseg-cityscapes" if case == "slide" else "whole image"
        print(
            f"{case:5s} ({protocol}): {result['inputs']} windows/images{' x2 (flip)' if args.flip else ''}, "
            f"{result['seconds']:.0f} s, peak RSS {result['peak_mib'] / 1024:.2f} GiB "
            f"(baseline {result['baseline_mib'] / 1024:.2f} GiB, inference +{(result['peak_mib'] - result['baseline_mib']) / 1024:.2f} GiB)"
        )


if __name__ == "__main__":
    main()
