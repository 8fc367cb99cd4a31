"""Training-step throughput: images/s of the real training step (forward, loss, backward, SGD update) under
each precision / memory format, on 1 and on N processes (torchrun, gloo on the CPU, NCCL on GPUs), in one run.

The data loader is left out: every step trains on the same pre-made batch, so the figure is the
step's own speed. The compiled modes (`train.compile`) report the seconds their first step took
(compilation included) as "first step". With N processes the batch is the global one, split among them (each process
gets 1 thread on the CPU, so that N processes share the cores a single process would use).

    python benchmarks/train_step.py [--config configs/synthetic.yaml] [--modes fp32 bf16 "compile-bf16"]
        [--processes 1 2] [--batch 8] [--crop 96 96] [--steps 10] [--device cpu] [--rounds 3] [--profile]

On a GPU machine `benchmarks/gpu_check.sh` runs it for PSPNet-R50 at 512x1024 (see that script).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "fp32": ["train.amp=none"],
    "bf16": ["train.amp=bf16"],
    "fp16": ["train.amp=fp16"],
    "channels_last": ["train.amp=none", "train.channels_last=true"],
    "bf16+channels_last": ["train.amp=bf16", "train.channels_last=true"],
    "compile-fp32": ["train.amp=none", "train.compile=true"],
    "compile-bf16": ["train.amp=bf16", "train.compile=true"],
}


def profile_step(trainer, batch: dict, rows: int = 10) -> str:
    """One more step under PyTorch's profiler: the table by operator (self CPU time), and the share of the
    convolutions (forward and backward), which compiling cannot make faster."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        trainer._step(batch)
    averages = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    convolutions = sum(event.self_cpu_time_total for event in averages if "convolution" in event.key)
    table = averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50)
    return f"{table}convolutions (forward and backward): {100 * convolutions / total:.1f}% of the step's CPU time\n"


def measure(args: argparse.Namespace, mode: str) -> dict:
    """Time `args.steps` training steps (after 2 of warm-up) in this process; images/s of the global batch."""
    from pspnet.config import load_config
    from pspnet.system import distributed
    from pspnet.training.trainer import Trainer

    overrides = [
        *MODES[mode],
        f"train.batch_size={args.batch}",
        f"data.augment.crop_size={list(args.crop)}",
        f"train.device={args.device}",
        "model.encoder_weights=null",
        "data.num_workers=0",
        *args.overrides,
    ]
    config = load_config(args.config, overrides)
    with distributed.session(config.train.device) as context, tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir) / "run", progress=False, distributed=context)
        local = config.train.batch_size // context.world_size
        generator = torch.Generator().manual_seed(context.rank)
        batch = {
            "image": torch.randn(local, 3, *args.crop, generator=generator),
            "mask": torch.randint(0, trainer.classes.num_classes, (local, *args.crop), generator=generator),
        }
        trainer.model.train()
        times = []
        first = time.perf_counter()
        for step in range(args.steps + 2):
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer._step(batch)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            if step == 0:
                first = time.perf_counter() - first
            if step >= 2:
                times.append(time.perf_counter() - start)
        profile = profile_step(trainer, batch) if args.profile else None
        times = distributed.gather(context, statistics.median(times))
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() and args.device != "cpu" else None
    return {
        "mode": mode,
        "processes": context.world_size,
        "images_per_s": config.train.batch_size / max(times),
        "step_s": max(times),
        "first_step_s": first,
        "profile": profile,
        "peak_gpu_gib": peak,
    }


def run_processes(args: argparse.Namespace, mode: str, processes: int) -> dict:
    """The measurement on `processes` processes, each in a fresh interpreter (torchrun for more than one)."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--config",
        args.config,
        "--batch",
        str(args.batch),
        "--crop",
        *map(str, args.crop),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
        *(["--profile"] if args.profile else []),
    ]
    if args.overrides:
        command += ["--set", *args.overrides]
    env = dict(os.environ)
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(processes),
            *command[1:],
        ]
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{mode} on {processes} process(es) failed:\n{result.stderr[-3000:]}")
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "synthetic.yaml"))
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "channels_last"], choices=list(MODES))
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--crop", type=int, nargs=2, default=[96, 96], metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every mode this many times, interleaved; report the median"
    )
    parser.add_argument("--profile", action="store_true", help="also print each mode's profiler table by operator")
    parser.add_argument("--worker", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = measure(args, args.worker)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result))
        return

    print(
        f"config {Path(args.config).name}, global batch {args.batch}, crop {args.crop[0]}x{args.crop[1]}, {args.device}"
    )
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}")
    rounds = [
        [run_processes(args, mode, processes) for processes in args.processes for mode in args.modes]
        for _ in range(args.rounds)
    ]
    rows = [median_row([measured[index] for measured in rounds]) for index in range(len(rounds[0]))]
    baseline = next(row for row in rows if row["mode"] == args.modes[0] and row["processes"] == args.processes[0])
    print(
        f"\n| mode | processes | images/s | step | first step | vs {args.modes[0]} x{args.processes[0]} | "
        "peak GPU memory |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        memory = f"{row['peak_gpu_gib']:.2f} GiB" if row["peak_gpu_gib"] is not None else "-"
        print(
            f"| {row['mode']} | {row['processes']} | {row['images_per_s']:.2f} | {1000 * row['step_s']:.0f} ms | "
            f"{row['first_step_s']:.1f} s | "
            f"{row['images_per_s'] / baseline['images_per_s']:.2f}x | {memory} |"
        )
    for row in rows:
        if row["profile"]:
            print(
                f"\nwhere a step of {row['mode']} on {row['processes']} process(es) spends its time:\n{row['profile']}"
            )


def median_row(measured: list[dict]) -> dict:
    """The measurement of one mode whose step time is the median of the rounds."""
    return sorted(measured, key=lambda row: row["step_s"])[len(measured) // 2]


if __name__ == "__main__":
    main()
