"""Helpers of the Brainfound tests (imported by name: tests/brainfound is on sys.path, as for the core's helpers)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def one_thread():
    """One torch thread: the tiny UNets are dispatch-bound, and on a busy 2-core machine a second spinning OpenMP
    thread costs more than it gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_ddpm_config(tmp: Path, manifest: Path, **train) -> Path:
    """The shipped tiny stage-1 YAML with test-sized steps, written into ``tmp``."""
    cfg = yaml.safe_load((REPO / "patches/brainfound/configs/tiny_ddpm.yaml").read_text())
    cfg["data"]["manifest"] = str(manifest)
    cfg["train"].update({"output_dir": str(tmp / "out"), "max_steps": 12, "save_steps": 6, "log_steps": 3,
                         "batch_size": 8, **train})
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "ddpm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_clip_config(tmp: Path, demo: dict, init_from: Path | None, **train) -> Path:
    """The shipped tiny stage-2 YAML pointed at ``demo`` data, written into ``tmp``."""
    cfg = yaml.safe_load((REPO / "patches/brainfound/configs/tiny_clip.yaml").read_text())
    cfg["model"]["init_from"] = str(init_from) if init_from else None
    cfg["data"]["train_jsonl"] = str(demo["stage2_train"])
    cfg["eval"]["test_jsonl"] = str(demo["stage2_test"])
    cfg["eval"]["validation"] = False  # report validation: on where a test asks for it (it decodes 24 scans)
    cfg["train"].update({"output_dir": str(tmp / "out"), **train})
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "clip.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "clip.yaml"
