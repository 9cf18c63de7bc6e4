"""The freeze / LoRA / unfreeze flags freeze and train what they say (trainable parameters counted per module), and
``--unfreeze_lm_head`` really trains lm_head's weight, also under LoRA (InternVL's flag was a no-op)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from internvl.model.internvl_chat import InternVLChatModel
from internvl.train.arguments import ModelArguments
from internvl.train.freeze import configure_trainable, lm_head, trainable_summary, vision_layers
from internvl.train.internvl_chat_finetune import main


def _configured(model_dir, **flags):
    model = InternVLChatModel.from_pretrained(str(model_dir), dtype=torch.float32)
    configure_trainable(model, ModelArguments(model_name_or_path=str(model_dir), **flags))
    return model, trainable_summary(model)


def _trainable_names(module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def test_defaults_train_everything(tiny_model_dir):
    _, summary = _configured(tiny_model_dir)
    for part, (trainable, total) in summary.items():
        assert trainable == total > 0, part


@pytest.mark.parametrize("flags, frozen, full", [
    ({"freeze_llm": True}, ["language_model", "lm_head"], ["vision_model", "mlp1"]),
    ({"freeze_backbone": True, "freeze_mlp": True}, ["vision_model", "mlp1"], ["language_model", "lm_head"]),
    ({"freeze_backbone": True, "freeze_llm": True}, ["vision_model", "language_model", "lm_head"], ["mlp1"]),
])
def test_freeze_flags(tiny_model_dir, flags, frozen, full):
    _, summary = _configured(tiny_model_dir, **flags)
    for part in frozen:
        assert summary[part][0] == 0, part
    for part in full:
        assert summary[part][0] == summary[part][1], part


def test_unfreeze_vit_layers_trains_only_the_last_layers(tiny_model_dir):
    model, summary = _configured(tiny_model_dir, freeze_backbone=True, unfreeze_vit_layers=-1)
    last = vision_layers(model.vision_model)[-1]
    assert summary["vision_model"][0] == sum(p.numel() for p in last.parameters()) > 0
    assert all(p.requires_grad for p in last.parameters())


def test_llm_lora_trains_adapters_only(tiny_model_dir):
    model, summary = _configured(tiny_model_dir, freeze_llm=True, use_llm_lora=4)
    names = _trainable_names(model.language_model)
    assert names and all("lora_" in n for n in names)
    assert summary["lm_head"][0] == 0 and model.config.use_llm_lora == 4
    lora_cfg = model.language_model.peft_config["default"]
    assert lora_cfg.r == 4 and lora_cfg.lora_alpha == 8 and lora_cfg.lora_dropout == pytest.approx(0.05)


@pytest.mark.parametrize("flags", [{"freeze_llm": True}, {"use_llm_lora": 4}, {"freeze_llm": True, "use_llm_lora": 4}])
def test_unfreeze_lm_head_sets_the_weight(tiny_model_dir, flags):
    model, summary = _configured(tiny_model_dir, unfreeze_lm_head=True, **flags)
    head = lm_head(model)
    assert head.weight.requires_grad and summary["lm_head"] == (head.weight.numel(), head.weight.numel())
    embeddings = [n for n in _trainable_names(model.language_model) if "embed_tokens" in n]
    assert embeddings == []  # the head is not tied here, so the input embeddings stay frozen


def test_backbone_lora(tiny_model_dir):
    model, summary = _configured(tiny_model_dir, freeze_backbone=True, use_backbone_lora=4)
    names = _trainable_names(model.vision_model)
    assert names and all("lora_" in n for n in names) and model.config.use_backbone_lora == 4
    assert summary["mlp1"][0] == summary["mlp1"][1]


def _tensor(state: dict, suffix: str) -> torch.Tensor:
    hits = [v for k, v in state.items() if k.endswith(suffix)]
    assert len(hits) == 1, (suffix, [k for k in state if k.endswith(suffix)])
    return hits[0]


def test_unfreeze_lm_head_trains_under_lora(tiny_model_dir, small_demo, tmp_path):
    """Two optimizer steps through the real entry point (InternVL's LoRA recipe: frozen LLM, gradient
    checkpointing): lm_head and the adapters move, the frozen LLM does not, and the LoRA checkpoint reloads with the
    trained head."""
    out = tmp_path / "out"
    main(["--model_name_or_path", str(tiny_model_dir), "--meta_path", str(small_demo / "train_meta.json"),
          "--conv_style", "internvl2_5", "--force_image_size", "112", "--output_dir", str(out),
          "--freeze_backbone", "True", "--freeze_mlp", "True", "--freeze_llm", "True", "--use_llm_lora", "4",
          "--unfreeze_lm_head", "True", "--grad_checkpoint", "True", "--max_steps", "2",
          "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--save_strategy", "no",
          "--report_to", "none", "--disable_tqdm", "True", "--max_seq_length", "512"])
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert not torch.equal(_tensor(before, "lm_head.weight"), _tensor(after, "lm_head.weight"))
    assert torch.equal(_tensor(before, "embed_tokens.weight"), _tensor(after, "embed_tokens.weight"))
    assert torch.equal(_tensor(before, "layers.0.mlp.up_proj.weight"),
                       _tensor(after, "layers.0.mlp.up_proj.base_layer.weight"))
    assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in after.items())
    reloaded = InternVLChatModel.from_pretrained(str(out), dtype=torch.float32)
    assert torch.equal(lm_head(reloaded).weight, _tensor(after, "lm_head.weight"))
