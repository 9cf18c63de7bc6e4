"""Several vision towers in one fine-tune: image + volume + text-only rows under ZeRO-2 and ZeRO-3 on two CPU
processes (one rank's batches hold no volume, the other's no image: every tower still runs on every rank), and
BrainVLM's joint T1 + rsfMRI launcher for a few steps on synthetic volumes."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from finetune_helpers import logged_losses, run_launcher

VOLUME_FLAGS = ("--plugins", "patches.neuro", "--vision_model", "volume=brain3d_vit_tiny",
                "--vision_overrides", 'volume={"preprocess": {"target_spacing": [2.0, 2.0, 2.0]}}',
                "--projector", "volume=spatial_pool_mlp", "--projector_config", 'volume={"pool": 2}')


def _volume(path, seed, lesion=None):
    from patches.neuro.synthetic import phantom, save_nifti

    save_nifti(phantom((20, 22, 18), lesion=lesion, seed=seed), str(path), spacing=(2.0, 2.0, 2.0))


def _turns(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture(scope="module")
def mixed_meta(small_demo, tmp_path_factory):
    """Rows in file order ``image, text, volume, text, ...``: read sequentially two at a time by two processes,
    rank 0's batches are image + text, rank 1's volume + text."""
    folder = tmp_path_factory.mktemp("towers")
    image_rows = [json.loads(ln) for ln in (small_demo / "train.jsonl").read_text().splitlines() if ln.strip()]
    rows = []
    for i in range(8):
        _volume(folder / f"v{i}.nii.gz", seed=i, lesion="left" if i % 2 else None)
        image = dict(image_rows[i], image=str(small_demo / image_rows[i]["image"]))
        rows += [image, {"conversations": _turns(f"Say {i}.", str(i))},
                 {"volume": str(folder / f"v{i}.nii.gz"), "conversations": _turns("<image>\nLesion?",
                                                                                   "yes" if i % 2 else "no")},
                 {"conversations": _turns(f"Say {i + 1}.", str(i + 1))}]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = folder / "meta.json"
    meta.write_text(json.dumps({"mixed": {"root": str(folder), "annotation": str(folder / "rows.jsonl")}}))
    return meta


@pytest.mark.parametrize("stage", ["zero_stage2_config.json", "zero_stage3_config.json"])
def test_image_volume_text_batches_train_under_zero(stage, tiny_model_dir, mixed_meta, tmp_path):
    out = tmp_path / "run"
    run_launcher("--deepspeed", stage, "--train_sampling_strategy", "sequential", *VOLUME_FLAGS,
                 "--max_steps", "3", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
                 "--max_dynamic_patch", "1", GPUS="2", PER_DEVICE_BATCH_SIZE="2", BATCH_SIZE="4",
                 MODEL=str(tiny_model_dir), META_PATH=str(mixed_meta), OUTPUT_DIR=str(out), timeout=420)
    losses = logged_losses(out)
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) and v > 0 for v in losses.values()), losses
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["encoder_name"] == "intern_vit"
    assert config["vision_towers"]["volume"]["vision_config"]["encoder_name"] == "brain3d_vit_tiny"


def test_brainvlm_joint_launcher_runs_a_few_steps(tiny_model_dir, tmp_path):
    rows = []
    for i in range(4):
        _volume(tmp_path / f"t1_{i}.nii.gz", seed=10 + i)
        run = np.random.default_rng(i).normal(100, 5, (16, 16, 16, 6)).astype(np.float32)
        nib.save(nib.Nifti1Image(run, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / f"rest_{i}.nii.gz"))
        rows.append({"volume": f"t1_{i}.nii.gz", "fmri": f"rest_{i}.nii.gz",
                     "conversations": _turns("T1: <image>\nrsfMRI: <image>\nWhat is the subject's sex?",
                                             "female" if i % 2 else "male")})
    (tmp_path / "joint.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"joint": {"root": str(tmp_path), "annotation": str(tmp_path / "joint.jsonl"),
                                          "data_augment": True}}))
    qformer = '{"num_queries": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 2}'
    out = tmp_path / "run"
    run_launcher("--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
                 "--dataloader_num_workers", "0", "--grad_checkpoint", "False",
                 script="shell/neuro/brainvlm_joint_t1_rsfmri_lora.sh", GPUS="1", PER_DEVICE_BATCH_SIZE="2",
                 BATCH_SIZE="2", MODEL=str(tiny_model_dir), META_PATH=str(meta), OUTPUT_DIR=str(out),
                 T1_MODEL="brain3d_vit_tiny", T1_OVERRIDES='{"preprocess": {"target_spacing": [2.0, 2.0, 2.0]}}',
                 T1_PROJECTOR_CONFIG=qformer, FMRI_MODEL="brain3d_vit_4d_tiny", FMRI_OVERRIDES="{}",
                 FMRI_PROJECTOR_CONFIG=qformer, timeout=420)
    losses = logged_losses(out)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    towers = json.loads((out / "config.json").read_text())["vision_towers"]
    assert {k: t["vision_config"]["encoder_name"] for k, t in towers.items()} == {
        "volume": "brain3d_vit_tiny", "fmri": "brain3d_vit_4d_tiny"}
    assert {t["projector"] for t in towers.values()} == {"qformer"}
