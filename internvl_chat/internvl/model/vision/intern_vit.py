"""``intern_vit``: InternViT as the default encoder, computed by transformers' own ``InternVLVisionModel``.

The config keeps InternVL's original field names (``InternVisionConfig``: ``qkv_bias``, ``qk_normalization``,
``norm_type``, ``drop_path_rate`` ...; model_type ``intern_vit_6b``) so a saved checkpoint is the same file an
OpenGVLab checkpoint is. The weights live in memory under transformers' names and are mapped to InternVL's
original names on disk (``attn.qkv`` fused, ``ls1``/``ls2``, ``norm1``/``norm2`` ...), following the mapping in
the research note (transformers' converter table): the two implementations compute the same function.

transformers' layer has no stochastic depth; with ``drop_path_rate > 0`` each layer's residual branches are
dropped per sample (linearly increasing rate, as InternVL does) in training mode.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from transformers import InternVLVisionConfig, InternVLVisionModel, PretrainedConfig

from internvl.model.vision.base import META_KEYS, VisionEncoder, register_vision_model


class InternViTConfig(PretrainedConfig):
    """InternVL's ``InternVisionConfig`` fields (defaults: InternViT-300M-448px)."""

    model_type = "intern_vit_6b"

    def __init__(self, num_channels=3, patch_size=14, image_size=448, qkv_bias=True, hidden_size=1024,
                 num_attention_heads=16, intermediate_size=4096, qk_normalization=False, num_hidden_layers=24,
                 use_flash_attn=False, hidden_act="gelu", norm_type="layer_norm", layer_norm_eps=1e-6,
                 dropout=0.0, drop_path_rate=0.0, attention_dropout=0.0, initializer_range=0.02,
                 initializer_factor=1.0, select_layer=-1, input_kinds=("image",), encoder_name="intern_vit",
                 **kwargs):
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.image_size = image_size
        self.qkv_bias = qkv_bias
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.qk_normalization = qk_normalization
        self.num_hidden_layers = num_hidden_layers
        self.use_flash_attn = use_flash_attn
        self.hidden_act = hidden_act
        self.norm_type = norm_type
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout
        self.drop_path_rate = drop_path_rate
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.initializer_factor = initializer_factor
        self.select_layer = select_layer
        self.input_kinds = list(input_kinds)
        self.encoder_name = encoder_name
        super().__init__(**kwargs)

    def to_hf(self) -> InternVLVisionConfig:
        """The equivalent transformers ``InternVLVisionConfig`` (renames as in transformers' converter)."""
        return InternVLVisionConfig(
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            attention_bias=self.qkv_bias, use_qk_norm=self.qk_normalization, hidden_act=self.hidden_act,
            norm_type=self.norm_type, layer_norm_eps=self.layer_norm_eps,
            image_size=(self.image_size, self.image_size), patch_size=(self.patch_size, self.patch_size),
            num_channels=self.num_channels, layer_scale_init_value=self.initializer_factor,
            attention_dropout=self.attention_dropout, projection_dropout=self.dropout,
            hidden_dropout_prob=self.dropout, use_absolute_position_embeddings=True, use_mean_pooling=True,
            use_mask_token=False)

    @classmethod
    def from_hf(cls, hf: InternVLVisionConfig, **extra) -> "InternViTConfig":
        size = hf.image_size[0] if isinstance(hf.image_size, (list, tuple)) else hf.image_size
        patch = hf.patch_size[0] if isinstance(hf.patch_size, (list, tuple)) else hf.patch_size
        return cls(hidden_size=hf.hidden_size, num_hidden_layers=hf.num_hidden_layers,
                   num_attention_heads=hf.num_attention_heads, intermediate_size=hf.intermediate_size,
                   qkv_bias=hf.attention_bias, qk_normalization=hf.use_qk_norm, hidden_act=hf.hidden_act,
                   norm_type=hf.norm_type, layer_norm_eps=hf.layer_norm_eps, image_size=size, patch_size=patch,
                   num_channels=hf.num_channels, initializer_factor=hf.layer_scale_init_value,
                   attention_dropout=hf.attention_dropout, dropout=hf.projection_dropout, **extra)


# original InternVL name -> transformers name, applied in order to the part after "vision_model." (fused qkv aside)
_TO_HF = [(r"\blayers\b", "layer"), (r"class_embedding", "cls_token"), (r"position_embedding", "position_embeddings"),
          (r"patch_embedding", "patch_embeddings.projection"), (r"\bls(\d+)", r"lambda_\1"),
          (r"attn\.proj", "attention.projection_layer"), (r"\battn\b", "attention"),
          (r"norm1", "layernorm_before"), (r"norm2", "layernorm_after")]
_TO_ORIG = [("layernorm_before", "norm1"), ("layernorm_after", "norm2"), ("attention.projection_layer", "attn.proj"),
            (r"\battention\b", "attn"), (r"lambda_(\d+)", r"ls\1"), ("patch_embeddings.projection", "patch_embedding"),
            ("position_embeddings", "position_embedding"), ("cls_token", "class_embedding"),
            (r"encoder\.layer\.", "encoder.layers.")]


def original_to_hf_keys(state: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """InternVL original vision keys (no prefix) -> ``InternVLVisionModel`` keys; splits fused qkv by rows."""
    out = {}
    for key, val in state.items():
        if ".attn.qkv." in key:
            base = key.replace(".attn.qkv.", ".attention.").replace("encoder.layers.", "encoder.layer.")
            stem, kind = base.rsplit(".", 1)
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{stem}.{name}.{kind}"] = val[i * hidden:(i + 1) * hidden].clone()
            continue
        new = key
        for pat, rep in _TO_HF:
            new = re.sub(pat, rep, new)
        out[new] = val
    return out


def hf_to_original_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``original_to_hf_keys``: re-fuses q/k/v into ``attn.qkv``."""
    out, pending = {}, {}
    for key, val in state.items():
        m = re.match(r"(.*)\.attention\.([qkv])_proj\.(weight|bias)$", key)
        if m:
            pending.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = val
            continue
        new = key
        for pat, rep in _TO_ORIG:
            new = re.sub(pat, rep, new)
        out[new] = val
    for (stem, kind), parts in pending.items():
        stem = stem.replace("encoder.layer.", "encoder.layers.")
        out[f"{stem}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out




def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


def _layer_forward_with_drop_path(layer: nn.Module, rate: float):
    """A forward for transformers' ``InternVLVisionLayer`` that adds stochastic depth on both residual branches."""

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        attn, _ = layer.attention(layer.layernorm_before(hidden_states))
        hidden_states = hidden_states + _drop_path(layer.lambda_1 * attn, rate, layer.training)
        out = layer.dropout(layer.mlp(layer.layernorm_after(hidden_states)))
        return hidden_states + _drop_path(layer.lambda_2 * out, rate, layer.training)

    return forward


class InternViTEncoder(VisionEncoder):
    """InternViT (tiles ``[3, S, S]`` -> ``(S/patch)^2`` tokens, CLS dropped, layer ``select_layer``)."""

    config_class = InternViTConfig

    def __init__(self, config: InternViTConfig | None = None, **overrides):
        config = config if isinstance(config, InternViTConfig) else InternViTConfig(**overrides)
        super().__init__(config)
        self.vit = InternVLVisionModel(config.to_hf())
        self.set_drop_path(config.drop_path_rate)
        self.post_init()

    def set_drop_path(self, rate: float) -> None:
        """Linearly increasing stochastic depth over layers (InternVL's schedule); 0 restores plain forwards."""
        self.config.drop_path_rate = rate
        layers = self.vit.encoder.layer
        for i, layer in enumerate(layers):
            r = rate * i / max(len(layers) - 1, 1)
            if r > 0:
                layer.forward = _layer_forward_with_drop_path(layer, r)
            elif "forward" in layer.__dict__:
                del layer.forward

    def layer_list(self) -> nn.ModuleList:
        return self.vit.encoder.layer

    @classmethod
    def num_tokens(cls, config: InternViTConfig, item: torch.Tensor) -> int:
        return (config.image_size // config.patch_size) ** 2

    @classmethod
    def dummy_input(cls, config: InternViTConfig) -> torch.Tensor:
        return torch.zeros(config.num_channels, config.image_size, config.image_size)

    @classmethod
    def config_kwargs_from_dict(cls, cfg: dict) -> dict:
        """Constructor kwargs from a saved vision config: InternVL's own, or transformers' ``internvl_vision``."""
        if cfg.get("model_type") == "internvl_vision":
            hf = InternVLVisionConfig(**{k: v for k, v in cfg.items() if k not in META_KEYS})
            cfg = InternViTConfig.from_hf(hf).to_dict()
        return {k: v for k, v in cfg.items() if k not in META_KEYS}

    @property
    def lora_target_modules(self) -> list[str]:  # InternVL wraps attn.qkv/attn.proj/mlp.fc1/mlp.fc2
        return ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.projection_layer",
                "mlp.fc1", "mlp.fc2"]

    def forward(self, pixel_values, **_):
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        layer = self.config.select_layer
        if layer == -1:
            hidden = self.vit(pixel_values=pixel_values).last_hidden_state
        else:
            hidden = self.vit(pixel_values=pixel_values, output_hidden_states=True).hidden_states[layer]
        return hidden[:, 1:, :]  # drop CLS

    def state_dict_to_disk(self, state):
        return hf_to_original_keys({k.removeprefix("vit."): v for k, v in state.items()})

    def state_dict_from_disk(self, state):
        memory = {k: v for k, v in state.items() if k.startswith("vit.")}
        original = {k: v for k, v in state.items() if not k.startswith("vit.")}
        memory.update({f"vit.{k}": v for k, v in original_to_hf_keys(original, self.config.hidden_size).items()})
        return memory


@register_vision_model("intern_vit", encoder=InternViTEncoder, aliases=("intern_vit_6b", "internvl_vision"),
                       tiny=dict(image_size=28, patch_size=14, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32))
def intern_vit(**overrides) -> InternViTEncoder:
    """InternViT with InternVL's config fields (defaults: InternViT-300M-448px)."""
    return InternViTEncoder(InternViTConfig(**overrides))
