"""Checkpoints in InternVL's original layout, InternLM2 LLMs, -hf export, our own save/load, and bad folders.

The original-layout checkpoint is written here from a transformers-native model with the key mapping documented
in the research note (transformers' converter table, inverted; q/k/v rows re-fused into ``attn.qkv``), and a
config.json with InternVL's own keys, independently of the code under test.
"""
import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import (InternVLConfig, InternVLForConditionalGeneration, LlamaConfig, LlamaForCausalLM)

from helpers_model import IMG_ID, TINY_QWEN2, inputs, tiny_model
from internvl.model.checkpoint import CheckpointError
from internvl.model.internvl_chat import InternVLChatModel

HF_TO_ORIGINAL = [("model.vision_tower.", "vision_model."), ("encoder.layer.", "encoder.layers."),
                  ("cls_token", "class_embedding"), ("position_embeddings", "position_embedding"),
                  ("patch_embeddings.projection", "patch_embedding"), ("lambda_1", "ls1"), ("lambda_2", "ls2"),
                  ("attention.projection_layer", "attn.proj"), ("attention.", "attn."),
                  ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                  ("model.multi_modal_projector.layer_norm", "mlp1.0"), ("model.multi_modal_projector.linear_1", "mlp1.1"),
                  ("model.multi_modal_projector.linear_2", "mlp1.3"), ("model.language_model.", "language_model.model."),
                  ("lm_head.", "language_model.lm_head.")]


def original_state(hf_model):
    out, qkv = {}, {}
    for key, val in hf_model.state_dict().items():
        m = re.match(r"model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = val
            continue
        for a, b in HF_TO_ORIGINAL:
            key = key.replace(a, b)
        out[key] = val.clone()
    for (layer, kind), parts in qkv.items():
        out[f"vision_model.encoder.layers.{layer}.attn.qkv.{kind}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def original_config(llm_config: dict) -> dict:
    vision = dict(model_type="intern_vit_6b", architectures=["InternVisionModel"], hidden_size=32,
                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14,
                  num_channels=3, qkv_bias=True, qk_normalization=False, norm_type="layer_norm", layer_norm_eps=1e-6,
                  hidden_act="gelu", initializer_factor=0.1, drop_path_rate=0.0, use_flash_attn=True,
                  auto_map={"AutoConfig": "configuration_intern_vit.InternVisionConfig"})
    return dict(architectures=["InternVLChatModel"], model_type="internvl_chat", template="Hermes-2",
                auto_map={"AutoModel": "modeling_internvl_chat.InternVLChatModel"}, downsample_ratio=0.5,
                dynamic_image_size=True, force_image_size=56, max_dynamic_patch=12, min_dynamic_patch=1,
                ps_version="v2", select_layer=-1, use_thumbnail=True, use_backbone_lora=0, use_llm_lora=0,
                vision_config=vision, llm_config=llm_config, torch_dtype="bfloat16")


def native_model(text_config):
    torch.manual_seed(3)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                  patch_size=14, attention_bias=True, layer_scale_init_value=0.1)
    hf = InternVLForConditionalGeneration(InternVLConfig(
        vision_config=vision, text_config=text_config, image_token_id=IMG_ID, image_seq_length=4,
        downsample_ratio=0.5, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lambda" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return hf


def test_original_layout_checkpoint_loads_with_same_logits(tmp_path):
    hf = native_model(dict(TINY_QWEN2))
    save_file(original_state(hf), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(original_config(dict(TINY_QWEN2))))
    ours = InternVLChatModel.from_pretrained(tmp_path)
    ours.img_context_token_id = IMG_ID
    assert ours.template == "Hermes-2" and ours.config.vision_config.encoder_name == "intern_vit"
    assert ours.language_model.lm_head.weight.data_ptr() != ours.language_model.model.embed_tokens.weight.data_ptr()
    ids, pv = inputs(2, 4)
    with torch.no_grad():
        diff = (ours(pixel_values=pv, input_ids=ids).logits - hf(pixel_values=pv, input_ids=ids).logits).abs().max()
    assert diff <= 1e-5


def internlm2_state(llama: LlamaForCausalLM, cfg: LlamaConfig) -> dict:
    """Llama weights in InternLM2's layout: wqkv interleaved per kv group as [q_1..q_g, k, v]."""
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    dim, g = cfg.hidden_size // heads, heads // kv
    out = {}
    for key, val in llama.state_dict().items():
        if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        if ".self_attn.q_proj." in key:
            stem = key.split(".self_attn.")[0]
            q = val.reshape(kv, g, dim, -1)
            k = llama.state_dict()[key.replace("q_proj", "k_proj")].reshape(kv, 1, dim, -1)
            v = llama.state_dict()[key.replace("q_proj", "v_proj")].reshape(kv, 1, dim, -1)
            out[f"language_model.{stem}.attention.wqkv.weight"] = torch.cat([q, k, v], 1).reshape(-1, val.shape[-1])
            continue
        for a, b in [("embed_tokens", "tok_embeddings"), ("self_attn.o_proj", "attention.wo"),
                     ("mlp.gate_proj", "feed_forward.w1"), ("mlp.up_proj", "feed_forward.w3"),
                     ("mlp.down_proj", "feed_forward.w2"), ("input_layernorm", "attention_norm"),
                     ("post_attention_layernorm", "ffn_norm"), ("lm_head", "output")]:
            key = key.replace(a, b)
        out[f"language_model.{key}"] = val.clone()
    return out


def test_internlm2_llm_loads_through_llama_layout(tmp_path):
    torch.manual_seed(5)
    cfg = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=False)
    llama = LlamaForCausalLM(cfg).eval()
    internlm2_cfg = dict(architectures=["InternLM2ForCausalLM"], model_type="internlm2", vocab_size=320,
                         hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, rope_theta=10000.0, bias=False, rms_norm_eps=1e-6,
                         max_position_embeddings=512, auto_map={"AutoModel": "modeling_internlm2.InternLM2Model"})
    vision_model = tiny_model().vision_model
    state = {f"vision_model.{k}": v for k, v in vision_model.state_dict_to_disk(vision_model.state_dict()).items()}
    state.update({f"mlp1.{k}": v for k, v in tiny_model().mlp1.state_dict().items()})
    state.update(internlm2_state(llama, cfg))
    save_file(state, str(tmp_path / "model.safetensors"))
    config = original_config(internlm2_cfg)
    config["template"] = "internlm2-chat"
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = InternVLChatModel.from_pretrained(tmp_path)
    assert type(ours.language_model).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        assert (ours.language_model(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max() <= 1e-5


def test_save_load_round_trip_identical(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = InternVLChatModel.from_pretrained(tmp_path)
    loaded.img_context_token_id = IMG_ID
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids, pv = inputs(2, 4)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pv, input_ids=ids).logits, loaded(pixel_values=pv, input_ids=ids).logits)


def test_export_hf_round_trip(tiny_model_dir, tmp_path):
    out = tmp_path / "tiny-hf"
    subprocess.run([sys.executable, "-m", "internvl.tools.export_hf", str(tiny_model_dir), str(out)], check=True,
                   capture_output=True, text=True)
    hf = InternVLForConditionalGeneration.from_pretrained(out).eval()
    ours = InternVLChatModel.from_pretrained(tiny_model_dir)
    ours.img_context_token_id = hf.config.image_token_id
    assert hf.lm_head.weight.data_ptr() != hf.model.language_model.embed_tokens.weight.data_ptr()
    n = ours.num_image_token
    ids = torch.tensor([[40, 41, 42] + [hf.config.image_token_id] * (2 * n) + [43, 44]])
    pv = torch.randn(2, 3, ours.config.image_size, ours.config.image_size)
    with torch.no_grad():
        ref = ours(pixel_values=pv, input_ids=ids).logits
        assert (hf(pixel_values=pv, input_ids=ids).logits - ref).abs().max() <= 1e-5
        back = InternVLChatModel.from_pretrained(out)  # and the -hf layout loads into ours
        back.img_context_token_id = hf.config.image_token_id
        assert (back(pixel_values=pv, input_ids=ids).logits - ref).abs().max() <= 1e-5


def test_unmappable_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"config\.json.*llava"):
        InternVLChatModel.from_pretrained(tmp_path)


def test_missing_config_and_mismatched_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json: not found"):
        InternVLChatModel.from_pretrained(tmp_path)
    model = tiny_model()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["llm_config"]["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        InternVLChatModel.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("mlp1.1.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \['mlp1.1.weight'\]"):
        InternVLChatModel.from_pretrained(tmp_path)
