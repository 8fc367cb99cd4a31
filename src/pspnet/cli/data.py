"""`pspnet data check`, `pspnet data preview` and `pspnet data pack`."""

from __future__ import annotations

import argparse

from ..errors import DataError
from .common import add_set


def add_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect a dataset (check, preview) or pack it into shards")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = data_sub.add_parser(
        "check",
        help="scan a dataset split and report every problem",
        description="Counts, class pixel frequencies and every problem with its file name; "
        "exits 1 when problems are found.",
    )
    add_dataset(check, "scan")
    check.add_argument(
        "--max-unmatched",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="largest fraction of a colour mask's pixels that may match no class colour before the "
        "file is reported (default 0.01)",
    )
    add_set(check)
    check.set_defaults(run=run_check)
    preview = data_sub.add_parser("preview", help="grid of images with their masks and a class legend")
    add_dataset(preview, "show")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--count", type=int, default=8, help="number of samples (default 8)")
    add_set(preview)
    preview.set_defaults(run=run_preview)
    pack = data_sub.add_parser(
        "pack",
        help="write a split as WebDataset tar shards (data.format: shards)",
        description="Writes every sample of a split of any readable dataset as WebDataset tar shards plus "
        "an index, SPLIT.index.json, which `data.format: shards` reads from a folder or a URL.",
    )
    add_dataset(pack, "pack")
    pack.add_argument("--out", required=True, help="folder to write the shards and the index into")
    pack.add_argument(
        "--shard-size", default="1GB", metavar="SIZE", help="largest size of a shard, e.g. 1GB, 500MB (default 1GB)"
    )
    add_set(pack)
    pack.set_defaults(run=run_pack)


def add_dataset(parser: argparse.ArgumentParser, verb: str) -> None:
    """The dataset a `data` action works on: CONFIG (a file or a preset) and `--split`."""
    parser.add_argument("config", help="YAML config (or preset) whose data section describes the dataset")
    parser.add_argument("--split", help=f"split to {verb} (default: the training split)")


def run_check(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..data.check import run_check as check  # heavy (numpy, PIL, torch via data): only when the command runs

    config = load_config(args.config, args.overrides)
    report = check(config.data, args.split or config.data.train_split, max_unmatched=args.max_unmatched)
    print(report.format())
    return 0 if report.ok else 1


def run_preview(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..data.sources import build_source  # heavy (numpy, PIL, torch via data): only when the command runs
    from ..io.files import save_image
    from ..visualize import preview_grid

    config = load_config(args.config, args.overrides)
    split = args.split or config.data.train_split
    source = build_source(config.data, split)
    if not len(source):
        raise DataError(f"{config.data.format}/{split} has no samples to preview (see `pspnet data check`)")
    count = max(1, min(args.count, len(source)))
    step = max(1, len(source) // count)
    items = [(sample.image, sample.mask) for sample in (source.load(i * step) for i in range(count))]
    save_image(args.out, preview_grid(items, source.classes))
    print(f"preview of {count} samples of {config.data.format}/{split}: {args.out}")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..data.check import describe_source
    from ..data.pack import pack_split, parse_size  # heavy (numpy, PIL, torch via data): only when the command runs
    from ..data.sources import build_source
    from ..system.progress import progress_bar

    config = load_config(args.config, args.overrides)
    shard_size = parse_size(args.shard_size)
    split = args.split or config.data.train_split
    source = build_source(config.data, split)
    if not len(source):
        raise DataError(f"{config.data.format}/{split} has no samples to pack (see `pspnet data check`)")
    with progress_bar(len(source), f"pack {split}", not args.quiet) as bar:
        result = pack_split(
            source, args.out, split, shard_size, describe_source(source), config.data.skip_bad, bar.update
        )
    for message in result.skipped:
        print(f"skipped (data.skip_bad): {message}")
    print(
        f"packed {result.num_samples} samples of {config.data.format}/{split} into {len(result.shards)} shard(s), "
        f"{result.bytes / 1e6:.1f} MB: {result.index}"
    )
    return 0
