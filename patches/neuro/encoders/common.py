"""Shared by the neuro encoders: config rebuilding through named presets, and sinusoidal position codes.

The core rebuilds an encoder config from a dict (``InternVLChatConfig.build(vision=name, vision_overrides=...)``,
or a checkpoint's ``vision_config``) through the encoder class's ``config_kwargs_from_dict`` hook. A preset name
such as ``brain3d_vit_tiny`` stands for non-default sizes, so the preset's values come first and the dict's own
values override them: ``{"encoder_name": "brain3d_vit_tiny"}`` gives the tiny model, not the class defaults.
"""
from __future__ import annotations

import math

import torch

from internvl.model.vision.base import META_KEYS, VISION_MODELS


def config_kwargs_with_preset(cfg: dict, presets: dict[str, dict]) -> dict:
    name = cfg.get("encoder_name") or cfg.get("model_type")
    preset = presets.get(VISION_MODELS.resolve(name), {}) if name else {}
    return {**preset, **{k: v for k, v in cfg.items() if k not in META_KEYS}}


def sincos_embedding(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of integer grid coordinates ``[T, k]`` -> ``[T, dim]``.

    Each of the k axes gets an equal, even share of the channels (sin then cos over geometric frequencies,
    MAE-style), truncated to ``dim``. Used as a fixed 3D position code (neurovfm_tokens) and to initialise
    learnable position embeddings (brain3d_vit), so token features carry their place from the first step.
    """
    k = coords.shape[1]
    per = 2 * math.ceil(dim / (2 * k))
    half = per // 2
    freqs = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32, device=coords.device) / half))
    ang = coords.float().unsqueeze(-1) * freqs  # [T, k, half]
    return torch.cat([ang.sin(), ang.cos()], dim=-1).reshape(coords.shape[0], -1)[:, :dim]


def grid_coords(*sizes: int) -> torch.Tensor:
    """Row-major integer coordinates of a grid: ``[prod(sizes), len(sizes)]``."""
    return torch.stack(torch.meshgrid(*[torch.arange(s) for s in sizes], indexing="ij"), dim=-1).reshape(-1, len(sizes))
