"""What an exported model file carries besides its graph, so that it is self-describing.

ONNX files store these entries as `metadata_props` (string key -> string value, JSON where the
value is structured); `.pt2` programs store the same dictionary as the extra file `pspnet.json`.
"""

from __future__ import annotations

import json
from typing import Any

from ..card import ModelCard
from ..config import Config
from ..errors import CheckpointError, ConfigError

FORMAT_VERSION = "1"
JSON_KEYS = ("classes", "palette", "mean", "std", "in_channels", "align_corners", "config")
"""Entries whose value is JSON; the others (`pspnet_format_version`, `precision`, `source`, ...) are plain text."""


def export_metadata(card: ModelCard, config: Config, **extra: str) -> dict[str, str]:
    """The metadata entries of an exported model: class names and palette, mean/std, input channels,
    align_corners and the whole config (so `pspnet evaluate` needs no `--config`), plus `extra` text."""
    values = {
        "classes": list(card.classes.names),
        "palette": [list(color) for color in card.classes.palette],
        "mean": list(card.mean),
        "std": list(card.std),
        "in_channels": card.in_channels,
        "align_corners": config.model.align_corners,
        "config": config.to_dict(),
    }
    return {
        "pspnet_format_version": FORMAT_VERSION,
        **{key: json.dumps(value) for key, value in values.items()},
        **extra,
    }


def read_export_metadata(entries: dict[str, str], source: str) -> tuple[ModelCard, Config]:
    """The model card and config stored by `export_metadata`; CheckpointError naming the bad entry."""
    if "pspnet_format_version" not in entries:
        raise CheckpointError(
            f"{source}: no pspnet metadata (classes, mean/std); export the model with `pspnet export`"
        )
    values: dict[str, Any] = {}
    for key in JSON_KEYS:
        try:
            values[key] = json.loads(entries[key])
        except KeyError:
            raise CheckpointError(f"{source}: metadata entry '{key}' is missing") from None
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: metadata entry '{key}' is not valid JSON ({exc})") from None
    card = ModelCard.from_dict(
        {
            "classes": {"names": values["classes"], "palette": values["palette"]},
            "mean": values["mean"],
            "std": values["std"],
        },
        source,
    )
    if values["in_channels"] != card.in_channels:
        raise CheckpointError(
            f"{source}: metadata says {values['in_channels']} input channels but has {card.in_channels} mean/std values"
        )
    try:
        config = Config.from_dict(values["config"], source=f"{source} (metadata entry 'config')")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return card, config
