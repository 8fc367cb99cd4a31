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
    evaluate.add_argument("--out", help="JSON file for the results, with a CSV of the per-class IoU and accuracy "
                                        "beside it (default: next to the checkpoint)")
    evaluate.add_argument("--confusion", metavar="PNG", help="also draw the confusion matrix as a heatmap")
    evaluate.add_argument("--device", default="auto")
    _add_protocol_flags(evaluate)
    evaluate.add_argument("--absent", choices=["exclude", "zero"],
                          help="classes absent from ground truth and prediction: left out of mIoU (default; mmseg, "
                               "Cityscapes) or counted as IoU 0 (semseg)")

    predict = sub.add_parser("predict", help="segment images", description="Segment image files or folders.")
    predict.add_argument("checkpoint")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--format", dest="output_format", choices=["pspnet", "cityscapes"], default="pspnet",
                         help="pspnet: labels/, color/ and overlay/ (default); cityscapes: X_labelIds.png for each "
                              "X_leftImg8bit.png, for the official evaluator and benchmark submissions")
    _add_set(predict)
    predict.add_argument("--device", default="auto")
    _add_protocol_flags(predict)

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

    models = sub.add_parser("models", help="list the encoders, or show one model's size and FLOPs",
                            description="Without --info: every encoder name with its output strides. With --info NAME: "
                                        "parameters and FLOPs of PSPNet with that encoder (the config's other model "
                                        "settings, changed with --set, e.g. model.decoder=progressive model.num_classes=150).")
    models.add_argument("--info", metavar="NAME", help="encoder name (see the list), e.g. resnet50_deepstem or timm:convnext_tiny")
    models.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"), help="input size (default 512 512)")
    models.add_argument("--config", help="YAML config whose model section to use (default: built-in defaults)")
    _add_set(models)

    convert = sub.add_parser("convert", help="convert a semseg or mmsegmentation checkpoint to pspnet's format",
                             description="Read a PSPNet checkpoint of semseg (the authors' code) or mmsegmentation, "
                                         "check that every tensor matches, and write it as a pspnet checkpoint.")
    convert.add_argument("source", help="the .pth file (its format is detected from its contents)")
    convert.add_argument("dest", help="the .safetensors file to write")
    convert.add_argument("--dataset", help="cityscapes, ade20k or voc: class names and palette when the file has none, "
                                           "and the data section of the config")
    convert.add_argument("--num-classes", type=int, metavar="K",
                         help="re-initialise the classifiers for K classes (fine-tuning on another label set)")
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


def _add_protocol_flags(parser: argparse.ArgumentParser) -> None:
    """Inference protocol flags of evaluate and predict: shorthands for `--set eval.*` (see docs/evaluation.md)."""
    from .config import EvalConfig

    group = parser.add_argument_group("inference protocol (shorthands for --set eval.KEY=VALUE)")
    group.add_argument("--protocol", metavar="PRESET", choices=list(EvalConfig.PROTOCOLS),
                       help=f"preset; the flags below change parts of it: {', '.join(EvalConfig.PROTOCOLS)}")
    group.add_argument("--mode", choices=["whole", "slide"], help="whole image at once, or sliding windows")
    group.add_argument("--crop-size", type=int, nargs="+", metavar="N", help="window size: N (square) or H W")
    group.add_argument("--stride", type=int, nargs="+", metavar="N", help="window stride: N or H W (default: 2/3 of the crop, rounded up)")
    group.add_argument("--base-size", type=int, metavar="N", help="at scale s, resize the long (or --resize short) side to s * N")
    group.add_argument("--resize", choices=["long", "short"], help="which side --base-size sets")
    group.add_argument("--scales", type=float, nargs="+", metavar="S", help="test scales, e.g. 0.5 0.75 1 1.25 1.5 1.75")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, help="average with the mirrored image")
    group.add_argument("--window-batch", type=int, metavar="N", help="windows per forward pass")


def _eval_overrides(args: argparse.Namespace) -> list[str]:
    """`--set` items for the protocol flags, placed before the user's own `--set` items.

    A protocol (`--protocol` or `--set eval.protocol=NAME`) expands into all its settings, so it
    replaces those stored in the checkpoint; flags and `--set` items after it change parts of it.
    """
    import json

    import yaml

    from .config import EvalConfig

    def expand(name: str | None) -> list[str]:
        settings = EvalConfig.protocol_settings(name) if name is not None else {}
        return [f"eval.protocol={json.dumps(name)}"] + [f"eval.{key}={json.dumps(value)}" for key, value in settings.items()]

    items = expand(args.protocol) if args.protocol else []
    for key in ("mode", "crop_size", "stride", "base_size", "resize", "scales", "flip", "window_batch", "absent"):
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in ("crop_size", "stride") and len(value) == 1:
            value = value * 2  # a square
        items.append(f"eval.{key}={json.dumps(value)}")
    for item in args.overrides:
        key, _, raw = item.partition("=")
        items.extend(expand(yaml.safe_load(raw)) if key.strip() == "eval.protocol" else [item])
    return items


def cmd_evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from .data.build import build_dataset, build_eval_loader
    from .engine.evaluator import evaluate
    from .errors import ConfigError
    from .metrics import format_table, metrics_to_dict, save_csv, save_json

    args.overrides = _eval_overrides(args)
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
    result = metrics_to_dict(metrics, model.classes.names, protocol=protocol)
    result["eval_config"] = dataclasses.asdict(config.eval)
    save_json(out, result)
    save_csv(out.with_suffix(".csv"), metrics, model.classes.names)
    print(f"results: {out} and {out.with_suffix('.csv')}")
    if args.confusion:
        from .visualize import confusion_heatmap

        confusion_heatmap(metrics.confusion, model.classes.names, args.confusion)
        print(f"confusion matrix: {args.confusion}")
    return 0


def describe_protocol(settings) -> str:
    """One line naming the inference protocol that produced a number, e.g. `semseg-cityscapes:
    sliding window 713x713 stride 476x476, long side 2048 x scales [1], flip`. A named protocol
    whose settings were changed lists the changed keys."""
    if settings.mode == "whole":
        mode = "whole image"
    else:
        (crop_h, crop_w), (stride_h, stride_w) = settings.crop_size, settings.window_stride
        mode = f"sliding window {crop_h}x{crop_w} stride {stride_h}x{stride_w}"
    scales = f"scales [{', '.join(f'{s:g}' for s in settings.scales)}]"
    if settings.base_size is not None:
        scales = f"{settings.resize} side {settings.base_size} x {scales}"
    text = f"{mode}, {scales}, {'flip' if settings.flip else 'no flip'}"
    if settings.protocol is None:
        return text
    changed = settings.changed_from_protocol()
    name = f"{settings.protocol} (changed: {', '.join(changed)})" if changed else settings.protocol
    return f"{name}: {text}"


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.predictor import predict_files

    args.overrides = _eval_overrides(args)
    model, config = _load_for_inference(args)
    report = predict_files(model, args.inputs, args.out, config.eval, progress=not args.quiet, output_format=args.output_format)
    written = "X_labelIds.png files" if args.output_format == "cityscapes" else "labels/, color/, overlay/"
    print(f"wrote {len(report.written)} predictions to {args.out} ({written}); protocol: {describe_protocol(config.eval)}")
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


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint

    result = convert_checkpoint(args.source, args.dest, dataset=args.dataset, num_classes=args.num_classes)
    model = result.config.model
    print(f"source:  {args.source} ({result.source_format}, sha256 {result.sha256})")
    widths = f" {model.encoder_kwargs}" if model.encoder_kwargs else ""
    print(f"model:   {model.encoder}{widths}, dilation {model.dilation_style}, "
          f"align_corners={model.align_corners}, aux head {model.aux}")
    print(f"classes: {result.classes.num_classes} ({', '.join(result.classes.names[:5])}"
          f"{', ...' if result.classes.num_classes > 5 else ''})")
    if result.reinitialised:
        print(f"re-initialised for {model.num_classes} classes: {', '.join(result.reinitialised)}")
    print(f"wrote:   {result.path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import load_config

    if args.info is None:
        from .models.encoders import encoder_table

        rows = [("name", "family", "output stride", "imagenet weights (timm)", "description"), *encoder_table()]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)), row[4], sep="  ")
        print("\nmobilenetv2_x<W>: any width W in [0.25, 2.0] (or mobilenetv2 with model.width_multiplier).\n"
              "timm:<name>: any timm model with features_only, dilated to the output stride where it can be.")
        return 0
    from .models.pspnet import complexity

    model = dataclasses.replace(load_config(args.config, args.overrides).model, encoder=args.info)
    height, width = args.size
    info = complexity(model, (height, width))
    million = lambda n: f"{n / 1e6:.2f} M"  # noqa: E731
    print(f"{args.info}: PSPNet, {model.decoder} decoder, {model.num_classes or 19} classes, input {height}x{width}")
    print(f"  encoder features: channels {info['channels']} at strides {info['reductions']}; "
          f"PPM at stride {info['output_stride']}")
    print(f"  parameters: {million(info['total'])} (encoder {million(info['encoder'])}, decoder {million(info['decoder'])}, "
          f"training-only aux heads {million(info['aux'])})")
    print(f"  FLOPs: {info['flops'] / 1e9:.2f} G (inference, 2 per multiply-add)")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "data": cmd_data, "config": cmd_config,
            "convert": cmd_convert, "models": cmd_models}


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
