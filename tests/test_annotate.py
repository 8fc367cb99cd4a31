"""The labelling loop: pre-annotations for Label Studio, COCO and CVAT, their exports read back as datasets, and the
Label Studio ML backend. Masks are checked against Label Studio's and pycocotools' own code."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from annotate_helpers import (
    export_from_tasks,
    label_studio_label_map,
    run_in_label_studio,
    varied_checkpoint,
    write_photos,
)
from conftest import TINY_RESNET, open_source
from PIL import Image

from pspnet.checkpoint import load_model, open_model
from pspnet.cli import main
from pspnet.errors import DataError
from pspnet.io.brush_rle import decode_mask, encode_mask


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> Path:
    """A varied tiny checkpoint, three photos, and its predictions in every format (pspnet's labels/ included)."""
    work = tmp_path_factory.mktemp("annotate")
    checkpoint = varied_checkpoint(work / "model.safetensors")
    photos = write_photos(work / "photos")
    for output_format in ("pspnet", "label-studio", "coco", "cvat"):
        command = ["--quiet", "predict", str(checkpoint), str(photos), "--out", str(work / output_format)]
        assert main([*command, "--format", output_format]) == 0
    return work


def labels_of(work: Path) -> dict[str, np.ndarray]:
    return {path.stem: np.array(Image.open(path)) for path in (work / "pspnet" / "labels").glob("*.png")}


def label_studio_export(work: Path, root: Path, tasks: list | None = None) -> Path:
    """An export folder whose tasks accept pspnet's predictions, images referenced as local-files URLs."""
    root.mkdir()
    tasks = tasks or json.loads((work / "label-studio" / "tasks.json").read_text())
    references = {name: f"/data/local-files/?d=photos/{name}" for name in ("scene0.png", "scene1.png", "scene2.png")}
    (root / "project-1-at-2026.json").write_text(json.dumps(export_from_tasks(tasks, references)))
    return root


def test_brush_rle_round_trips_with_label_studio_code():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) < 0.3
    mask[5:30, 10:40] = True
    assert (decode_mask(encode_mask(mask), 53, 37) == mask).all()
    code = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
ours, mask = json.load(sys.stdin)
theirs = decode_rle(ours).reshape(37, 53, 4)[:, :, 3] > 0
print(json.dumps({"decoded": theirs.tolist(), "encoded": mask2rle(np.array(mask, np.uint8) * 255)}))
"""
    answer = run_in_label_studio(code, [encode_mask(mask), mask.astype(int).tolist()])
    assert (np.array(answer["decoded"]) == mask).all()  # Label Studio reads pspnet's RLE exactly
    assert (decode_mask(answer["encoded"], 53, 37) == mask).all()  # and pspnet reads Label Studio's


def test_masks_that_label_studio_encodes_are_read_back_exactly(predicted, tmp_path):
    tasks = json.loads((predicted / "label-studio" / "tasks.json").read_text())
    results = [r for task in tasks for r in task["predictions"][0]["result"]]
    code = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
results = json.load(sys.stdin)
for r in results:
    alpha = decode_rle(r["value"]["rle"]).reshape(r["original_height"], r["original_width"], 4)[:, :, 3]
    r["value"]["rle"] = mask2rle((alpha > 0).astype(np.uint8) * 255)
print(json.dumps(results))
"""
    theirs = iter(run_in_label_studio(code, results))
    for task in tasks:  # the same masks, encoded by Label Studio
        task["predictions"][0]["result"] = [next(theirs) for _ in task["predictions"][0]["result"]]
    root = label_studio_export(predicted, tmp_path / "ls", tasks)
    classes_file = predicted / "label-studio" / "classes.json"
    source = open_source("label-studio", root, "all", classes_file, {"local_files_root": str(predicted)})
    labels = labels_of(predicted)
    assert all((source.load(i).mask == labels[source.name(i)]).all() for i in range(3))


@pytest.mark.parametrize(
    "rle, message",
    [
        ("abc", "expected a list of byte values"),
        ([0, 0, 0], "shorter than its 7-byte header"),
        (encode_mask(np.ones((4, 4), bool))[:-2], "the data ends inside a block"),
        (encode_mask(np.ones((4, 5), bool)), "holds 80 values but a 4x4 image needs 64"),
    ],
)
def test_bad_brush_rle_is_a_clear_error(rle, message):
    with pytest.raises(DataError, match=message):
        decode_mask(rle, 4, 4, "task 7")


def test_label_studio_tasks_decode_to_the_label_maps(predicted):
    tasks = json.loads((predicted / "label-studio" / "tasks.json").read_text())
    names = load_model(predicted / "model.safetensors").card.classes.names
    labels = labels_of(predicted)
    assert len(tasks) == 3 and len(labels) == 3
    for task in tasks:
        prediction = task["predictions"][0]
        assert prediction["model_version"].startswith("model.safetensors@") and 0 < prediction["score"] <= 1
        results = prediction["result"]
        assert all(r["type"] == "brushlabels" and r["from_name"] == "tag" and r["to_name"] == "image" for r in results)
        assert len({r["value"]["brushlabels"][0] for r in results}) == len(results) > 1  # one result per class
        assert all(0 < r["score"] <= 1 for r in results)
        stem = Path(task["data"]["image"]).stem
        assert (label_studio_label_map(results, names) == labels[stem]).all()
    config = (predicted / "label-studio" / "label_config.xml").read_text()
    assert '<BrushLabels name="tag" toName="image">' in config and '<Label value="sky" background="#80c0ff"' in config


def test_coco_annotations_decode_to_the_label_maps(predicted):
    mask_api = pytest.importorskip("pycocotools.mask")
    document = json.loads((predicted / "coco" / "coco.json").read_text())
    names = load_model(predicted / "model.safetensors").card.classes.names
    assert [c["name"] for c in document["categories"]] == list(names)
    labels = labels_of(predicted)
    for image in document["images"]:
        label = np.full((image["height"], image["width"]), 255, np.uint8)
        for annotation in (a for a in document["annotations"] if a["image_id"] == image["id"]):
            assert annotation["iscrowd"] == 0
            mask = mask_api.decode(
                {**annotation["segmentation"], "counts": annotation["segmentation"]["counts"].encode()}
            )
            assert annotation["area"] == mask.sum() and annotation["bbox"][2] > 0
            assert (label[mask.astype(bool)] == 255).all()  # one annotation per pixel
            label[mask.astype(bool)] = annotation["category_id"] - 1
        assert (label == labels[Path(image["file_name"]).stem]).all()


def test_exports_read_back_as_datasets(predicted, tmp_path):
    labels = labels_of(predicted)
    classes_file = predicted / "label-studio" / "classes.json"
    root = label_studio_export(predicted, tmp_path / "ls")
    exported = open_source(
        "label-studio", root, "all", classes_file, {"local_files_root": str(predicted), "val_fraction": 0.5}
    )
    coco_root = tmp_path / "coco"
    shutil.copytree(predicted / "photos", coco_root / "images")
    shutil.copy(predicted / "coco" / "coco.json", coco_root)
    cvat_root = tmp_path / "cvat"
    zipfile.ZipFile(predicted / "cvat" / "cvat.zip").extractall(cvat_root)
    shutil.copytree(predicted / "photos", cvat_root / "JPEGImages")
    model_classes = load_model(predicted / "model.safetensors").card.classes
    for source in (exported, open_source("coco", coco_root, "all"), open_source("cvat", cvat_root, "all")):
        assert source.classes == model_classes and len(source) == 3
        for index in range(3):
            sample = source.load(index)
            assert (sample.mask == labels[sample.name]).all(), source.format_name
    # without a classes file, the classes are the labels the annotations use, sorted by name
    alone = open_source("label-studio", root, "train", options={"local_files_root": str(predicted)})
    used = sorted({model_classes.names[v] for label in labels.values() for v in np.unique(label)})
    assert alone.classes.names == tuple(used)


def test_the_split_of_an_export_is_deterministic(predicted, tmp_path):
    root = label_studio_export(predicted, tmp_path / "ls")
    options = {"local_files_root": str(predicted), "val_fraction": 0.5}
    val = [f.name for f in open_source("label-studio", root, "val", options=options).samples]
    train = [f.name for f in open_source("label-studio", root, "train", options=options).samples]
    assert len(val) == 2 and len(train) == 1 and sorted(val + train) == ["scene0", "scene1", "scene2"]  # ceil(1.5)
    default = open_source("label-studio", root, "val", options={"local_files_root": str(predicted)})
    assert len(default) == 1  # ceil(0.1 x 3)


def test_newest_annotation_wins_and_unannotated_tasks_are_counted(predicted, tmp_path):
    root = label_studio_export(predicted, tmp_path / "ls")
    export_file = next(root.glob("*.json"))
    tasks = json.loads(export_file.read_text())
    square = {
        "type": "polygonlabels",
        "from_name": "tag",
        "to_name": "image",
        "original_width": 56,
        "original_height": 40,
        "value": {"points": [[0, 0], [50, 0], [50, 50], [0, 50]], "polygonlabels": ["car"]},
    }
    newer = {"id": 90, "result": [square], "was_cancelled": False, "updated_at": "2026-02-01T00:00:00Z"}
    cancelled = {"id": 91, "result": [], "was_cancelled": True, "updated_at": "2026-03-01T00:00:00Z"}
    tasks[0]["annotations"] += [newer, cancelled]
    tasks[1]["annotations"] = []
    export_file.write_text(json.dumps(tasks))
    source = open_source(
        "label-studio", root, "all", predicted / "label-studio" / "classes.json", {"local_files_root": str(predicted)}
    )
    assert len(source) == 2 and source.skipped == 1
    mask = source.load(0).mask
    car = source.classes.names.index("car")
    assert (mask[:20, :28] == car).all() and (mask[20:, :] == 255).all() and (mask[:, 28:] == 255).all()


def test_bad_exports_are_clear_errors(predicted, tmp_path):
    root = label_studio_export(predicted, tmp_path / "ls")
    export_file = next(root.glob("*.json"))
    options = {"local_files_root": str(predicted)}
    with pytest.raises(DataError, match=r"task 1: its image /data/local-files/\?d=photos/scene0.png is not there"):
        open_source("label-studio", root, "all", options={"local_files_root": str(tmp_path)})
    tasks = json.loads(export_file.read_text())
    tasks[2]["annotations"][0]["result"][0]["value"]["brushlabels"] = ["unicorn"]
    export_file.write_text(json.dumps(tasks))
    with pytest.raises(DataError, match=r"class 'unicorn' of the export is not in the classes file .*class_map"):
        open_source("label-studio", root, "all", predicted / "label-studio" / "classes.json", options)
    renamed = open_source(  # a class map puts it right
        "label-studio",
        root,
        "all",
        predicted / "label-studio" / "classes.json",
        {**options, "class_map": {"unicorn": "car"}},
    )
    assert len(renamed) == 3
    tasks[2]["annotations"][0]["result"][0]["value"]["rle"] = encode_mask(np.ones((3, 3), bool))
    export_file.write_text(json.dumps(tasks))
    source = open_source("label-studio", root, "all", options=options)
    with pytest.raises(DataError, match=r"task 3: the brush RLE holds 36 values but a 56x40 image needs 8960"):
        source.load(2)
    export_file.write_text("[]")
    with pytest.raises(DataError, match="holds no tasks"):
        open_source("label-studio", root, "all", options=options)
    export_file.write_text(json.dumps([{"id": 1, "data": {"image": "x.png"}, "annotations": []}]))
    with pytest.raises(DataError, match="none of the 1 tasks .* has an annotation"):
        open_source("label-studio", root, "all", options=options)


def test_data_check_and_preview_of_an_export(predicted, tmp_path, capsys):
    root = label_studio_export(predicted, tmp_path / "ls")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data:\n  format: label-studio\n  root: {root}\n  classes_file: {predicted / 'label-studio' / 'classes.json'}\n"
        f"  options: {{local_files_root: {predicted}}}\n"
    )
    assert main(["data", "check", str(config), "--split", "all"]) == 0
    assert "pairs checked: 3" in capsys.readouterr().out
    assert main(["data", "preview", str(config), "--out", str(tmp_path / "preview.png")]) == 0
    assert Image.open(tmp_path / "preview.png").size[0] > 0


def test_ml_backend_answers_label_studio(predicted):
    from fastapi.testclient import TestClient

    from pspnet.data.formats.label_studio import labelling_config
    from pspnet.serve.app import create_app
    from pspnet.serve.label_studio import LabelStudioOptions

    loaded = open_model(predicted / "model.safetensors")
    app = create_app(loaded, label_studio=LabelStudioOptions(local_files_root=str(predicted)))
    config = labelling_config(loaded.card.classes)
    with TestClient(app) as client:
        assert client.get("/health").json()["status"] == "UP"
        setup = client.post("/setup", json={"project": "1.1", "schema": config, "hostname": "http://localhost:1"})
        assert setup.json()["classes"] == {"unknown_to_model": [], "missing_in_project": []}
        other = config.replace('value="sky"', 'value="cloud"')
        answer = client.post("/setup", json={"project": "1.1", "schema": other}).json()
        assert answer["classes"] == {"unknown_to_model": ["cloud"], "missing_in_project": ["sky"]}
        assert "cloud" in answer["warning"]
        task = {"id": 5, "data": {"image": "/data/local-files/?d=photos/scene1.png"}}
        results = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": config}).json()
        prediction = results["results"][0]
        assert prediction["model_version"].startswith("model.safetensors@")
        label = np.full((40, 56), 255, np.uint8)
        for result in prediction["result"]:  # Label Studio's own decoder reads the same: see the tests above
            label[decode_mask(result["value"]["rle"], 56, 40)] = loaded.card.classes.names.index(
                result["value"]["brushlabels"][0]
            )
        assert (label == labels_of(predicted)["scene1"]).all()
        missing = {"id": 6, "data": {"image": "/data/local-files/?d=photos/none.png"}}
        refused = client.post("/predict", json={"tasks": [missing], "project": "1.1", "label_config": config})
        assert refused.status_code == 400 and "none.png" in refused.json()["detail"]
        outside = {"id": 7, "data": {"image": "/data/local-files/?d=../../../../etc/passwd"}}
        refused = client.post("/predict", json={"tasks": [outside], "project": "1.1", "label_config": config})
        assert refused.status_code == 400 and "not found under --local-files-root" in refused.json()["detail"]
        bad = client.post("/setup", json={"schema": "<View>"})
        assert bad.status_code == 400 and "labelling config" in bad.json()["detail"]
        assert client.post("/setup", content=b"[1]").status_code == 422
        assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).json()["status"] == "ignored"
        off = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert off.status_code == 400 and "--retrain-config" in off.json()["detail"]


def test_fine_tuning_needs_the_model_classes(predicted, tmp_path, capsys):
    root = label_studio_export(predicted, tmp_path / "ls")
    config = tmp_path / "config.yaml"
    data = {
        "format": "label-studio",
        "root": str(root),
        "options": {"local_files_root": str(predicted)},
        "num_workers": 0,
    }
    train = {"max_iters": 1, "batch_size": 2, "init_from": str(predicted / "model.safetensors")}
    config.write_text(json.dumps({"model": TINY_RESNET, "data": data, "train": train}))
    assert main(["--quiet", "train", str(config), "--out", str(tmp_path / "run")]) != 0
    message = capsys.readouterr().err
    assert "train.init_from" in message and "orders them differently" in message and "data.classes_file" in message


def test_coco_instances_overlap_smaller_wins_and_panoptic(tmp_path):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (20, 10)).save(root / "images" / name)
    big = [[0, 0, 16, 0, 16, 8, 0, 8]]  # a 16 x 8 box
    small = {"size": [10, 20], "counts": [22, 4, 6, 4, 164]}  # uncompressed RLE, column-major: a 4 x 2 block
    document = {
        "images": [
            {"id": i, "file_name": n, "width": 20, "height": 10} for i, n in enumerate(("a.png", "b.png", "c.png"), 1)
        ],
        "categories": [{"id": 3, "name": "road"}, {"id": 7, "name": "car", "color": [255, 0, 0]}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "segmentation": small, "area": 8, "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 3, "segmentation": big, "area": 128, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "segmentation": big, "area": 128, "iscrowd": 0},
        ],
    }
    (root / "instances.json").write_text(json.dumps(document))
    source = open_source("coco", root, "all")
    assert source.classes.names == ("road", "car") and source.classes.palette[1] == (255, 0, 0)
    assert len(source) == 2 and source.skipped == 1  # c.png has no annotation
    mask = source.load(0).mask
    assert (mask[2:6, 2:4] == 1).all() and (mask == 1).sum() == 8  # the small car wins over the road
    assert (mask[:8, :16] != 255).all() and (mask[8:] == 255).all() and (mask[:, 16:] == 255).all()

    panoptic = tmp_path / "panoptic"
    (panoptic / "images").mkdir(parents=True)
    (panoptic / "panoptic_val").mkdir()
    Image.new("RGB", (20, 10)).save(panoptic / "images" / "a.png")
    segments = np.zeros((10, 20, 3), np.uint8)
    segments[:5, :, 0] = 5
    segments[5:, :10] = (44, 1, 0)  # id 44 + 256 = 300
    Image.fromarray(segments).save(panoptic / "panoptic_val" / "a.png")
    document = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "sky", "color": [0, 0, 255]}, {"id": 2, "name": "car"}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "a.png",
                "segments_info": [{"id": 5, "category_id": 1}, {"id": 300, "category_id": 2}],
            }
        ],
    }
    (panoptic / "panoptic_val.json").write_text(json.dumps(document))
    mask = open_source("coco", panoptic, "all").load(0).mask
    assert (mask[:5] == 0).all() and (mask[5:, :10] == 1).all() and (mask[5:, 10:] == 255).all()


def test_cvat_split_files_and_unknown_colours(tmp_path, capsys):
    root = tmp_path / "cvat"
    for folder in ("SegmentationClass", "JPEGImages", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:255,0,0::\n")
    (root / "ImageSets/Segmentation/train.txt").write_text("x\n")
    for name in ("x", "y"):
        Image.new("RGB", (8, 6)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((6, 8, 3), np.uint8)
        mask[:3, :4] = (255, 0, 0)
        mask[5, 7] = (1, 2, 3)  # a colour of no label
        Image.fromarray(mask).save(root / "SegmentationClass" / f"{name}.png")
    train = open_source("cvat", root, "train")
    assert [f.name for f in train.samples] == ["x"]  # from ImageSets/Segmentation/train.txt
    mask = train.load(0).mask
    assert (mask[:3, :4] == 1).all() and mask[5, 7] == 255 and (mask == 0).sum() == 48 - 12 - 1
    ignored = open_source("cvat", root, "val", options={"class_map": {"background": "ignore"}, "val_fraction": 0.5})
    assert ignored.classes.names == ("car",) and len(ignored) == 1
    assert (ignored.load(0).mask == 0).sum() == 12


def test_a_token_server_lets_label_studio_in_with_basic_authentication(predicted):
    from fastapi.testclient import TestClient

    from pspnet.serve.app import ServeOptions, create_app
    from pspnet.serve.label_studio import LabelStudioOptions

    app = create_app(open_model(predicted / "model.safetensors"), ServeOptions(token="s3cret"), LabelStudioOptions())
    with TestClient(app) as client:
        assert client.get("/health").status_code == 401
        assert client.get("/health", auth=("label-studio", "wrong")).status_code == 401
        assert client.get("/health", auth=("label-studio", "s3cret")).json()["status"] == "UP"


def test_image_references_and_the_labelling_config(predicted, tmp_path, capsys):
    root = label_studio_export(predicted, tmp_path / "ls")
    export_file = next(root.glob("*.json"))
    tasks = json.loads(export_file.read_text())
    (root / "upload" / "1").mkdir(parents=True)
    shutil.copy(predicted / "photos" / "scene0.png", root / "upload" / "1" / "f00-scene0.png")
    shutil.copy(predicted / "photos" / "scene1.png", root / "scene1.png")
    tasks[0]["data"]["image"] = "/data/upload/1/f00-scene0.png"
    tasks[1]["data"]["image"] = "scene1.png"
    tasks[2]["data"]["image"] = str(predicted / "photos" / "scene2.png")
    export_file.write_text(json.dumps(tasks))
    shutil.copy(predicted / "label-studio" / "label_config.xml", root)
    source = open_source("label-studio", root, "all", options={"label_config": "label_config.xml"})
    assert source.classes == load_model(predicted / "model.safetensors").card.classes  # names and colours, in order
    labels = labels_of(predicted)
    assert [source.load(i).name for i in range(3)] == ["f00-scene0", "scene1", "scene2"]
    assert all((source.load(i).mask == labels[f"scene{i}"]).all() for i in range(3))
    command = ["predict", str(predicted / "model.safetensors"), str(predicted / "photos"), "--out", str(tmp_path / "o")]
    assert main([*command, "--format", "label-studio", "--local-files-root", str(tmp_path)]) == 2
    assert "is not under the local files root" in capsys.readouterr().err


def test_annotation_formats_refuse_what_they_cannot_hold(predicted, tmp_path, capsys):
    checkpoint, photos = str(predicted / "model.safetensors"), str(predicted / "photos")
    command = ["predict", checkpoint, photos, "--out", str(tmp_path / "o"), "--format", "cvat"]
    assert main([*command, "--skip-existing"]) == 2
    assert "writes one file for all images; drop --skip-existing" in capsys.readouterr().err
    assert main([*command, "--probabilities", "confidence"]) == 2
    assert "the cvat output format holds label files of images only" in capsys.readouterr().err
    assert main(["serve", checkpoint, "--label-studio-url", "http://127.0.0.1:8080"]) == 2
    assert "go with --label-studio" in capsys.readouterr().err


def test_coco_splits_from_separate_files_and_folders(predicted, tmp_path):
    root = tmp_path / "coco"
    for split in ("train", "val"):
        shutil.copytree(predicted / "photos", root / f"{split}2017")
        (root / "annotations").mkdir(exist_ok=True)
        shutil.copy(predicted / "coco" / "coco.json", root / "annotations" / f"{split}.json")
    options = {
        "annotations": {"train": "annotations/train.json", "val": "annotations/val.json"},
        "images": {"train": "train2017", "val": "val2017"},
    }
    val = open_source("coco", root, "val", options=options)
    assert len(val) == 3 and val.samples[0].image.parent.name == "val2017"
    with pytest.raises(DataError, match="split 'test' not in data.options.annotations"):
        open_source("coco", root, "test", options=options)
