"""Helpers of the labelling-loop tests: a tiny model that predicts several classes, and Label Studio's own code.

Label Studio clashes with pspnet's stack, so it lives in its own virtual environment (`make label-studio-env`:
`.venv-label-studio`, or PSPNET_LABEL_STUDIO_VENV); its code runs there, in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from conftest import tiny_config_dict, unavailable
from PIL import Image

from pspnet.checkpoint import save_checkpoint
from pspnet.config import Config
from pspnet.data.synthetic import ContextScenes
from pspnet.models import create_model

REPO = Path(__file__).resolve().parents[1]
LS_ENV = Path(os.environ.get("PSPNET_LABEL_STUDIO_VENV", REPO / ".venv-label-studio"))


def varied_checkpoint(path: Path) -> Path:
    """An untrained tiny model whose normalisation layers are randomised, so that it predicts several classes."""
    config = Config.from_dict(tiny_config_dict())
    torch.manual_seed(0)
    model = create_model(config, ContextScenes.classes).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1 and name.endswith("bias"):
                parameter.normal_(0, 0.5)
            elif parameter.ndim == 1:
                parameter.uniform_(0.5, 2)
    return save_checkpoint(path, model, config.with_num_classes(model.config.num_classes))


def write_photos(folder: Path, count: int = 3, size: tuple[int, int] = (40, 56)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    source = ContextScenes("val", count, size)
    for index in range(count):
        Image.fromarray(source.load(index).image).save(folder / f"scene{index}.png")
    return folder


def label_studio_python() -> Path:
    """The Python of Label Studio's environment; skipped (failed on CI) when it is not there."""
    python = LS_ENV / "bin" / "python"
    if not python.is_file():
        unavailable(f"Label Studio's environment {LS_ENV} is missing: make label-studio-env")
    return python


def run_in_label_studio(code: str, payload: Any) -> Any:
    """Run `code` in Label Studio's environment with `payload` as JSON on stdin; its JSON stdout."""
    done = subprocess.run(
        [str(label_studio_python()), "-c", code], input=json.dumps(payload), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


DECODE_WITH_LABEL_STUDIO = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle
results = json.load(sys.stdin)
print(json.dumps([
    (decode_rle(r["value"]["rle"]).reshape(r["original_height"], r["original_width"], 4)[:, :, 3] > 0).tolist()
    for r in results
]))
"""


def label_studio_label_map(results: list[dict[str, Any]], names: tuple[str, ...]) -> np.ndarray:
    """The label map of brush results as Label Studio's own decoder reads them (255 where none is drawn)."""
    masks = run_in_label_studio(DECODE_WITH_LABEL_STUDIO, results)
    label = np.full((results[0]["original_height"], results[0]["original_width"]), 255, np.uint8)
    for result, mask in zip(results, masks):
        label[np.array(mask, bool)] = names.index(result["value"]["brushlabels"][0])
    return label


def export_from_tasks(tasks: list[dict[str, Any]], images: dict[str, str]) -> list[dict[str, Any]]:
    """A Label Studio JSON export in which each task's prediction was accepted as its annotation."""
    return [
        {
            "id": number,
            "data": {"image": images[Path(task["data"]["image"]).name]},
            "annotations": [
                {
                    "id": number,
                    "result": task["predictions"][0]["result"],
                    "was_cancelled": False,
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                }
            ],
        }
        for number, task in enumerate(tasks, 1)
    ]
