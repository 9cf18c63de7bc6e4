"""The language side: any ``AutoModelForCausalLM``, the attention backend, LoRA targets, InternLM2 as Llama, and
the ``llm_config`` fields of InternVL releases mapped onto what the pinned transformers reads.

Config-field mappings (``LLM_CONFIG_FIELD_MAPS``, applied by ``llm_config_for_transformers``): one small table per
LLM family, for fields an InternVL release saved in a form the pinned transformers no longer reads. InternVL2-4B's
Phi-3 LLM says ``rope_scaling: {"type": "su", ...}`` with ``original_max_position_embeddings`` at the top level of
``llm_config`` (where InternVL's own Phi-3 code reads it); ``Phi3Config`` renames ``su`` to ``longrope`` only after
it has decided which rope types need that field inside ``rope_parameters``, so validation fails without the map.

InternLM2 LLMs (InternVL2-2B/8B/26B) are not in transformers; their weights are the Llama layout with a fused
``wqkv`` laid out per key-value group as ``[q_1 .. q_g, k, v]`` (g = heads / kv_heads). They are loaded as
``LlamaForCausalLM`` by splitting ``wqkv`` that way and renaming the other keys, so no remote code is needed.
"""
from __future__ import annotations

import importlib.util
import re
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig

# InternVL's LoRA targets per LLM family (InternLM2 checkpoints become Llama here, so they use Llama's)
LLM_LORA_TARGETS = {
    "phi3": ["mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj"],
    "default": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"],
}


# Families whose causal-LM logits are exactly ``lm_head(final hidden state)`` (no soft-capping, scaling or auxiliary
# loss in the head): a training step takes its loss from the hidden states at the trained positions only
# (``internvl.model.loss``). Other families go through the LLM's full forward.
LOGITS_ARE_LM_HEAD = frozenset({"qwen2", "qwen3", "llama", "phi3", "mistral"})


def logits_are_lm_head(config: PretrainedConfig) -> bool:
    return config.model_type in LOGITS_ARE_LM_HEAD


def attn_implementation() -> str:
    """``flash_attention_2`` when flash-attn is installed and a GPU is present; SDPA otherwise (never forced)."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_llm(config: PretrainedConfig, attn: str | None = None):
    """A randomly initialised causal LM for ``config`` (weights are loaded afterwards)."""
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn or attn_implementation())


def llm_lora_targets(config: PretrainedConfig) -> list[str]:
    return LLM_LORA_TARGETS.get(config.model_type, LLM_LORA_TARGETS["default"])


def internlm2_config_to_llama(cfg: dict) -> LlamaConfig:
    """An InternLM2 ``llm_config`` as the equivalent ``LlamaConfig``."""
    heads = cfg["num_attention_heads"]
    return LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads", heads), hidden_act=cfg.get("hidden_act", "silu"),
        max_position_embeddings=cfg.get("max_position_embeddings", 32768), rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=cfg.get("rope_theta", 1e6), rope_scaling=cfg.get("rope_scaling"),
        attention_bias=bool(cfg.get("bias", False)), mlp_bias=False,
        bos_token_id=cfg.get("bos_token_id", 1), eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id", 2), tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"])


_INTERNLM2_RENAMES = [(r"\.tok_embeddings\.", ".embed_tokens."), (r"\.attention\.wo\.", ".self_attn.o_proj."),
                      (r"\.feed_forward\.w1\.", ".mlp.gate_proj."), (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
                      (r"\.feed_forward\.w2\.", ".mlp.down_proj."), (r"\.attention_norm\.", ".input_layernorm."),
                      (r"\.ffn_norm\.", ".post_attention_layernorm."), (r"^output\.", "lm_head.")]


def internlm2_state_to_llama(state: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """InternLM2 LLM keys (relative to ``language_model.``) -> Llama keys, splitting ``wqkv`` per kv group."""
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // heads
    groups = heads // kv
    out = {}
    for key, val in state.items():
        if ".attention.wqkv." in key:
            stem, kind = key.split(".attention.wqkv.")
            grouped = val.reshape(kv, groups + 2, dim, *val.shape[1:])
            out[f"{stem}.self_attn.q_proj.{kind}"] = grouped[:, :groups].reshape(heads * dim, *val.shape[1:])
            out[f"{stem}.self_attn.k_proj.{kind}"] = grouped[:, -2].reshape(kv * dim, *val.shape[1:])
            out[f"{stem}.self_attn.v_proj.{kind}"] = grouped[:, -1].reshape(kv * dim, *val.shape[1:])
            continue
        new = key
        for pat, rep in _INTERNLM2_RENAMES:
            new = re.sub(pat, rep, new)
        out[new] = val
    return out


def is_internlm2_state(state: dict[str, torch.Tensor]) -> bool:
    return any(".attention.wqkv." in k or k.startswith("model.tok_embeddings.") for k in state)


# ---------------------------------------------------------------------------------------------- llm_config fields
# Per family (``llm_config.model_type``; "*" = every family):
#   drop:       fields that must not decide anything here (the attention backend is chosen per machine by
#               ``attn_implementation()``; a release saved ``flash_attention_2``, which a CPU machine cannot run)
#   rope_type:  legacy rope type name -> the pinned transformers' name (old ``type`` key or ``rope_type``)
#   into_rope:  top-level fields the renamed rope type reads from inside ``rope_scaling`` (copied, the top-level
#               field stays: Phi-3's generation code reads it there too). One the release lacks is left to the
#               config class's own default (``Phi3Config``: 4096, Phi-3's pretraining length)
LLM_CONFIG_FIELD_MAPS: dict[str, dict[str, Any]] = {
    "*": {"drop": ("attn_implementation", "_attn_implementation")},
    "phi3": {"rope_type": {"su": "longrope"}, "into_rope": ("original_max_position_embeddings",)},
}


def llm_config_for_transformers(cfg: dict) -> dict:
    """A saved ``llm_config`` dict with its family's field mappings applied (a new dict; the input is unchanged)."""
    cfg = dict(cfg)
    for family in ("*", cfg.get("model_type")):
        mapping = LLM_CONFIG_FIELD_MAPS.get(family, {})
        for key in mapping.get("drop", ()):
            cfg.pop(key, None)
        rope = cfg.get("rope_scaling")
        if not isinstance(rope, dict):
            continue
        old_type = rope.get("rope_type", rope.get("type"))
        new_type = mapping.get("rope_type", {}).get(old_type)
        if new_type is None:
            continue
        rope = {k: v for k, v in rope.items() if k != "type"}
        rope["rope_type"] = new_type
        rope.update({key: cfg[key] for key in mapping.get("into_rope", ()) if key in cfg and key not in rope})
        cfg["rope_scaling"] = rope
    return cfg
