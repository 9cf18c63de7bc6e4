"""The demo launcher on this CPU machine, as a user runs it, with DeepSpeed ZeRO-2 and ZeRO-3 on 2 processes:

    GPUS=2 PER_DEVICE_BATCH_SIZE=2 sh shell/demo/finetune_tiny.sh --deepspeed zero_stage{2,3}_config.json

shortened with passed-through flags (``--max_steps 6 --logging_steps 1``). Checked: both ranks ran, DeepSpeed
wrote one optimizer shard per rank, the logged loss falls, and the final model (ZeRO-3: gathered 16-bit
weights) loads back. ZeRO-2 also resumes: the launcher run again on a copy of ``checkpoint-3`` reloads the
DeepSpeed engine state and logs the same losses at steps 4-6.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from internvl.model.internvl_chat import InternVLChatModel

from finetune_helpers import logged_losses, run_launcher

STEPS, SAVE = 6, 3


@pytest.mark.parametrize("stage", [2, 3])
def test_demo_launcher_deepspeed_two_cpu_processes(stage, tiny_model_dir, small_demo, tmp_path):
    def launch(out):
        return run_launcher("--deepspeed", f"zero_stage{stage}_config.json", "--max_steps", str(STEPS),
                            "--logging_steps", "1", "--save_steps", str(SAVE), "--report_to", "none",
                            GPUS="2", PER_DEVICE_BATCH_SIZE="2", MODEL=str(tiny_model_dir),
                            META_PATH=str(small_demo / "train_meta.json"), OUTPUT_DIR=str(out))

    out = tmp_path / f"zero{stage}"
    proc = launch(out)
    log = proc.stdout + proc.stderr
    assert "process 0/2" in log and "process 1/2" in log and "deepspeed True" in log
    assert "gradient accumulation 1" in log  # the demo's BATCH_SIZE 4 / 2 per device / 2 processes

    shards = sorted(p.name for p in (out / f"checkpoint-{STEPS}" / f"global_step{STEPS}").iterdir())
    assert any("zero_pp_rank_0" in s for s in shards) and any("zero_pp_rank_1" in s for s in shards), shards
    assert json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())["global_step"] == STEPS

    losses = logged_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = (losses[1] + losses[2]) / 2, (losses[STEPS - 1] + losses[STEPS]) / 2
    assert last < first - 0.5, losses

    model = InternVLChatModel.from_pretrained(str(out), dtype=torch.float32)
    before = InternVLChatModel.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert set(model.state_dict()) == set(before.state_dict())
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert any(k.startswith("vision_model.") for k in moved) and any(k.startswith("language_model.") for k in moved)

    if stage == 2:
        resumed = tmp_path / "zero2_resumed"
        resumed.mkdir()
        shutil.copytree(out / f"checkpoint-{SAVE}", resumed / f"checkpoint-{SAVE}")
        second = launch(resumed)
        assert f"auto-resume: continuing from {resumed / f'checkpoint-{SAVE}'}" in second.stdout + second.stderr
        again = logged_losses(resumed)
        for step in range(SAVE + 1, STEPS + 1):
            assert again[step] == pytest.approx(losses[step], rel=1e-5, abs=1e-6), step
