"""CPU inference backends side by side: eager fp32, bf16, compiled fp32 and bf16, onnxruntime fp32 and int8, in
one run.

Two models:
- the paper's PSPNet R50-D8 (deep stem, output stride 8, 19 classes) at 512x512, random weights
  (latency only: argmax agreement on random weights says little);
- the demo model (`configs/synthetic.yaml`, ResNet-18) trained on the built-in data, on its 100
  validation scenes: latency per 96x96 image, argmax agreement with eager fp32 and mIoU. Without
  `--checkpoint` the script trains it first (about 2.5 minutes on 2 cores; reused on later runs).

For each backend: median latency, GFLOP/s, speed-up over eager fp32, latency over the matmul floor
(FLOPs / this machine's matmul peak at that precision), model file size and peak RSS (each in a
fresh process). Each timed run goes once through every backend and through an fp32, a bf16 and an
int8 matrix product (which give the peaks), so load from other processes slows them all alike.
The row "eager fp32, nn.AdaptiveAvgPool2d" is the model before the exportable pooling, for comparison.
The compiled backends (torch.compile) also report their compile time in a fresh process with an empty
Inductor cache (cold) and again with that cache (warm), and how many compilations 5 input sizes cause.

    python benchmarks/inference.py [--checkpoint DEMO.safetensors] [--size 512] [--runs 5]
                                   [--threads N] [--work-dir runs/benchmark-inference] [--skip-paper] [--skip-demo]
                                   [--skip-onnx] [--profile torch-bf16 torch-compile-bf16]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
import torch
from machine import cpu_name, peak_rss_mb
from torch.utils.flop_counter import FlopCounterMode

from pspnet import load_model
from pspnet.checkpoint import open_model, save_checkpoint
from pspnet.config import Config, load_config
from pspnet.data.loaders import build_dataset
from pspnet.deploy.export import export_model
from pspnet.metrics import ConfusionMatrix
from pspnet.models import PSPNet
from pspnet.models.ppm import AdaptiveAvgPool

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "synthetic.yaml"
PEAK_SIZE = 2048
"""Side of the square matrices whose product measures the matmul peak."""


@dataclass
class Backend:
    name: str
    model: Callable[[torch.Tensor], torch.Tensor]
    precision: str
    """fp32, bf16 or int8: which matmul peak is its floor."""
    file: Path | None
    load: tuple[str, ...] = ()
    """`--probe-rss` arguments that load it in a fresh process (empty: not measured)."""


PRECISIONS = ("fp32", "bf16", "int8")


def matmul(precision: str) -> Callable[[], torch.Tensor]:
    """One PEAK_SIZE^3 matrix product at `precision` (int8: torch._int_mm, int32 accumulation)."""
    generator = torch.Generator().manual_seed(0)
    if precision == "int8":
        a, b = (torch.randint(-64, 64, (PEAK_SIZE, PEAK_SIZE), dtype=torch.int8, generator=generator) for _ in range(2))
        return lambda: torch._int_mm(a, b)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE, generator=generator).to(dtype) for _ in range(2))
    return lambda: torch.mm(a, b)


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def with_library_pooling(model: PSPNet) -> PSPNet:
    """A copy of `model` whose PPM pools with nn.AdaptiveAvgPool2d, as before the exportable pooling."""
    model = copy.deepcopy(model)
    for branch in model.decode_head.ppm.branches:
        branch[0] = torch.nn.AdaptiveAvgPool2d(branch[0].output_size)
    return model


def interleaved_medians(tasks: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, float]:
    """Median seconds of each task; each run calls every task once, in turn."""
    times: dict[str, list[float]] = {name: [] for name in tasks}
    with torch.inference_mode():
        for run in range(warmup + runs):
            for name, task in tasks.items():
                start = time.perf_counter()
                task()
                if run >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(
    backends: list[Backend], inputs: list[torch.Tensor], runs: int, warmup: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per input of each backend, and the matmul peak (GFLOP/s) of each precision, measured
    in the same interleaved runs."""
    tasks = {backend.name: (lambda model=backend.model: [model(x) for x in inputs]) for backend in backends}
    tasks.update({f"{precision} matmul": matmul(precision) for precision in PRECISIONS})
    medians = interleaved_medians(tasks, runs, warmup)
    latency = {backend.name: medians[backend.name] / len(inputs) for backend in backends}
    peaks = {precision: 2 * PEAK_SIZE**3 / medians[f"{precision} matmul"] / 1e9 for precision in PRECISIONS}
    return latency, peaks


def probe_rss(load: tuple[str, ...], size: tuple[int, int], threads: int) -> float | None:
    """Peak RSS (MB) of a fresh process that loads a backend and runs it twice at `size`."""
    if not load:
        return None
    command = [sys.executable, __file__, "--probe-rss", *load, str(size[0]), str(size[1]), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def run_probe(path: str, backend: str, height: str, width: str) -> None:
    """Print the peak RSS (MB) after loading `path` on `backend` (`-`: the file's own) and two runs
    (path `-`: after the imports only)."""
    if path == "-":
        print(f"{peak_rss_mb():.0f}")
        return
    model = load_model(path, backend=None if backend == "-" else backend)
    x = torch.randn(1, model.card.in_channels, int(height), int(width))
    with torch.inference_mode():
        model(x)
        model(x)
    print(f"{peak_rss_mb():.0f}")


def further_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """5 input sizes around `size`, for counting compilations."""
    return [(size[0] + dh, size[1] + dw) for dh, dw in ((-31, 17), (9, -23), (-64, -64), (41, 3), (-7, 55))]


def compile_probes(checkpoint: Path, backend: str, size: tuple[int, int], threads: int) -> tuple[float, float, int]:
    """Two fresh processes that load `backend`: the seconds to its first call's end with no entry of it in the
    Inductor cache (cold), then with the entry the first process wrote (warm), and the graphs the second one
    compiled for `size` and 5 further sizes (each process holds one compiled model: two in one process share
    the code object of `PSPNet.forward`, and then its compilations)."""
    command = [sys.executable, __file__, "--probe-compile", str(checkpoint), backend, *map(str, size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    runs = [subprocess.run(command, capture_output=True, text=True, check=True, env=env) for _ in range(2)]
    (cold, _), (warm, compilations) = (run.stdout.strip().splitlines()[-2:] for run in runs)
    return float(cold), float(warm), int(compilations)


def run_compile_probe(path: str, backend: str, height: str, width: str) -> None:
    """Print the seconds from loading `path` on `backend` to the end of its first call, then the number of
    graphs compiled after 5 further sizes."""
    start = time.perf_counter()
    model = load_model(path, backend=backend)
    size = (int(height), int(width))
    with torch.inference_mode():
        model(torch.randn(1, model.card.in_channels, *size))
        seconds = time.perf_counter() - start
        for h, w in further_sizes(size):
            model(torch.randn(1, model.card.in_channels, h, w))
    if not model.compiled_ok:
        raise SystemExit(f"{backend} did not compile: {model.fallback_reason}")
    print(f"{seconds:.1f}\n{model.compilations}")


def build_backends(
    checkpoint: Path,
    work: Path,
    size: tuple[int, int],
    calibration: Config,
    calibration_images: int,
    threads: int,
    onnx: bool = True,
) -> list[Backend]:
    """The rows: eager fp32 (and with the old pooling), bf16, compiled fp32 and bf16 (compile times measured in
    fresh processes), onnxruntime fp32 and int8 (both exported and verified here; not with `onnx` false)."""
    work.mkdir(parents=True, exist_ok=True)
    fp32 = load_model(checkpoint)
    rows = [
        Backend("eager fp32", fp32, "fp32", checkpoint, (str(checkpoint), "torch")),
        Backend("eager fp32, nn.AdaptiveAvgPool2d", with_library_pooling(fp32), "fp32", checkpoint),
        Backend(
            "torch-bf16",
            load_model(checkpoint, backend="torch-bf16"),
            "bf16",
            checkpoint,
            (str(checkpoint), "torch-bf16"),
        ),
    ]
    cache = work / "inductor"  # emptied here, then shared by this process and the probes
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    for backend, precision in (("torch-compile", "fp32"), ("torch-compile-bf16", "bf16")):
        cold, warm, compilations = compile_probes(checkpoint, backend, size, threads)
        sizes = ", ".join(f"{h}x{w}" for h, w in [size, *further_sizes(size)])
        print(
            f"  {backend}: load + first call {cold:.0f} s with an empty Inductor cache, {warm:.0f} s with it filled; "
            f"{compilations} compilation(s) for the sizes {sizes}"
        )
        model = load_model(checkpoint, backend=backend)
        rows.append(Backend(backend, model, precision, checkpoint, (str(checkpoint), backend)))
    if not onnx:
        return rows
    onnx_path, int8_path = work / "model.onnx", work / "model-int8.onnx"
    start = time.perf_counter()
    report = export_model(checkpoint, onnx_path, "onnx", size=size)
    print(
        f"  onnx export + verification: {time.perf_counter() - start:.0f} s; worst relative L2 "
        f"{max(check.relative_l2 for check in report.checks):.1e} over {len(report.checks)} sizes"
    )
    start = time.perf_counter()
    report = export_model(
        checkpoint,
        int8_path,
        "onnx-int8",
        size=size,
        calibration=calibration,
        calibration_images=calibration_images,
        min_agreement=0.0,
    )
    print(
        f"  int8 export: {time.perf_counter() - start:.0f} s in all, calibration + quantization "
        f"{report.calibration_seconds:.1f} s on {report.calibration_images} images; agreement with PyTorch on "
        f"held-out images {100 * report.agreement:.2f}%"
    )
    return [
        *rows,
        Backend("onnxruntime fp32", load_model(onnx_path), "fp32", onnx_path, (str(onnx_path), "-")),
        Backend("onnxruntime int8", load_model(int8_path), "int8", int8_path, (str(int8_path), "-")),
    ]


def print_table(
    title: str,
    backends: list[Backend],
    latency: dict[str, float],
    flops: float,
    peaks: dict[str, float],
    size: tuple[int, int],
    threads: int,
    quality: dict[str, tuple[float, float | None]] | None = None,
) -> None:
    """One row per backend; `quality` maps a backend to (argmax agreement with eager fp32, mIoU or None)."""
    print(
        f"\n{title}: {flops / 1e9:.1f} GFLOP per image; matmul peak ({PEAK_SIZE}^3 products, same runs): fp32 "
        f"{peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s ({peaks['bf16'] / peaks['fp32']:.2f}x), "
        f"int8 {peaks['int8']:.0f} GOP/s ({peaks['int8'] / peaks['fp32']:.2f}x)"
    )
    header = f"{'backend':<34}{'latency':>10}{'GFLOP/s':>9}{'speed-up':>9}{'/ floor':>8}{'file MB':>9}{'peak RSS':>10}"
    if quality:
        header += f"{'agreement':>11}{'mIoU':>7}"
    print(header)
    base = latency["eager fp32"]
    for backend in backends:
        seconds = latency[backend.name]
        floor = flops / (peaks[backend.precision] * 1e9)
        rss = probe_rss(backend.load, size, threads)
        size_mb = backend.file.stat().st_size / 1e6 if backend.file else float("nan")
        row = (
            f"{backend.name:<34}{seconds * 1000:>7.1f} ms{flops / seconds / 1e9:>9.1f}{base / seconds:>8.2f}x"
            f"{seconds / floor:>7.2f}x{size_mb:>9.1f}{'-' if rss is None else f'{rss:.0f} MB':>10}"
        )
        if quality:
            agreement, miou = quality.get(backend.name, (float("nan"), float("nan")))
            row += f"{100 * agreement:>10.2f}%" + (f"{100 * miou:>7.1f}" if miou is not None else f"{'-':>7}")
        print(row)


def paper_model(args: argparse.Namespace) -> None:
    size = (args.size, args.size)
    work = Path(args.work_dir) / "r50"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    scenes = {
        "format": "synthetic",
        "synthetic": {"image_size": list(size), "num_train": 8, "num_val": 2},
        "augment": {"crop_size": list(size)},
    }
    config = Config.from_dict({"model": {"num_classes": 19}, "data": scenes})
    checkpoint = save_checkpoint(work / "r50_random.safetensors", PSPNet(19).eval(), config)
    print(
        f"\nPSPNet R50-D8 (deep stem, output stride 8), random weights, 1x3x{size[0]}x{size[1]}; int8 calibrated on "
        f"8 synthetic scenes at that size"
    )
    backends = build_backends(checkpoint, work, size, config, 8, args.threads, not args.skip_onnx)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    flops = count_flops(backends[0].model, x)
    with torch.inference_mode():
        expected = backends[0].model(x).argmax(1)
        agreement = {b.name: (float((b.model(x).argmax(1) == expected).double().mean()), None) for b in backends}
    latency, peaks = measure(backends, [x], args.runs, args.warmup)
    print_table(
        f"R50-D8 at {size[0]}x{size[1]}, median of {args.runs} interleaved runs",
        backends,
        latency,
        flops,
        peaks,
        size,
        args.threads,
        agreement,
    )
    for name in args.profile or ():
        profile_operators(next(b for b in backends if b.name == name), x)
    pooled = torch.randn(1, 2048, size[0] // 8, size[1] // 8)
    pools = {
        "matrix": lambda: [AdaptiveAvgPool(b)(pooled) for b in (1, 2, 3, 6)],
        "nn": lambda: [torch.nn.AdaptiveAvgPool2d(b)(pooled) for b in (1, 2, 3, 6)],
    }
    pool_latency = interleaved_medians(pools, 20, 2)
    print(
        f"PPM pooling alone (bins 1, 2, 3, 6 of 1x2048x{size[0] // 8}x{size[1] // 8}): matrix products "
        f"{pool_latency['matrix'] * 1000:.2f} ms, nn.AdaptiveAvgPool2d {pool_latency['nn'] * 1000:.2f} ms"
    )


def profile_operators(backend: Backend, x: torch.Tensor, rows: int = 15) -> None:
    """Print where one call of `backend` spends its time: PyTorch's profiler table by operator (self CPU time),
    after a warm-up call. Compiled backends show Inductor's fused kernels (`cpp_fused_...`) and the oneDNN
    convolutions and matrix products they call."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        backend.model(x)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            backend.model(x)
    print(f"\nwhere the time of one {backend.name} call goes, by operator (self CPU time):")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


def demo_checkpoint(args: argparse.Namespace) -> Path:
    """`--checkpoint`, or a demo model trained here (reused when a previous run trained it)."""
    if args.checkpoint:
        return Path(args.checkpoint)
    from pspnet.training.trainer import Trainer  # only when a model has to be trained

    run_dir = Path(args.work_dir) / "demo-run"
    checkpoint = run_dir / "checkpoints" / "best.safetensors"
    if checkpoint.is_file():
        print(f"\nreusing the demo model trained by an earlier run: {checkpoint}")
        return checkpoint
    print(f"\ntraining the demo model ({DEMO_CONFIG.name}) into {run_dir} ...")
    start = time.perf_counter()
    Trainer(load_config(DEMO_CONFIG), run_dir, progress=False).train()
    print(f"  trained in {(time.perf_counter() - start) / 60:.1f} min")
    return checkpoint


def demo_model(args: argparse.Namespace) -> None:
    checkpoint = demo_checkpoint(args)
    config = open_model(checkpoint).config
    val = build_dataset(config.data, config.data.val_split, train=False)
    size = tuple(config.data.synthetic.image_size)
    print(f"demo model {checkpoint} on the {len(val)} validation scenes ({size[0]}x{size[1]})")
    backends = build_backends(
        checkpoint,
        Path(args.work_dir) / "demo",
        size,
        config,
        args.calibration_images,
        args.threads,
        not args.skip_onnx,
    )
    images = [val[index]["image"][None] for index in range(len(val))]
    masks = [val[index]["mask"][None] for index in range(len(val))]
    num_classes = val.classes.num_classes
    quality = {}
    with torch.inference_mode():
        reference = [backends[0].model(image).argmax(1) for image in images]
        for backend in backends:
            confusion = ConfusionMatrix(num_classes)
            agree = pixels = 0
            for image, mask, expected in zip(images, masks, reference):
                prediction = backend.model(image).argmax(1)
                confusion.update(prediction, mask)
                agree += int((prediction == expected).sum())
                pixels += expected.numel()
            quality[backend.name] = (agree / pixels, confusion.compute().miou)
    flops = count_flops(backends[0].model, images[0])
    latency, peaks = measure(backends, images[: args.demo_images], args.runs, args.warmup)
    print_table(
        f"demo model at {size[0]}x{size[1]}, median of {args.runs} interleaved runs over {args.demo_images} images",
        backends,
        latency,
        flops,
        peaks,
        size,
        args.threads,
        quality,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="trained demo model (default: train one, about 5 min on 2 cores)")
    parser.add_argument("--size", type=int, default=512, help="side of the R50-D8 input (default 512)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calibration-images", type=int, default=32, help="int8 calibration images of the demo model")
    parser.add_argument(
        "--demo-images", type=int, default=20, help="validation images per latency run of the demo model"
    )
    parser.add_argument(
        "--work-dir",
        default=str(ROOT / "runs" / "benchmark-inference"),
        help="exported files and the trained demo model",
    )
    parser.add_argument("--skip-paper", action="store_true", help="no R50-D8 table")
    parser.add_argument("--skip-demo", action="store_true", help="no demo-model table")
    parser.add_argument("--skip-onnx", action="store_true", help="no onnxruntime rows (no export, no calibration)")
    parser.add_argument(
        "--profile",
        nargs="+",
        metavar="BACKEND",
        choices=["eager fp32", "torch-bf16", "torch-compile", "torch-compile-bf16"],
        help="R50-D8: also print the profiler's table by operator for these rows",
    )
    parser.add_argument("--probe-rss", nargs=4, metavar=("FILE", "BACKEND", "H", "W"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-compile", nargs=4, metavar=("FILE", "BACKEND", "H", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe_rss:
        run_probe(*args.probe_rss)
        return
    if args.probe_compile:
        run_compile_probe(*args.probe_compile)
        return

    print(
        f"machine: {cpu_name()}, {args.threads} threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )
    if not args.skip_paper:
        paper_model(args)
    if not args.skip_demo:
        demo_model(args)
    print(
        f"\npeak RSS: each backend in a fresh process that loads it and runs it twice; such a process peaks at "
        f"{probe_rss(('-', '-'), (1, 1), args.threads):.0f} MB with the imports alone. Latency / floor = latency x "
        "the precision's matmul peak / FLOPs."
    )


if __name__ == "__main__":
    main()
