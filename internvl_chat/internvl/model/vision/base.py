"""The one contract every vision encoder meets, and the one way to register one.

An encoder turns *items* into feature tokens. An item is one tensor that a media reader produced for one unit of
input: an image tile ``[3, H, W]``, a bag of pre-extracted WSI tile features ``[N, D]``, a volume ``[C, D, H, W]``,
a 4D fMRI run ``[C, T, D, H, W]``, a stack of slices ``[S, 3, H, W]``, ...

Every hook the core calls is declared on ``VisionEncoder`` below, with its default and what it means; the core
calls them directly (no ``getattr`` probing). An encoder overrides what differs:

==========================  ===============================================================  ===================
hook                        meaning                                                          default
==========================  ===============================================================  ===================
``config_class``            its ``PretrainedConfig``; ``hidden_size`` is the feature width,   required
                            ``input_kinds`` the media kinds whose items it reads
``num_tokens(config, it)``  feature tokens ``forward`` emits for one item, without running     required
``dummy_input(config)``     a small valid item, run when a batch has none of its kinds         required
``forward(items)``          ``Tensor [N, *item]`` or a list -> ``[N, T, D]`` or a list         required
``media_kinds(config)``     the kinds it reads                                                 ``input_kinds``
``config_kwargs_from_dict`` constructor kwargs from a saved ``vision_config`` dict             meta keys dropped
``machine_local_keys``      config fields that name files on this machine, never saved         ``()``
``set_drop_path(rate)``     stochastic depth (``--drop_path_rate``)                            refuses rate > 0
``layer_list()``            the blocks ``--unfreeze_vit_layers`` counts                        refuses
``lora_target_modules``     module-name suffixes ``--use_backbone_lora`` wraps                  q/k/v/proj/fc1/fc2
``lora_modules_to_save``    parts trained in full under backbone LoRA (new heads)              ``None``
``supports_gradient_checkpointing`` whether ``--grad_checkpoint`` can checkpoint its blocks          ``True``
``state_dict_to_disk/..``   key layout inside an InternVL checkpoint                           identity
==========================  ===============================================================  ===================

Registration (timm's way): one decorated factory per named preset,

    @register_vision_model("brain3d_vit_tiny", encoder=Brain3DViT, tiny={})
    def brain3d_vit_tiny(**overrides) -> Brain3DViT: ...

``encoder`` is the class the factory builds (its classmethods are reachable without building it), ``tiny`` the
overrides that make a small same-code-path instance for the shared contract tests. ``create_vision_model(name,
**overrides)`` is the one builder; it stores the canonical name in ``config.encoder_name`` so a saved checkpoint
rebuilds the same encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from internvl.registry import Registry

VISION_MODELS = Registry("vision model")

# keys of a saved config dict that are bookkeeping, not constructor arguments (the one set; plugins import it)
META_KEYS = frozenset({"model_type", "transformers_version", "architectures", "encoder_name", "_name_or_path",
                       "dtype", "torch_dtype", "_attn_implementation_autoset", "output_attentions",
                       "output_hidden_states", "return_dict", "use_return_dict", "_commit_hash", "auto_map"})


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry: the preset's factory, the class it builds, and its tiny overrides."""

    name: str
    factory: Callable[..., "VisionEncoder"]
    encoder_class: type
    tiny_overrides: dict = field(default_factory=dict)


def register_vision_model(name: str, *, encoder: type, tiny: dict | None = None, aliases=()):
    """Decorator: register the factory ``f(**overrides) -> encoder`` as the preset ``name``."""
    if not (isinstance(encoder, type) and issubclass(encoder, VisionEncoder)):
        raise TypeError(f"vision model {name!r}: encoder= must be a VisionEncoder subclass, got {encoder!r}")

    def wrap(fn: Callable[..., "VisionEncoder"]):
        VISION_MODELS.register(name, EncoderSpec(name, fn, encoder, dict(tiny or {})), aliases=aliases)
        return fn

    return wrap


def list_vision_models(pattern: str = "*") -> list[str]:
    return VISION_MODELS.names(pattern)


def vision_model_spec(name: str) -> EncoderSpec:
    return VISION_MODELS.get(name)


def create_vision_model(name: str, **overrides: Any) -> "VisionEncoder":
    """Build the encoder registered as ``name`` with config ``overrides`` (random init unless the factory loads)."""
    spec = VISION_MODELS.get(name)
    model = spec.factory(**overrides)
    if not isinstance(model, spec.encoder_class):
        raise TypeError(f"vision model {name!r} factory returned {type(model).__name__}, "
                        f"not a {spec.encoder_class.__name__}")
    model.config.encoder_name = spec.name
    return model


def encoder_class(cfg_or_name) -> type:
    """The encoder class for a config object, a saved dict, or a registered name (for classmethod calls)."""
    if isinstance(cfg_or_name, PretrainedConfig):
        name = cfg_or_name.encoder_name
    elif isinstance(cfg_or_name, dict):
        name = cfg_or_name.get("encoder_name") or cfg_or_name.get("model_type")
    else:
        name = cfg_or_name
    if not name:
        raise ValueError("vision_config names no encoder (neither 'encoder_name' nor 'model_type')")
    return VISION_MODELS.get(name).encoder_class


def vision_config_from_dict(cfg: dict) -> PretrainedConfig:
    """The encoder's own config object for a saved ``vision_config`` dict."""
    cls = encoder_class(cfg)
    config = cls.config_class(**cls.config_kwargs_from_dict(cfg))
    config.encoder_name = VISION_MODELS.get(cfg.get("encoder_name") or cfg.get("model_type")).name
    return config


def vision_config_to_dict(config: PretrainedConfig) -> dict:
    """What a checkpoint stores as a ``vision_config``: the config without its machine-local fields."""
    out = config.to_dict()
    for key in encoder_class(config).machine_local_keys:
        out.pop(key, None)
    return out


def create_vision_model_from_dict(cfg: dict) -> "VisionEncoder":
    """Rebuild an encoder from a saved ``vision_config`` dict (``encoder_name``, else ``model_type`` as alias)."""
    name = cfg.get("encoder_name") or cfg.get("model_type")
    return create_vision_model(name, **encoder_class(name).config_kwargs_from_dict(cfg))


class VisionEncoder(PreTrainedModel):
    """Base class of every registered vision encoder (the table in the module docstring is the contract)."""

    main_input_name = "pixel_values"
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    machine_local_keys: tuple[str, ...] = ()
    lora_modules_to_save: list[str] | None = None

    @classmethod
    def num_tokens(cls, config: PretrainedConfig, item: torch.Tensor) -> int:
        raise NotImplementedError(f"{cls.__name__}.num_tokens")

    @classmethod
    def dummy_input(cls, config: PretrainedConfig) -> torch.Tensor:
        raise NotImplementedError(f"{cls.__name__}.dummy_input")

    @classmethod
    def media_kinds(cls, config: PretrainedConfig) -> tuple[str, ...]:
        return tuple(config.input_kinds)

    @classmethod
    def config_kwargs_from_dict(cls, cfg: dict) -> dict:
        return {k: v for k, v in cfg.items() if k not in META_KEYS}

    def set_drop_path(self, rate: float) -> None:
        if rate:
            raise ValueError(f"--drop_path_rate: encoder {self.config.encoder_name!r} has no stochastic depth")

    def layer_list(self) -> nn.ModuleList:
        raise ValueError(f"--unfreeze_vit_layers: encoder {self.config.encoder_name!r} declares no layer list")

    @property
    def lora_target_modules(self) -> list[str]:
        return ["q_proj", "k_proj", "v_proj", "proj", "fc1", "fc2"]

    def state_dict_to_disk(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map in-memory keys (relative to this encoder) to the keys written inside an InternVL checkpoint."""
        return state

    def state_dict_from_disk(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inverse of ``state_dict_to_disk``."""
        return state

    def _init_weights(self, module):  # weights are set by each encoder's constructor; keep them
        return
