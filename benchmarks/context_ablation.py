"""Does global context help? The same encoder trained with and without the PPM on the built-in data.

The synthetic "context scenes" contain the paper's three failure cases of a local-only network
(see docs/synthetic.md). Both models get the same config, seed and iteration budget; the only
difference is `model.use_ppm`. Prints mIoU and the per-class IoU of the classes that measure
each case, and writes the table as markdown for the README.

    python benchmarks/context_ablation.py [--config configs/synthetic.yaml] [--size N] [--iters N] [--set key=value ...]

Defaults: the demo's settings (its config: ResNet-18, 96x96 scenes, 400 iterations, about 2 minutes per
model on 2 CPU cores with bf16). `--size 160` gives a dilated ResNet-18 a scene larger than it sees at
once, which is where global context matters most (about 6 minutes per model).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pspnet.config import load_config
from pspnet.data.synthetic import CONTEXT_CASES
from pspnet.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def train_and_evaluate(config, run_dir: Path) -> tuple[dict[str, float], float, float]:
    """Per-class IoU (percent), mIoU (percent) and training seconds of one variant."""
    start = time.perf_counter()
    trainer = Trainer(config, run_dir)
    result = trainer.train()  # validates once, at the end
    seconds = time.perf_counter() - start
    names = trainer.classes.names
    return (
        {name: 100 * float(result.metrics.iou[i]) for i, name in enumerate(names)},
        100 * result.metrics.miou,
        seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "synthetic.yaml"))
    parser.add_argument("--iters", type=int, help="training iterations for each variant (default: the config's)")
    parser.add_argument("--size", type=int, help="scene size (square), also the crop size (default: the config's)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args()

    overrides = [f"train.max_iters={args.iters}"] if args.iters else []
    if args.size:
        overrides += [
            f"data.synthetic.image_size=[{args.size}, {args.size}]",
            f"data.augment.crop_size=[{args.size}, {args.size}]",
        ]
    overrides += [
        *args.overrides,
        "train.eval_interval=1000000",
        "train.checkpoint_interval=1000000",
    ]  # evaluate once, at the end
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, use_ppm in (("PSPNet (PPM)", True), ("dilated FCN (no PPM)", False)):
            config = load_config(args.config, overrides + [f"model.use_ppm={str(use_ppm).lower()}"])
            print(f"\n=== {label}: {config.model.encoder}, {config.train.max_iters} iterations")
            results[label] = train_and_evaluate(config, Path(tmp) / ("ppm" if use_ppm else "fcn"))

    case_classes = [name for names in CONTEXT_CASES.values() for name in names]
    header = ["model", "mIoU", *case_classes, "train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, (ious, miou, seconds) in results.items():
        cells = [label, f"{miou:.1f}", *(f"{ious[name]:.1f}" for name in case_classes), f"{seconds / 60:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    cases = "; ".join(f"{case}: {', '.join(names)}" for case, names in CONTEXT_CASES.items())
    (ppm_miou, fcn_miou) = (results[label][1] for label in results)
    table = "\n".join(lines)
    print(f"\n{table}\n\ncases: {cases}\nPPM - FCN: {ppm_miou - fcn_miou:+.1f} mIoU")
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
