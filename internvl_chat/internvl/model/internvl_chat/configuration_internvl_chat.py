"""``InternVLChatConfig``: InternVL's chat config (model_type ``internvl_chat``), with a pluggable vision side.

The fields and defaults are InternVL's (``vision_config``, ``llm_config``, ``select_layer``, ``force_image_size``,
``downsample_ratio``, ``template``, ``ps_version``, ...), so an OpenGVLab ``config.json`` loads as is. Fields of ours:

* ``projector`` (registered projector name, default ``mlp1``) and ``projector_config`` (its options);
  ``vision_config.encoder_name`` names the registered encoder (original checkpoints have none: their ``model_type``
  ``intern_vit_6b`` is the alias that resolves to ``intern_vit``). Together they are the *primary vision tower*,
  whose weights keep InternVL's names (``vision_model.*``, ``mlp1.*``); it reads the encoder's ``media_kinds``.
* ``vision_towers``: more towers, ``{kind: {"vision_config": {...}, "projector": NAME, "projector_config": {...}}}``,
  one per media kind they read (weights under ``vision_towers.<kind>.vision_model.*`` / ``.mlp1.*``). A kind that
  an extra tower names is read by that tower even if the primary encoder could read it too.

``tower(kind)`` is the per-tower view every consumer gets (readers, projectors, token counts): the same config
with ``vision_config``/``projector``/``projector_config`` of that tower. ``num_context_tokens(item, kind)`` is how
many ``<IMG_CONTEXT>`` tokens one item becomes (encoder tokens through the projector), known before any forward.
"""
from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from internvl.errors import ConfigError
from internvl.model.projector import PROJECTORS
from internvl.model.vision.base import (create_vision_model_from_dict, encoder_class, vision_config_from_dict,
                                        vision_config_to_dict)


def llm_config_from_dict(cfg: dict | PretrainedConfig) -> PretrainedConfig:
    """An LLM config from a saved ``llm_config`` dict (InternLM2 is read through the Llama layout)."""
    if isinstance(cfg, PretrainedConfig):
        return cfg
    from internvl.model.llm import llm_config_for_transformers

    cfg = llm_config_for_transformers(cfg)
    arch = (cfg.get("architectures") or [""])[0]
    if cfg.get("model_type") == "internlm2" or arch == "InternLM2ForCausalLM":
        from internvl.model.llm import internlm2_config_to_llama

        return internlm2_config_to_llama(cfg)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"llm_config has no model_type (architectures={cfg.get('architectures')})")
    for key in ("transformers_version", "auto_map", "_name_or_path"):
        cfg.pop(key, None)
    return AutoConfig.for_model(model_type, **cfg)


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"
    is_composition = True

    def __init__(self, vision_config=None, llm_config=None, use_backbone_lora=0, use_llm_lora=0,
                 select_layer=-1, force_image_size=None, downsample_ratio=0.5, template=None,
                 dynamic_image_size=False, use_thumbnail=False, ps_version="v1", min_dynamic_patch=1,
                 max_dynamic_patch=6, pad2square=False, projector="mlp1", projector_config=None, vision_towers=None,
                 **kwargs):
        kwargs.pop("tie_word_embeddings", None)  # decided per checkpoint (lm_head present or not), see modeling
        super().__init__(**kwargs)
        if vision_config is None:
            vision_config = {"encoder_name": "intern_vit"}
        if isinstance(vision_config, dict):
            vision_config = vision_config_from_dict(vision_config)
        self.vision_config = vision_config
        if llm_config is None:
            llm_config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
        self.llm_config = llm_config_from_dict(llm_config)
        self.use_backbone_lora = use_backbone_lora
        self.use_llm_lora = use_llm_lora
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        self.pad2square = pad2square
        self.projector = projector
        self.projector_config = dict(projector_config or {})
        self.vision_towers = {kind: _tower_from_dict(kind, t) for kind, t in (vision_towers or {}).items()}
        if hasattr(self.vision_config, "select_layer"):
            self.vision_config.select_layer = select_layer

    @classmethod
    def build(cls, vision: str = "intern_vit", vision_overrides: dict | None = None, llm_config=None,
              projector: str = "mlp1", projector_config: dict | None = None, template: str = "internvl2_5",
              towers: dict | None = None, **fields: Any) -> "InternVLChatConfig":
        """A config from an encoder name (+ overrides), an LLM config and a projector name; ``towers`` adds extra
        towers as ``{kind: (encoder_name, overrides, projector, projector_config)}``."""
        vision_cfg = {"encoder_name": vision, **(vision_overrides or {})}
        fields["vision_towers"] = {kind: {"vision_config": {"encoder_name": name, **(ov or {})}, "projector": proj,
                                          "projector_config": dict(pc or {})}
                                   for kind, (name, ov, proj, pc) in (towers or {}).items()}
        if vision in ("intern_vit",) and "force_image_size" not in fields:
            fields["force_image_size"] = vision_cfg.get("image_size", 448)
        fields.setdefault("ps_version", "v2")
        return cls(vision_config=vision_cfg, llm_config=llm_config, projector=projector,
                   projector_config=projector_config, template=template, **fields)

    @property
    def image_size(self) -> int:
        return self.force_image_size or getattr(self.vision_config, "image_size", 448)

    @property
    def num_image_token(self) -> int:
        """``<IMG_CONTEXT>`` tokens per 2D tile (InternVL: (image_size // patch)^2 * downsample_ratio^2)."""
        patch = getattr(self.vision_config, "patch_size", 14)
        return int((self.image_size // patch) ** 2 * self.downsample_ratio ** 2)

    # ------------------------------------------------------------------ towers
    def tower_kinds(self) -> dict[str, str | None]:
        """Media kind -> the extra tower that reads it, or ``None`` for the primary tower."""
        out: dict[str, str | None] = {k: None for k in encoder_class(self.vision_config).media_kinds(self.vision_config)}
        out.update({kind: kind for kind in self.vision_towers})
        return out

    def tower_of(self, kind: str | None) -> str | None:
        """The tower that reads ``kind`` (``None``: the primary); ``kind=None`` means the primary."""
        if kind is None:
            return None
        kinds = self.tower_kinds()
        if kind not in kinds:
            raise KeyError(f"no vision encoder of this model reads {kind!r} media; it reads {sorted(kinds)}")
        return kinds[kind]

    def tower(self, kind: str | None = None) -> "InternVLChatConfig":
        """The config as one tower sees it: the primary's is this config, an extra tower's a view of it."""
        name = self.tower_of(kind)
        if name is None:
            return self
        spec = self.vision_towers[name]
        view = copy.copy(self)
        view.__dict__.update(vision_config=spec["vision_config"], projector=spec["projector"],
                             projector_config=dict(spec["projector_config"]), vision_towers={}, force_image_size=None)
        return view

    def num_context_tokens(self, item, kind: str | None = None) -> int:
        """``<IMG_CONTEXT>`` tokens one item of ``kind`` becomes: the encoder's count through the projector."""
        view = self.tower(kind)
        n_enc = encoder_class(view.vision_config).num_tokens(view.vision_config, item)
        return PROJECTORS.get(view.projector).num_output_tokens(view, n_enc)

    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "vision_towers"})
        out["vision_config"] = vision_config_to_dict(self.vision_config)
        out["vision_towers"] = {kind: {"vision_config": vision_config_to_dict(t["vision_config"]),
                                       "projector": t["projector"], "projector_config": dict(t["projector_config"])}
                                for kind, t in self.vision_towers.items()}
        out["llm_config"] = self.llm_config.to_dict()
        out["model_type"] = self.model_type
        out["architectures"] = out.get("architectures") or ["InternVLChatModel"]
        out.pop("_name_or_path", None)
        for key in [k for k in out if k.startswith("_") and k not in ("_attn_implementation",)]:
            out.pop(key)
        out["tie_word_embeddings"] = False
        for key in ("dtype", "torch_dtype"):  # a torch.dtype is written as its name ("bfloat16"), as transformers does
            if key in out and not isinstance(out[key], (str, type(None))):
                out[key] = str(out[key]).removeprefix("torch.")
        return out


def _tower_from_dict(kind: str, spec: dict) -> dict[str, Any]:
    """One extra tower's entry with its ``vision_config`` as the encoder's config object."""
    if not isinstance(spec, dict) or "vision_config" not in spec:
        raise ConfigError(f"vision_towers[{kind!r}] must be {{'vision_config': ..., 'projector': ...}}, got {spec!r}")
    vc = spec["vision_config"]
    vc = vc if isinstance(vc, PretrainedConfig) else vision_config_from_dict(dict(vc))
    if kind not in encoder_class(vc).media_kinds(vc):
        raise ConfigError(f"vision_towers[{kind!r}]: encoder {vc.encoder_name!r} reads "
                         f"{list(encoder_class(vc).media_kinds(vc))}, not {kind!r}")
    return {"vision_config": vc, "projector": spec.get("projector") or "mlp1",
            "projector_config": dict(spec.get("projector_config") or {})}


__all__ = ["InternVLChatConfig", "llm_config_from_dict", "create_vision_model_from_dict"]
