"""Fixtures of the finetune tests: a small demo data set and a text/image data set.

Launcher runs (``finetune_helpers.run_launcher``) go through ``sh shell/demo/finetune_tiny.sh`` exactly as a user
types it (``PYTHON`` pins this interpreter, ``INTERNVL_NO_PLUGINS=1`` skips importing the domain plugins, which
these runs do not use).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """``data/build_demo.py`` output with 96 training rows (meta: ``train_meta.json``)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    subprocess.run([sys.executable, str(REPO / "data" / "build_demo.py"), "--out", str(out), "--train", "96",
                    "--test-mcq", "8", "--test-open", "4"], check=True, cwd=REPO, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def text_image_meta(small_demo, tmp_path_factory) -> Path:
    """A meta JSON whose rows repeat text, text, image, text (in file order): read sequentially two at a time by
    two processes, rank 0 gets text-only batches and rank 1 batches of one image row and one text row."""
    folder = tmp_path_factory.mktemp("mixed")
    image_rows = [json.loads(line) for line in (small_demo / "train.jsonl").read_text().splitlines() if line.strip()]
    rows = []
    for i, image_row in enumerate(image_rows[:24]):
        text = [{"id": f"text_{i}_{j}", "conversations": [
            {"from": "human", "value": f"Say the number {(i + j) % 10}."},
            {"from": "gpt", "value": str((i + j) % 10)}]} for j in range(3)]
        rows += [text[0], text[1], image_row, text[2]]
    (folder / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"mixed": {"root": str(small_demo), "annotation": str(folder / "mixed.jsonl"), "data_augment": False,
                      "repeat_time": 1}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder / "meta.json"
