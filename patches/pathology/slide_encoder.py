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

Where the aggregator lives:

* default (``aggregator=None``): the encoder emits the bag (N tokens of ``feature_dim``) and the projector is the
  aggregator (``--projector perceiver_resampler`` / ``abmil``, trained by ``--freeze_mlp False``). The encoder has
  no linear layers, so ``--use_backbone_lora`` is refused with a message saying what to use instead.
* ``aggregator="perceiver_resampler"`` (or ``"abmil"``) with ``aggregator_config`` (``num_tokens`` K, ``dim``,
  ``heads``, ``depth``, ``dropout``, ``out_dim`` = output width, default ``dim``): the encoder itself pools the
  bag to K tokens of ``out_dim`` (a slide encoder, as in PRISM), and the projector is the per-token ``mlp``.
  ``--freeze_backbone False`` trains the aggregator in full; ``--use_backbone_lora r`` puts LoRA adapters on its
  linear layers (``lora_target_modules``; the attention blocks' packed projections stay frozen under LoRA).
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
                 max_tiles_on_the_fly: int = 4096, input_kinds=("features", "wsi"), aggregator: str | None = None,
                 aggregator_config: dict | None = None, **kwargs):
        kwargs.pop("hidden_size", None)  # derived: feature_dim, or the aggregator's output width
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.aggregator = aggregator
        self.aggregator_config = dict(aggregator_config or {})
        opts = self.aggregator_config
        self.hidden_size = int(opts.get("out_dim", opts.get("dim", 512))) if aggregator else self.feature_dim
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
    supports_gradient_checkpointing = False  # a LayerNorm (+ an optional small aggregator): nothing to checkpoint
    machine_local_keys = ("tile_encoder_weights", "feature_cache")  # paths on this machine: data options instead

    def __init__(self, config: SlideFeaturesConfig):
        super().__init__(config)
        self.norm = nn.LayerNorm(config.feature_dim) if config.input_norm else nn.Identity()
        if config.aggregator:
            from patches.pathology.aggregators import build_aggregator

            self.aggregator = build_aggregator(config.aggregator, config.feature_dim, config.hidden_size,
                                               config.aggregator_config)
        else:
            self.aggregator = None
        self.post_init()

    @classmethod
    def num_tokens(cls, config, item: torch.Tensor) -> int:
        if getattr(config, "aggregator", None):
            return int(config.aggregator_config.get("num_tokens", config.aggregator_config.get("num_latents", 64)))
        return int(item.shape[0])

    @classmethod
    def dummy_input(cls, config) -> torch.Tensor:
        return torch.zeros(1, config.feature_dim)

    @property
    def lora_target_modules(self) -> list[str]:
        if self.aggregator is None:
            raise ValueError(
                "--use_backbone_lora: the slide_features encoder has no linear layers (only a LayerNorm; the "
                "aggregator is the projector here). Either put the aggregator in the encoder (--vision_overrides "
                "'{\"aggregator\": \"perceiver_resampler\", \"aggregator_config\": {...}}' --projector mlp) or drop "
                "--use_backbone_lora and train the projector with --freeze_mlp False")
        return [f"aggregator.{name}" for name in self.aggregator.linear_layer_names()]

    def _check(self, bag: torch.Tensor) -> None:
        if bag.ndim != 2 or bag.shape[-1] != self.config.feature_dim:
            raise ValueError(f"slide_features expects bags [N_tiles, {self.config.feature_dim}], got "
                             f"{tuple(bag.shape)}; were the features made by another tile encoder?")

    def _encode(self, bag: torch.Tensor) -> torch.Tensor:
        h = self.norm(bag.to(self.dtype))
        return h if self.aggregator is None else self.aggregator.forward_bag(h)

    def forward(self, pixel_values, **_):
        if isinstance(pixel_values, (list, tuple)):
            for bag in pixel_values:
                self._check(bag)
            return [self._encode(bag) for bag in pixel_values]
        if pixel_values.ndim != 3:
            raise ValueError(f"slide_features expects [N_items, N_tiles, D] or a list of [N_tiles, D]; got "
                             f"{tuple(pixel_values.shape)}")
        self._check(pixel_values[0])
        if self.aggregator is None:
            return self.norm(pixel_values.to(self.dtype))
        return torch.stack([self._encode(bag) for bag in pixel_values])


@register_vision_model("slide_features", encoder=SlideFeatureEncoder, tiny={"feature_dim": 32, "tile_encoder": None})
def slide_features(**overrides) -> SlideFeatureEncoder:
    return SlideFeatureEncoder(SlideFeaturesConfig(**overrides))
