"""Fixtures for the web-demo tests: a data root with an image, a synthetic tissue slide, the real-format fixture
slide (when ``../shared`` exists) and a synthetic volume; tiny image, slide and volume models; and one demo server
(``python -m internvl.serve``) on a free localhost port for the whole session."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from serve_models import FIXTURE_SLIDE

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
START_TIMEOUT = 240


@pytest.fixture(scope="session")
def serve_root(tmp_path_factory) -> Path:
    from PIL import Image, ImageDraw

    root = tmp_path_factory.mktemp("serve_root")
    img = Image.new("RGB", (112, 112), (40, 40, 40))
    ImageDraw.Draw(img).ellipse([20, 20, 92, 92], fill=(220, 40, 40))
    img.save(root / "red_disc.png")
    if FIXTURE_SLIDE.is_file():
        shutil.copy(FIXTURE_SLIDE, root / "fixture_boxes.tiff")
    (tmp_path_factory.getbasetemp() / "outside.png").write_bytes((root / "red_disc.png").read_bytes())
    return root


@pytest.fixture(scope="session")
def serve_models(tiny_model_dir, serve_root, tmp_path_factory) -> dict:
    """Slide and volume models (tiny, untrained) and the synthetic slide and volume in the data root."""
    import serve_models as build

    out = tmp_path_factory.mktemp("serve_models")
    build.slide_model(tiny_model_dir, out / "slide")
    build.volume_model(tiny_model_dir, out / "volume")
    build.synthetic_slide(serve_root / "synthetic_slide.tiff")
    build.synthetic_volume(serve_root / "head_ct.nii.gz")
    return {"image": tiny_model_dir, "slide": out / "slide", "volume": out / "volume"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_server(serve_models, serve_root, tmp_path_factory):
    """URL of a running demo with all three models; the process is stopped at the end of the session."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    cmd = [sys.executable, "-m", "internvl.serve", "--model", str(serve_models["image"]), "--model",
           str(serve_models["slide"]), "--model", str(serve_models["volume"]), "--data-root", str(serve_root),
           "--port", str(port), "--max-new-tokens", "6", "--device", "cpu",
           # the fixture slide carries no real scale and tiny boxes: read it at 0.5 um/px, keep small tissue
           "--media-option", "slide_mpp=0.5", "--media-option", 'tissue={"min_area_um2": 0}']
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.terminate()
            raise RuntimeError(f"the demo server did not answer within {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    yield {"url": url, "root": serve_root, "log": log, "proc": proc}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
