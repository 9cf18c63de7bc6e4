"""``neurovfm_tokens``: NeuroVFM-style tokenisation of a volume into raw-voxel tokens, background removed.

NeuroVFM (MLNeurosurg/neurovfm) resamples to 1 x 1 x 4 mm, cuts the volume into 4 x 16 x 16 blocks whose raw
voxels (1024 values per channel) are the tokens, drops every token touching background, and runs a ViT over
the ragged token sets (varlen attention). The ViT-B width 768 is 738 patch-embedding dims concatenated with a
30-dim 3D positional encoding. Here:

* the item is ``[C + 1, D, H, W]``: C image channels plus the foreground mask as the last channel (the config
  sets ``append_foreground_mask=True``, which tells the ``volume`` reader to append it), so ``num_tokens`` and
  ``forward`` decide background from the same data and agree exactly;
* a token is dropped when ANY of its voxels is background (``background_rule="any"``, NeuroVFM) or only when
  ALL are (``"all"``); sizes not divisible by the token are centre-cropped (``remainder="crop"``, NeuroVFM)
  or refused (``"error"``);
* kept tokens -> Linear(C*4*16*16 -> hidden - pe_dim) ++ sinusoidal 3D position (z, y, x token indices);
* all tokens of a batch are packed into one sequence (no padding); token-wise layers run on the packed
  tensor, attention runs per item segment (cu_seqlens), so a 30-token and a 3000-token volume cost what they
  cost. ``forward`` returns ``list[Tensor [T_i, hidden]]``;
* a study item ``[S, C + 1, D, H, W]`` (series padded to a common grid with background) is pooled by
  ``study_pooling="bag"`` attention-MIL to ``mil_heads`` tokens.

Training (``patches.neuro.train``) uses the same module as its JEPA context/target encoder and classification
backbone through ``grid_tokens`` (every grid token embedded, with coordinates and foreground flags) and
``transform`` (the transformer on chosen token subsets), so its weights load here with no conversion:
``pretrained`` (+ ``remove_prefix``) in the config loads such a checkpoint strictly at construction
(``patches.neuro.encoders.pretrained``).

Registered: ``neurovfm_tokens`` (ViT-B, 4x16x16 tokens, 1x1x4 mm) and ``neurovfm_tokens_tiny`` (2x8x8 tokens,
48-d, 2 layers) for tests and demos.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig

from internvl.model.vision.base import VisionEncoder, register_vision_model
from patches.neuro.encoders.common import config_kwargs_with_preset, sincos_embedding
from patches.neuro.encoders.pretrained import load_backbone
from patches.neuro.mil import GatedAttentionMIL


class NeuroVFMTokensConfig(PretrainedConfig):
    model_type = "neurovfm_tokens"

    def __init__(self, in_channels=1, token_size=(4, 16, 16), hidden_size=768, pe_dim=30, depth=12, num_heads=12,
                 mlp_ratio=4.0, background_rule="any", remainder="crop", volume_shape=None, study_pooling="none",
                 mil_heads=1, mil_hidden=128, preprocess=None, input_kinds=("volume",), pretrained=None,
                 remove_prefix="", **kwargs):
        self.in_channels = int(in_channels)
        self.token_size = tuple(int(t) for t in token_size)
        self.hidden_size, self.pe_dim, self.depth, self.num_heads = int(hidden_size), int(pe_dim), int(depth), int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        if self.pe_dim % 6 or self.pe_dim >= self.hidden_size:
            raise ValueError(f"pe_dim must be a multiple of 6 (sin/cos per axis) below hidden_size, got {pe_dim}")
        if background_rule not in ("any", "all"):
            raise ValueError(f"background_rule must be 'any' or 'all', got {background_rule!r}")
        if remainder not in ("crop", "error"):
            raise ValueError(f"remainder must be 'crop' or 'error', got {remainder!r}")
        if study_pooling not in ("none", "bag"):
            raise ValueError(f"neurovfm_tokens token sets are ragged: study_pooling must be 'none' or 'bag', "
                             f"got {study_pooling!r}")
        self.background_rule, self.remainder = background_rule, remainder
        self.volume_shape = None if volume_shape is None else tuple(int(v) for v in volume_shape)
        self.study_pooling, self.mil_heads, self.mil_hidden = study_pooling, int(mil_heads), int(mil_hidden)
        self.preprocess = dict(preprocess if preprocess is not None else {"target_spacing": [4.0, 1.0, 1.0]})
        self.input_kinds = tuple(input_kinds)
        self.pretrained, self.remove_prefix = pretrained, str(remove_prefix or "")
        self.append_foreground_mask = True
        kwargs.pop("append_foreground_mask", None)
        super().__init__(**kwargs)


def token_layout(config: NeuroVFMTokensConfig, item: torch.Tensor):
    """(tokens [n_grid, C*prod(token)], keep mask [n_grid], grid (d, h, w)) for one item ``[C + 1, D, H, W]``."""
    if item.ndim != 4 or item.shape[0] != config.in_channels + 1:
        raise ValueError(f"neurovfm_tokens expects [in_channels + 1 (mask), D, H, W] = [{config.in_channels + 1}, ...], "
                         f"got {tuple(item.shape)}")
    td, th, tw = config.token_size
    d, h, w = item.shape[-3:]
    if config.remainder == "error" and (d % td or h % th or w % tw):
        raise ValueError(f"neurovfm_tokens: volume {(d, h, w)} not divisible by token {config.token_size}")
    gd, gh, gw = d // td, h // th, w // tw
    if min(gd, gh, gw) < 1:
        raise ValueError(f"neurovfm_tokens: volume {(d, h, w)} smaller than one token {config.token_size}")
    o = [(d - gd * td) // 2, (h - gh * th) // 2, (w - gw * tw) // 2]
    x = item[:, o[0]:o[0] + gd * td, o[1]:o[1] + gh * th, o[2]:o[2] + gw * tw]
    c = x.shape[0]
    blocks = x.reshape(c, gd, td, gh, th, gw, tw).permute(1, 3, 5, 0, 2, 4, 6).reshape(gd * gh * gw, c, -1)
    fg = blocks[:, -1] > 0.5
    keep = fg.all(dim=1) if config.background_rule == "any" else fg.any(dim=1)
    return blocks[:, :-1].reshape(gd * gh * gw, -1), keep, (gd, gh, gw)


def token_coords(idx: torch.Tensor, grid) -> torch.Tensor:
    """(z, y, x) token indices ``[T, 3]`` of flat row-major grid indices ``idx``."""
    gh, gw = grid[1], grid[2]
    return torch.stack([idx // (gh * gw), (idx // gw) % gh, idx % gw], dim=1)


class VarlenAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cu_seqlens: list[int]) -> torch.Tensor:
        t, dim = x.shape
        qkv = self.qkv(x).reshape(t, 3, self.heads, dim // self.heads).permute(1, 2, 0, 3)  # [3, H, T, hd]
        out = torch.empty(self.heads, t, dim // self.heads, dtype=x.dtype, device=x.device)
        for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]):  # one segment per item: no cross-item attention
            out[:, a:b] = F.scaled_dot_product_attention(qkv[0, :, a:b], qkv[1, :, a:b], qkv[2, :, a:b])
        return self.proj(out.transpose(0, 1).reshape(t, dim))


class VarlenBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = VarlenAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cu_seqlens: list[int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu_seqlens)
        return x + self.mlp(self.norm2(x))


class NeuroVFMTokens(VisionEncoder):
    machine_local_keys = ("pretrained", "remove_prefix")  # paths on this machine: not saved in VLM checkpoints
    config_class = NeuroVFMTokensConfig

    def __init__(self, config: NeuroVFMTokensConfig):
        super().__init__(config)
        c = config
        self.token_embed = nn.Linear(c.in_channels * math.prod(c.token_size), c.hidden_size - c.pe_dim)
        self.blocks = nn.ModuleList(VarlenBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.hidden_size)
        self.mil = GatedAttentionMIL(c.hidden_size, c.mil_hidden, c.mil_heads, "bag") if c.study_pooling == "bag" else None
        self.gradient_checkpointing = False
        self.post_init()
        if c.pretrained:
            load_backbone(self, c.pretrained, c.remove_prefix)

    def layer_list(self) -> nn.ModuleList:
        return self.blocks

    @classmethod
    def config_kwargs_from_dict(cls, cfg: dict) -> dict:
        """Constructor kwargs for a saved/partial config dict: the registered preset, then the dict's values."""
        return config_kwargs_with_preset(cfg, PRESETS)

    @classmethod
    def num_tokens(cls, config: NeuroVFMTokensConfig, item: torch.Tensor) -> int:
        if item.ndim == 5:
            if config.study_pooling != "bag":
                raise ValueError(f"neurovfm_tokens: study item {tuple(item.shape)} needs study_pooling='bag'")
            for s in item:
                cls._count(config, s)  # every series must have foreground
            return config.mil_heads
        return cls._count(config, item)

    @classmethod
    def _count(cls, config, item) -> int:
        n = int(token_layout(config, item)[1].sum())
        if n == 0:
            raise ValueError(f"neurovfm_tokens: item {tuple(item.shape)} has no foreground token "
                             f"(background_rule={config.background_rule!r}); nothing to encode")
        return n

    @classmethod
    def dummy_input(cls, config: NeuroVFMTokensConfig) -> torch.Tensor:
        td, th, tw = config.token_size
        x = torch.zeros(config.in_channels + 1, 2 * td, 2 * th, 2 * tw)
        x[-1] = 1.0
        return x

    @property
    def lora_target_modules(self) -> list[str]:
        return ["qkv", "proj", "fc1", "fc2"]

    def embed(self, raw: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Raw-voxel tokens ``[T, C*prod(token)]`` at grid ``coords`` ``[T, 3]`` -> embeddings ``[T, hidden]``."""
        emb = self.token_embed(raw.to(self.token_embed.weight.dtype))
        return torch.cat([emb, sincos_embedding(coords, self.config.pe_dim).to(emb.dtype)], dim=1)

    def grid_tokens(self, item: torch.Tensor):
        """Every grid token of one item ``[C + 1, D, H, W]`` embedded: (``[n_grid, hidden]``, coords
        ``[n_grid, 3]``, foreground ``[n_grid]`` bool, grid). Training picks context/target subsets from these."""
        raw, keep, grid = token_layout(self.config, item)
        coords = token_coords(torch.arange(raw.shape[0], device=raw.device), grid)
        return self.embed(raw, coords), coords, keep, grid

    def _tokens(self, item: torch.Tensor) -> torch.Tensor:
        raw, keep, grid = token_layout(self.config, item)
        if not keep.any():
            raise ValueError(f"neurovfm_tokens: item {tuple(item.shape)} has no foreground token")
        idx = keep.nonzero(as_tuple=True)[0]
        return self.embed(raw[idx], token_coords(idx, grid))

    def encode(self, items: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.transform([self._tokens(it) for it in items])

    def transform(self, toks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The transformer on embedded token sets (packed, attention within each set) -> ``list[[T_i, hidden]]``."""
        lens = [t.shape[0] for t in toks]
        cu = [0] + list(torch.tensor(lens).cumsum(0).tolist())
        x = torch.cat(toks, dim=0)
        for blk in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(blk, x, cu, use_reentrant=False)
            else:
                x = blk(x, cu)
        return list(self.norm(x).split(lens))

    def forward(self, pixel_values):
        items = list(pixel_values)
        studies = [it.ndim == 5 for it in items]
        if not any(studies):
            return self.encode(items)
        if self.mil is None:
            raise ValueError("neurovfm_tokens: study items need study_pooling='bag'")
        flat, owner = [], []
        for i, it in enumerate(items):
            parts = list(it) if it.ndim == 5 else [it]
            flat += parts
            owner += [i] * len(parts)
        encoded = self.encode(flat)
        out = []
        for i, is_study in enumerate(studies):
            mine = [e for e, o in zip(encoded, owner) if o == i]
            out.append(self.mil(mine) if is_study else mine[0])
        return out


PRESETS = {
    "neurovfm_tokens": dict(token_size=(4, 16, 16), hidden_size=768, pe_dim=30, depth=12, num_heads=12),
    "neurovfm_tokens_tiny": dict(token_size=(2, 8, 8), hidden_size=48, pe_dim=12, depth=2, num_heads=4, mlp_ratio=2.0),
}

@register_vision_model("neurovfm_tokens", encoder=NeuroVFMTokens, tiny=dict(PRESETS["neurovfm_tokens_tiny"]))
def neurovfm_tokens(**overrides) -> NeuroVFMTokens:
    return NeuroVFMTokens(NeuroVFMTokensConfig(**{**PRESETS["neurovfm_tokens"], **overrides}))


@register_vision_model("neurovfm_tokens_tiny", encoder=NeuroVFMTokens)
def neurovfm_tokens_tiny(**overrides) -> NeuroVFMTokens:
    return NeuroVFMTokens(NeuroVFMTokensConfig(**{**PRESETS["neurovfm_tokens_tiny"], **overrides}))
