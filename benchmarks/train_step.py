"""Training-step throughput: images/s of the real training step (forward, loss, backward, SGD update) under
each precision / memory format, on 1 and on N processes (torchrun, gloo on the CPU, NCCL on GPUs), in one run.

The data loader is left out: every step trains on the same pre-made batch, so the figure is the
step's own speed. With N processes the batch is the global one, split among them (each process
gets 1 thread on the CPU, so that N processes share the cores a single process would use).

    python benchmarks/train_step.py [--config configs/synthetic.yaml] [--modes fp32 bf16 channels_last]
        [--processes 1 2] [--batch 8] [--crop 96 96] [--steps 10] [--device cpu]

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
}


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
        for step in range(args.steps + 2):
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer._step(batch)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            if step >= 2:
                times.append(time.perf_counter() - start)
        times = distributed.gather(context, statistics.median(times))
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() and args.device != "cpu" else None
    return {
        "mode": mode,
        "processes": context.world_size,
        "images_per_s": config.train.batch_size / max(times),
        "step_s": max(times),
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
    rows = [run_processes(args, mode, processes) for processes in args.processes for mode in args.modes]
    baseline = next(row for row in rows if row["mode"] == args.modes[0] and row["processes"] == args.processes[0])
    print(f"\n| mode | processes | images/s | step | vs {args.modes[0]} x{args.processes[0]} | peak GPU memory |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        memory = f"{row['peak_gpu_gib']:.2f} GiB" if row["peak_gpu_gib"] is not None else "-"
        print(
            f"| {row['mode']} | {row['processes']} | {row['images_per_s']:.2f} | {1000 * row['step_s']:.0f} ms | "
            f"{row['images_per_s'] / baseline['images_per_s']:.2f}x | {memory} |"
        )


if __name__ == "__main__":
    main()
