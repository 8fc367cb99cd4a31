"""Throughput of the training transform: samples/s at 713x713 crops from 1024x2048 images (Cityscapes size).

The source hands out one pre-generated synthetic image/mask pair, so only the transform (random
scale, rotation, blur, flip, crop, normalisation) is timed, not file decoding.

    python benchmarks/data_pipeline.py [--samples 40] [--workers 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from pspnet.classes import ClassInfo
from pspnet.config import AugmentConfig, DataConfig
from pspnet.data.base import Sample, SegmentationDataset, SegmentationSource
from pspnet.data.transforms import build_train_transform


class SyntheticSource(SegmentationSource):
    """`length` copies of one random image with a blocky 19-class mask."""

    def __init__(self, length: int, height: int, width: int):
        rng = np.random.default_rng(0)
        self.classes = ClassInfo.generic(19)
        self.length = length
        self.image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        blocks = rng.integers(0, 19, (height // 64 + 1, width // 64 + 1), dtype=np.uint8)
        self.mask = np.ascontiguousarray(blocks.repeat(64, 0).repeat(64, 1)[:height, :width])

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> Sample:
        return Sample(self.image, self.mask, f"synthetic_{index}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40, help="timed samples (after 3 warm-up samples)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: in the main process)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--crop", type=int, default=713)
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("HEIGHT", "WIDTH"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = DataConfig(augment=AugmentConfig(crop_size=[args.crop, args.crop]))
    transform = build_train_transform(data.augment, data.mean, data.std)
    warmup = 3
    dataset = SegmentationDataset(SyntheticSource(warmup + args.samples, *args.size), transform)
    keys = [(index, index) for index in range(len(dataset))]  # (index, seed): the training stream's keys
    loader = DataLoader(
        dataset,
        sampler=keys,
        batch_size=None,
        num_workers=args.workers,
        worker_init_fn=lambda _: torch.set_num_threads(args.threads),
    )

    batches = iter(loader)
    for _ in range(warmup):
        item = next(batches)
    assert item["image"].shape == (3, args.crop, args.crop) and item["mask"].dtype == torch.int64
    start = time.perf_counter()
    for _ in range(args.samples):
        next(batches)
    elapsed = time.perf_counter() - start

    print(
        f"training transform, {args.size[0]}x{args.size[1]} -> {args.crop}x{args.crop} crops, "
        f"workers={args.workers}, threads={args.threads}, torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print(
        f"{args.samples / elapsed:.2f} samples/s ({1000 * elapsed / args.samples:.0f} ms/sample over {args.samples} samples)"
    )


if __name__ == "__main__":
    main()
