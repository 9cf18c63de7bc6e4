"""``brainfound_unet``: Brainfound's diffusion UNet used as an InternVL vision encoder.

The backbone is a diffusers ``UNet2DConditionModel`` with Brainfound's configuration (3-channel 256 px slices,
block channels (64, 64, 128, 256, 512), Down / CrossAttnDown x3 / Down, cross-attention on a modality embedding
projected by ``text_proj`` from 768-d). As an encoder it runs at t = 0 through ``conv_in`` and the down blocks only
(the stock UNet has no "return after the down path" switch, so we call its parts), giving ``[N, 512, 16, 16]``
per 256 px slice. The feature head turns that into tokens: conv3x3 512->768, ReLU, adaptive average pool to
9x9, GroupNorm(32), conv3x3 768->4096 (no bias) -> **81 tokens x 4096 per slice**. Tokens per slice come from
``token_grid`` (``num_tokens``), never from an image-size formula, so pair it with the ``mlp`` projector
(LayerNorm -> Linear -> GELU -> Linear on each token, which is Brainfound's stage-3 ``mlp1`` without pixel shuffle).

Items (see ``internvl.model.vision.base``): a slice ``[3, H, W]`` in [-1, 1] (what the ``meditk`` reader emits,
one item per slice, so each slice is its own block of ``<IMG_CONTEXT>`` tokens) or a volume ``[C, D, H, W]`` in
[-1, 1] (C = 1 or 3; ``num_slices`` slices are taken by ``slice_select`` and padded with black, giving
num_slices x 81 tokens; the neuro ``volume`` reader produces such items for CT from the config's ``preprocess``
property). Slices of another size are resized to ``image_size``.

Options: ``noise_at_t0`` (default False, deterministic features) adds the DDPM forward noise of step 0
(sqrt(a0) x + sqrt(1 - a0) eps, a0 = 1 - beta_start, noise std 0.01 for Brainfound's schedule) as Brainfound's
stage 3 does. ``modality`` picks the row of the ``modality_embedding`` buffer used as the cross-attention
condition (stage 1 fills it with the text-encoder embedding of each modality prompt). ``down_path_only`` (default
True) drops the mid/up path, which the encoder never runs; stage 1 builds the full UNet with it set to False.
``lora_targets`` feeds ``lora_target_modules`` (``--use_backbone_lora``); Brainfound used to_q / to_v / proj.
Presets: ``full`` (the defaults above: 78.1 M UNet parameters, 19.5 M of them on the encoder path, plus the
31.9 M head) and ``tiny`` (32 px, 4 slices, 0.13 M parameters with the head, 3x3 = 9 tokens x 64 per slice;
for CPU tests and demos).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import PretrainedConfig

from internvl.model.vision.base import VisionEncoder, register_vision_model
from patches.brainfound.preprocess import select_slices

logger = logging.getLogger(__name__)

_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")

PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "tiny": dict(image_size=32, block_out_channels=(16, 16, 32, 32), layers_per_block=1,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8, encoder_hid_dim=32,
                 head_channels=32, head_groups=8, token_grid=3, hidden_size=64, num_slices=4),
}


class BrainfoundUNetConfig(PretrainedConfig):
    model_type = "brainfound_unet"

    def __init__(self, image_size: int = 256, in_channels: int = 3,
                 block_out_channels=(64, 64, 128, 256, 512), layers_per_block: int = 2,
                 down_block_types=_DOWN, up_block_types=_UP, norm_num_groups: int = 32,
                 cross_attention_dim: int = 1280, attention_head_dim: int = 8, encoder_hid_dim: int = 768,
                 head_channels: int = 768, head_groups: int = 32, token_grid: int = 9, hidden_size: int = 4096,
                 down_path_only: bool = True, noise_at_t0: bool = False,
                 num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, modalities=("CT", "T1", "T2", "pub_mri"),
                 modality_prompts=("CT.", "T1 mri.", "T2 mri.", "pub mri."), modality: str = "CT",
                 num_slices: int = 32, slice_select: str = "uniform", ct_window=(160, 40),
                 lora_targets=("to_q", "to_v", "proj"), input_kinds=("meditk", "volume"), **kwargs):
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.block_out_channels = list(block_out_channels)
        self.layers_per_block = int(layers_per_block)
        self.down_block_types = list(down_block_types)
        self.up_block_types = list(up_block_types)
        self.norm_num_groups = int(norm_num_groups)
        self.cross_attention_dim = int(cross_attention_dim)
        self.attention_head_dim = int(attention_head_dim)
        self.encoder_hid_dim = int(encoder_hid_dim)
        self.head_channels = int(head_channels)
        self.head_groups = int(head_groups)
        self.token_grid = int(token_grid)
        self.hidden_size = int(hidden_size)
        self.down_path_only = bool(down_path_only)
        self.noise_at_t0 = bool(noise_at_t0)
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.modalities = list(modalities)
        self.modality_prompts = list(modality_prompts)
        self.modality = modality
        self.num_slices = int(num_slices)
        self.slice_select = slice_select
        self.ct_window = list(ct_window)
        self.lora_targets = list(lora_targets)
        self.input_kinds = tuple(input_kinds)
        if len(self.modalities) != len(self.modality_prompts):
            raise ValueError("modalities and modality_prompts must have the same length")
        if self.modality not in self.modalities:
            raise ValueError(f"modality {self.modality!r} is not one of {self.modalities}")
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ValueError("down_block_types and block_out_channels must have the same length")
        super().__init__(**kwargs)

    def unet_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the diffusers ``UNet2DConditionModel``."""
        return dict(sample_size=self.image_size, in_channels=self.in_channels, out_channels=self.in_channels,
                    layers_per_block=self.layers_per_block, block_out_channels=tuple(self.block_out_channels),
                    down_block_types=tuple(self.down_block_types), up_block_types=tuple(self.up_block_types),
                    norm_num_groups=self.norm_num_groups, cross_attention_dim=self.cross_attention_dim,
                    attention_head_dim=self.attention_head_dim, encoder_hid_dim_type="text_proj",
                    encoder_hid_dim=self.encoder_hid_dim)

    @property
    def preprocess(self) -> dict[str, Any]:
        """What the neuro ``volume`` reader needs to feed this encoder CT volumes ``[3, D, H, W]`` in [-1, 1]:
        the ``ct_window`` replicated to three channels, native grid (this encoder resizes slices itself)."""
        width, centre = self.ct_window
        lo, hi = centre - width / 2, centre + width / 2
        return {"ct_windows": [[lo, hi]] * 3, "window_mode": "stack", "zscore": [[0.5, 0.5]] * 3,
                "target_spacing": None, "volume_shape": None}

    @property
    def tokens_per_slice(self) -> int:
        return self.token_grid * self.token_grid

    @property
    def deep_channels(self) -> int:
        return self.block_out_channels[-1]


class FeatureHead(nn.Module):
    """Deep UNet map ``[N, C, h, w]`` -> ``[N, grid*grid, hidden]`` (Brainfound stage-3 head)."""

    def __init__(self, in_ch: int, mid_ch: int, groups: int, grid: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.norm = nn.GroupNorm(groups, mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, hidden, 3, padding=1, bias=False)
        if not self.conv2.weight.is_meta:
            nn.init.kaiming_normal_(self.conv2.weight, mode="fan_out", nonlinearity="relu")

    def pooled_embedding(self, deep: torch.Tensor) -> torch.Tensor:
        """Global slice embedding ``[N, mid_ch]`` (conv1 -> ReLU -> global average; stage 2 uses this)."""
        return self.act(self.conv1(deep)).mean(dim=(-2, -1))

    def forward(self, deep: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.norm(self.pool(self.act(self.conv1(deep)))))
        return x.flatten(2).transpose(1, 2)


class BrainfoundUNetEncoder(VisionEncoder):
    config_class = BrainfoundUNetConfig
    base_model_prefix = "brainfound"
    _no_split_modules = ["FeatureHead"]

    def __init__(self, config: BrainfoundUNetConfig):
        super().__init__(config)
        self.unet = UNet2DConditionModel(**config.unet_kwargs())
        if config.down_path_only:
            self.unet.mid_block = None
            self.unet.up_blocks = nn.ModuleList()
            self.unet.conv_norm_out = self.unet.conv_act = self.unet.conv_out = None
        emb = torch.empty(len(config.modalities), config.encoder_hid_dim)
        if not emb.is_meta:  # a fixed, distinct condition per modality until stage 1 writes prompt embeddings
            emb = torch.randn(emb.shape, generator=torch.Generator().manual_seed(0))
        self.register_buffer("modality_embedding", emb, persistent=True)
        self.head = FeatureHead(config.deep_channels, config.head_channels, config.head_groups, config.token_grid,
                                config.hidden_size)
        self.post_init()

    # ----------------------------------------------------------------- contract
    @classmethod
    def num_tokens(cls, config: BrainfoundUNetConfig, item: torch.Tensor) -> int:
        per = config.token_grid * config.token_grid
        if item.dim() == 3:
            return per
        if item.dim() == 4:
            return per * (config.num_slices if config.num_slices > 0 else int(item.shape[1]))
        raise ValueError(f"brainfound_unet items are slices [3,H,W] or volumes [C,D,H,W]; got {tuple(item.shape)}")

    @classmethod
    def dummy_input(cls, config: BrainfoundUNetConfig) -> torch.Tensor:
        return torch.zeros(config.in_channels, config.image_size, config.image_size)

    @property
    def lora_target_modules(self) -> list[str]:
        return list(self.config.lora_targets)

    @property
    def lora_modules_to_save(self) -> list[str]:
        """Modules that should train in full under backbone LoRA (peft ``modules_to_save``): the feature head,
        which stage 3 adds (only its first conv was trained in stage 2)."""
        return ["head"]

    # ----------------------------------------------------------------- features
    def modality_index(self, modality: str | None = None) -> int:
        name = modality or self.config.modality
        try:
            return self.config.modalities.index(name)
        except ValueError:
            raise ValueError(f"unknown modality {name!r}; this encoder knows {self.config.modalities}") from None

    def condition(self, n: int, modality: str | torch.Tensor | None = None, dtype=None) -> torch.Tensor:
        """Cross-attention condition ``[n, 1, encoder_hid_dim]``: a modality name, or per-sample indices."""
        if isinstance(modality, torch.Tensor):
            rows = self.modality_embedding[modality.to(self.modality_embedding.device).long()]
        else:
            rows = self.modality_embedding[self.modality_index(modality)].expand(n, -1)
        return rows.unsqueeze(1).to(dtype or self.modality_embedding.dtype)

    def alpha_bar_0(self) -> float:
        """DDPM cumulative alpha at t = 0 for the configured schedule (what diffusers' scheduler uses)."""
        from diffusers import DDPMScheduler

        sched = DDPMScheduler(num_train_timesteps=self.config.num_train_timesteps,
                              beta_schedule=self.config.beta_schedule, beta_start=self.config.beta_start,
                              beta_end=self.config.beta_end)
        return float(sched.alphas_cumprod[0])

    def down_features(self, x: torch.Tensor, modality: str | torch.Tensor | None = None,
                      noise: bool | None = None) -> torch.Tensor:
        """UNet down path at t = 0: ``[N, 3, H, W]`` in [-1, 1] -> ``[N, C_deep, H/2^k, W/2^k]``."""
        unet = self.unet
        dtype = unet.conv_in.weight.dtype
        x = x.to(dtype)
        if self.config.noise_at_t0 if noise is None else noise:
            a0 = self.alpha_bar_0()
            x = (a0 ** 0.5) * x + ((1.0 - a0) ** 0.5) * torch.randn_like(x)
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=t).to(dtype))
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        cond = unet.process_encoder_hidden_states(self.condition(x.shape[0], modality, dtype).to(x.device), {})
        h = unet.conv_in(x)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=cond)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        return h

    def slice_tokens(self, slices: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """``[N, 3, H, W]`` -> ``[N, grid*grid, hidden_size]``."""
        size = self.config.image_size
        if slices.shape[-2:] != (size, size):
            slices = F.interpolate(slices.float(), size=(size, size), mode="bilinear", align_corners=False)
        return self.head(self.down_features(slices, modality))

    def slice_embedding(self, slices: torch.Tensor, modality: str | torch.Tensor | None = None) -> torch.Tensor:
        """``[N, 3, H, W]`` -> global slice embeddings ``[N, head_channels]`` (stage 2)."""
        return self.head.pooled_embedding(self.down_features(slices, modality))

    def _as_slices(self, item: torch.Tensor) -> torch.Tensor:
        if item.dim() == 3:
            item = item.unsqueeze(0)
        elif item.dim() == 4:  # volume [C, D, H, W] -> num_slices x [C, H, W] (pad slices are -1: black)
            idx, before, after = select_slices(item.shape[1], self.config.num_slices, self.config.slice_select)
            item = item[:, idx].transpose(0, 1)
            if before or after:
                pad = item.new_full((1, *item.shape[1:]), -1.0)
                item = torch.cat([pad.expand(before, -1, -1, -1), item, pad.expand(after, -1, -1, -1)])
        else:
            raise ValueError(f"brainfound_unet: item of shape {tuple(item.shape)} is neither [3,H,W] nor [C,D,H,W]")
        if item.shape[1] == 1:
            item = item.expand(-1, self.config.in_channels, -1, -1)
        if item.shape[1] != self.config.in_channels:
            raise ValueError(f"brainfound_unet: items need 1 or {self.config.in_channels} channels, "
                             f"got {item.shape[1]}")
        size = self.config.image_size
        if item.shape[-2:] != (size, size):
            item = F.interpolate(item.float(), size=(size, size), mode="bilinear", align_corners=False)
        return item

    def forward(self, pixel_values):
        items = list(pixel_values) if isinstance(pixel_values, (list, tuple)) else None
        if items is None and pixel_values.dim() == 4:  # [N, 3, H, W] slices
            return self.slice_tokens(pixel_values)
        if items is None:
            items = list(pixel_values)
        stacks = [self._as_slices(it) for it in items]
        tokens = self.slice_tokens(torch.cat(stacks))
        out, start = [], 0
        for s in stacks:
            out.append(tokens[start:start + s.shape[0]].reshape(-1, tokens.shape[-1]))
            start += s.shape[0]
        if isinstance(pixel_values, torch.Tensor):
            return torch.stack(out)
        return out


def _config_kwargs(preset: str | None, src, overrides: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown brainfound_unet preset {preset!r}; known: {sorted(PRESETS)}")
        base.update(PRESETS[preset])
    if src is not None and src.kind in ("encoder", "diffusers"):
        base.update(src.config_dict)
    base.update(overrides)
    return base


def config_kwargs_from_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    """Config kwargs from a vision-config dict (``InternVLChatConfig`` builds encoders' configs through this):
    expands ``preset``. ``pretrained_path`` is refused here: a config cannot carry weights, so loading them is
    the factory's job (``create_vision_model("brainfound_unet", pretrained_path=...)``, i.e. the finetune's
    ``--vision_model brainfound_unet --vision_overrides '{"pretrained_path": ...}'``)."""
    cfg = {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version", "architectures")}
    if cfg.get("pretrained_path"):
        raise ValueError("brainfound_unet: 'pretrained_path' is applied by the encoder factory "
                         "(create_vision_model / --vision_model + --vision_overrides), not by a config; "
                         "building from a config alone would silently skip the weights")
    cfg.pop("pretrained_path", None)
    return _config_kwargs(cfg.pop("preset", None), None, cfg)


BrainfoundUNetEncoder.config_kwargs_from_dict = staticmethod(config_kwargs_from_dict)


@register_vision_model("brainfound_unet", encoder=BrainfoundUNetEncoder, tiny={"preset": "tiny"})
def brainfound_unet(pretrained_path: str | None = None, preset: str | None = None, **overrides: Any):
    """Build the encoder: ``preset`` ("full" default, "tiny") + ``overrides``; ``pretrained_path`` loads weights.

    ``pretrained_path`` may be a saved encoder (``save_pretrained`` dir: its config is the base, ``overrides`` win),
    a stage-1 diffusers UNet dir, a stage-2/1 output dir holding ``vision_encoder/`` or ``unet/``, or a state-dict
    file (see ``patches.brainfound.weights``). It is not stored in the config: a saved InternVL checkpoint carries
    the weights and rebuilds without it.
    """
    from patches.brainfound import weights

    src = weights.resolve_source(pretrained_path) if pretrained_path else None
    model = BrainfoundUNetEncoder(BrainfoundUNetConfig(**_config_kwargs(preset, src, overrides)))
    if src is not None:
        weights.load_into(model, src)
    return model

