"""Pathology tile encoders (Virchow-2, Virchow, UNI, UNI2-h, H-optimus-0, Prov-GigaPath) as one timm-backed class.

Every named encoder is one row of ``PRESETS``: the timm architecture, its constructor kwargs, the tile size it was
trained on, its normalisation and how a tile embedding is formed. ``TimmTileEncoder`` builds any row; the registry
gets one factory per row. Nothing is copied per model.

Embedding modes (``config.embedding``):

* ``cls_mean``: CLS token concatenated with the mean of the patch tokens, register tokens excluded (Virchow/Virchow-2:
  2 x 1280 = 2560-d). The patch tokens start at ``num_prefix_tokens`` (1 + registers), never a hard-coded index.
* ``cls``: the CLS token after the final norm (UNI, UNI2-h, H-optimus-0, Prov-GigaPath).

As the InternVL vision model on 224-px image tiles (``input_kinds = ("image",)``), ``config.output`` chooses what
``forward`` emits: ``embedding`` (default) = 1 token per tile of width ``hidden_size`` (use projector ``mlp``), or
``patch_tokens`` = the (image_size / patch)^2 patch tokens of width ``embed_dim`` (use ``mlp1``; 16 x 16 grid).

Normalisation is pinned per preset (ImageNet for Virchow-2), never taken from timm's fallback pretrained_cfg, which
for ``vit_huge_patch14_224`` is mean/std 0.5 and crop 0.9. Weights: ``weights=PATH`` (safetensors preferred,
``.bin``/``.pth`` via ``torch.load(weights_only=True)``, or an HF snapshot folder) or ``weights="hf-hub"`` to fetch the
preset's gated repo; huggingface_hub reads the user's token itself (HF_TOKEN / cached login), we never touch it.
Loading is strict: a wrong architecture fails with the mismatching keys, never loads partially.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig

from internvl.model.vision.base import META_KEYS, VisionEncoder, register_vision_model

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
LAYERS = {"swiglu_packed": "timm.layers.SwiGLUPacked", "silu": "torch.nn.SiLU", "gelu": "torch.nn.GELU"}


@dataclass(frozen=True)
class TilePreset:
    arch: str
    kwargs: dict
    norm: tuple = IMAGENET
    embedding: str = "cls"
    tile_size: int = 224           # tile side the model expects at 20x (TRIDENT table)
    crop_pct: float = 1.0          # resize to image_size / crop_pct, then centre-crop image_size
    hub: str | None = None
    extra: dict = field(default_factory=dict)


_VIRCHOW = dict(img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16, mlp_ratio=5.3375,
                init_values=1e-5, num_classes=0, global_pool="", dynamic_img_size=True,
                mlp_layer="swiglu_packed", act_layer="silu")
_GIANT = dict(img_size=224, patch_size=14, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5, num_classes=0,
              global_pool="token")

# one row per named encoder (facts: shared/research/pathology.md section 1)
PRESETS: dict[str, TilePreset] = {
    "virchow2": TilePreset("vit_huge_patch14_224", {**_VIRCHOW, "reg_tokens": 4}, IMAGENET, "cls_mean", hub="paige-ai/Virchow2"),
    "virchow": TilePreset("vit_huge_patch14_224", _VIRCHOW, IMAGENET, "cls_mean", hub="paige-ai/Virchow"),
    "uni": TilePreset("vit_large_patch16_224", dict(img_size=224, patch_size=16, embed_dim=1024, init_values=1e-5, num_classes=0, dynamic_img_size=True), IMAGENET, "cls", 256, 224 / 256, hub="MahmoodLab/uni"),
    "uni2_h": TilePreset("vit_giant_patch14_224", dict(img_size=224, patch_size=14, embed_dim=1536, depth=24, num_heads=24, init_values=1e-5, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, mlp_layer="swiglu_packed", act_layer="silu", reg_tokens=8, dynamic_img_size=True), IMAGENET, "cls", 256, 224 / 256, hub="MahmoodLab/UNI2-h"),
    "h_optimus_0": TilePreset("vit_giant_patch14_reg4_dinov2", {**_GIANT, "dynamic_img_size": False}, HOPTIMUS, "cls", hub="bioptimus/H-optimus-0"),
    "prov_gigapath": TilePreset("vit_giant_patch14_dinov2", {**_GIANT, "patch_size": 16, "mlp_ratio": 5.33334}, IMAGENET, "cls", 256, 224 / 256, hub="prov-gigapath/prov-gigapath"),
    # same code path as virchow2, small width/depth: tests and the CPU demo (96 keeps SwiGLU's hidden size even)
    "virchow2_tiny": TilePreset("vit_huge_patch14_224", {**_VIRCHOW, "reg_tokens": 4, "embed_dim": 96, "depth": 2, "num_heads": 2}, IMAGENET, "cls_mean"),
}


def _resolve_layer(name):
    if not isinstance(name, str):
        return name
    module, _, attr = LAYERS[name].rpartition(".")
    return getattr(__import__(module, fromlist=[attr]), attr)


class TileEncoderConfig(PretrainedConfig):
    model_type = "timm_tile_encoder"

    def __init__(self, preset: str = "virchow2", timm_arch: str | None = None, timm_kwargs: dict | None = None,
                 image_mean=None, image_std=None, embedding: str | None = None, output: str = "embedding",
                 tile_size: int | None = None, crop_pct: float | None = None, hf_hub_id: str | None = None,
                 weights_source: str | None = None, input_kinds=("image",), **kwargs):
        if "weights" in kwargs:
            raise ValueError("a tile-encoder config does not load weights: build it with "
                             "create_vision_model(name, weights=PATH) or call encoder.load_weights(PATH)")
        kwargs.pop("hidden_size", None)  # derived below; a saved value is recomputed, not trusted
        for derived in ("image_size", "patch_size", "embed_dim", "num_prefix_tokens"):
            kwargs.pop(derived, None)
        super().__init__(**kwargs)
        base = PRESETS[preset] if preset in PRESETS else None
        if base is None and timm_arch is None:
            raise ValueError(f"unknown tile-encoder preset {preset!r} and no timm_arch given; presets: {sorted(PRESETS)}")
        self.preset = preset
        self.timm_arch = timm_arch or base.arch
        self.timm_kwargs = dict(base.kwargs if base and timm_kwargs is None else {**(base.kwargs if base else {}),
                                                                                   **(timm_kwargs or {})})
        self.image_mean = list(image_mean or (base.norm[0] if base else IMAGENET[0]))
        self.image_std = list(image_std or (base.norm[1] if base else IMAGENET[1]))
        self.embedding = embedding or (base.embedding if base else "cls")
        if self.embedding not in ("cls", "cls_mean"):
            raise ValueError(f"embedding must be 'cls' or 'cls_mean', got {self.embedding!r}")
        if output not in ("embedding", "patch_tokens"):
            raise ValueError(f"output must be 'embedding' or 'patch_tokens', got {output!r}")
        self.output = output
        self.tile_size = int(tile_size or (base.tile_size if base else 224))
        self.crop_pct = float(crop_pct or (base.crop_pct if base else 1.0))
        self.hf_hub_id = hf_hub_id if hf_hub_id is not None else (base.hub if base else None)
        self.weights_source = weights_source
        self.input_kinds = tuple(input_kinds)
        kw = self.timm_kwargs
        if "embed_dim" not in kw or "patch_size" not in kw or "img_size" not in kw:
            raise ValueError("timm_kwargs must state img_size, patch_size and embed_dim explicitly")
        self.image_size = int(kw["img_size"])
        self.patch_size = int(kw["patch_size"])
        self.embed_dim = int(kw["embed_dim"])
        registers = kw.get("reg_tokens") or (4 if "_reg4_" in self.timm_arch else 0)
        self.num_prefix_tokens = int(kw.get("class_token", True)) + int(registers)
        self.embedding_dim = self.embed_dim * (2 if self.embedding == "cls_mean" else 1)
        self.hidden_size = self.embedding_dim if output == "embedding" else self.embed_dim


class TimmTileEncoder(VisionEncoder):
    """A timm ViT tile encoder under the VisionEncoder contract (see module docstring)."""

    config_class = TileEncoderConfig
    machine_local_keys = ("weights_source",)

    def __init__(self, config: TileEncoderConfig):
        super().__init__(config)
        import timm

        kwargs = {k: _resolve_layer(v) if k in ("mlp_layer", "act_layer") else v
                  for k, v in config.timm_kwargs.items()}
        # pretrained_cfg pinned so timm's own data config agrees with ours (its fallback is mean/std 0.5, crop 0.9)
        overlay = dict(mean=tuple(config.image_mean), std=tuple(config.image_std), crop_pct=config.crop_pct,
                       interpolation="bicubic")
        self.model = timm.create_model(config.timm_arch, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)
        if self.model.num_prefix_tokens != config.num_prefix_tokens or self.model.embed_dim != config.embed_dim:
            raise ValueError(f"{config.timm_arch}: built model has {self.model.num_prefix_tokens} prefix tokens / "
                             f"width {self.model.embed_dim}, config derived {config.num_prefix_tokens} / "
                             f"{config.embed_dim}")
        self.register_buffer("pixel_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)
        self.post_init()

    # ---- contract -------------------------------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        """``--grad_checkpoint``: timm's own block checkpointing (its modules carry no HF flag)."""
        self.model.set_grad_checkpointing(True)

    def gradient_checkpointing_disable(self):
        self.model.set_grad_checkpointing(False)

    @classmethod
    def config_kwargs_from_dict(cls, cfg: dict) -> dict:
        """Constructor kwargs from a saved/overridden config dict; the preset defaults to the registered name."""
        out = {k: v for k, v in cfg.items() if k not in META_KEYS}
        name = cfg.get("encoder_name") or cfg.get("model_type")
        out.setdefault("preset", name if name in PRESETS else "virchow2")
        return out

    @classmethod
    def num_tokens(cls, config, item: torch.Tensor) -> int:
        if config.output == "embedding":
            return 1
        return (int(item.shape[-2]) // config.patch_size) * (int(item.shape[-1]) // config.patch_size)

    @classmethod
    def dummy_input(cls, config) -> torch.Tensor:
        return torch.zeros(3, config.image_size, config.image_size)

    @property
    def lora_target_modules(self) -> list[str]:
        return ["qkv", "proj", "fc1", "fc2"]

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.model.set_grad_checkpointing(True)

    # ---- compute --------------------------------------------------------------------------------------------
    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 tiles [B, H, W, 3] (or [B, 3, H, W]) -> normalised float [B, 3, S, S] for this encoder.

        Resize to ``image_size / crop_pct`` (bicubic, antialiased) when the tile differs, centre-crop ``image_size``,
        scale to 0..1 and normalise with the preset's mean/std.
        """
        from torchvision.transforms.v2 import functional as TF

        if tiles.ndim != 4:
            raise ValueError(f"expected a batch of tiles [B, H, W, 3], got shape {tuple(tiles.shape)}")
        x = tiles.permute(0, 3, 1, 2) if tiles.shape[-1] == 3 else tiles
        size = self.config.image_size
        resize_to = int(round(size / self.config.crop_pct))
        if x.shape[-2:] != (resize_to, resize_to) and x.shape[-2:] != (size, size):
            x = TF.resize(x, [resize_to, resize_to], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        if x.shape[-2:] != (size, size):
            x = TF.center_crop(x, [size, size])
        x = x.to(self.pixel_mean.device, torch.float32, copy=True)  # ours: normalised in place (same numbers,
        return x.div_(255.0).sub_(self.pixel_mean).div_(self.pixel_std).to(self.dtype)  # 2x faster on CPU)

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """All output tokens after the final norm: [B, prefix + patches, embed_dim]."""
        return self.model.forward_features(pixel_values)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-tile embedding [B, embedding_dim] (cls, or cls concatenated with the mean of patch tokens)."""
        out = self.tokens(pixel_values)
        cls = out[:, 0]
        if self.config.embedding == "cls":
            return cls
        return torch.cat([cls, out[:, self.model.num_prefix_tokens:].mean(dim=1)], dim=-1)

    def forward(self, pixel_values, **_):
        if isinstance(pixel_values, (list, tuple)):
            return [self.forward(p.unsqueeze(0))[0] for p in pixel_values]
        if self.config.output == "embedding":
            return self.embed(pixel_values).unsqueeze(1)
        return self.tokens(pixel_values)[:, self.model.num_prefix_tokens:]

    # ---- weights --------------------------------------------------------------------------------------------
    def load_weights(self, source: str) -> str:
        """Load pretrained tile-encoder weights strictly; returns a description with the file's sha256."""
        path = resolve_weights(source, self.config.hf_hub_id)
        state = read_state_dict(path)
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch, e.g. Virchow-2 weights on a model built without registers
            raise ValueError(f"{path}: weights do not match {self.config.preset} ({self.config.timm_arch}): "
                             f"{' '.join(str(exc).split())}") from exc
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match {self.config.preset} ({self.config.timm_arch}): "
                             f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        self.config.weights_source = f"{os.path.basename(path)} sha256:{file_sha256(path)}"
        return self.config.weights_source


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(source: str, hub_id: str | None) -> str:
    """A local weights file for ``source``: a file, an HF snapshot folder, or 'hf-hub[:repo]' (download)."""
    if source.startswith("hf-hub"):
        repo = source.split(":", 1)[1] if ":" in source else hub_id
        if not repo:
            raise ValueError("this encoder has no hub id; pass a local weights path")
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        # token: huggingface_hub reads HF_TOKEN / the cached login itself; it never passes through our code
        for name in ("model.safetensors", "pytorch_model.bin"):
            try:
                return hf_hub_download(repo, name)
            except LocalEntryNotFoundError as exc:  # offline and not cached (a subclass of the next one)
                raise OSError(f"{repo}: {name} is not in the local Hugging Face cache and the hub cannot be "
                              f"reached ({exc}); pass a local weights path") from exc
            except EntryNotFoundError:
                continue
            except Exception as exc:  # re-raised with the repo and what to do (gated, offline, no login ...)
                raise OSError(f"{repo}: cannot fetch {name} from the Hugging Face hub: {exc}. The repo is gated: "
                              f"accept its terms and log in (HF_TOKEN), or pass a local weights path") from exc
        raise FileNotFoundError(f"{repo}: neither model.safetensors nor pytorch_model.bin in the repo")
    if os.path.isdir(source):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(source, name)):
                return os.path.join(source, name)
        raise FileNotFoundError(f"{source}: no model.safetensors or pytorch_model.bin inside")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: weights file not found")
    return source


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def build_tile_encoder(preset: str, weights: str | None = None, **overrides) -> TimmTileEncoder:
    """Factory behind every registered tile encoder: config from the preset + overrides, then optional weights."""
    overrides.pop("preset", None)
    config = TileEncoderConfig(preset=preset, **overrides)
    path = resolve_weights(weights, config.hf_hub_id) if weights else None  # fail before building 600M params
    model = TimmTileEncoder(config)
    if path:
        model.load_weights(path)
    return model


# the small same-code-path variant the core's encoder contract tests build (``tiny_overrides``); 96 keeps SwiGLU even
_TINY = {"timm_kwargs": {"embed_dim": 96, "depth": 1, "num_heads": 2}}

# one registry entry per preset row, each a factory of the same class (``weights=PATH`` loads weights)
@register_vision_model("virchow2", encoder=TimmTileEncoder, tiny=_TINY)
def virchow2(weights: str | None = None, **overrides) -> TimmTileEncoder:
    return build_tile_encoder("virchow2", weights, **overrides)


@register_vision_model("virchow", encoder=TimmTileEncoder, tiny=_TINY)
def virchow(weights: str | None = None, **overrides) -> TimmTileEncoder:
    return build_tile_encoder("virchow", weights, **overrides)


@register_vision_model("uni", encoder=TimmTileEncoder, tiny=_TINY)
def uni(weights: str | None = None, **overrides) -> TimmTileEncoder:
    return build_tile_encoder("uni", weights, **overrides)


@register_vision_model("uni2_h", encoder=TimmTileEncoder, tiny=_TINY)
def uni2_h(weights: str | None = None, **overrides) -> TimmTileEncoder:
    return build_tile_encoder("uni2_h", weights, **overrides)


@register_vision_model("h_optimus_0", encoder=TimmTileEncoder, tiny=_TINY)
def h_optimus_0(weights: str | None = None, **overrides) -> TimmTileEncoder:
    return build_tile_encoder("h_optimus_0", weights, **overrides)


@register_vision_model("prov_gigapath", encoder=TimmTileEncoder, tiny=_TINY)
def prov_gigapath(weights: str | None = None, **overrides) -> TimmTileEncoder:
    return build_tile_encoder("prov_gigapath", weights, **overrides)


@register_vision_model("virchow2_tiny", encoder=TimmTileEncoder, tiny=_TINY)
def virchow2_tiny(weights: str | None = None, **overrides) -> TimmTileEncoder:
    return build_tile_encoder("virchow2_tiny", weights, **overrides)


def tile_encoder_names() -> list[str]:
    return sorted(PRESETS)
