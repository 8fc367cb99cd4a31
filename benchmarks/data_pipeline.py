"""Throughput of the training transform, and of reading samples from a folder or from shards.

By default the source hands out one pre-generated synthetic image/mask pair, so only the transform
(random scale, rotation, blur, flip, crop, normalisation) is timed at 713x713 crops from 1024x2048
images (Cityscapes size), not file decoding.

`--read` times reading and decoding instead: generated scenes saved as a `folders` dataset (JPEG
images, PNG masks), packed by `pack_split`, then every sample read in a shuffled order from the
folder, from the shards on disk and from the same shards over HTTP (aiohttp's static file server on
127.0.0.1, which answers Range requests), one process, as `source.load` does in the loader.

    python benchmarks/data_pipeline.py [--samples 40] [--workers 0] [--threads 1]
    python benchmarks/data_pipeline.py --read [--samples 64] [--size 512 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pspnet.classes import ClassInfo
from pspnet.config import AugmentConfig, DataConfig
from pspnet.data.base import Sample, SegmentationDataset, SegmentationSource
from pspnet.data.formats.folders import Folders
from pspnet.data.formats.shards import ShardSource
from pspnet.data.pack import pack_split
from pspnet.data.synthetic import ContextScenes
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


def write_folder_dataset(root: Path, count: int, size: tuple[int, int]) -> Folders:
    """`count` generated scenes as a `folders` dataset: JPEG images (quality 90) and PNG masks."""
    scenes = ContextScenes("train", count, size)
    for folder in ("images", "masks"):
        (root / "train" / folder).mkdir(parents=True)
    for index in range(count):
        sample = scenes.load(index)
        Image.fromarray(sample.image).save(root / f"train/images/{index:05d}.jpg", quality=90)
        Image.fromarray(sample.mask).save(root / f"train/masks/{index:05d}.png")
    (root / "classes.yaml").write_text(f"names: {list(scenes.classes.names)}\n")
    return Folders(root, "train", classes_file=root / "classes.yaml")


def serve_folder(folder: Path) -> str:
    """aiohttp's static file server (with HTTP Range support) for `folder` on 127.0.0.1, in a daemon thread."""
    from aiohttp import web

    loop, ready = asyncio.new_event_loop(), threading.Event()
    app = web.Application()
    app.router.add_static("/", folder)
    runner = web.AppRunner(app, access_log=None)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(30)
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


def time_reads(source: SegmentationSource, order: list[int]) -> float:
    """Seconds per sample to load (read and decode) the samples of `order`, after one warm-up read."""
    source.load(order[0])
    start = time.perf_counter()
    for index in order:
        source.load(index)
    return (time.perf_counter() - start) / len(order)


def benchmark_reading(samples: int, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder_dataset(Path(tmp) / "folder", samples, size)
        packed = pack_split(folder, Path(tmp) / "shards", "train", 4 * 2**20)
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(0)).tolist()
        sources = {
            "folder (JPEG + PNG files)": folder,
            "shards on disk": ShardSource(str(Path(tmp) / "shards"), "train"),
            "shards over HTTP (127.0.0.1)": ShardSource(serve_folder(Path(tmp) / "shards"), "train"),
        }
        print(
            f"reading {samples} samples of {size[0]}x{size[1]} in a shuffled order, one process, "
            f"{len(packed.shards)} shards of at most 4 MiB ({packed.bytes / samples / 1e3:.0f} kB per sample), "
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
        )
        baseline = None
        for name, source in sources.items():
            seconds = time_reads(source, order)
            baseline = baseline or seconds
            print(
                f"  {name:<30} {1000 * seconds:7.2f} ms/sample  {1 / seconds:7.1f} samples/s  {seconds / baseline:5.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40, help="timed samples (after 3 warm-up samples)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: in the main process)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--crop", type=int, default=713)
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--read", action="store_true", help="time reading from a folder and from shards instead")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.read:
        benchmark_reading(args.samples, tuple(args.size or (512, 1024)))
        return
    args.size = args.size or [1024, 2048]
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
