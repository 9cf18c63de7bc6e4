"""``brainfound_unet``: documented size, token counts, noise option, LoRA targets, weight sources, round trips."""
from __future__ import annotations

import json

import pytest
import torch

from internvl.model.vision.base import create_vision_model, create_vision_model_from_dict, encoder_class
from patches.brainfound.encoder import BrainfoundUNetEncoder, brainfound_unet


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_parameter_counts_and_tokens_on_meta():
    with torch.device("meta"):
        full = create_vision_model("brainfound_unet", down_path_only=False)
        enc = create_vision_model("brainfound_unet")
        out = enc(torch.empty(2, 3, 256, 256))
    # Brainfound's UNet2DConditionModel (diffusers 0.42): 78,117,059 parameters, 19,476,864 on the encoder path
    assert _n(full.unet) == 78_117_059
    assert _n(enc.unet) == 19_476_864
    assert _n(enc.head) == 31_852_800  # conv3x3 512->768, GroupNorm(32, 768), conv3x3 768->4096 (no bias)
    assert out.shape == (2, 81, 4096)
    assert BrainfoundUNetEncoder.num_tokens(enc.config, torch.empty(3, 256, 256)) == 81
    assert enc.config.encoder_name == "brainfound_unet"


def test_tiny_forward_shapes_match_num_tokens():
    enc = create_vision_model("brainfound_unet", preset="tiny").eval()
    cfg = enc.config
    slices = torch.rand(5, 3, 32, 32) * 2 - 1
    vol = torch.rand(1, 6, 40, 40) * 2 - 1  # [C, D, H, W], another in-plane size: resized, 4 slices selected
    with torch.no_grad():
        t = enc(slices)
        mixed = enc([vol, slices[0]])
    assert t.shape == (5, 9, cfg.hidden_size)
    assert [m.shape[0] for m in mixed] == [BrainfoundUNetEncoder.num_tokens(cfg, vol),
                                          BrainfoundUNetEncoder.num_tokens(cfg, slices[0])] == [36, 9]
    dummy = BrainfoundUNetEncoder.dummy_input(cfg)
    with torch.no_grad():
        assert enc(dummy.unsqueeze(0)).shape == (1, 9, cfg.hidden_size)
    with pytest.raises(ValueError, match="neither"):
        enc([torch.zeros(2, 3)])


def test_noise_at_t0_is_off_by_default_and_small_when_on():
    torch.manual_seed(0)
    enc = create_vision_model("brainfound_unet", preset="tiny").eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = enc(x), enc(x)
        enc.config.noise_at_t0 = True
        c, d = enc(x), enc(x)
    assert torch.equal(a, b)  # deterministic features
    assert not torch.equal(c, d)  # stochastic with the option on
    assert (c - a).abs().mean() < 0.2 * a.abs().mean()  # t = 0 noise is small (std 0.01 on the input)
    assert enc.alpha_bar_0() == pytest.approx(1 - 1e-4)


def test_lora_targets_wrap_the_unet_attention():
    from peft import LoraConfig, get_peft_model

    enc = create_vision_model("brainfound_unet", preset="tiny")
    assert enc.lora_target_modules == ["to_q", "to_v", "proj"]
    peft_model = get_peft_model(enc, LoraConfig(r=4, lora_alpha=8, target_modules=enc.lora_target_modules))
    names = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert any(".attn1.to_q." in n for n in names) and any(".attn2.to_v." in n for n in names)
    assert any(".ff.net.0.proj." in n for n in names)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_standalone_save_pretrained_from_pretrained_roundtrip(tmp_path):
    torch.manual_seed(1)
    enc = create_vision_model("brainfound_unet", preset="tiny", modality="T1").eval()
    enc.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = BrainfoundUNetEncoder.from_pretrained(tmp_path).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), again(x), rtol=0, atol=0)
    assert again.config.modality == "T1" and again.config.token_grid == 3
    # the factory reads the saved config as its base (overrides win) and the weights
    via_factory = brainfound_unet(pretrained_path=str(tmp_path), noise_at_t0=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), via_factory(x), rtol=0, atol=0)
    # and a saved config dict rebuilds the same architecture through the registry
    cfg = json.loads((tmp_path / "config.json").read_text())
    rebuilt = create_vision_model_from_dict(cfg)
    assert _n(rebuilt) == _n(enc) and encoder_class(cfg) is BrainfoundUNetEncoder


def test_pretrained_path_from_state_dict_file_with_prefixes(tmp_path):
    src = create_vision_model("brainfound_unet", preset="tiny")
    # Brainfound's stage-2 pickle layout: keys under vision_encoder_q.model.<unet key>; torch.save'd
    raw = {f"vision_encoder_q.model.{k[5:]}": v.clone() for k, v in src.state_dict().items()
           if k.startswith("unet.")}
    raw["vision_encoder_q.something_else.weight"] = torch.zeros(2)
    torch.save(raw, tmp_path / "ddpm.pkl")
    enc = brainfound_unet(pretrained_path=str(tmp_path / "ddpm.pkl"), preset="tiny")
    for k, v in src.state_dict().items():
        if k.startswith("unet."):
            assert torch.equal(enc.state_dict()[k], v), k
    # a file missing encoder-path weights is refused, naming the file
    del raw["vision_encoder_q.model.conv_in.weight"]
    torch.save(raw, tmp_path / "bad.pkl")
    with pytest.raises(ValueError, match=r"bad\.pkl.*missing"):
        brainfound_unet(pretrained_path=str(tmp_path / "bad.pkl"), preset="tiny")
    # and a shape mismatch (wrong preset for the weights) names the key
    with pytest.raises(ValueError, match="shape"):
        brainfound_unet(pretrained_path=str(tmp_path / "ddpm.pkl"), preset="tiny", block_out_channels=(16, 32, 32, 32))


def test_config_cannot_carry_pretrained_path_but_expands_presets():
    from internvl.model.internvl_chat import InternVLChatConfig

    llm = dict(model_type="qwen2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, intermediate_size=64, vocab_size=64)
    cfg = InternVLChatConfig.build(vision="brainfound_unet", vision_overrides={"preset": "tiny"}, llm_config=llm,
                                   projector="mlp")
    assert cfg.vision_config.image_size == 32 and cfg.vision_config.hidden_size == 64
    with pytest.raises(ValueError, match="pretrained_path"):
        InternVLChatConfig.build(vision="brainfound_unet", vision_overrides={"pretrained_path": "/x"},
                                 llm_config=llm, projector="mlp")
