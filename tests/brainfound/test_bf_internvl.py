"""``brainfound_unet`` inside InternVL: checkpoint round trips (plain and backbone-LoRA), rows -> loss -> gradients,
the ``brainfound_mcq`` eval task, and stage 3 through the core finetune entry point + custom_eval."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bf_helpers import REPO
from patches.brainfound.synthetic import synthetic_head

LLM = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=32, intermediate_size=64,
           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
           max_position_embeddings=1024)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _model(tokenizer, **vision):
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel

    config = InternVLChatConfig.build(vision="brainfound_unet", vision_overrides={"preset": "tiny", **vision},
                                      llm_config=dict(LLM, vocab_size=len(tokenizer)), projector="mlp",
                                      template="internvl2_5")
    torch.manual_seed(0)
    model = InternVLChatModel(config)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    return model


def test_internvl_checkpoint_roundtrip(tmp_path, tokenizer):
    from internvl.model.internvl_chat import InternVLChatModel

    model = _model(tokenizer, modality="T2").eval()
    with torch.no_grad():
        model.vision_model.modality_embedding.add_(1.0)  # a non-default buffer must survive too
    model.save_pretrained(tmp_path)
    again = InternVLChatModel.from_pretrained(tmp_path).eval()
    assert again.config.vision_config.encoder_name == "brainfound_unet"
    assert again.config.vision_config.modality == "T2" and again.config.projector == "mlp"
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and "vision_model.modality_embedding" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.extract_feature(x), again.extract_feature(x), rtol=0, atol=0)


def test_backbone_lora_checkpoint_roundtrip(tmp_path, tokenizer):
    from internvl.model.internvl_chat import InternVLChatModel

    model = _model(tokenizer)
    model.wrap_backbone_lora(r=4, lora_alpha=8)
    lora = [n for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and any(".to_q." in n for n in lora)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # LoRA B starts at zero: make the adapters matter
    model.eval().save_pretrained(tmp_path)
    again = InternVLChatModel.from_pretrained(tmp_path).eval()
    assert again.config.use_backbone_lora == 4
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.extract_feature(x), again.extract_feature(x), rtol=0, atol=0)


def test_meditk_rows_to_loss_and_gradients(tmp_path, tokenizer):
    from internvl.data.collate import DataCollator
    from internvl.train.dataset import SupervisedDataset
    from internvl.data.meta import load_meta

    for i, lesion in enumerate(("normal", "hemorrhage")):
        np.savez(tmp_path / f"{i}.npz", data=synthetic_head(np.random.default_rng(i), 8, 40, lesion).astype(np.int16))
    turn = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]  # noqa: E731
    rows = [{"meditk": "0.npz", "conversations": turn("<meditk>\nAny bleed? A: yes B: no", "B")},
            {"meditk": "1.npz", "conversations": turn("Describe.", "bleed")},  # no placeholder: prepended
            {"conversations": turn("Hello", "hi")}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "meta.json").write_text(json.dumps({"d": {"root": str(tmp_path), "annotation": str(tmp_path / "t.jsonl")}}))
    model = _model(tokenizer).train()
    ds = SupervisedDataset(load_meta(str(tmp_path / "meta.json"))[0], tokenizer, model.config, max_seq_length=256)
    samples = [ds[i] for i in range(3)]
    ctx = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert [int((s["input_ids"] == ctx).sum()) for s in samples] == [36, 36, 0]
    out = model(**DataCollator.from_tokenizer(tokenizer)(samples))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    vm = model.vision_model
    assert vm.unet.conv_in.weight.grad.abs().sum() > 0 and vm.head.conv2.weight.grad.abs().sum() > 0


def test_brainfound_mcq_task_reads_inline_options(tmp_path):
    from internvl.evaluation.base import create_task
    from patches.brainfound.tasks import inline_options

    q = "在这幅CT图像中，脑实质的病变情况如何？A: 有明显异常密度影 B: 没有明显异常密度影 C: 有轻微异常影 D: 无法判断"
    assert inline_options(q) == {"A": "有明显异常密度影", "B": "没有明显异常密度影", "C": "有轻微异常影", "D": "无法判断"}
    assert inline_options("Pick A: x") == {}
    task = create_task("brainfound_mcq")
    rec = task.score("B", {"question": q, "reference": "B"})
    assert rec["correct"] and rec["num_options"] == 4
    assert task.score("没有明显异常密度影", {"question": q, "reference": "B"})["pred_letter"] == "B"
    assert not task.score("A", {"question": q, "reference": "B"})["correct"]
    agg = task.aggregate([rec, task.score("C", {"question": q, "reference": "B"})], str(tmp_path))
    assert agg["accuracy"] == 0.5 and agg["chance"] == 0.25


@pytest.mark.slow
def test_stage3_finetune_and_custom_eval(tmp_path, tiny_model_dir, bf_demo):
    """Stage 3 as a user runs it: the core finetune with --vision_model brainfound_unet (weights from a saved
    encoder via pretrained_path) on the Brainfound-format demo rows, then eval/custom_eval.py."""
    from patches.brainfound.encoder import brainfound_unet

    enc_dir = tmp_path / "encoder"
    brainfound_unet(preset="tiny").save_pretrained(enc_dir)
    out = tmp_path / "stage3"
    env = {"PYTHON": sys.executable, "OUTPUT_DIR": str(out), "MODEL": str(tiny_model_dir), "ENCODER": str(enc_dir),
           "META_PATH": str(bf_demo["stage3_train_meta"]), "OMP_NUM_THREADS": "1", "INTERNVL_NO_PLUGINS": "1",
           "PATH": "/usr/bin:/bin",  # this tree's core and plugins, not an installed copy's
           "PYTHONPATH": os.pathsep.join([str(REPO / "internvl_chat"), str(REPO)])}
    proc = subprocess.run(["sh", "shell/brainfound/demo_finetune_tiny.sh", "--max_steps", "6", "--logging_steps", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (out / "model.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vision_config"]["encoder_name"] == "brainfound_unet" and cfg["projector"] == "mlp"
    res_file = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "eval/custom_eval.py", "--plugins", "patches.brainfound", "--model", str(out),
                           "--data", str(bf_demo["stage3_test_meta"]), "--out", str(res_file), "--limit", "4",
                           "--max-new-tokens", "8", "--no-progress"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    res = json.loads(res_file.read_text())
    by_task = res["metrics"]["by_task"]
    assert by_task["brainfound_mcq"]["n"] == 4 and by_task["open_qa"]["n"] == 4
    assert by_task["brainfound_report"]["n"] == 4  # the stage-3 report rows, scored by the plugin's task
    assert {"bleu4_corpus", "rouge_l", "meteor"} <= set(by_task["brainfound_report"])
    assert 0 <= by_task["brainfound_mcq"]["accuracy"] <= 1
