"""`pspnet export`: a checkpoint to a verified ONNX (fp32, int8) or torch.export file."""

from __future__ import annotations

import argparse
import logging

from .common import positive_int

QUIET_LOGGERS = ("onnx_ir", "onnxscript", "onnxruntime")
"""The exporter's and quantizer's INFO messages (every graph pass) are not for the user."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (fp32 or int8) or torch.export, verified",
        description="Export CHECKPOINT to OUT with dynamic batch, height and width, without the training-only heads. "
        "The file is checked against PyTorch at the export size and three odd, non-square sizes and kept "
        "only when it agrees (fp32: relative L2 <= 1e-4; int8: >= 90% argmax agreement on held-out images).",
    )
    parser.add_argument("checkpoint", help="a PyTorch checkpoint: .safetensors, or a semseg/mmseg .pth")
    parser.add_argument("out", help="the file to write, e.g. model.onnx or model.pt2")
    parser.add_argument(
        "--format",
        dest="export_format",
        default="onnx",
        metavar="FORMAT",
        help="onnx: fp32 for onnxruntime (default); onnx-int8: static int8 quantization (QDQ, "
        "per-channel weights); pt2: a torch.export program",
    )
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's, 18 or newer)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="tracing and verification size (default: the config's data.augment.crop_size)",
    )
    parser.add_argument(
        "--calibration",
        metavar="CONFIG",
        help="onnx-int8: config whose train split calibrates the activation ranges and whose val "
        "split checks the result (default: the checkpoint's config)",
    )
    parser.add_argument(
        "--calibration-images",
        type=positive_int,
        default=32,
        metavar="N",
        help="onnx-int8: calibration images, spread over the train split, no augmentation (default 32)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.export import export_model  # heavy (torch, onnx): only when the command runs

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    report = export_model(
        args.checkpoint,
        args.out,
        args.export_format,
        opset=args.opset,
        size=args.size,
        calibration=args.calibration,
        calibration_images=args.calibration_images,
    )
    print(
        f"exported {args.checkpoint} -> {report.path} ({report.format}, {report.file_bytes / 1e6:.1f} MB), traced at "
        f"{report.size[0]}x{report.size[1]}, dynamic batch/height/width"
    )
    if report.dropped:
        print(f"dropped the training-only heads: {', '.join(report.dropped)}")
    if report.float_checks:
        print("fp32 graph before quantization, against PyTorch:")
        for check in report.float_checks:
            print(f"  {check.describe()}")
    if report.calibration_seconds is not None:
        print(
            f"calibration: {report.calibration_images} train images, {report.calibration_seconds:.1f} s "
            "(calibration and quantization)"
        )
    print(
        "verified against PyTorch:"
        if report.agreement is None
        else f"verified against PyTorch on held-out images: {100 * report.agreement:.2f}% argmax agreement overall"
    )
    for check in report.checks:
        print(f"  {check.describe()}")
    return 0
