"""LoRA through peft on the LLM and the backbone: saved wrapped, reloaded re-wrapped, merged to plain weights."""
import subprocess
import sys

import torch
from safetensors.torch import load_file

from helpers_model import IMG_ID, inputs, tiny_model
from internvl.model.internvl_chat import InternVLChatModel


def adapted_model():
    model = tiny_model()
    model.wrap_llm_lora(r=4)
    model.wrap_backbone_lora(r=4)
    with torch.no_grad():  # peft starts lora_B at zero; make the adapters change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


def test_lora_targets_follow_internvl():
    model = adapted_model()
    names = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    llm = {n.split(".")[-3] + "." + n.split(".")[-2] for n in names if n.startswith("language_model")}
    assert llm == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    vit = {n.split(".")[-2] for n in names if n.startswith("vision_model")}
    assert vit == {"q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2"}
    lora = model.language_model.peft_config["default"]
    assert lora.lora_alpha == 2 * lora.r and lora.lora_dropout == 0.05


def test_merge_lora_cli_gives_same_logits(tmp_path, tiny_model_dir):
    model = adapted_model()
    src, dst = tmp_path / "lora", tmp_path / "merged"
    model.save_pretrained(src)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((tiny_model_dir / f).read_bytes())
    assert any("lora_A" in k for k in load_file(str(src / "model.safetensors")))
    reloaded = InternVLChatModel.from_pretrained(src)  # config keeps use_*_lora: re-wrapped on load
    reloaded.img_context_token_id = IMG_ID
    subprocess.run([sys.executable, "-m", "internvl.tools.merge_lora", str(src), str(dst)], check=True,
                   capture_output=True, text=True)
    merged = InternVLChatModel.from_pretrained(dst)
    merged.img_context_token_id = IMG_ID
    keys = load_file(str(dst / "model.safetensors"))
    assert not any("lora" in k or "base_model" in k for k in keys)
    assert merged.config.use_llm_lora == 0 and merged.config.use_backbone_lora == 0
    ids, pv = inputs(2, 4)
    with torch.no_grad():
        ref = model(pixel_values=pv, input_ids=ids).logits
        base = tiny_model()(pixel_values=pv, input_ids=ids).logits
        assert (ref - base).abs().max() > 1e-3  # the adapters matter
        assert (reloaded(pixel_values=pv, input_ids=ids).logits - ref).abs().max() <= 1e-5
        assert (merged(pixel_values=pv, input_ids=ids).logits - ref).abs().max() <= 1e-4
