"""The one contract every vision encoder meets, and its registry.

An encoder turns *items* into feature tokens. An item is one tensor that a media reader produced for one
unit of input: an image tile ``[3, H, W]``, a bag of pre-extracted WSI tile features ``[N, D]``, a volume
``[C, D, H, W]``, a 4D fMRI run ``[C, T, D, H, W]``, a stack of slices ``[S, 3, H, W]``, ...

Contract (``VisionEncoder``):

* ``config`` is a ``PretrainedConfig`` subclass; ``config.hidden_size`` is the width ``D`` of the emitted
  features and ``config.input_kinds`` names the media kinds whose items it reads (``("image",)`` for tiles).
* ``forward(pixel_values)`` takes a ``Tensor [N, *item_shape]`` when all items of a batch have one shape, or a
  ``list`` of N item tensors otherwise, and returns features ``Tensor [N, T, D]`` or ``list[Tensor [T_i, D]]``.
  The core passes these to the projector unchanged.
* ``num_tokens(config, item)`` (classmethod) says how many feature tokens ``forward`` emits for one item,
  without running the model (the dataset needs it to size the ``<IMG_CONTEXT>`` run before any forward).
* ``dummy_input(config)`` (classmethod) returns a small valid item, run for batches without real media so that
  every rank executes the vision path (ZeRO-3 / DDP never hang); its contribution is multiplied by zero.
* weights round-trip through ``save_pretrained`` / ``from_pretrained`` (it is a ``PreTrainedModel``), and inside an
  InternVL checkpoint through ``state_dict_to_disk`` / ``state_dict_from_disk`` (identity unless an encoder keeps
  another on-disk layout, as ``intern_vit`` keeps InternVL's original key names).

Registration: ``@register_vision_model("name")`` on a factory ``f(**overrides) -> VisionEncoder`` (a class works
too). ``create_vision_model("name", **overrides)`` builds one; the canonical name is stored in
``config.encoder_name`` so a saved checkpoint rebuilds the same encoder.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from internvl.registry import Registry

VISION_MODELS = Registry("vision model")

# keys of a saved config dict that are bookkeeping, not constructor arguments
META_KEYS = {"model_type", "transformers_version", "architectures", "encoder_name", "_name_or_path", "dtype",
              "torch_dtype", "_attn_implementation_autoset", "output_attentions", "output_hidden_states",
              "return_dict", "use_return_dict", "_commit_hash"}


def register_vision_model(name: str, *, aliases=()):
    """Decorator: register a vision-encoder factory (``f(**overrides) -> VisionEncoder``) or class under ``name``."""
    return VISION_MODELS.register(name, aliases=aliases)


def list_vision_models(pattern: str = "*") -> list[str]:
    return VISION_MODELS.names(pattern)


def create_vision_model(name: str, **overrides: Any) -> "VisionEncoder":
    """Build the encoder registered as ``name`` with config ``overrides`` (random init, no weights loaded)."""
    factory = VISION_MODELS.get(name)
    canonical = VISION_MODELS.resolve(name)
    model = factory(**overrides)
    if not isinstance(model, VisionEncoder):
        raise TypeError(f"vision model {name!r} factory returned {type(model).__name__}, not a VisionEncoder")
    model.config.encoder_name = canonical
    return model


def vision_config_to_dict(config: PretrainedConfig) -> dict:
    """What an InternVL checkpoint stores as ``vision_config`` for this encoder."""
    return config.to_dict()


def config_kwargs_from_dict(cfg: dict) -> dict:
    """Constructor kwargs for the encoder a saved ``vision_config`` dict names (its own hook, else meta keys dropped)."""
    converter = getattr(encoder_class(cfg), "config_kwargs_from_dict", None)
    return converter(cfg) if converter else {k: v for k, v in cfg.items() if k not in META_KEYS}


def create_vision_model_from_dict(cfg: dict) -> "VisionEncoder":
    """Rebuild an encoder from a saved ``vision_config`` dict (``encoder_name``, else ``model_type`` as alias)."""
    name = cfg.get("encoder_name") or cfg.get("model_type")
    if not name:
        raise ValueError("vision_config names no encoder (neither 'encoder_name' nor 'model_type')")
    return create_vision_model(name, **config_kwargs_from_dict(cfg))


def encoder_class(cfg_or_name) -> type:
    """The encoder class for a config object, a saved dict, or a registered name (for classmethod calls)."""
    if isinstance(cfg_or_name, PretrainedConfig):
        return _class_of(cfg_or_name.encoder_name)
    if isinstance(cfg_or_name, dict):
        return _class_of(cfg_or_name.get("encoder_name") or cfg_or_name.get("model_type"))
    return _class_of(cfg_or_name)


def _class_of(name: str) -> type:
    entry = VISION_MODELS.get(name)
    if isinstance(entry, type):
        return entry
    cls = getattr(entry, "encoder_class", None)
    if cls is None:
        raise TypeError(f"vision model factory {name!r} must set .encoder_class (use @encoder_factory(Cls))")
    return cls


def encoder_factory(cls: type):
    """Mark a factory function with the class it builds, so classmethods are reachable without building it."""

    def wrap(fn):
        fn.encoder_class = cls
        return fn

    return wrap


class VisionEncoder(PreTrainedModel):
    """Base class of every registered vision encoder (see the module docstring for the contract)."""

    main_input_name = "pixel_values"
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @classmethod
    def num_tokens(cls, config: PretrainedConfig, item: torch.Tensor) -> int:
        raise NotImplementedError

    @classmethod
    def dummy_input(cls, config: PretrainedConfig) -> torch.Tensor:
        raise NotImplementedError

    def state_dict_to_disk(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map in-memory keys (relative to this encoder) to the keys written inside an InternVL checkpoint."""
        return state

    def state_dict_from_disk(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inverse of ``state_dict_to_disk``."""
        return state

    @property
    def lora_target_modules(self) -> list[str]:
        """Module-name suffixes that ``--use_backbone_lora`` wraps (peft ``target_modules``)."""
        return ["q_proj", "k_proj", "v_proj", "proj", "fc1", "fc2"]

    lora_modules_to_save: list[str] | None = None  # parts trained in full under --use_backbone_lora

    def _init_weights(self, module):  # weights are set by each encoder's constructor; keep them
        return
