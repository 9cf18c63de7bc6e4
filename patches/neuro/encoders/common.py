"""Shared by the neuro encoders: rebuilding a config from a saved or partial dict through its named preset.

The core rebuilds an encoder config from a dict (``InternVLChatConfig.build(vision=name, vision_overrides=...)``,
or a checkpoint's ``vision_config``) through the encoder class's ``config_kwargs_from_dict`` hook. A preset name
such as ``brain3d_vit_tiny`` stands for non-default sizes, so the preset's values come first and the dict's own
values override them: ``{"encoder_name": "brain3d_vit_tiny"}`` gives the tiny model, not the class defaults.
"""
from __future__ import annotations

from internvl.model.vision.base import VISION_MODELS

# bookkeeping keys of a saved config dict that are not constructor arguments
_BOOKKEEPING = {"model_type", "transformers_version", "architectures", "encoder_name", "_name_or_path", "dtype",
                "torch_dtype", "_attn_implementation_autoset", "_commit_hash"}


def config_kwargs_with_preset(cfg: dict, presets: dict[str, dict]) -> dict:
    name = cfg.get("encoder_name") or cfg.get("model_type")
    preset = presets.get(VISION_MODELS.resolve(name), {}) if name else {}
    return {**preset, **{k: v for k, v in cfg.items() if k not in _BOOKKEEPING}}
