"""Arguments and steps shared by several commands: `--set`, the inference protocol flags, loading a model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from ..config import DEVICE_PATTERN, Config, EvalConfig

PROTOCOL_FLAGS = (
    "mode",
    "crop_size",
    "stride",
    "base_size",
    "resize",
    "scales",
    "flip",
    "window_batch",
    "max_pixels",
    "absent",
)


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
        choices=["torch", "torch-bf16"],
        help="how a PyTorch checkpoint runs: torch (eager fp32, default) or torch-bf16 (bf16 weights "
        "and activations: AVX-512 BF16/AMX CPUs, GPUs); .onnx files always run on onnxruntime",
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
    """`--set`, `--device`, `--backend`, `--threads` and the protocol flags: what `load_for_inference` reads."""
    add_set(parser)
    add_device(parser)
    add_backend(parser)
    add_protocol_flags(parser)


def _square(value: list[int] | None) -> list[int] | None:
    return value * 2 if value is not None and len(value) == 1 else value


def inference_config(config: Config, args: argparse.Namespace) -> Config:
    """`config` with the protocol flags and `--set` items of `args` applied, in that order.

    A protocol (`--protocol` or `--set eval.protocol=NAME`) brings all its settings, so it replaces
    those stored in the checkpoint; flags and `--set` items after it change parts of it.
    """
    eval_config = config.eval.with_protocol(args.protocol) if args.protocol else config.eval
    flags: dict[str, Any] = {key: getattr(args, key, None) for key in PROTOCOL_FLAGS}
    flags["crop_size"], flags["stride"] = _square(flags["crop_size"]), _square(flags["stride"])
    config = Config(model=config.model, data=config.data, train=config.train, eval=eval_config.updated(**flags))
    for item in args.overrides:
        key, _, raw = item.partition("=")
        if key.strip() == "eval.protocol":
            config = Config(
                model=config.model,
                data=config.data,
                train=config.train,
                eval=config.eval.with_protocol(yaml.safe_load(raw)),
            )
        else:
            config = config.replace([item])
    return config


def load_for_inference(args: argparse.Namespace, context):
    """Model (on `--backend` and this process's device, with `--threads`), the effective config and the model
    file: the file's config (or `--config`'s data and eval sections), then the protocol flags and `--set` items.
    A run directory stands for its best (else last) checkpoint; an ONNX file from `pspnet export` runs on
    onnxruntime, on the CPU."""
    # heavy (torch, timm): only when a command runs
    import torch

    from ..checkpoint import load_checkpoint
    from ..config import load_config
    from ..errors import ConfigError
    from ..training.run_dir import RunDirectory

    checkpoint = RunDirectory(args.checkpoint).checkpoint() if Path(args.checkpoint).is_dir() else Path(args.checkpoint)
    model, config, _ = load_checkpoint(checkpoint, args.backend, args.threads)
    if getattr(args, "config", None):
        other = load_config(args.config)
        config = Config(model=config.model, data=other.data, train=config.train, eval=other.eval)
    config = inference_config(config, args)
    if isinstance(model, torch.nn.Module):
        return model.to(context.device), config, checkpoint
    if args.device not in ("auto", "cpu"):
        raise ConfigError(
            f"{checkpoint} is an ONNX file: it runs on the CPU (onnxruntime); --device {args.device} "
            "applies to PyTorch checkpoints"
        )
    return model, config, checkpoint
