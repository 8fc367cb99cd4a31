"""End-to-end training throughput: images/s of whole training iterations (data loading, augmentation,
the step, logging; validation and checkpoints excluded) and the fraction of that time spent in the
step, for the demo config and the paper's R50-D8 at 473x473 crops, in fp32 and bf16, in one run.

    python benchmarks/train_throughput.py [--iters 30] [--r50-iters 3] [--r50-batch 2]

The gap between the step and the whole iteration is what data loading costs; `benchmarks/train_step.py`
measures the step alone on 1 and N processes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from pspnet.config import load_config
from pspnet.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def throughput(config_path: Path, overrides: list[str], iters: int) -> dict:
    """Train `iters` iterations after 2 of warm-up; images/s of the loop and the step's share of its time.

    The trainer's own clock (`TrainResult.timings`) splits the loop into data, step and logging; the
    final validation and checkpoint are timed apart and left out."""
    overrides = [
        *overrides,
        f"train.max_iters={iters + 2}",
        "train.eval_interval=1000000",
        "train.checkpoint_interval=1000000",
        "model.encoder_weights=null",
        "data.synthetic.num_val=2",
    ]  # the final validation is not timed: keep it short
    config = load_config(config_path, overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir) / "run", progress=False)
        warm_up: dict[str, float] = {}

        def end_of_warm_up(trainer_: Trainer, iteration: int) -> None:
            if iteration == 2:
                warm_up.update(trainer_.timings)

        trainer.callbacks.append(end_of_warm_up)
        timings = trainer.train().timings
    loop = {phase: timings.get(phase, 0.0) - warm_up.get(phase, 0.0) for phase in ("data", "step", "logging")}
    total = sum(loop.values())
    images = iters * config.train.batch_size
    return {"images_per_s": images / total, "step_fraction": loop["step"] / total, "seconds_per_iter": total / iters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=30, help="timed iterations of the demo config")
    parser.add_argument("--r50-iters", type=int, default=3)
    parser.add_argument("--r50-batch", type=int, default=2)
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides for the demo config",
    )
    args = parser.parse_args()
    cases = [
        ("demo (configs/synthetic.yaml)", ROOT / "configs/synthetic.yaml", args.overrides, args.iters),
        (
            "R50-D8, 473x473",
            ROOT / "configs/pspnet_r101_ade20k.yaml",
            [
                "model.encoder=resnet50_deepstem",
                "data.format=synthetic",
                "data.root=null",
                "data.synthetic.image_size=[512, 512]",
                f"train.batch_size={args.r50_batch}",
                "data.num_workers=1",
            ],
            args.r50_iters,
        ),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n| model | precision | images/s | s/iteration | time in the step |")
    print("|---|---|---|---|---|")
    for name, path, overrides, iters in cases:
        for amp in ("none", "bf16"):
            result = throughput(path, [*overrides, f"train.amp={amp}"], iters)
            print(
                f"| {name} | {'fp32' if amp == 'none' else amp} | {result['images_per_s']:.2f} | "
                f"{result['seconds_per_iter']:.3f} | {100 * result['step_fraction']:.0f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
