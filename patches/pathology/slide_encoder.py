"""``slide_features``: the vision model for slides, whose items are bags of pre-extracted tile features.

Training on WSIs runs on cached tile features (``extract.py``), so the tile encoder (631 M parameters for
Virchow-2) is not in the training loop. This encoder receives one item per slide, a bag ``[N_tiles, D]`` of tile
embeddings (N varies from slide to slide, up to tens of thousands), applies an optional LayerNorm and passes the
bag on; the projector registered as the slide aggregator (``perceiver_resampler`` or ``abmil``) turns it into a
fixed number K of LLM tokens, which is what ``<IMG_CONTEXT>`` is expanded to.

Config (``SlideFeaturesConfig``): ``feature_dim`` (= ``hidden_size``; 2560 for Virchow-2 cls+mean), the tile encoder
that made the features and how (``tile_encoder``, ``tile_encoder_weights``, ``tile_encoder_seed``, ``mpp``,
``tile_size``; the ``wsi`` media reader uses these to find or make cached features and the ``features`` reader to
check a file's origin), ``max_tiles`` (bags larger than this are subsampled: random while training, evenly spaced
otherwise) and ``feature_cache`` (folder for features the ``wsi`` reader extracts itself).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from internvl.model.vision.base import VisionEncoder, register_vision_model


class SlideFeaturesConfig(PretrainedConfig):
    model_type = "slide_features"

    def __init__(self, feature_dim: int = 2560, input_norm: bool = True, tile_encoder: str | None = "virchow2",
                 tile_encoder_weights: str | None = None, tile_encoder_seed: int | None = None, mpp: float = 0.5,
                 tile_size: int | None = None, max_tiles: int | None = None, feature_cache: str | None = None,
                 max_tiles_on_the_fly: int = 4096, input_kinds=("features", "wsi"), **kwargs):
        kwargs.pop("hidden_size", None)  # always feature_dim
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.hidden_size = self.feature_dim
        self.input_norm = bool(input_norm)
        self.tile_encoder = tile_encoder
        self.tile_encoder_weights = tile_encoder_weights
        self.tile_encoder_seed = tile_encoder_seed
        self.mpp = float(mpp)
        self.tile_size = tile_size
        self.max_tiles = max_tiles
        self.feature_cache = feature_cache
        self.max_tiles_on_the_fly = int(max_tiles_on_the_fly)
        self.input_kinds = tuple(input_kinds)


class SlideFeatureEncoder(VisionEncoder):
    """Pass-through (+ LayerNorm) for feature bags; variable-length bags stay a list, never padded."""

    config_class = SlideFeaturesConfig
    machine_local_keys = ("tile_encoder_weights", "feature_cache")  # paths on this machine: data options instead

    def __init__(self, config: SlideFeaturesConfig):
        super().__init__(config)
        self.norm = nn.LayerNorm(config.feature_dim) if config.input_norm else nn.Identity()
        self.post_init()

    @classmethod
    def num_tokens(cls, config, item: torch.Tensor) -> int:
        return int(item.shape[0])

    @classmethod
    def dummy_input(cls, config) -> torch.Tensor:
        return torch.zeros(1, config.feature_dim)

    @property
    def lora_target_modules(self) -> list[str]:
        return []  # nothing to adapt: the LayerNorm trains in full when the vision side is unfrozen

    def _check(self, bag: torch.Tensor) -> None:
        if bag.ndim != 2 or bag.shape[-1] != self.config.feature_dim:
            raise ValueError(f"slide_features expects bags [N_tiles, {self.config.feature_dim}], got "
                             f"{tuple(bag.shape)}; were the features made by another tile encoder?")

    def forward(self, pixel_values, **_):
        if isinstance(pixel_values, (list, tuple)):
            for bag in pixel_values:
                self._check(bag)
            return [self.norm(bag.to(self.dtype)) for bag in pixel_values]
        if pixel_values.ndim != 3:
            raise ValueError(f"slide_features expects [N_items, N_tiles, D] or a list of [N_tiles, D]; got "
                             f"{tuple(pixel_values.shape)}")
        self._check(pixel_values[0])
        return self.norm(pixel_values.to(self.dtype))


@register_vision_model("slide_features", encoder=SlideFeatureEncoder, tiny={"feature_dim": 32, "tile_encoder": None})
def slide_features(**overrides) -> SlideFeatureEncoder:
    return SlideFeatureEncoder(SlideFeaturesConfig(**overrides))
