"""``InternVLChatConfig``: InternVL's chat config (model_type ``internvl_chat``), with a pluggable vision side.

The fields and defaults are InternVL's (``vision_config``, ``llm_config``, ``select_layer``, ``force_image_size``,
``downsample_ratio``, ``template``, ``ps_version``, ...), so an OpenGVLab ``config.json`` loads as is. Two fields
are ours: ``projector`` (registered projector name, default ``mlp1``) and ``projector_config`` (its options).
``vision_config.encoder_name`` names the registered encoder; original checkpoints have none and their
``model_type`` (``intern_vit_6b``) is the alias that resolves to ``intern_vit``.
"""
from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from internvl.model.vision.base import (VISION_MODELS, config_kwargs_from_dict, create_vision_model_from_dict,
                                        encoder_class)


def llm_config_from_dict(cfg: dict | PretrainedConfig) -> PretrainedConfig:
    """An LLM config from a saved ``llm_config`` dict (InternLM2 is read through the Llama layout)."""
    if isinstance(cfg, PretrainedConfig):
        return cfg
    from internvl.model.llm import llm_config_for_transformers

    cfg = llm_config_for_transformers(cfg)
    arch = (cfg.get("architectures") or [""])[0]
    if cfg.get("model_type") == "internlm2" or arch == "InternLM2ForCausalLM":
        from internvl.model.llm import internlm2_config_to_llama

        return internlm2_config_to_llama(cfg)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ValueError(f"llm_config has no model_type (architectures={cfg.get('architectures')})")
    for key in ("transformers_version", "auto_map", "_name_or_path"):
        cfg.pop(key, None)
    return AutoConfig.for_model(model_type, **cfg)


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"
    is_composition = True

    def __init__(self, vision_config=None, llm_config=None, use_backbone_lora=0, use_llm_lora=0,
                 select_layer=-1, force_image_size=None, downsample_ratio=0.5, template=None,
                 dynamic_image_size=False, use_thumbnail=False, ps_version="v1", min_dynamic_patch=1,
                 max_dynamic_patch=6, pad2square=False, projector="mlp1", projector_config=None, **kwargs):
        kwargs.pop("tie_word_embeddings", None)  # decided per checkpoint (lm_head present or not), see modeling
        super().__init__(**kwargs)
        if vision_config is None:
            vision_config = {"encoder_name": "intern_vit"}
        if isinstance(vision_config, dict):
            vision_config = _vision_config_from_dict(vision_config)
        self.vision_config = vision_config
        if llm_config is None:
            llm_config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
        self.llm_config = llm_config_from_dict(llm_config)
        self.use_backbone_lora = use_backbone_lora
        self.use_llm_lora = use_llm_lora
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        self.pad2square = pad2square
        self.projector = projector
        self.projector_config = dict(projector_config or {})
        if hasattr(self.vision_config, "select_layer"):
            self.vision_config.select_layer = select_layer

    @classmethod
    def build(cls, vision: str = "intern_vit", vision_overrides: dict | None = None, llm_config=None,
              projector: str = "mlp1", projector_config: dict | None = None, template: str = "internvl2_5",
              **fields: Any) -> "InternVLChatConfig":
        """A config from an encoder name (+ overrides), an LLM config and a projector name."""
        vision_cfg = {"encoder_name": vision, **(vision_overrides or {})}
        if vision in ("intern_vit",) and "force_image_size" not in fields:
            fields["force_image_size"] = vision_cfg.get("image_size", 448)
        fields.setdefault("ps_version", "v2")
        return cls(vision_config=vision_cfg, llm_config=llm_config, projector=projector,
                   projector_config=projector_config, template=template, **fields)

    @property
    def image_size(self) -> int:
        return self.force_image_size or getattr(self.vision_config, "image_size", 448)

    @property
    def num_image_token(self) -> int:
        """``<IMG_CONTEXT>`` tokens per 2D tile (InternVL: (image_size // patch)^2 * downsample_ratio^2)."""
        patch = getattr(self.vision_config, "patch_size", 14)
        return int((self.image_size // patch) ** 2 * self.downsample_ratio ** 2)

    @property
    def vision_encoder_class(self) -> type:
        return encoder_class(self.vision_config)

    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy(self.__dict__)
        out["vision_config"] = self.vision_config.to_dict()
        out["llm_config"] = self.llm_config.to_dict()
        out["model_type"] = self.model_type
        out["architectures"] = out.get("architectures") or ["InternVLChatModel"]
        out.pop("_name_or_path", None)
        for key in [k for k in out if k.startswith("_") and k not in ("_attn_implementation",)]:
            out.pop(key)
        out["tie_word_embeddings"] = False
        return out


def _vision_config_from_dict(cfg: dict) -> PretrainedConfig:
    """The encoder's own config object for a saved dict (built through the registry)."""
    config = encoder_class(cfg).config_class(**config_kwargs_from_dict(cfg))
    config.encoder_name = VISION_MODELS.resolve(cfg.get("encoder_name") or cfg.get("model_type"))
    return config


__all__ = ["InternVLChatConfig", "llm_config_from_dict", "create_vision_model_from_dict"]
