"""Projectors: encoder features -> LLM input embeddings, registered by name like encoders.

Contract (``Projector``):

* ``__init__(self, config)`` gets the whole ``InternVLChatConfig`` (``config.vision_config.hidden_size``,
  ``config.llm_config.hidden_size``, ``config.downsample_ratio``, ``config.ps_version`` and the free-form
  ``config.projector_config`` dict for its own options, e.g. ``num_queries``).
* ``forward(features)`` maps ``Tensor [N, T, D_vis]`` or ``list[Tensor [T_i, D_vis]]`` to
  ``Tensor [N, K, D_llm]`` or ``list[Tensor [K_i, D_llm]]``.
* ``num_output_tokens(config, n_in)`` (classmethod): tokens emitted for an item whose encoder emitted ``n_in``.

The default, ``mlp1``, is InternVL's: pixel shuffle (v2, or v1 for InternVL 1.x checkpoints) by
``downsample_ratio`` on the square token grid, then LayerNorm -> Linear -> GELU -> Linear. It subclasses
``nn.Sequential`` so its parameters keep InternVL's key names ``mlp1.0.*``, ``mlp1.1.*``, ``mlp1.3.*``.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from internvl.registry import Registry

PROJECTORS = Registry("projector")


def register_projector(name: str, *, aliases=()):
    """Decorator: register a projector class (``cls(chat_config)``) under ``name``."""
    return PROJECTORS.register(name, aliases=aliases)


def list_projectors(pattern: str = "*") -> list[str]:
    return PROJECTORS.names(pattern)


def create_projector(config) -> nn.Module:
    return PROJECTORS.get(config.projector)(config)


def pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5, ps_version: str = "v2") -> torch.Tensor:
    """InternVL's pixel shuffle on a ``[N, W, H, C]`` grid: 2x2 neighbours -> one token with 4C channels.

    v2 keeps row-major token order; v1 (InternVL 1.x) leaves the grid transposed, as those checkpoints expect.
    """
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    if ps_version == "v1":
        warnings.warn("ps_version 'v1' (InternVL 1.x) keeps a transposed token grid; use 'v2' for new models",
                      stacklevel=2)
        return x
    return x.permute(0, 2, 1, 3).contiguous()


@register_projector("mlp1")
class PixelShuffleMLP(nn.Sequential):
    """InternVL's ``mlp1``: pixel shuffle, then LayerNorm(4C) -> Linear -> GELU -> Linear to the LLM width."""

    def __init__(self, config):
        self.downsample_ratio = float(config.downsample_ratio)
        self.ps_version = config.ps_version
        vit_hidden = config.vision_config.hidden_size
        llm_hidden = config.llm_config.hidden_size
        in_dim = int(vit_hidden * (1 / self.downsample_ratio) ** 2)
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, llm_hidden), nn.GELU(),
                         nn.Linear(llm_hidden, llm_hidden))

    @classmethod
    def num_output_tokens(cls, config, n_in: int) -> int:
        return int(n_in * float(config.downsample_ratio) ** 2)

    def shuffle(self, feats: torch.Tensor) -> torch.Tensor:
        n, t, c = feats.shape
        side = int(math.isqrt(t))
        if side * side != t or (side * self.downsample_ratio) % 1:
            raise ValueError(f"mlp1 needs a square token grid divisible by 1/downsample_ratio; got {t} tokens")
        grid = feats.reshape(n, side, side, c)
        shuffled = pixel_shuffle(grid, self.downsample_ratio, self.ps_version)
        return shuffled.reshape(n, -1, shuffled.shape[-1])

    def forward(self, features):
        if isinstance(features, (list, tuple)):
            return [self.forward(f.unsqueeze(0))[0] for f in features]
        return super().forward(self.shuffle(features))


@register_projector("mlp")
class TokenMLP(nn.Module):
    """Per-token LayerNorm -> Linear -> GELU -> Linear, token count unchanged (encoders that pool themselves)."""

    def __init__(self, config):
        super().__init__()
        d_in, d_out = config.vision_config.hidden_size, config.llm_config.hidden_size
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))

    @classmethod
    def num_output_tokens(cls, config, n_in: int) -> int:
        return n_in

    def forward(self, features):
        if isinstance(features, (list, tuple)):
            return [self.net(f) for f in features]
        return self.net(features)
