"""Tiny configs shared by the core model tests (kept small so every test runs in well under a second)."""
from __future__ import annotations

import torch

TINY_VIT = dict(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64)
TINY_QWEN2 = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=320,
                  tie_word_embeddings=False, max_position_embeddings=512)
IMG_ID = 317


def tiny_config(**fields):
    from internvl.model.internvl_chat import InternVLChatConfig

    fields.setdefault("template", "internvl2_5")
    return InternVLChatConfig.build(vision_overrides=dict(TINY_VIT, **fields.pop("vision", {})),
                                    llm_config=dict(TINY_QWEN2, **fields.pop("llm", {})), **fields)


def tiny_model(seed: int = 0, **fields):
    from internvl.model.internvl_chat import InternVLChatModel

    torch.manual_seed(seed)
    model = InternVLChatModel(tiny_config(**fields)).eval()
    model.img_context_token_id = IMG_ID
    with torch.no_grad():  # non-trivial layer scales and norms, so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            if "lambda" in name or "norm" in name or "lm_head" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def inputs(n_tiles: int = 2, tokens_per_tile: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 300, (1, 6), generator=g)
    ids = torch.cat([text[:, :3], torch.full((1, n_tiles * tokens_per_tile), IMG_ID), text[:, 3:]], dim=1)
    pixel_values = torch.randn(n_tiles, 3, 56, 56, generator=g)
    return ids, pixel_values
