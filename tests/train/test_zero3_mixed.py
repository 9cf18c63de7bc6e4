"""ZeRO-3 with one rank text-only while the other has images: training must neither hang nor fail.

Two CPU processes read ``text, text, image, text, ...`` sequentially, two rows per batch, so every step rank 0 gets
a text-only batch and rank 1 a mixed one (accelerate hands batch k to process k % 2; checked below on its
``BatchSamplerShard``). Under ZeRO-3 each rank gathers the vision encoder's partitioned weights only if it runs
the encoder; text-only samples carry a dummy item with ``image_flags`` 0 so that both ranks do. A hang shows as the
launcher not finishing within the timeout.
"""
from __future__ import annotations

import math

from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, SequentialSampler

from finetune_helpers import logged_losses, run_launcher

STEPS = 4


def test_batch_k_goes_to_process_k_mod_2():
    batches = BatchSampler(SequentialSampler(range(8)), batch_size=2, drop_last=False)
    assert list(BatchSamplerShard(batches, num_processes=2, process_index=0)) == [[0, 1], [4, 5]]
    assert list(BatchSamplerShard(batches, num_processes=2, process_index=1)) == [[2, 3], [6, 7]]


def test_zero3_text_only_rank_and_mixed_rank(tiny_model_dir, text_image_meta, tmp_path):
    out = tmp_path / "zero3_mixed"
    run_launcher("--deepspeed", "zero_stage3_config.json", "--train_sampling_strategy", "sequential",
                 "--max_steps", str(STEPS), "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
                 GPUS="2", PER_DEVICE_BATCH_SIZE="2", BATCH_SIZE="4", MODEL=str(tiny_model_dir),
                 META_PATH=str(text_image_meta), OUTPUT_DIR=str(out), timeout=300)
    losses = logged_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
