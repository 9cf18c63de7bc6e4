"""``brain3d_vit``: a 3D ViT with a Conv3d patch embedding (BrainVLM style), and its 4D rsfMRI variant.

BrainVLM (Transconnectome/BrainVLM, BLIP_MRI) replaces BLIP-2's 2D patch embedding with a 3D one: a T1 volume
of e.g. 128^3 cut into 16^3 patches gives 8^3 = 512 tokens; resting-state fMRI ``96^3 x 20`` frames cut into
``16^3 x 5`` spatio-temporal patches gives ``6^3 x 4 = 864`` tokens (a Linear over flattened patches, as
BrainVLM does for fMRI). Transformer blocks are timm's ``Block`` (fused qkv + SDPA).

Items: ``[C, D, H, W]`` (3D) or ``[C, T, D, H, W]`` (4D, when ``num_frames`` is set). A study item with one more
leading axis ``[S, ...]`` is encoded series by series and pooled by gated attention-MIL (``study_pooling``
"grid" keeps the token grid, "bag" gives ``mil_heads`` tokens; see ``patches.neuro.mil``).

Sizes that the patch does not divide are handled as ``remainder`` says, never silently:
``"error"`` (default) refuses with the numbers, ``"crop"`` centre-crops to the floor multiple (BrainVLM's
128/18 -> 7 patches, 2 voxels dropped), ``"pad"`` zero-pads to the ceiling multiple. Position embeddings are
learned for the configured grid (initialised with 3D sin-cos codes, ``pos_embed_init``) and trilinearly
interpolated when an item's grid differs.

JEPA pretraining / classification (``patches.neuro.train``) use the 3D variant through ``grid_tokens`` (an item
``[C + 1, D, H, W]`` whose last channel is the foreground mask -> embedded grid tokens, coordinates, foreground
flags) and ``transform`` (the blocks on token subsets); ``pretrained`` + ``remove_prefix`` load such a checkpoint
strictly at construction (``patches.neuro.encoders.pretrained``).

Registered: ``brain3d_vit`` (ViT-B, 128^3 / 16^3), ``brain3d_vit_tiny`` (32^3 / 8^3, 64-d, 2 layers),
``brain3d_vit_4d`` (96^3 x 20 / 16^3 x 5), ``brain3d_vit_4d_tiny`` (16^3 x 4 / 8^3 x 2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig

from internvl.model.vision.base import VisionEncoder, register_vision_model
from patches.neuro.encoders.common import config_kwargs_with_preset, grid_coords, sincos_embedding
from patches.neuro.encoders.pretrained import load_backbone
from patches.neuro.mil import GatedAttentionMIL


def _triple(v, cast=int):
    return tuple(cast(x) for x in (v if isinstance(v, (list, tuple)) else (v, v, v)))


class Brain3DViTConfig(PretrainedConfig):
    model_type = "brain3d_vit"

    def __init__(self, in_channels=1, volume_shape=(128, 128, 128), patch_size=(16, 16, 16), num_frames=None,
                 frame_patch=None, hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True,
                 drop_path_rate=0.0, remainder="error", use_cls_token=False, study_pooling="none", mil_heads=1,
                 mil_hidden=128, pos_embed_init="sincos", input_kinds=None, preprocess=None, pretrained=None,
                 remove_prefix="", **kwargs):
        self.in_channels = int(in_channels)
        self.volume_shape = _triple(volume_shape)
        self.patch_size = _triple(patch_size)
        self.num_frames = None if num_frames is None else int(num_frames)
        self.frame_patch = None if frame_patch is None else int(frame_patch)
        if (self.num_frames is None) != (self.frame_patch is None):
            raise ValueError("set both num_frames and frame_patch (4D) or neither (3D)")
        self.hidden_size, self.depth, self.num_heads = int(hidden_size), int(depth), int(num_heads)
        self.mlp_ratio, self.qkv_bias, self.drop_path_rate = float(mlp_ratio), bool(qkv_bias), float(drop_path_rate)
        if remainder not in ("error", "crop", "pad"):
            raise ValueError(f"remainder must be error|crop|pad, got {remainder!r}")
        self.remainder = remainder
        self.use_cls_token = bool(use_cls_token)
        if pos_embed_init not in ("sincos", "trunc_normal"):
            raise ValueError(f"pos_embed_init must be 'sincos' or 'trunc_normal', got {pos_embed_init!r}")
        self.pos_embed_init = pos_embed_init
        if study_pooling not in ("none", "grid", "bag"):
            raise ValueError(f"study_pooling must be none|grid|bag, got {study_pooling!r}")
        self.study_pooling, self.mil_heads, self.mil_hidden = study_pooling, int(mil_heads), int(mil_hidden)
        self.input_kinds = tuple(input_kinds or (("fmri",) if self.num_frames else ("volume",)))
        self.preprocess = dict(preprocess or {})
        self.pretrained, self.remove_prefix = pretrained, str(remove_prefix or "")
        super().__init__(**kwargs)
        self.token_grid(self.num_frames, self.volume_shape)  # validates the configured sizes now

    @property
    def is_4d(self) -> bool:
        return self.num_frames is not None

    def token_grid(self, frames: int | None, spatial) -> tuple[int, ...]:
        """Patch grid ``(t,) d, h, w`` for an input of ``frames`` x ``spatial`` under the remainder policy."""
        sizes = ([frames] if self.is_4d else []) + list(spatial)
        patches = ([self.frame_patch] if self.is_4d else []) + list(self.patch_size)
        grid = []
        for n, p in zip(sizes, patches):
            if n % p and self.remainder == "error":
                raise ValueError(f"brain3d_vit: input size {tuple(sizes)} is not divisible by patch {tuple(patches)} "
                                 f"(axis of {n} by {p}); set remainder='crop' (drop {n % p} voxels) or 'pad' "
                                 f"(pad to {math.ceil(n / p) * p}), or change volume_shape/patch_size")
            grid.append(n // p if self.remainder != "pad" else math.ceil(n / p))
        if min(grid) < 1:
            raise ValueError(f"brain3d_vit: input {tuple(sizes)} is smaller than one patch {tuple(patches)}")
        return tuple(grid)

    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid of the configured input (what ``spatial_pool_mlp`` pools)."""
        return self.token_grid(self.num_frames, self.volume_shape)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.use_cls_token)


class Brain3DViT(VisionEncoder):
    machine_local_keys = ("pretrained", "remove_prefix")  # paths on this machine: not saved in VLM checkpoints
    config_class = Brain3DViTConfig

    def __init__(self, config: Brain3DViTConfig):
        super().__init__(config)
        c = config
        if c.is_4d:
            in_dim = c.in_channels * c.frame_patch * math.prod(c.patch_size)
            self.patch_embed = nn.Linear(in_dim, c.hidden_size)
            self.time_embed = nn.Parameter(torch.zeros(1, c.grid[0], 1, c.hidden_size))
        else:
            self.patch_embed = nn.Conv3d(c.in_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        spatial = c.grid[-3:]
        self.pos_embed = nn.Parameter(torch.zeros(1, c.hidden_size, *spatial))
        self._init_positions(spatial)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size)) if c.use_cls_token else None
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        dpr = [x.item() for x in torch.linspace(0, c.drop_path_rate, c.depth)]
        self.blocks = nn.ModuleList(Block(c.hidden_size, c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                                          drop_path=dpr[i]) for i in range(c.depth))
        self.norm = nn.LayerNorm(c.hidden_size)
        self.mil = (GatedAttentionMIL(c.hidden_size, c.mil_hidden, c.mil_heads, c.study_pooling)
                    if c.study_pooling != "none" else None)
        self.gradient_checkpointing = False
        self.post_init()
        if c.pretrained:
            load_backbone(self, c.pretrained, c.remove_prefix)

    def _init_positions(self, spatial) -> None:
        """Learnable position embeddings, initialised with 3D (and 1D time) sin-cos codes by default (MAE-style):
        token features then carry their grid place from the first step, which a from-scratch encoder under a
        1D-RoPE LLM otherwise learns slowly (measured on the neuro demo: lesion side). ``trunc_normal``: ViT's."""
        c = self.config
        with torch.no_grad():
            if c.pos_embed_init == "sincos":
                pe = sincos_embedding(grid_coords(*spatial), c.hidden_size)
                self.pos_embed.copy_(pe.T.reshape(1, c.hidden_size, *spatial))
                if c.is_4d:
                    te = sincos_embedding(grid_coords(c.grid[0]), c.hidden_size)
                    self.time_embed.copy_(te.reshape(1, c.grid[0], 1, c.hidden_size))
            else:
                trunc_normal_(self.pos_embed, std=0.02)
                if c.is_4d:
                    trunc_normal_(self.time_embed, std=0.02)

    # ----------------------------------------------------------------------------------------- contract
    def layer_list(self) -> nn.ModuleList:
        return self.blocks

    @classmethod
    def _item_ndim(cls, config) -> int:
        return 5 if config.is_4d else 4

    @classmethod
    def config_kwargs_from_dict(cls, cfg: dict) -> dict:
        """Constructor kwargs for a saved/partial config dict: the registered preset, then the dict's values."""
        return config_kwargs_with_preset(cfg, PRESETS)

    @classmethod
    def num_tokens(cls, config: Brain3DViTConfig, item: torch.Tensor) -> int:
        nd = cls._item_ndim(config)
        if item.ndim == nd + 1:
            if config.study_pooling == "none":
                raise ValueError(f"brain3d_vit: study item {tuple(item.shape)} but study_pooling='none'")
            if config.study_pooling == "bag":
                return config.mil_heads
            item = item[0]
        if item.ndim != nd:
            raise ValueError(f"brain3d_vit expects items of {nd} dims ({'[C, T, D, H, W]' if nd == 5 else '[C, D, H, W]'})"
                             f", got shape {tuple(item.shape)}")
        frames = item.shape[1] if config.is_4d else None
        return math.prod(config.token_grid(frames, item.shape[-3:])) + config.num_prefix_tokens

    @classmethod
    def dummy_input(cls, config: Brain3DViTConfig) -> torch.Tensor:
        frames = [config.num_frames] if config.is_4d else []
        return torch.zeros(config.in_channels, *frames, *config.volume_shape)

    @property
    def lora_target_modules(self) -> list[str]:
        return ["qkv", "proj", "fc1", "fc2"]

    # ----------------------------------------------------------------------------------------- forward
    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """Crop/pad the (t,) d, h, w axes to whole patches per the remainder policy."""
        c = self.config
        nd = 4 if c.is_4d else 3
        patches = ([c.frame_patch] if c.is_4d else []) + list(c.patch_size)
        grid = c.token_grid(x.shape[-4] if c.is_4d else None, x.shape[-3:])
        for i, (g, p) in enumerate(zip(grid, patches)):
            axis, want = x.ndim - nd + i, g * p
            have = x.shape[axis]
            if have > want:
                x = x.narrow(axis, (have - want) // 2, want)
            elif have < want:
                pad = [0, 0] * (x.ndim - axis - 1) + [(want - have) // 2, want - have - (want - have) // 2]
                x = F.pad(x, pad)
        return x

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = self._fit(x)
        if c.is_4d:  # [N, C, T, D, H, W] -> spatio-temporal patches -> Linear
            n, ch, t, d, h, w = x.shape
            pt, (pd, ph, pw) = c.frame_patch, c.patch_size
            x = x.reshape(n, ch, t // pt, pt, d // pd, pd, h // ph, ph, w // pw, pw)
            x = x.permute(0, 2, 4, 6, 8, 1, 3, 5, 7, 9).reshape(n, t // pt, (d // pd) * (h // ph) * (w // pw), -1)
            tok = self.patch_embed(x)  # [N, t, dhw, E]
            grid = (d // pd, h // ph, w // pw)
            tok = tok + self._pos(grid).unsqueeze(1) + self._time(t // pt)
            tok = tok.reshape(n, -1, c.hidden_size)
        else:
            feat = self.patch_embed(x)  # [N, E, d, h, w]
            tok = feat.flatten(2).transpose(1, 2) + self._pos(tuple(feat.shape[-3:]))
        if self.cls_token is not None:
            tok = torch.cat([self.cls_token.expand(tok.shape[0], -1, -1), tok], dim=1)
        return tok

    def _pos(self, grid) -> torch.Tensor:
        pe = self.pos_embed
        if tuple(pe.shape[-3:]) != tuple(grid):
            pe = F.interpolate(pe, size=tuple(grid), mode="trilinear", align_corners=False)
        return pe.flatten(2).transpose(1, 2)  # [1, dhw, E]

    def _time(self, t: int) -> torch.Tensor:
        te = self.time_embed
        if te.shape[1] != t:
            te = F.interpolate(te.permute(0, 3, 2, 1), size=(1, t), mode="bilinear",
                               align_corners=False).permute(0, 3, 2, 1)
        return te

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, *item]`` -> tokens ``[N, L, E]`` (no study pooling)."""
        tok = self._embed(x.to(self.patch_embed.weight.dtype))
        for blk in self.blocks:
            if self.gradient_checkpointing and self.training:
                tok = checkpoint(blk, tok, use_reentrant=False)
            else:
                tok = blk(tok)
        return self.norm(tok)

    # ----------------------------------------------------------------------------------------- training
    def grid_tokens(self, item: torch.Tensor):
        """One 3D item ``[C + 1, D, H, W]`` (last channel: foreground mask) -> (embedded grid tokens ``[T, E]``,
        coords ``[T, 3]``, foreground ``[T]`` (any foreground voxel in the patch), grid)."""
        c = self.config
        if c.is_4d or c.use_cls_token:
            raise ValueError("brain3d_vit: JEPA/classification training supports the 3D variant without a CLS token")
        x = self._fit(item[None])
        tok = self._embed(x[:, :-1].to(self.patch_embed.weight.dtype))[0]
        grid = c.token_grid(None, x.shape[-3:])
        pd, ph, pw = c.patch_size
        fg = F.max_pool3d(x[:, -1:].float(), kernel_size=(pd, ph, pw)).flatten() > 0.5
        return tok, grid_coords(*grid).to(tok.device), fg, grid

    def transform(self, toks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The blocks on embedded token subsets, item by item -> ``list[[T_i, E]]``."""
        out = []
        for t in toks:
            x = t[None]
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False) if self.gradient_checkpointing and self.training else blk(x)
            out.append(self.norm(x)[0])
        return out

    def forward(self, pixel_values):
        nd = self._item_ndim(self.config)
        if isinstance(pixel_values, (list, tuple)):
            if len({tuple(p.shape) for p in pixel_values}) == 1:
                return self.forward(torch.stack(list(pixel_values)))
            return [self.forward(p.unsqueeze(0))[0] for p in pixel_values]
        x = pixel_values
        if x.ndim == nd + 1:
            return self.encode(x)
        if x.ndim != nd + 2:
            raise ValueError(f"brain3d_vit: batch of shape {tuple(x.shape)}; expected [N, *item] with item dims {nd}")
        if self.mil is None:
            raise ValueError("brain3d_vit: study items [N, S, ...] need study_pooling='grid' or 'bag'")
        n, s = x.shape[:2]
        tok = self.encode(x.flatten(0, 1))
        tok = tok.reshape(n, s, *tok.shape[1:])
        if self.config.study_pooling == "grid":
            return self.mil(tok)
        return torch.stack([self.mil(list(t)) for t in tok])


_VIT_B = dict(hidden_size=768, depth=12, num_heads=12)
_TINY = dict(hidden_size=64, depth=2, num_heads=4, mlp_ratio=2.0)
PRESETS = {
    "brain3d_vit": dict(volume_shape=(128, 128, 128), patch_size=(16, 16, 16), **_VIT_B),
    "brain3d_vit_tiny": dict(volume_shape=(32, 32, 32), patch_size=(8, 8, 8), **_TINY),
    "brain3d_vit_4d": dict(volume_shape=(96, 96, 96), patch_size=(16, 16, 16), num_frames=20, frame_patch=5, **_VIT_B),
    "brain3d_vit_4d_tiny": dict(volume_shape=(16, 16, 16), patch_size=(8, 8, 8), num_frames=4, frame_patch=2, **_TINY),
}

_TINY_3D, _TINY_4D = dict(PRESETS["brain3d_vit_tiny"]), dict(PRESETS["brain3d_vit_4d_tiny"])


@register_vision_model("brain3d_vit", encoder=Brain3DViT, tiny=_TINY_3D)
def brain3d_vit(**overrides) -> Brain3DViT:
    return Brain3DViT(Brain3DViTConfig(**{**PRESETS["brain3d_vit"], **overrides}))


@register_vision_model("brain3d_vit_tiny", encoder=Brain3DViT)
def brain3d_vit_tiny(**overrides) -> Brain3DViT:
    return Brain3DViT(Brain3DViTConfig(**{**PRESETS["brain3d_vit_tiny"], **overrides}))


@register_vision_model("brain3d_vit_4d", encoder=Brain3DViT, tiny=_TINY_4D)
def brain3d_vit_4d(**overrides) -> Brain3DViT:
    return Brain3DViT(Brain3DViTConfig(**{**PRESETS["brain3d_vit_4d"], **overrides}))


@register_vision_model("brain3d_vit_4d_tiny", encoder=Brain3DViT)
def brain3d_vit_4d_tiny(**overrides) -> Brain3DViT:
    return Brain3DViT(Brain3DViTConfig(**{**PRESETS["brain3d_vit_4d_tiny"], **overrides}))
