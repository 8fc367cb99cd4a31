"""The built wheel works on its own: installed (not editable) into a fresh virtual environment, every command
runs from an empty folder, with the presets and the package data it carries."""

from __future__ import annotations

import os
import site
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "train.max_iters=2",
    "train.eval_interval=2",
    "train.checkpoint_interval=2",
    "train.batch_size=2",
    "data.synthetic.num_train=4",
    "data.synthetic.num_val=2",
    "data.synthetic.image_size=[48,48]",
    "data.augment.crop_size=[48,48]",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("pspnet-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh_python(wheel, tmp_path_factory) -> Path:
    """A new virtual environment holding the wheel; its dependencies come from this environment's site-packages
    (added as a plain path, so the editable install's finder there is not loaded)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    return python


def run(python: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


def test_the_wheel_holds_the_package_data_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("pspnet/configs/synthetic.yaml", "pspnet/configs/pspnet_r50_cityscapes.yaml",
                 "pspnet/report/templates/report.html", "pspnet/serve/static/index.html",
                 "pspnet/playground/static/index.html", "pspnet/py.typed"):  # fmt: skip
        assert data in names, data
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/")) or "/tests/" in name]
    assert any(name.endswith("licenses/LICENSE") for name in names)


def test_every_command_works_from_the_installed_wheel_in_an_empty_folder(fresh_python, tmp_path):
    where = run(fresh_python, tmp_path, "-c", "import pspnet; print(pspnet.__file__)").stdout
    assert str(fresh_python.parents[1]) in where and str(ROOT) not in where  # the wheel's copy, not the checkout's
    assert "torch" in run(fresh_python, tmp_path, "-m", "pspnet", "--version").stdout
    assert "pspnet_r101_ade20k" in run(fresh_python, tmp_path, "-m", "pspnet", "config", "--presets").stdout
    demo = run(fresh_python, tmp_path, "-m", "pspnet.demo", "--out", "runs/demo", "--images", "2", "--set", *TINY)
    assert (tmp_path / "runs/demo/checkpoints/best.safetensors").is_file(), demo.stdout[-2000:]
    run(fresh_python, tmp_path, "-m", "pspnet", "--quiet", "train", "synthetic", "--out", "runs/two", "--set", *TINY)
    (tmp_path / "runs/two/report.html").unlink()
    run(fresh_python, tmp_path, "-m", "pspnet", "--quiet", "report", "runs/two")
    assert "<html" in (tmp_path / "runs/two/report.html").read_text()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(fresh_python), "-m", "pspnet", "serve", "runs/two", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, page = time.monotonic() + 90, None
        while page is None and time.monotonic() < deadline:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.3)
        assert page is not None and page.status_code == 200 and "<html" in page.text.lower()
    finally:
        server.terminate()
        server.wait(60)
