"""Why the pillow is hard: its signal in the built-in scenes, and where a trained model's pillow errors go.

The pillow and the folded sheet at the foot of the bed are the sheet's own pixels made a few grey levels
brighter (docs/synthetic.md). Each validation scene is rendered twice, once as is and once with that
brightening set to zero (same random draws otherwise): the difference is exactly the pillow's and the
fold's signal, and the unbrightened sheet under them gives the noise it has to be seen through.
With a checkpoint, the model's predictions are then split by region: pillow pixels it finds, pillow
pixels it calls bed, and fold pixels it calls pillow (the wrong end of the bed); and per bedroom scene,
which end of the bed it chose.

    python benchmarks/inconspicuous_class.py [CHECKPOINT ...] [--config configs/synthetic.yaml] [--split val]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from unittest import mock

import numpy as np

from pspnet import load_model
from pspnet.config import load_config
from pspnet.data import synthetic
from pspnet.data.sources import build_source

ROOT = Path(__file__).resolve().parents[1]
LUMA = np.array([0.299, 0.587, 0.114])


def render_without_brightening(source, index: int) -> np.ndarray:
    """The scene `index` with the pillow and the fold drawn at the sheet's own brightness."""
    with mock.patch.object(synthetic, "PILLOW_SHIFT", (0.0, 0.0)):
        return source.load(index).image


def scene_regions(source) -> list[dict]:
    """Per bedroom scene: image, mask, pillow and fold masks, and the brightening's signal and noise."""
    scenes = []
    for index in range(len(source)):
        sample = source.load(index)
        if not (sample.mask == synthetic.PILLOW).any():
            continue
        plain = render_without_brightening(source, index)
        lift = (sample.image.astype(np.float64) - plain) @ LUMA
        pillow = sample.mask == synthetic.PILLOW
        fold = (lift > 0.5) & (sample.mask == synthetic.BED)
        sheet = plain.astype(np.float64) @ LUMA
        scenes.append(
            {
                "image": sample.image,
                "mask": sample.mask,
                "pillow": pillow,
                "fold": fold,
                "signal": lift[pillow].mean(),
                "noise": sheet[pillow].std(),
            }
        )
    return scenes


def describe_signal(scenes: list[dict], total_pixels: int) -> None:
    signal = np.array([s["signal"] for s in scenes])
    noise = np.array([s["noise"] for s in scenes])
    areas = np.array([s["pillow"].sum() for s in scenes])
    ratio = signal / noise
    print(
        f"bedroom scenes: {len(scenes)}; pillow area: median {np.median(areas):.0f} px "
        f"(range {areas.min()}-{areas.max()}), {100 * areas.sum() / total_pixels:.2f}% of all pixels"
    )
    print(
        f"pillow brightening (luma): {signal.mean():.2f} grey levels (range {signal.min():.2f}-{signal.max():.2f}); "
        f"sheet noise under it: std {noise.mean():.2f}; per-pixel signal/noise {ratio.mean():.2f} "
        f"(range {ratio.min():.2f}-{ratio.max():.2f}); over the median area's mean: "
        f"{ratio.mean() * np.sqrt(np.median(areas)):.1f}"
    )
    print("the folded sheet at the foot gets the same brightening: the two ends differ only by the blanket's hem")


def describe_errors(checkpoint: str, scenes: list[dict]) -> None:
    model = load_model(checkpoint)
    found = missed_as_bed = pillow_total = fold_as_pillow = fold_total = 0
    false_pillow = predicted_pillow = 0
    ends = {"the pillow only": 0, "the fold only": 0, "both": 0, "neither": 0}
    for scene in scenes:
        prediction = model.predict(scene["image"])
        said_pillow = prediction == synthetic.PILLOW
        pillow, fold = scene["pillow"], scene["fold"]
        found += (said_pillow & pillow).sum()
        missed_as_bed += ((prediction == synthetic.BED) & pillow).sum()
        pillow_total += pillow.sum()
        fold_as_pillow += (said_pillow & fold).sum()
        fold_total += fold.sum()
        predicted_pillow += said_pillow.sum()
        false_pillow += (said_pillow & ~pillow).sum()
        head, foot = (said_pillow & pillow).sum() > pillow.sum() / 4, (said_pillow & fold).sum() > fold.sum() / 4
        ends["both" if head and foot else "the pillow only" if head else "the fold only" if foot else "neither"] += 1
    iou = found / (pillow_total + predicted_pillow - found)
    print(f"\n{checkpoint}: pillow IoU over these scenes {100 * iou:.1f}")
    print(
        f"  pillow pixels labelled pillow {100 * found / pillow_total:.1f}%, labelled bed {100 * missed_as_bed / pillow_total:.1f}%"
    )
    print(
        f"  fold pixels labelled pillow {100 * fold_as_pillow / fold_total:.1f}%; of the pixels labelled pillow, "
        f"{100 * fold_as_pillow / max(predicted_pillow, 1):.1f}% lie on the fold and "
        f"{100 * (false_pillow - fold_as_pillow) / max(predicted_pillow, 1):.1f}% elsewhere off the pillow"
    )
    print(
        "  bedrooms by what the model marks as pillow (over a quarter of the patch): "
        + ", ".join(f"{name} {count}" for name, count in ends.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help="trained models to analyse (none: the data's signal only)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "synthetic.yaml"))
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    config = load_config(args.config)
    source = build_source(config.data, args.split)
    scenes = scene_regions(source)
    height, width = config.data.synthetic.image_size
    describe_signal(scenes, len(source) * height * width)
    for checkpoint in args.checkpoints:
        describe_errors(checkpoint, scenes)


if __name__ == "__main__":
    main()
