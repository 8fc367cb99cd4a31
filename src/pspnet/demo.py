"""`make demo`: train on the built-in data, evaluate, predict a few validation images, say where it all went."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from PIL import Image

from .cli import main as cli_main
from .config import load_config
from .data.sources import build_source
from .io.files import save_image

DEFAULT_CONFIG = "synthetic"
"""The demo's preset (`pspnet/configs/synthetic.yaml`)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file or preset (default: synthetic)")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--images", type=int, default=6, help="validation images to predict")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = ["--set", *args.overrides] if args.overrides else []
    config_path = Path(args.config).resolve()
    if config_path.is_file() and config_path.is_relative_to(Path.cwd()):  # shorter commands, no machine paths
        args.config = str(config_path.relative_to(Path.cwd()))
    out = Path(args.out)
    resume = ["--resume"] if (out / "checkpoints" / "last.resume.pt").exists() else []

    steps = [
        ("train", ["train", args.config, "--out", str(out), *resume, *overrides]),
        ("evaluate", ["evaluate", str(out / "checkpoints" / "best.safetensors"), "--out", str(out / "eval-val.json")]),
    ]
    for name, command in steps:
        print(f"\n=== {name}: pspnet {' '.join(command)}")
        if cli_main(command) != 0:
            return 1

    config = load_config(args.config, args.overrides)
    source = build_source(config.data, config.data.val_split)
    inputs = out / "demo_inputs"
    for index in range(min(args.images, len(source))):
        sample = source.load(index)
        save_image(inputs / f"{sample.name}.png", Image.fromarray(sample.image))
    command = ["predict", str(out / "checkpoints" / "best.safetensors"), str(inputs), "--out", str(out / "predictions")]
    print(f"\n=== predict: pspnet {' '.join(command)}")
    if cli_main(command) != 0:
        return 1

    print("\n=== where everything went")
    for label, path in [
        ("run directory", out),
        ("config", out / "config.yaml"),
        ("checkpoints", out / "checkpoints"),
        ("training log", out / "train_log.csv"),
        ("validation log", out / "val_log.csv"),
        ("curves", out / "curves.png"),
        ("report", out / "report.html"),
        (
            "tensorboard",
            f"{os.path.relpath(Path(sys.executable).with_name('tensorboard'))} --logdir {out / 'tensorboard'}",
        ),
        ("evaluation", out / "eval-val.json"),
        ("input images", inputs),
        ("predictions", f"{out / 'predictions'} (legend.png explains the colours)"),
    ]:
        print(f"  {label:15s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
