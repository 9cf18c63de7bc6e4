"""Resume: a run stopped after step k and resumed logs the same losses at steps k+1..k+5 as an uninterrupted run.

"Stopped after step k" is the state a crash right after the step-k checkpoint leaves behind: ``checkpoint-k``
complete, plus what was being written when it died (a half-written ``checkpoint-10`` without
``trainer_state.json`` as other tools leave one, and our own staging folder ``tmp-checkpoint-10``). The resumed run
is the launcher run again on that output folder, with no flag: it must auto-resume from ``checkpoint-5``, skip the
broken ones, and reproduce the uninterrupted losses (CPU, one process, seeded data order, no dropout).
"""
from __future__ import annotations

import json
import shutil

import pytest

from finetune_helpers import logged_losses, run_launcher

STEPS, K = 10, 5


def _run(model_dir, meta, out):
    return run_launcher("--max_steps", str(STEPS), "--save_steps", str(K), "--save_total_limit", "3",
                        "--logging_steps", "1", "--learning_rate", "1e-3", "--warmup_ratio", "0.1",
                        "--seed", "3", "--data_seed", "7", "--report_to", "none",
                        GPUS="1", PER_DEVICE_BATCH_SIZE="4", BATCH_SIZE="8", MODEL=str(model_dir),
                        META_PATH=str(meta), OUTPUT_DIR=str(out))


def test_resume_reproduces_the_uninterrupted_losses(tiny_model_dir, small_demo, tmp_path):
    meta = small_demo / "train_meta.json"
    full = tmp_path / "full"
    _run(tiny_model_dir, meta, full)
    reference = logged_losses(full)
    assert sorted(reference) == list(range(1, STEPS + 1))

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copytree(full / f"checkpoint-{K}", crashed / f"checkpoint-{K}")
    partial = crashed / f"checkpoint-{STEPS}"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    (crashed / f"tmp-checkpoint-{STEPS}" / f"checkpoint-{STEPS}").mkdir(parents=True)

    proc = _run(tiny_model_dir, meta, crashed)
    log = proc.stdout + proc.stderr
    assert f"auto-resume: continuing from {crashed / f'checkpoint-{K}'}" in log
    assert "ignoring incomplete checkpoint" in log
    resumed = logged_losses(crashed)
    for step in range(K + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    assert [resumed[s] for s in range(1, K + 1)] == [reference[s] for s in range(1, K + 1)]  # restored history
    # the broken checkpoint was replaced by a complete one, the staging folder is gone
    assert json.loads((partial / "trainer_state.json").read_text())["global_step"] == STEPS
    assert not (crashed / f"tmp-checkpoint-{STEPS}").exists()
