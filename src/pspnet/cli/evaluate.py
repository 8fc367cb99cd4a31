"""`pspnet evaluate` and `pspnet predict`: a checkpoint under an inference protocol."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .common import add_inference_options, load_for_inference

CHECKPOINT_HELP = (
    "a .safetensors checkpoint (semseg and mmseg .pth files too), an .onnx file from `pspnet export`, "
    "or a run directory (its best, else last, checkpoint)"
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a split",
        description="Per-class IoU, mIoU, mAcc and aAcc of CHECKPOINT on a dataset split.",
    )
    evaluate.add_argument("checkpoint", help=CHECKPOINT_HELP)
    evaluate.add_argument(
        "--config",
        help="take the data and eval sections from this YAML instead of the checkpoint's; the input normalisation stays the checkpoint's (see --normalization)",
    )
    evaluate.add_argument("--split", help="split to evaluate (default: the config's val split)")
    evaluate.add_argument(
        "--out",
        help="JSON file for the results, with a CSV of the per-class IoU and accuracy "
        "beside it (default: next to the checkpoint)",
    )
    evaluate.add_argument("--confusion", metavar="PNG", help="also draw the confusion matrix as a heatmap")
    evaluate.add_argument(
        "--report",
        metavar="HTML",
        help="also write a self-contained HTML report: the evaluation, "
        "sample predictions (worst images first) and, for a checkpoint of a run directory, the run",
    )
    evaluate.add_argument(
        "--mlflow",
        action="store_true",
        help="also log the metrics to MLflow (extra pspnet[mlflow]): to the MLflow run of the checkpoint's run "
        "directory, else to a run tagged with the checkpoint (MLFLOW_TRACKING_URI, else mlflow.db beside the runs)",
    )
    add_inference_options(evaluate)
    evaluate.add_argument(
        "--absent",
        choices=["exclude", "zero"],
        help="classes absent from ground truth and prediction: left out of mIoU (default; mmseg, "
        "Cityscapes) or counted as IoU 0 (semseg)",
    )
    evaluate.set_defaults(run=run_evaluate)

    predict = sub.add_parser(
        "predict",
        help="segment images and videos",
        description="Segment image and video files "
        "or folders. Outputs keep each input's path relative to the folder all inputs share, so "
        "names never collide; legend.png and classes.json explain the colours and label values.",
        epilog="Exit status: 0, or 1 when some inputs could not be read (the others are written).",
    )
    predict.add_argument("checkpoint", help=CHECKPOINT_HELP)
    predict.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image or video files, or folders (searched recursively); a video NAME.mp4 gives "
        "NAME.overlay.mp4 (needs the `video` extra: PyAV)",
    )
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument(
        "--format",
        dest="output_format",
        choices=["pspnet", "cityscapes", "label-studio", "coco", "cvat"],
        default="pspnet",
        help="pspnet: labels/, color/ and overlay/ (default); cityscapes: X_labelIds.png for each "
        "X_leftImg8bit.png, for the official evaluator and benchmark submissions; pre-annotations for labelling "
        "tools: label-studio (tasks.json and label_config.xml), coco (coco.json), cvat (cvat.zip: Segmentation "
        "mask 1.1)",
    )
    predict.add_argument(
        "--local-files-root",
        metavar="DIR",
        help="label-studio: reference images as /data/local-files/?d=PATH relative to DIR (Label Studio's "
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); default: the image paths as given",
    )
    predict.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose outputs are all there (an interrupted image is redone)",
    )
    predict.add_argument(
        "--probabilities",
        choices=["confidence", "full"],
        help="images: confidence/NAME.png, the top class's probability as 8-bit grey (255 = 1.0); "
        "full: also probabilities/NAME.npy, every class's probability (K x H x W float16)",
    )
    predict.add_argument(
        "--overlay-alpha",
        type=float,
        default=0.5,
        metavar="A",
        help="weight of the class colours in overlays, 0 to 1 (default 0.5)",
    )
    predict.add_argument(
        "--video-crf",
        type=int,
        default=18,
        metavar="N",
        help="quality of overlay videos: x264's constant rate factor, 0 (lossless) to 51 (default 18)",
    )
    predict.add_argument(
        "--video-labels", action="store_true", help="also write each video frame's label map: NAME.labels/NNNNNN.png"
    )
    add_inference_options(predict)
    predict.set_defaults(run=run_predict)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..system import distributed  # heavy (torch): only when the command runs

    if args.mlflow:
        from ..training.tracking import check_available

        check_available("--mlflow")
    with distributed.session(args.device) as context:
        return _evaluate(args, context)


def _evaluate(args: argparse.Namespace, context) -> int:
    """Evaluate on this process's share of the split (all of it without torchrun); rank 0 reports."""
    from ..io.files import write_json
    from ..jobs.evaluation import ImageScores, evaluate_split, split_dataset
    from ..report.results import metrics_to_dict, save_csv
    from ..report.table import format_table
    from ..system.distributed import agree

    def prepare():
        loaded = load_for_inference(args, context.device)
        split = args.split or loaded.config.data.val_split
        return loaded, split, split_dataset(loaded, split)

    loaded, split, dataset = agree(context, prepare)
    config, checkpoint = loaded.config, loaded.path
    scores = ImageScores(loaded.card.num_classes) if args.report else None
    metrics = evaluate_split(loaded, dataset, progress=not args.quiet, distributed=context, observe=scores)
    if scores is not None:
        scores.gather(context)
    if not context.is_main:
        return 0
    protocol = config.eval.describe()
    names = loaded.card.classes.names
    print(format_table(metrics, names, title=f"{checkpoint} on {config.data.format}/{split}", protocol=protocol))
    out = Path(args.out) if args.out else checkpoint.with_suffix(f".eval-{split}.json")
    result = metrics_to_dict(metrics, names, protocol=protocol)
    result["inputs"] = {
        "checkpoint": str(checkpoint),
        "format": loaded.format,
        "backend": loaded.backend,
        "dataset": config.data.format,
        "root": config.data.root,
        "split": split,
        "images": len(dataset),
        "mean": list(loaded.card.mean),
        "std": list(loaded.card.std),
    }
    result["eval_config"] = dataclasses.asdict(config.eval)
    write_json(out, result)
    save_csv(out.with_suffix(".csv"), metrics, names)
    print(f"results: {out} and {out.with_suffix('.csv')}")
    if args.mlflow:
        from ..training.tracking import log_evaluation

        run_id = log_evaluation(checkpoint, result, names, split=split, iteration=loaded.iteration)
        if run_id is not None:
            print(f"MLflow run: {run_id}")
    if args.confusion:
        from ..report.plots import confusion_matrix, save_png  # heavy (matplotlib): only for the picture

        save_png(confusion_matrix(metrics.confusion, names), args.confusion)
        print(f"confusion matrix: {args.confusion}")
    if args.report:
        from ..training.run_report import write_report  # heavy (matplotlib): only for the report

        print(f"report: {write_report(args.report, loaded, split, metrics, scores, dataset)}")
    return 0


def describe_outputs(report, args: argparse.Namespace) -> str:
    """The kinds of files a predict run wrote (a `PredictionReport`), for its summary line."""
    if args.output_format == "cityscapes":
        return "X_labelIds.png files"
    if args.output_format != "pspnet":
        from ..jobs.annotation_files import OUTPUT_FILES

        return f"pre-annotations in {OUTPUT_FILES[args.output_format]}, legend.png, classes.json"
    videos = sum(path.name.endswith(".overlay.mp4") for path in report.written)
    kinds = []
    if len(report.written) > videos:
        kinds += ["labels/", "color/", "overlay/"]
        kinds += {None: [], "confidence": ["confidence/"], "full": ["confidence/", "probabilities/"]}[
            args.probabilities
        ]
    if videos:
        kinds += ["NAME.overlay.mp4"] + (["NAME.labels/"] if args.video_labels else [])
    return ", ".join(kinds + ["legend.png", "classes.json"])


def run_predict(args: argparse.Namespace) -> int:
    from ..jobs.predict_files import OutputOptions, predict_files
    from ..jobs.video import VideoOptions
    from ..system import distributed  # heavy (torch): only when the command runs

    with distributed.session(args.device) as context:
        loaded = distributed.agree(context, lambda: load_for_inference(args, context.device))
        options = OutputOptions(
            args.probabilities,
            args.overlay_alpha,
            VideoOptions(args.video_crf, args.video_labels),
            args.local_files_root,
        )
        report = predict_files(
            loaded,
            args.inputs,
            args.out,
            progress=not args.quiet,
            output_format=args.output_format,
            skip_existing=args.skip_existing,
            options=options,
            distributed=context,
        )
    config = loaded.config
    if not context.is_main:
        return 1 if report.failed else 0
    written = len(report.written)
    if written:
        print(
            f"wrote {written} prediction{'s' if written != 1 else ''} to {args.out} ({describe_outputs(report, args)}); "
            f"protocol: {config.eval.describe()}"
        )
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
