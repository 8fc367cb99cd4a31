"""`pspnet evaluate` and `pspnet predict`: a checkpoint under an inference protocol."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from .common import add_inference_options, load_for_inference

log = logging.getLogger("pspnet")

CHECKPOINT_HELP = ("a .safetensors checkpoint (semseg and mmseg .pth files too), an .onnx file from `pspnet export`, "
                   "or a run directory (its best, else last, checkpoint)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint on a split",
                              description="Per-class IoU, mIoU, mAcc and aAcc of CHECKPOINT on a dataset split.")
    evaluate.add_argument("checkpoint", help=CHECKPOINT_HELP)
    evaluate.add_argument("--config", help="take the data and eval sections from this YAML instead of the checkpoint's")
    evaluate.add_argument("--split", help="split to evaluate (default: the config's val split)")
    evaluate.add_argument("--out", help="JSON file for the results, with a CSV of the per-class IoU and accuracy "
                                        "beside it (default: next to the checkpoint)")
    evaluate.add_argument("--confusion", metavar="PNG", help="also draw the confusion matrix as a heatmap")
    add_inference_options(evaluate)
    evaluate.add_argument("--absent", choices=["exclude", "zero"],
                          help="classes absent from ground truth and prediction: left out of mIoU (default; mmseg, "
                               "Cityscapes) or counted as IoU 0 (semseg)")
    evaluate.set_defaults(run=run_evaluate)

    predict = sub.add_parser("predict", help="segment images", description="Segment image files or folders. Outputs "
                             "keep each input's path relative to the folder all inputs share, so names never collide.",
                             epilog="Exit status: 0, or 1 when some inputs could not be read (the others are written).")
    predict.add_argument("checkpoint", help=CHECKPOINT_HELP)
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--format", dest="output_format", choices=["pspnet", "cityscapes"], default="pspnet",
                         help="pspnet: labels/, color/ and overlay/ (default); cityscapes: X_labelIds.png for each "
                              "X_leftImg8bit.png, for the official evaluator and benchmark submissions")
    predict.add_argument("--skip-existing", action="store_true",
                         help="skip inputs whose outputs are all there (an interrupted image is redone)")
    add_inference_options(predict)
    predict.set_defaults(run=run_predict)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..engine import distributed  # heavy (torch): only when the command runs

    context = distributed.setup(args.device)
    try:
        return _evaluate(args, context)
    finally:
        distributed.teardown()


def _evaluate(args: argparse.Namespace, context) -> int:
    """Evaluate on this process's share of the split (all of it without torchrun); rank 0 reports."""
    from ..data.loaders import build_dataset, build_eval_loader
    from ..engine.distributed import agree
    from ..engine.evaluator import UPSAMPLING_WARNING, evaluate, protocol_cost
    from ..errors import ConfigError
    from ..inference.protocol import upsampling_factor
    from ..io.files import write_json
    from ..report.results import metrics_to_dict, save_csv
    from ..report.table import format_table

    def prepare():
        model, config, checkpoint = load_for_inference(args, context)
        split = args.split or config.data.val_split
        dataset = build_dataset(config.data, split, train=False, max_pixels=config.eval.pixel_cap())
        if dataset.classes.num_classes != model.card.num_classes:
            raise ConfigError(f"the checkpoint predicts {model.card.num_classes} classes but split '{split}' has "
                              f"{dataset.classes.num_classes}")
        return model, config, checkpoint, split, dataset

    model, config, checkpoint, split, dataset = agree(context, prepare)
    first = dataset[0] if len(dataset) and context.is_main else {}
    if "image" in first:  # a bad first file is reported by the evaluation itself
        height, width = first["image"].shape[-2:]
        if upsampling_factor(config.eval, height, width) > UPSAMPLING_WARNING:
            cost = protocol_cost(model, config.eval, height, width, len(dataset), context.device)
            log.warning("%s", cost.describe(config.eval, height, width, len(dataset)))
    loader = build_eval_loader(dataset, config.data, config.eval.batch_size, context.device, context.rank, context.world_size)
    metrics = evaluate(model, loader, model.card.num_classes, config.eval, context.device, progress=not args.quiet,
                       distributed=context)
    if not context.is_main:
        return 0
    protocol = config.eval.describe()
    names = model.card.classes.names
    print(format_table(metrics, names, title=f"{checkpoint} on {config.data.format}/{split}", protocol=protocol))
    out = Path(args.out) if args.out else checkpoint.with_suffix(f".eval-{split}.json")
    result = metrics_to_dict(metrics, names, protocol=protocol)
    result["inputs"] = {"checkpoint": str(checkpoint), "dataset": config.data.format, "root": config.data.root,
                        "split": split, "images": len(dataset)}
    result["eval_config"] = dataclasses.asdict(config.eval)
    write_json(out, result)
    save_csv(out.with_suffix(".csv"), metrics, names)
    print(f"results: {out} and {out.with_suffix('.csv')}")
    if args.confusion:
        from ..visualize import confusion_heatmap

        confusion_heatmap(metrics.confusion, names, args.confusion)
        print(f"confusion matrix: {args.confusion}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..engine import distributed  # heavy (torch): only when the command runs
    from ..engine.predict import predict_files

    context = distributed.setup(args.device)
    try:
        model, config, _ = distributed.agree(context, lambda: load_for_inference(args, context))
        report = predict_files(model, args.inputs, args.out, config.eval, progress=not args.quiet,
                               output_format=args.output_format, skip_existing=args.skip_existing, distributed=context)
    finally:
        distributed.teardown()
    if not context.is_main:
        return 1 if report.failed else 0
    written = len(report.written)
    what = "X_labelIds.png files" if args.output_format == "cityscapes" else "labels/, color/, overlay/"
    if written:
        print(f"wrote {written} prediction{'s' if written != 1 else ''} to {args.out} ({what}); "
              f"protocol: {config.eval.describe()}")
    else:
        print("no predictions written")
    if report.skipped:
        print(f"skipped {len(report.skipped)} input(s) whose outputs were complete (--skip-existing)")
    for _, message in report.failed:
        print(f"failed: {message}", file=sys.stderr)
    if report.failed:
        total = len(report.failed) + written + len(report.skipped)
        print(f"{len(report.failed)} of {total} inputs failed", file=sys.stderr)
        return 1
    return 0
