"""The web demo without a browser: the path allow-list, the command line's bad-input exits, and the HTTP API of a
running server (gradio_client): open an image, a slide and a volume, ask, get an answer; a path outside the data
root is refused; what the server wrote (slide features) is in its temporary folder, nothing in the data root."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from internvl.serve.paths import AllowedPaths, PathRefused


def test_allowed_paths(tmp_path):
    root, temp = tmp_path / "root", tmp_path / "tmp"
    (root / "sub").mkdir(parents=True)
    temp.mkdir()
    (root / "sub" / "a.png").write_bytes(b"x")
    (temp / "upload.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("no")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    allowed = AllowedPaths(str(root), str(temp))
    assert allowed.resolve("sub/a.png") == os.path.realpath(root / "sub" / "a.png")
    assert allowed.resolve(str(temp / "upload.png")) == os.path.realpath(temp / "upload.png")
    for bad in ("../secret.txt", str(tmp_path / "secret.txt"), "link.txt", "sub/../../secret.txt", "/etc/passwd"):
        with pytest.raises(PathRefused, match="outside the allowed data root"):
            allowed.resolve(bad)
    with pytest.raises(PathRefused, match="not found"):
        allowed.resolve("sub/missing.png")
    with pytest.raises(PathRefused, match="server paths are disabled"):
        AllowedPaths(None, str(temp)).resolve("sub/a.png")


def test_cli_bad_input_and_defaults(tmp_path, tiny_model_dir):
    from internvl.serve.__main__ import build_parser

    assert build_parser().parse_args(["--model", "m"]).host == "127.0.0.1"
    model = str(tiny_model_dir)
    for args, message in ((["--model", str(tmp_path)], "not a checkpoint folder"),
                          (["--model", model, "--data-root", str(tmp_path / "none")], "--data-root is not a folder"),
                          (["--model", model, "--media-option", "slide_mpp"], "expected KEY=VALUE")):
        res = subprocess.run([sys.executable, "-m", "internvl.serve", *args], capture_output=True, text=True)
        assert res.returncode == 2
        assert res.stderr.strip().startswith("error:") and message in res.stderr
        assert "Traceback" not in res.stderr


def test_http_api(demo_server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    root = demo_server["root"]
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    client = Client(demo_server["url"], verbose=False)
    for name, kind in (("red_disc.png", "image"), ("synthetic_slide.tiff", "wsi"), ("head_ct.nii.gz", "volume")):
        opened = client.predict(name, api_name="/open_media")
        assert opened[1].startswith(f"**{kind}**"), opened[1]
        history = client.predict("What is shown?", [], opened[2], api_name="/ask")[0]
        assert history[-2]["role"] == "user" and history[-1]["role"] == "assistant"
        answer = history[-1]["content"]
        text = answer if isinstance(answer, str) else "".join(c.get("text", "") for c in answer)
        assert text.strip(), f"empty answer for {name}"
    # the slide's tile features were cached in the demo's temporary folder; the data root is untouched
    temp = next(ln.split(": ", 1)[1] for ln in demo_server["log"].read_text().splitlines()
                if ln.startswith("temporary folder: "))
    assert list(Path(temp, "wsi_features").glob("synthetic_slide*.h5"))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    outside = str(demo_server["root"].parent / "outside.png")
    assert os.path.isfile(outside)
    for bad in (outside, "../outside.png"):
        with pytest.raises(AppError, match="outside the allowed data root"):
            client.predict(bad, api_name="/open_media")
        with pytest.raises(AppError, match="outside the allowed data root"):
            client.predict("What is shown?", [], bad, api_name="/ask")
