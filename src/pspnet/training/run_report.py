"""The run report (`pspnet report`, the end of `pspnet train`, `pspnet evaluate --report`): a checkpoint
evaluated with per-image scores, the images to show predicted again, and one HTML file rendered by
`pspnet.report.html`.

Only the per-image scores are kept during the evaluation; the few images the report shows are
predicted a second time, so memory does not grow with the size of the split.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import LoadedModel, open_model
from ..config import dump_yaml
from ..data.base import SegmentationDataset
from ..errors import CheckpointError
from ..inference.predict import evaluation_mode, tensor_to_image
from ..inference.protocol import Inferencer
from ..io.files import atomic_path
from ..jobs.evaluation import ImageScores, Validation, evaluate_split, split_dataset
from ..metrics import SegmentationMetrics
from ..report.html import EvaluationRecord, RunRecord, SamplePrediction, ranking, render_report, select_samples
from ..system.device import resolve_device
from ..visualize import displayable
from .run_dir import RunDirectory
from .run_index import read_csv

DEFAULT_SAMPLES = 8
"""Images in a report's sample grid: the worst half and a spread of the others."""


def draw_samples(
    loaded: LoadedModel, dataset: SegmentationDataset, scores: ImageScores, count: int = DEFAULT_SAMPLES
) -> list[SamplePrediction]:
    """The predictions of the `count` images `select_samples` picks from `scores` (in dataset order),
    computed again under `loaded.config.eval`, with the images as the model saw them."""
    card = loaded.card
    inferencer = Inferencer(loaded.model, loaded.config.eval)
    rank = {index: position + 1 for position, index in enumerate(ranking(scores.miou))}
    samples = []
    with evaluation_mode(loaded.model):
        for index in select_samples(scores.miou, count):
            item = dataset[index]
            labels = inferencer.labels(item["image"][None].to(loaded.device))[0].cpu().numpy()
            image = displayable(tensor_to_image(item["image"], card.mean, card.std))
            samples.append(
                SamplePrediction(item["name"], image, item["mask"].numpy(), labels, scores.miou[index], rank[index])
            )
    return samples


def write_report(
    out: str | Path,
    loaded: LoadedModel,
    split: str,
    metrics: SegmentationMetrics,
    scores: ImageScores,
    dataset: SegmentationDataset,
    samples: int = DEFAULT_SAMPLES,
) -> Path:
    """Write the report of an evaluation of `loaded` on `split` (with the record, logs and curves of the run
    directory its file lies in, if any) to `out`, atomically."""
    checkpoint, config = loaded.path, loaded.config
    run = RunDirectory.holding(checkpoint)
    record = (
        None
        if run is None
        else RunRecord(str(run.path), run.sessions(), read_csv(run.train_log), read_csv(run.val_log))
    )
    evaluation = EvaluationRecord(
        metrics,
        loaded.card.classes,
        config.eval.describe(),
        str(checkpoint),
        loaded.iteration,
        f"{config.data.format}/{split}",
        len(dataset),
    )
    html = render_report(
        run.path.name if run else checkpoint.name,
        run.config_path.read_text() if run else dump_yaml(config),
        record,
        evaluation,
        draw_samples(loaded, dataset, scores, samples),
        loaded.card.classes,
    )
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(out)


def report_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    split: str | None = None,
    samples: int = DEFAULT_SAMPLES,
    device: str = "auto",
    progress: bool = True,
    validation: Validation | None = None,
) -> Path:
    """Write the report of a run (default `RUN_DIR/report.html`) on its best (else last) checkpoint,
    evaluated on `split` (default: the val split) under the run's protocol. A `validation` of that
    checkpoint's weights (same iteration) on the val split is used instead of evaluating again."""
    run = RunDirectory(run_dir)
    if not run.config_path.is_file():
        raise CheckpointError(f"{run.path} is not a run directory ({run.config_path.name} is missing)")
    loaded = open_model(run.checkpoint(), device=resolve_device(device))
    loaded = loaded.with_config(loaded.config)
    split = split or loaded.config.data.val_split
    dataset = split_dataset(loaded, split)
    if validation is not None and validation.iteration == loaded.iteration and split == loaded.config.data.val_split:
        metrics, scores = validation.metrics, validation.scores
    else:
        scores = ImageScores(loaded.card.num_classes)
        metrics = evaluate_split(loaded, dataset, progress, observe=scores)
    return write_report(out or run.report, loaded, split, metrics, scores, dataset, samples)
