"""Arguments and steps shared by several commands: `--set`, the inference protocol flags, loading a model."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..config import DEVICE_PATTERN, INFERENCE_SETTINGS, EvalConfig


def add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.max_iters=2000 model.dropout=0.2",
    )


def device_name(text: str) -> str:
    """argparse type of `--device`: a name torch would understand and pspnet supports."""
    if DEVICE_PATTERN.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"unknown device '{text}'; expected auto, cpu, cuda or cuda:N")
    return text


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", type=device_name, help="auto (CUDA when available), cpu, cuda or cuda:N"
    )


def add_backend(parser: argparse.ArgumentParser) -> None:
    """`--backend` and `--threads` of the commands that run a model (evaluate, predict, serve)."""
    parser.add_argument(
        "--backend",
        choices=["torch", "torch-bf16", "torch-compile", "torch-compile-bf16"],
        help="how a PyTorch checkpoint runs: torch (eager fp32, default), torch-bf16 (bf16 weights "
        "and activations: AVX-512 BF16/AMX CPUs, GPUs), torch-compile / torch-compile-bf16 (the same compiled "
        "by torch.compile, BatchNorm folded; see docs/compile.md); .onnx files always run on onnxruntime",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="intra-op threads for torch and onnxruntime (default: OMP_NUM_THREADS, else the cores)",
    )


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text}")
    return value


def add_protocol_flags(parser: argparse.ArgumentParser) -> None:
    """Inference protocol flags of evaluate, predict and serve: shorthands for `--set eval.*` (see docs/evaluation.md)."""
    group = parser.add_argument_group("inference protocol (shorthands for --set eval.KEY=VALUE)")
    group.add_argument(
        "--protocol",
        metavar="PRESET",
        choices=list(EvalConfig.PROTOCOLS),
        help=f"preset; the flags below change parts of it: {', '.join(EvalConfig.PROTOCOLS)}",
    )
    group.add_argument("--mode", choices=["whole", "slide"], help="whole image at once, or sliding windows")
    group.add_argument("--crop-size", type=int, nargs="+", metavar="N", help="window size: N (square) or H W")
    group.add_argument(
        "--stride",
        type=int,
        nargs="+",
        metavar="N",
        help="window stride: N or H W (default: 2/3 of the crop, rounded up)",
    )
    group.add_argument(
        "--base-size", type=int, metavar="N", help="at scale s, resize the long (or --resize short) side to s * N"
    )
    group.add_argument("--resize", choices=["long", "short"], help="which side --base-size sets")
    group.add_argument(
        "--scales", type=float, nargs="+", metavar="S", help="test scales, e.g. 0.5 0.75 1 1.25 1.5 1.75"
    )
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, help="average with the mirrored image")
    group.add_argument("--window-batch", type=int, metavar="N", help="windows per forward pass")
    group.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="refuse larger images, from the file header (default: 8 M whole image, 100 M sliding "
        "window at one scale, 40 M when resizing)",
    )


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """`--set`, `--device`, `--backend`, `--threads`, `--normalization` and the protocol flags: what `load_for_inference` reads."""
    add_set(parser)
    add_device(parser)
    add_backend(parser)
    parser.add_argument(
        "--normalization",
        choices=["card", "config"],
        default="card",
        help="input mean/std: the checkpoint's, as it was trained (default; a config that sets other values is an "
        "error), or deliberately the config's data.mean/std",
    )
    add_protocol_flags(parser)


def protocol_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The inference settings the protocol flags of `args` give (None: not given), for `with_inference_settings`."""
    return {"protocol": args.protocol, **{key: getattr(args, key, None) for key in INFERENCE_SETTINGS}}


def load_for_inference(args: argparse.Namespace, device: str):
    """The `LoadedModel` of `args.checkpoint` on `--backend`, `device` and `--threads`, under the effective config:
    the file's own (or `--config`'s data and eval sections), then the protocol flags, then `--set` items. A run
    directory stands for its best (else last) checkpoint; an ONNX file from `pspnet export` runs on onnxruntime,
    on the CPU. The input normalisation is the checkpoint's (see `LoadedModel.with_config`)."""
    # heavy (torch, timm): only when a command runs
    from ..checkpoint import open_model
    from ..config import load_config, with_inference_settings
    from ..training.run_dir import RunDirectory

    path = Path(args.checkpoint)
    checkpoint = RunDirectory(path).checkpoint() if path.is_dir() else path
    loaded = open_model(checkpoint, args.backend, args.threads)
    if loaded.backend != "onnxruntime" or args.device != "auto":
        loaded = loaded.to(device)
    config, source = loaded.config, "the checkpoint's config"
    if getattr(args, "config", None):
        other = load_config(args.config)
        config, source = dataclasses.replace(config, data=other.data, eval=other.eval), str(args.config)
    config = with_inference_settings(config, protocol_settings(args), args.overrides)
    return loaded.with_config(config, getattr(args, "normalization", "card"), source)
