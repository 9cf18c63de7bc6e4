"""The tiny Brainfound stages 1 and 2 (in-process, CPU): loss falls, resume reproduces an uninterrupted run,
outputs exist and load (generation grid, exported encoders, zero-shot metrics)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bf_helpers import one_thread, tiny_clip_config, tiny_ddpm_config


def _falls(history, col=1) -> bool:
    first, last = history[0][col], history[-1][col]
    return last < 0.8 * first


def test_stage1_loss_falls_and_exports(bf_stage1):
    hist = bf_stage1["history"]
    assert len(hist) == 6 and _falls(hist), hist
    out = bf_stage1["dir"]
    for f in ("loss.csv", "loss.png", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "unet/modality_embedding.safetensors", "scheduler/scheduler_config.json",
              "checkpoint-24/trainer_state.json", "checkpoint-24/model.safetensors"):
        assert (out / f).is_file(), f
    # the core's layout: complete checkpoints only, save_total_limit (2) kept, no staging folder left behind
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-12", "checkpoint-24"]
    assert len((out / "loss.csv").read_text().splitlines()) == 7


def test_stage1_resume_reproduces_the_uninterrupted_run(tmp_path, bf_demo):
    from patches.brainfound import pretrain_ddpm

    straight = tiny_ddpm_config(tmp_path / "a", bf_demo["stage1_manifest"], max_steps=6, save_steps=3, log_steps=1)
    split = tiny_ddpm_config(tmp_path / "b", bf_demo["stage1_manifest"], max_steps=3, save_steps=3, log_steps=1)
    a = pretrain_ddpm.main(["--config", str(straight)])
    pretrain_ddpm.main(["--config", str(split)])
    b = pretrain_ddpm.main(["--config", str(split), "--set", "train.max_steps=6"])  # resumes at step 3
    assert [h[0] for h in b["history"]] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(b["history"], a["history"], rtol=1e-5)
    wa = load_file(str(Path(a["output_dir"]) / "unet/diffusion_pytorch_model.safetensors"))
    wb = load_file(str(Path(b["output_dir"]) / "unet/diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # a checkpoint written for another architecture is refused
    with pytest.raises(ValueError, match="different architecture"):
        pretrain_ddpm.main(["--config", str(split), "--set", "train.max_steps=9",
                            "--set", "model.overrides={cross_attention_dim: 16}"])


def test_generate_writes_a_png_grid(bf_stage1, tmp_path):
    from patches.brainfound import generate

    png = tmp_path / "grid.png"
    res = generate.main(["--model", str(bf_stage1["dir"]), "--num", "6", "--cols", "3", "--steps", "4",
                         "--scheduler", "ddim", "--out", str(png), "--save_npy"])
    img = Image.open(png)
    img.verify()
    assert Image.open(png).size[0] > 100
    arr = np.load(res["npy"])
    assert arr.shape == (6, 3, 32, 32) and arr.std() > 0 and abs(arr).max() <= 1
    again = generate.main(["--model", str(bf_stage1["dir"]), "--num", "6", "--steps", "4", "--scheduler", "ddim",
                           "--out", str(tmp_path / "again.png")])
    assert again["mean"] == pytest.approx(res["mean"])  # same seed, same samples
    with pytest.raises(ValueError, match="--modality 'PET' is not one of"):
        generate.main(["--model", str(bf_stage1["dir"]), "--modality", "PET", "--out", str(tmp_path / "x.png")])


def test_stage2_short_run_resume_and_exports(tmp_path, bf_demo, bf_stage1):
    from patches.brainfound import pretrain_clip, zero_shot

    small = dict(max_steps=8, save_steps=4, log_steps=2)
    a = pretrain_clip.main(["--config", str(tiny_clip_config(tmp_path / "a", bf_demo, bf_stage1["dir"], **small))])
    assert a["history"][-1][1] < a["history"][0][1], a["history"]  # ITC loss falls
    cfg_b = tiny_clip_config(tmp_path / "b", bf_demo, bf_stage1["dir"], **{**small, "max_steps": 4})
    pretrain_clip.main(["--config", str(cfg_b)])
    b = pretrain_clip.main(["--config", str(cfg_b), "--set", "train.max_steps=8"])
    np.testing.assert_allclose(b["history"], a["history"], rtol=1e-5)  # momentum encoders and queues resumed too
    out = Path(a["output_dir"])
    sa, sb = load_file(str(out / "checkpoint-8/model.safetensors")), \
        load_file(str(Path(b["output_dir"]) / "checkpoint-8/model.safetensors"))
    assert any(k.startswith("vision_m.") for k in sa) and "image_queue" in sa
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5) for k in sa)
    # the stage-1 UNet initialised the encoder (first step moved it only slightly from stage 1)
    s1 = load_file(str(bf_stage1["dir"] / "unet/diffusion_pytorch_model.safetensors"))
    assert torch.allclose(sa["vision_m.unet.conv_in.weight"], s1["conv_in.weight"], atol=0.05)
    # exports: the encoder stage 3 loads, and zero-shot outputs
    enc = __import__("patches.brainfound.encoder", fromlist=["x"]).brainfound_unet(
        pretrained_path=str(out / "vision_encoder"))
    assert enc.config.image_size == 32 and enc.config.down_path_only
    zs = json.loads((out / "zero_shot/metrics.json").read_text())
    assert set(zs["per_class"]) == {"normal", "hemorrhage"} and zs["n"] == 24
    assert 0 <= zs["accuracy"] <= 1 and (out / "zero_shot/roc.png").is_file()
    # the CLI on the same export
    with one_thread():
        res = zero_shot.main(["--model", str(out), "--data", str(bf_demo["stage2_test"]),
                              "--classes", "normal,hemorrhage", "--out", str(tmp_path / "zs")])
    assert res["accuracy"] == pytest.approx(zs["accuracy"])
    with pytest.raises(ValueError, match="label 'hemorrhage' is not one of"):
        zero_shot.main(["--model", str(out), "--data", str(bf_demo["stage2_test"]),
                        "--classes", "normal,tumor", "--out", str(tmp_path / "zs2")])


@pytest.mark.slow
def test_stage2_tiny_zero_shot_beats_chance(tmp_path, bf_demo, bf_stage1):
    """The shipped tiny stage-2 config (300 steps, momentum 0.996): zero-shot on held-out synthetic scans."""
    from patches.brainfound import pretrain_clip

    res = pretrain_clip.main(["--config", str(tiny_clip_config(tmp_path, bf_demo, bf_stage1["dir"]))])
    zs = res["zero_shot"]
    assert zs["accuracy"] > 0.5 + 0.15 and zs["mean_auroc"] > 0.75, zs
