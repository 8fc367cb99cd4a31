"""The `pspnet` command: train, evaluate, predict, and inspect configs.

Errors caused by the user's input (bad config, missing file, corrupt checkpoint) print one line
starting with `error:` and exit with status 2; a prediction run in which some inputs failed exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import PSPNetError

log = logging.getLogger("pspnet")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set train.max_iters=2000 model.dropout=0.2")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pspnet", description="PSPNet semantic segmentation toolkit.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model", description="Train PSPNet as CONFIG describes.")
    train.add_argument("config", help="YAML config (see configs/)")
    _add_set(train)
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint on a split",
                              description="Per-class IoU, mIoU, mAcc and aAcc of CHECKPOINT on a dataset split.")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--config", help="take the data and eval sections from this YAML instead of the checkpoint's")
    evaluate.add_argument("--split", help="split to evaluate (default: the config's val split)")
    _add_set(evaluate)
    evaluate.add_argument("--out", help="JSON file for the results (default: next to the checkpoint)")
    evaluate.add_argument("--device", default="auto")

    predict = sub.add_parser("predict", help="segment images", description="Segment image files or folders.")
    predict.add_argument("checkpoint")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    predict.add_argument("--out", required=True, help="output folder")
    _add_set(predict)
    predict.add_argument("--device", default="auto")

    data = sub.add_parser("data", help="inspect a dataset (check, preview)")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = data_sub.add_parser("check", help="scan a dataset split and report every problem",
                                description="Counts, class pixel frequencies and every problem with its file name; "
                                            "exits 1 when problems are found.")
    check.add_argument("config")
    check.add_argument("--split", help="split to scan (default: the training split)")
    _add_set(check)
    preview = data_sub.add_parser("preview", help="grid of images with their masks and a class legend")
    preview.add_argument("config")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--split", help="split to show (default: the training split)")
    preview.add_argument("--count", type=int, default=8, help="number of samples (default 8)")
    _add_set(preview)

    config = sub.add_parser("config", help="print a resolved config or the list of keys")
    config.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    _add_set(config)
    config.add_argument("--keys", action="store_true", help="list every config key")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import Trainer

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.out or Path("runs") / Path(args.config).stem)
    result = Trainer(config, run_dir, resume=args.resume, progress=not args.quiet).train()
    print(f"run directory:   {result.run_dir}")
    print(f"last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint:
        print(f"best checkpoint: {result.best_checkpoint} (val mIoU {100 * result.best_miou:.2f})")
    if result.stopped_early:
        print(f"stopped at iteration {result.iteration}; continue with: pspnet train {args.config} --out {run_dir} --resume")
    return 0


def _load_for_inference(args: argparse.Namespace):
    """Model from the checkpoint and the effective config (checkpoint's, or --config's data/eval, plus --set)."""
    from .checkpoint import load_checkpoint
    from .config import Config, load_config
    from .engine.trainer import resolve_device

    model, config, _ = load_checkpoint(args.checkpoint)
    if getattr(args, "config", None):
        other = load_config(args.config)
        config = Config(model=config.model, data=other.data, train=config.train, eval=other.eval)
    config = config.replace(args.overrides)
    return model.to(resolve_device(args.device)), config


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.build import build_dataset, build_eval_loader
    from .engine.evaluator import evaluate
    from .errors import ConfigError
    from .metrics import format_table, metrics_to_dict, save_json

    model, config = _load_for_inference(args)
    split = args.split or config.data.val_split
    dataset = build_dataset(config.data, split, train=False)
    if dataset.classes.num_classes != model.classes.num_classes:
        raise ConfigError(f"the checkpoint predicts {model.classes.num_classes} classes but split '{split}' has "
                          f"{dataset.classes.num_classes}")
    device = next(model.parameters()).device
    loader = build_eval_loader(dataset, config.data, config.eval.batch_size, device)
    metrics = evaluate(model, loader, model.classes.num_classes, config.eval, device, progress=not args.quiet)
    protocol = describe_protocol(config.eval)
    print(format_table(metrics, model.classes.names, title=f"{args.checkpoint} on {config.data.format}/{split}", protocol=protocol))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(f".eval-{split}.json")
    save_json(out, metrics_to_dict(metrics, model.classes.names, protocol=protocol))
    print(f"results: {out}")
    return 0


def describe_protocol(settings) -> str:
    """One line naming the inference protocol that produced a number."""
    scales = ", ".join(f"{s:g}" for s in settings.scales)
    mode = "whole image" if settings.mode == "whole" else f"sliding window {settings.crop_size}"
    return f"{mode}, scales [{scales}], {'flip' if settings.flip else 'no flip'}"


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.predictor import predict_files

    model, config = _load_for_inference(args)
    report = predict_files(model, args.inputs, args.out, config.eval, progress=not args.quiet)
    print(f"wrote {len(report.written)} predictions to {args.out} (labels/, color/, overlay/)")
    for path, message in report.failed:
        print(f"failed: {path}: {message}", file=sys.stderr)
    if report.failed:
        print(f"{len(report.failed)} of {len(report.failed) + len(report.written)} inputs failed", file=sys.stderr)
        return 1
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config, args.overrides)
    split = args.split or config.data.train_split
    if args.data_command == "check":
        from .data.check import run_check

        report = run_check(config.data, split)
        print(report.format())
        return 0 if report.ok else 1

    from PIL import Image

    from .data.build import build_source
    from .utils.io import save_image
    from .visualize import preview_grid

    source = build_source(config.data, split)
    count = max(1, min(args.count, len(source)))
    step = max(1, len(source) // count)
    items = [(sample.image, sample.mask) for sample in (source.load(i * step) for i in range(count))]
    save_image(args.out, preview_grid(items, source.classes))
    print(f"preview of {count} samples of {config.data.format}/{split}: {args.out}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from .config import all_keys, dump_yaml, load_config

    if args.keys:
        print("\n".join(all_keys()))
    else:
        print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "data": cmd_data, "config": cmd_config}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except PSPNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
