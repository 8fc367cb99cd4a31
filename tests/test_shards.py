"""Datasets packed into WebDataset tar shards (`pspnet data pack`, `data.format: shards`), read from a folder or over HTTP."""

from __future__ import annotations

import http.server
import io
import json
import re
import shutil
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import open_source, tiny_config_dict
from PIL import Image

from pspnet.cli import main
from pspnet.config import Config
from pspnet.data.formats.shards import ShardSource
from pspnet.data.pack import pack_split, parse_size
from pspnet.data.synthetic import ContextScenes
from pspnet.errors import ConfigError, DataError
from pspnet.training.trainer import Trainer


def shard_config(root, **train) -> Config:
    data = tiny_config_dict(**{"max_iters": 4, "eval_interval": 4, "checkpoint_interval": 2, **train})
    data["data"].update(format="shards", root=str(root))
    return Config.from_dict(data)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """The tiny synthetic dataset's train (16 samples, several shards) and val (4) splits, packed by the command."""
    root = tmp_path_factory.mktemp("packed")
    (root / "synthetic.yaml").write_text(yaml.safe_dump(tiny_config_dict()))
    for split in ("train", "val"):
        command = [
            "--quiet",
            "data",
            "pack",
            str(root / "synthetic.yaml"),
            "--split",
            split,
            "--out",
            str(root / "shards"),
        ]
        assert main([*command, "--shard-size", "30KB"]) == 0
    return root / "shards"


@pytest.fixture(scope="module")
def straight(packed, tmp_path_factory) -> dict:
    """The weights of the same 4-iteration training from the synthetic source and from its shards."""
    runs = tmp_path_factory.mktemp("runs")
    original = Trainer(
        Config.from_dict(tiny_config_dict(max_iters=4, eval_interval=4)), runs / "source", progress=False
    )
    original.train()
    streamed = Trainer(shard_config(packed), runs / "shards", progress=False)
    streamed.train()
    return {"source": original.model.state_dict(), "shards": streamed.model.state_dict()}


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_pack_writes_webdataset_shards_with_an_index(packed):
    index = json.loads((packed / "train.index.json").read_text())
    assert index["format"] == "pspnet-shards" and index["split"] == "train" and index["num_samples"] == 16
    assert index["classes"]["names"] == list(ContextScenes.classes.names)
    assert len(index["shards"]) > 2 and sum(shard["num_samples"] for shard in index["shards"]) == 16
    for shard in index["shards"]:
        path = packed / shard["name"]
        assert re.fullmatch(r"train-\d{6}\.tar", shard["name"]) and path.stat().st_size == shard["bytes"]
        with tarfile.open(path) as tar:  # plain tars with WebDataset's KEY.suffix members
            names = tar.getnames()
            keys = [row[0] for row in shard["samples"]]
            assert names == [f"{key}.{suffix}" for key in keys for suffix in ("png", "mask.png", "json")]
            info = json.loads(tar.extractfile(names[2]).read())
            assert info["name"] == shard["samples"][0][1] and (info["height"], info["width"]) == (48, 48)
    assert not list(packed.glob(".*.tmp"))  # atomic writes left no temporary file


def test_shards_give_exactly_the_samples_of_the_source(packed):
    shards, source = ShardSource(str(packed), "train"), ContextScenes("train", 16, (48, 48), seed=0)
    assert len(shards) == len(source) and shards.classes == source.classes
    for index in range(len(source)):
        a, b = shards.load(index), source.load(index)
        assert a.name == b.name == shards.name(index)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)


def test_training_from_shards_ends_with_the_weights_of_training_from_the_source(straight):
    assert_same_weights(straight["source"], straight["shards"])


def test_a_streamed_run_stopped_and_resumed_ends_with_the_same_weights(packed, straight, tmp_path):
    crashing = Trainer(shard_config(packed), tmp_path / "run", progress=False)

    def crash(trainer, iteration):
        if iteration == 3:  # past the checkpoint at 2: the work of iteration 3 is lost, as in a kill
            raise RuntimeError("simulated crash")

    crashing.callbacks.append(crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.train()
    resumed = Trainer(shard_config(packed), tmp_path / "run", resume=True, progress=False)
    assert resumed.iteration == 2
    resumed.train()
    assert_same_weights(straight["shards"], resumed.model.state_dict())


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A file server that answers `Range: bytes=A-B` with 206 and those bytes, as object stores do."""

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        start, end = int(match.group(1)), min(int(match.group(2)), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end + 1 - start))
        self.end_headers()
        return io.BytesIO(data[start : end + 1])

    def log_message(self, *args):
        pass


@pytest.fixture
def serve(packed):
    """Serve the shard folder on 127.0.0.1 with the given handler class; yields the URL maker."""
    servers = []

    def start(handler) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(packed)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_shards_stream_over_http_with_range_requests(packed, serve, capsys):
    url = serve(RangeHandler)
    remote, local = ShardSource(url, "train"), ShardSource(str(packed), "train")
    assert len(remote) == len(local) == 16
    for index in (0, 7, 15):
        a, b = remote.load(index), local.load(index)
        assert a.name == b.name and np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    config = Path(packed.parent / "remote.yaml")
    config.write_text(yaml.safe_dump({"data": {"format": "shards", "root": url}}))
    assert main(["--quiet", "data", "check", str(config), "--split", "val"]) == 0
    assert f"shards at {url}, split 'val'" in capsys.readouterr().out


def test_a_server_that_ignores_ranges_is_a_clear_error(serve):
    source = ShardSource(serve(http.server.SimpleHTTPRequestHandler), "train")
    with pytest.raises(DataError, match=r"shard http://.*/train-000000\.tar, sample 000000000 .*Range requests"):
        source.load(0)


def corrupt_copy(packed: Path, target: Path) -> tuple[Path, dict]:
    shutil.copytree(packed, target)
    index = json.loads((target / "train.index.json").read_text())
    return target, index["shards"][1]


def test_a_corrupt_or_truncated_shard_is_an_error_naming_shard_and_sample(packed, tmp_path, capsys):
    root, shard = corrupt_copy(packed, tmp_path / "shards")
    key, name, offset, size, _, members = shard["samples"][1]
    data = bytearray((root / shard["name"]).read_bytes())
    data[offset + members["png"][0] + 100] ^= 0xFF  # one bit pattern inside the second sample's image
    (root / shard["name"]).write_bytes(bytes(data))
    source = ShardSource(str(root), "train")
    position = next(i for i in range(len(source)) if source.samples[i][1][0] == key)
    with pytest.raises(DataError, match=rf"shard .*{shard['name']}, sample {key} \({name}\): .*corrupt shard"):
        source.load(position)
    (root / shard["name"]).write_bytes(bytes(data[: offset + 10]))  # truncated inside the second sample
    with pytest.raises(DataError, match=rf"shard .*{shard['name']}, sample {key} \({name}\): .*truncated shard"):
        source.load(position)
    config = shard_config(root, max_iters=8, eval_interval=8, checkpoint_interval=8)  # a whole epoch: every sample
    with pytest.raises(DataError, match=rf"{shard['name']}, sample \d+ "):  # training stops naming them
        Trainer(config, tmp_path / "run", progress=False).train()
    skipping = Trainer(config.replace(["data.skip_bad=true"]), tmp_path / "skip", progress=False)
    assert skipping.train().iteration == 8  # with data.skip_bad the next readable sample stands in
    assert skipping.skipped.count >= len(shard["samples"]) - 1
    (root / "train-000000.tar").unlink()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"format": "shards", "root": str(root)}}))
    assert main(["--quiet", "data", "check", str(tmp_path / "c.yaml")]) == 1
    report = capsys.readouterr().out
    assert f"{shard['name']} has {offset + 10} bytes, the index says {shard['bytes']}" in report
    assert f"sample {key} ({name})" in report
    assert "train-000000.tar is missing" in report and "sample 000000000 (" in report


def test_folder_images_keep_their_bytes_and_decode_like_the_source(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / "data/train" / folder).mkdir(parents=True)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            tmp_path / f"data/train/images/{index}.jpg"
        )
        Image.fromarray(rng.integers(0, 2, (20, 24), dtype=np.uint8)).save(tmp_path / f"data/train/masks/{index}.png")
    (tmp_path / "classes.yaml").write_text("names: [a, b]\n")
    source = open_source("folders", tmp_path / "data", "train", classes_file=tmp_path / "classes.yaml")
    result = pack_split(source, tmp_path / "shards", "train", parse_size("1MB"))
    assert result.num_samples == 3 and len(result.shards) == 1
    with tarfile.open(result.shards[0]) as tar:
        assert tar.extractfile("000000001.jpg").read() == (tmp_path / "data/train/images/1.jpg").read_bytes()
    shards = ShardSource(str(tmp_path / "shards"), "train")
    assert shards.classes.names == ("a", "b")
    for index in range(3):
        a, b = shards.load(index), source.load(index)
        assert a.name == b.name and np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    (tmp_path / "data/train/images/1.jpg").write_text("broken")
    source = open_source("folders", tmp_path / "data", "train", classes_file=tmp_path / "classes.yaml")
    with pytest.raises(DataError, match=r"cannot read image .*1\.jpg"):
        pack_split(source, tmp_path / "shards", "train", parse_size("1MB"))
    assert not (tmp_path / "shards/train.index.json").exists()  # no index describing other shards is left
    result = pack_split(source, tmp_path / "shards", "train", parse_size("1MB"), skip_bad=True)
    assert result.num_samples == 2 and len(result.skipped) == 1 and "1.jpg" in result.skipped[0]
    assert [ShardSource(str(tmp_path / "shards"), "train").name(i) for i in range(2)] == ["0", "2"]


def test_sizes_and_roots_that_cannot_work_are_refused(tmp_path):
    assert parse_size("1GB") == 10**9 and parse_size("64MiB") == 64 * 2**20 and parse_size("1000") == 1000
    for bad in ("1 parsec", "-5MB", "0", "GB"):
        with pytest.raises(ConfigError, match="--shard-size"):
            parse_size(bad)
    with pytest.raises(ConfigError, match="ranged reads"):
        ShardSource("pipe:curl -s http://127.0.0.1/x", "train")
    with pytest.raises(DataError, match=r"no index of split 'train': not found: .*train\.index\.json"):
        ShardSource(str(tmp_path), "train")
