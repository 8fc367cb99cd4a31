"""The run report: every section holds the run's own numbers, it renders in a browser, it shows the worst
images first; training curves and run.json are written as the run goes."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config_dict, unavailable
from PIL import Image

from pspnet.checkpoint import load_model
from pspnet.cli import main
from pspnet.config import Config
from pspnet.data.loaders import build_dataset
from pspnet.report.html import select_samples
from pspnet.training.run_dir import RunDirectory
from pspnet.training.run_log import RunLog

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# ---------------------------------------------------------------- a small DOM from html.parser
@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        """Descendants with `tag` (any when None) and these attribute values (`id_` for id)."""
        found = []
        for child in self.children:
            if isinstance(child, Node):
                wanted = {key.rstrip("_"): value for key, value in attrs.items()}
                if (tag is None or child.tag == tag) and all(child.attrs.get(k) == v for k, v in wanted.items()):
                    found.append(child)
                found.extend(child.all(tag, **attrs))
        return found

    def one(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}> elements"
        return found[0]


class TreeBuilder(HTMLParser):
    VOID = {"meta", "img", "br", "link", "input", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {key: value or "" for key, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        if tag not in self.VOID:
            assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
            self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(path: Path) -> Node:
    builder = TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def values(row: Node) -> list[float]:
    """The `data-value` numbers of a table row."""
    return [float(cell.attrs["data-value"]) for cell in row.all("td") if "data-value" in cell.attrs]


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


# ---------------------------------------------------------------- a tiny run, in two sessions
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run trained through the CLI for 2 iterations, then resumed to 4 (validation every 2): the second
    `train` writes report.html."""
    root = tmp_path_factory.mktemp("report")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(max_iters=2, eval_interval=2, checkpoint_interval=2)))
    run_dir = root / "run"
    assert main(["--quiet", "train", str(config), "--out", str(run_dir)]) == 0
    assert main(["--quiet", "train", "--resume", str(run_dir), "--set", "train.max_iters=4"]) == 0
    return run_dir


def independent_evaluation(run_dir: Path) -> dict:
    """Per-class IoU/acc, mIoU/mAcc/aAcc and per-image mIoU of the run's best checkpoint on the val split,
    from the model's logits and numpy counting (not the engine's evaluator)."""
    model = load_model(run_dir / "checkpoints" / "best.safetensors")
    config = Config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    dataset = build_dataset(config.data, "val", train=False)
    items = [dataset[index] for index in range(len(dataset))]
    with torch.no_grad():  # one batch of the 4 images, as the evaluation's loader gives them
        predictions = model(torch.stack([item["image"] for item in items])).argmax(1).numpy()
    k = model.card.num_classes

    def confusion(prediction, mask):
        valid = mask != 255
        return np.bincount(mask[valid].astype(int) * k + prediction[valid], minlength=k * k).reshape(k, k)

    def rates(counts):
        tp = np.diag(counts).astype(float)
        union = counts.sum(0) + counts.sum(1) - tp
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        acc = np.where(counts.sum(1) > 0, tp / np.maximum(counts.sum(1), 1), np.nan)
        return iou, acc

    per_image = [confusion(prediction, item["mask"].numpy()) for prediction, item in zip(predictions, items)]
    total = sum(per_image)
    iou, acc = rates(total)
    return {
        "iou": iou,
        "acc": acc,
        "miou": np.nanmean(iou),
        "macc": np.nanmean(acc),
        "aacc": np.trace(total) / total.sum(),
        "names": [item["name"] for item in items],
        "image_miou": [np.nanmean(rates(counts)[0]) for counts in per_image],
    }


# ---------------------------------------------------------------- the report's content
def test_report_holds_every_section_with_the_runs_numbers(run):
    report = run / "report.html"
    page = parse(report)
    for section in ("run", "curves", "evaluation", "samples"):
        assert page.all("section", id_=section), section

    # the run: config, command lines of both sessions, software, hardware, wall time
    assert page.one("details", id_="config").one("pre").text() == (run / "config.yaml").read_text()
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert [s["outcome"] for s in sessions] == ["finished", "finished"]
    assert [(s["start_iteration"], s["end_iteration"]) for s in sessions] == [(0, 2), (2, 4)]
    commands = [row.all("td")[1].text() for row in page.one("table", id_="sessions").all("tr")[1:]]
    assert commands == [s["command"] for s in sessions] and "--resume" in commands[1]
    software = {row.one("th").text(): row.one("td").text() for row in page.one("table", id_="software").all("tr")}
    assert software["torch"] == torch.__version__
    assert page.one("table", id_="hardware").all("tr")
    wall = float(page.one("td", id_="wall-time").attrs["data-value"])
    assert wall == pytest.approx(sum(s["wall_seconds"] for s in sessions)) and wall > 0

    # training curves: the picture, and the validation table = val_log.csv
    assert page.one("section", id_="curves").one("img").attrs["src"].startswith("data:image/png;base64,")
    val_log = read_csv(run / "val_log.csv")
    rows = page.one("table", id_="validation-history").all("tr")[1:]
    assert [values(row) for row in rows] == [[r["miou"], r["macc"], r["aacc"]] for r in val_log]
    assert [int(row.all("td")[0].text()) for row in rows] == [2, 4]
    data = json.loads(page.one("script", id_="report-data").text())
    assert data["train_log"] == read_csv(run / "train_log.csv") and len(data["train_log"]) == 4

    # the evaluation = one computed here from the best checkpoint's logits
    expected = independent_evaluation(run)
    summary = {
        node.attrs["data-metric"]: float(node.attrs["data-value"])
        for node in page.one("div", id_="summary").all("div", **{"class": "value"})
    }
    assert summary == pytest.approx(
        {"mIoU": expected["miou"], "mAcc": expected["macc"], "aAcc": expected["aacc"]}, abs=1e-12
    )
    table = [values(row) for row in page.one("table", id_="per-class").all("tr")[1:]]
    np.testing.assert_allclose([row[0] for row in table], expected["iou"], atol=1e-12)
    np.testing.assert_allclose([row[1] for row in table], expected["acc"], atol=1e-12)
    assert "whole image" in page.one("td", id_="protocol").text()
    assert data["evaluation"]["miou"] == pytest.approx(expected["miou"], abs=1e-12)

    # the samples: all 4 val images, the worst (by per-image mIoU computed here) first
    captions = [row.one("td") for row in page.one("section", id_="samples").all("tr", **{"class": "caption"})]
    worst = int(np.nanargmin(expected["image_miou"]))
    assert captions[0].attrs["data-name"] == expected["names"][worst]
    assert float(captions[0].attrs["data-miou"]) == pytest.approx(expected["image_miou"][worst], abs=1e-12)
    assert [int(c.attrs["data-rank"]) for c in captions] == [1, 2, 3, 4]
    pictures = page.one("section", id_="samples").all("tr", **{"class": "pictures"})
    assert [len(row.all("img")) for row in pictures] == [4] * 4


def test_report_is_self_contained(run):
    page = parse(run / "report.html")
    images = page.all("img")
    assert len(images) >= 3 + 4 * 4  # curves, bars, confusion, 4 samples x 4 pictures
    for image in images:
        header, _, payload = image.attrs["src"].partition(",")
        assert header in ("data:image/png;base64", "data:image/jpeg;base64")
        Image.open(io.BytesIO(base64.b64decode(payload))).verify()
    links = [
        node.attrs.get("href") or node.attrs.get("src") for node in page.all() if {"href", "src"} & set(node.attrs)
    ]
    assert all(link.startswith(("data:", "#")) for link in links)
    assert not page.all("link") and all(not node.attrs.get("src") for node in page.all("script"))


def test_report_renders_in_chromium(run, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.is_file():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    requests = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.goto((run / "report.html").as_uri())
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
            )
            page.click("#config summary")  # the collapsed config opens
            config_visible = page.is_visible("#config pre")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert broken == 0 and config_visible
    assert all(url.startswith(("file:", "data:")) for url in requests)  # nothing fetched from elsewhere
    screenshot = np.asarray(Image.open(tmp_path / "report.png").convert("RGB"))
    assert screenshot.shape[0] > 2000 and screenshot.shape[1] == 1280  # the whole page: several screens
    colours = len(np.unique(screenshot.reshape(-1, 3), axis=0))
    assert colours > 200 and screenshot.std() > 20  # plots, pictures and text, not a blank page


def test_report_command_and_evaluate_report(run, tmp_path, capsys):
    out = tmp_path / "again.html"
    assert main(["--quiet", "report", str(run), "--out", str(out), "--samples", "2"]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    first, again = parse(run / "report.html"), parse(out)
    per_class = [[values(row) for row in page.one("table", id_="per-class").all("tr")[1:]] for page in (first, again)]
    np.testing.assert_array_equal(*per_class)
    assert len(again.all("tr", **{"class": "caption"})) == 2

    checkpoint = tmp_path / "alone.safetensors"  # outside its run directory: no run record, no curves
    shutil.copy(run / "checkpoints" / "best.safetensors", checkpoint)
    assert (
        main(
            [
                "--quiet",
                "evaluate",
                str(checkpoint),
                "--out",
                str(tmp_path / "e.json"),
                "--report",
                str(tmp_path / "e.html"),
            ]
        )
        == 0
    )
    alone = parse(tmp_path / "e.html")
    assert not alone.all("section", id_="curves") and alone.all("section", id_="samples")
    assert "not inside a run directory" in alone.one("section", id_="run").text()
    result = json.loads((tmp_path / "e.json").read_text())
    assert (
        float(alone.one("div", id_="summary").all("div", **{"class": "value"})[0].attrs["data-value"]) == result["miou"]
    )


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text(yaml.safe_dump(tiny_config_dict()))
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_a_missing_browser_skips_here_but_fails_on_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        unavailable("no Chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no Chromium; on CI"):
        unavailable("no Chromium")


# ---------------------------------------------------------------- picking the samples
def test_samples_are_the_worst_first_then_a_spread_up_to_the_best():
    scores = [0.9, 0.2, math.nan, 0.5, 0.1, 0.7, 0.95, 0.3]  # image 2 has no labelled pixel
    assert select_samples(scores, 4) == [4, 1, 5, 6]  # the worst two (0.1, 0.2), then 0.7 and the best (0.95)
    assert select_samples(scores, 3) == [4, 1, 6]
    assert select_samples(scores, 1) == [4]
    assert select_samples(scores, 20) == [4, 1, 7, 3, 5, 0, 6]  # every scored image, worst first
    assert select_samples([math.nan, 0.4, 0.6], 2) == [1, 2]
    assert select_samples([math.nan, math.nan], 1) == [0]  # nothing scored: unscored images are shown
    assert select_samples([], 8) == []


def test_per_image_scores_of_several_processes_come_back_in_dataset_order(monkeypatch):
    from pspnet.jobs import evaluation as evaluator
    from pspnet.system.distributed import Distributed

    # 5 images on 2 processes: process 0 scored images 0, 2, 4 and process 1 images 1, 3 (strided shares)
    shares = [(["a", "c", "e"], [0.0, 0.2, 0.4]), (["b", "d"], [0.1, 0.3])]
    monkeypatch.setattr(evaluator, "gather", lambda context, value: shares)
    scores = evaluator.ImageScores(3, *shares[0]).gather(Distributed(rank=0, world_size=2))
    assert scores.names == ["a", "b", "c", "d", "e"] and scores.miou == [0.0, 0.1, 0.2, 0.3, 0.4]


# ---------------------------------------------------------------- written while training
def test_curves_png_is_redrawn_at_each_validation(tmp_path):
    run = RunDirectory(tmp_path)
    log = RunLog(run, 0)
    try:
        for iteration in (1, 2):
            log.train(iteration, {"loss": 2.0 / iteration, "main": 1.5 / iteration, "aux": 1.2, "lr": 0.01})
        assert not run.curves.exists()
        log.validation(2, {"miou": 0.3, "macc": 0.4, "aacc": 0.5})
        first = run.curves.read_bytes()
        log.train(3, {"loss": 0.5, "main": 0.4, "aux": 0.9, "lr": 0.005})
        log.validation(3, {"miou": 0.6, "macc": 0.7, "aacc": 0.8})
    finally:
        log.close()
    image = Image.open(run.curves)
    assert image.format == "PNG" and image.width > 1000 and run.curves.read_bytes() != first


def test_run_json_records_a_failed_session(tmp_path):
    run = RunDirectory(tmp_path)
    with pytest.raises(RuntimeError):
        with run.session({"command": "pspnet train x.yaml", "start_iteration": 0}, iteration=lambda: 3):
            raise RuntimeError("out of memory")
    (session,) = run.sessions()
    assert session["outcome"] == "failed: out of memory" and session["end_iteration"] == 3
    assert session["finished"] and session["wall_seconds"] >= 0
