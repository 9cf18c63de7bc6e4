"""TRIDENT-layout feature files (made here with h5py: ``features`` + ``coords`` only) train and evaluate through
the ``features`` media kind, with the seed's recipe: the Virchow-2 launcher with LoRA on the slide aggregator.

    GPUS=1 sh shell/pathology/virchow2_wsi_finetune_lora.sh --use_backbone_lora 8 --freeze_backbone True

on CPU with the embedded tiny LLM and a few steps; then ``eval/custom_eval.py`` on the held-out rows.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from patches.pathology.make_dataset import assign_split, read_clinical, write_dataset

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "shell/pathology/virchow2_wsi_finetune_lora.sh"
TRIDENT_DIR = "20x_224px_0px_overlap/features_virchow2"


def _trident_cohort(root: Path, n: int = 9, dim: int = 2560) -> Path:
    """Feature files as TRIDENT writes them (no encoder attribute anywhere), a clinical CSV, JSONL + meta."""
    feats = root / "trident" / TRIDENT_DIR
    feats.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "clinical.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "grade", "survival_months", "event"])
        for i in range(n):
            grade = 1 + i % 3
            with h5py.File(feats / f"slide{i}.h5", "w") as h5:
                h5.create_dataset("features", data=rng.normal(grade, 1.0, (12 + i, dim)).astype(np.float32))
                h5.create_dataset("coords", data=np.arange(2 * (12 + i), dtype=np.int64).reshape(-1, 2) * 224)
            writer.writerow([f"slide{i}.svs", grade, 30.0 / grade + i, i % 2])
    rows = read_clinical(str(root / "clinical.csv"))
    assign_split(rows, 0.34, seed=0)
    write_dataset(rows, str(feats), str(root / "data"))
    for part in ("train", "test"):  # the files carry no encoder identity: the meta entry gives it
        meta_path = root / "data" / f"meta_{part}.json"
        meta = json.loads(meta_path.read_text())
        for entry in meta.values():
            entry["feature_encoder"] = "virchow2"
        meta_path.write_text(json.dumps(meta))
    return root / "data"


@pytest.mark.slow
def test_trident_features_train_with_aggregator_lora_and_evaluate(tiny_model_dir, tmp_path):
    data = _trident_cohort(tmp_path)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHON=sys.executable, GPUS="1", MODEL=str(tiny_model_dir), OUTPUT_DIR=str(out),
               META_PATH=str(data / "meta_train.json"), PER_DEVICE_BATCH_SIZE="1", BATCH_SIZE="2",
               INTERNVL_NO_PLUGINS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("MASTER_PORT", None)
    flags = ["--use_backbone_lora", "8", "--freeze_backbone", "True", "--max_steps", "2", "--save_strategy", "no",
             "--report_to", "none", "--dataloader_num_workers", "0", "--group_by_length", "False",
             "--grad_checkpoint", "False", "--max_seq_length", "512", "--use_fast_tokenizer", "True"]
    proc = subprocess.run(["sh", LAUNCHER, *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    state = load_file(str(out / "model.safetensors"))
    lora = [k for k in state if "aggregator" in k and "lora_B" in k]
    assert lora, sorted(state)[:20]  # adapters on the aggregator's linear layers were trained and saved
    assert any(state[k].abs().sum() > 0 for k in lora)
    config = json.loads((out / "config.json").read_text())
    assert config["use_backbone_lora"] == 8 and config["vision_config"]["aggregator"] == "perceiver_resampler"

    sys.path.insert(0, str(REPO / "eval"))
    try:
        from custom_eval import main as evaluate
    finally:
        sys.path.pop(0)
    results = tmp_path / "results.json"
    assert evaluate(["--plugins", "patches.pathology", "--model", str(out), "--data", str(data / "meta_test.json"),
                     "--out", str(results), "--batch-size", "4", "--max-new-tokens", "8", "--no-resume"]) == 0
    report = json.loads(results.read_text())
    assert report["summary"]["n_scored"] == 3 and report["summary"]["n_skipped"] == 0
    assert "grade_accuracy" in report["metrics"]["by_task"]["pathology_report"]


def test_use_backbone_lora_without_an_encoder_aggregator_names_the_option():
    from internvl.model.vision.base import create_vision_model

    encoder = create_vision_model("slide_features", feature_dim=32, tile_encoder=None)
    with pytest.raises(ValueError, match="--use_backbone_lora.*no linear layers.*--freeze_mlp False"):
        encoder.lora_target_modules
    inside = create_vision_model("slide_features", feature_dim=32, tile_encoder=None, aggregator="abmil",
                                 aggregator_config={"num_tokens": 3, "dim": 16})
    targets = inside.lora_target_modules
    assert "aggregator.attn_v" in targets and "aggregator.inp.1" in targets
    bags = [torch.randn(5, 32), torch.randn(9, 32)]
    assert [tuple(t.shape) for t in inside(bags)] == [(3, 16), (3, 16)]
    assert type(inside).num_tokens(inside.config, bags[1]) == 3


def test_freeze_backbone_false_trains_the_encoder_aggregator():
    from types import SimpleNamespace

    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel
    from internvl.train.freeze import configure_trainable, trainable_summary

    llm = {"model_type": "qwen2", "hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 96}
    vision = {"feature_dim": 64, "tile_encoder": None, "aggregator": "perceiver_resampler",
              "aggregator_config": {"num_tokens": 4, "dim": 32, "heads": 4, "depth": 1}}
    flags = dict(freeze_llm=True, freeze_mlp=False, use_llm_lora=0, unfreeze_lm_head=False, unfreeze_vit_layers=0)
    for freeze, lora in ((False, 0), (True, 8)):
        torch.manual_seed(0)
        model = InternVLChatModel(InternVLChatConfig.build(vision="slide_features", vision_overrides=vision,
                                                           llm_config=llm, projector="mlp"))
        configure_trainable(model, SimpleNamespace(freeze_backbone=freeze, use_backbone_lora=lora, **flags))
        trainable, total = trainable_summary(model)["vision_model"]
        names = [n for n, p in model.vision_model.named_parameters() if p.requires_grad]
        if lora:
            assert 0 < trainable < total and all("lora_" in n for n in names)
        else:
            assert trainable == total and any("aggregator.layers.0" in n for n in names)
        model.img_context_token_id = 7
        ids = torch.tensor([[1, 2] + [7] * 4 + [3, 4]])
        loss = model(pixel_values=[torch.randn(9, 64)], input_ids=ids, labels=ids, image_flags=torch.tensor([1])).loss
        loss.backward()
        grads = [p.grad for n, p in model.vision_model.named_parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
