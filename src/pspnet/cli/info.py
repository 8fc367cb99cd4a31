"""`pspnet config`, `pspnet models` and `pspnet convert`: configs, encoders and checkpoint conversion."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .common import add_set

INFO_CLASSES = 19
"""Class count `pspnet models --info` assumes when the config leaves model.num_classes unset (Cityscapes')."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="print a resolved config or the list of keys")
    config.add_argument(
        "config",
        nargs="?",
        help="YAML config or preset name (default: built-in defaults); a preset without --set prints its file, "
        "comments included: `pspnet config synthetic > my.yaml` gives a file to edit",
    )
    add_set(config)
    config.add_argument("--keys", action="store_true", help="list every config key with its type, default and meaning")
    config.add_argument("--presets", action="store_true", help="list the presets with a line on each")
    config.set_defaults(run=run_config)

    models = sub.add_parser(
        "models",
        help="list the encoders, or show one model's size and FLOPs",
        description="Without --info: every encoder name with its output strides. With --info NAME: "
        "parameters and FLOPs of PSPNet with that encoder (the config's other model "
        "settings, changed with --set, e.g. model.decoder=progressive model.num_classes=150).",
    )
    models.add_argument(
        "--info", metavar="NAME", help="encoder name (see the list), e.g. resnet50_deepstem or timm:convnext_tiny"
    )
    models.add_argument(
        "--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"), help="input size (default 512 512)"
    )
    models.add_argument("--config", help="YAML config whose model section to use (default: built-in defaults)")
    add_set(models)
    models.set_defaults(run=run_models)

    convert = sub.add_parser(
        "convert",
        help="convert a semseg or mmsegmentation checkpoint to pspnet's format",
        description="Read a PSPNet checkpoint of semseg (the authors' code) or mmsegmentation, "
        "check that every tensor matches, and write it as a pspnet checkpoint.",
    )
    convert.add_argument("source", help="the .pth file (its format is detected from its contents)")
    convert.add_argument("dest", help="the .safetensors file to write")
    convert.add_argument(
        "--dataset",
        help="cityscapes, ade20k or voc: class names and palette when the file has none, "
        "and the data section of the config",
    )
    convert.add_argument(
        "--num-classes",
        type=int,
        metavar="K",
        help="re-initialise the classifiers for K classes (fine-tuning on another label set)",
    )
    convert.set_defaults(run=run_convert)


def run_config(args: argparse.Namespace) -> int:
    from ..config import describe_keys, dump_yaml, load_config
    from ..presets import list_presets, resolve_config_path

    if args.keys:
        rows = describe_keys()
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for key, kind, default, doc in rows:
            print(f"{key:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {doc}")
    elif args.presets:
        presets = list_presets()
        width = max(len(name) for name, _ in presets)
        for name, description in presets:
            print(f"{name:<{width}}  {description}")
    elif args.config and not Path(args.config).is_file() and not args.overrides:
        load_config(args.config)  # a preset that does not build is an error here, not in the user's copy
        print(resolve_config_path(args.config).read_text(encoding="utf-8"), end="")
    else:
        print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..models.encoders import encoder_table  # heavy (torch, timm): only when the command runs
    from ..models.pspnet import complexity

    if args.info is None:
        rows = [("name", "family", "output stride", "imagenet weights (timm)", "description"), *encoder_table()]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)), row[4], sep="  ")
        print(
            "\nmobilenetv2_x<W>: any width W in [0.25, 2.0] (or mobilenetv2 with model.width_multiplier).\n"
            "timm:<name>: any timm model with features_only, dilated to the output stride where it can be."
        )
        return 0
    model = load_config(args.config, args.overrides).model
    model = dataclasses.replace(model, encoder=args.info, num_classes=model.num_classes or INFO_CLASSES)
    height, width = args.size
    info = complexity(model, (height, width))
    million = lambda n: f"{n / 1e6:.2f} M"  # noqa: E731
    print(f"{args.info}: PSPNet, {model.decoder} decoder, {model.num_classes} classes, input {height}x{width}")
    print(
        f"  encoder features: channels {info['channels']} at strides {info['reductions']}; "
        f"PPM at stride {info['output_stride']}"
    )
    print(
        f"  parameters: {million(info['total'])} (encoder {million(info['encoder'])}, decoder {million(info['decoder'])}, "
        f"training-only aux heads {million(info['aux'])})"
    )
    print(f"  FLOPs: {info['flops'] / 1e9:.2f} G (inference, 2 per multiply-add)")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..checkpoint import convert_checkpoint  # heavy (torch, timm): only when the command runs

    result = convert_checkpoint(args.source, args.dest, dataset=args.dataset, num_classes=args.num_classes)
    model = result.config.model
    print(f"source:  {args.source} ({result.source_format}, sha256 {result.sha256})")
    widths = f" {model.encoder_kwargs}" if model.encoder_kwargs else ""
    print(
        f"model:   {model.encoder}{widths}, dilation {model.dilation_style}, "
        f"align_corners={model.align_corners}, aux head {model.aux}"
    )
    print(
        f"classes: {result.classes.num_classes} ({', '.join(result.classes.names[:5])}"
        f"{', ...' if result.classes.num_classes > 5 else ''})"
    )
    if result.reinitialised:
        print(f"re-initialised for {model.num_classes} classes: {', '.join(result.reinitialised)}")
    print(f"wrote:   {result.path}")
    return 0
