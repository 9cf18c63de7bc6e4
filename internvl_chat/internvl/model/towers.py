"""Choosing a model's vision towers from the command line: ``--vision_model [KIND=]NAME`` and friends.

Finetune and ``check_data`` take the same flags, each repeatable:

* ``--vision_model NAME`` (bare): replace the primary tower's encoder (today's meaning);
  ``--vision_model KIND=NAME``: the tower that reads ``KIND`` gets encoder ``NAME`` (the primary one if the primary
  encoder reads ``KIND``, else a new extra tower, e.g. ``volume=brain3d_vit`` beside InternViT for images).
* ``--vision_overrides [KIND=]JSON``: config overrides of that tower's new encoder.
* ``--projector [KIND=]NAME`` / ``--projector_config [KIND=]JSON``: that tower's projector (a new tower's default
  is ``mlp1``).

``parse_tower_flags`` turns the flags into ``TowerChange``s; ``apply_tower_changes`` builds the new config (the
LLM and every untouched tower kept); ``compose_towers`` builds the new model around a loaded one, keeping the
weights of everything the flags do not touch. Bad flags raise ``ValueError`` naming the flag.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from internvl.model.internvl_chat.configuration_internvl_chat import InternVLChatConfig
from internvl.model.vision.base import create_vision_model, encoder_class
from internvl.errors import ConfigError


@dataclass
class TowerChange:
    """What the flags say about one tower (``kind=None``: the bare form, the primary tower)."""

    kind: str | None
    encoder: str | None = None
    overrides: dict = field(default_factory=dict)
    projector: str | None = None
    projector_config: dict | None = None


def _split_kind(flag: str, value: str, *, json_value: bool) -> tuple[str | None, str]:
    text = value.strip()
    if json_value and text.startswith("{"):
        return None, text
    kind, sep, rest = text.partition("=")
    if sep and kind and kind.replace("_", "").isalnum() and not kind.startswith("{"):
        return kind, rest
    return None, text


def _json(flag: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} {text!r}: not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} {text!r}: expected a JSON object")
    return value


def parse_tower_flags(vision_model=(), vision_overrides=(), projector=(), projector_config=()) -> list[TowerChange]:
    """``TowerChange`` per kind named by the flags (the bare forms under ``kind=None``), in first-mention order."""
    changes: dict[str | None, TowerChange] = {}

    def change(kind):
        return changes.setdefault(kind, TowerChange(kind))

    for value in vision_model:
        kind, name = _split_kind("--vision_model", value, json_value=False)
        change(kind).encoder = name
    for value in vision_overrides:
        kind, text = _split_kind("--vision_overrides", value, json_value=True)
        change(kind).overrides = _json("--vision_overrides", text)
    for value in projector:
        kind, name = _split_kind("--projector", value, json_value=False)
        change(kind).projector = name
    for value in projector_config:
        kind, text = _split_kind("--projector_config", value, json_value=True)
        change(kind).projector_config = _json("--projector_config", text)
    for c in changes.values():
        if c.overrides and not c.encoder:
            raise ConfigError(f"--vision_overrides{'' if c.kind is None else ' ' + c.kind + '='}... needs "
                             f"--vision_model for the same tower")
        if c.projector_config is not None and not c.projector:
            raise ConfigError("--projector_config needs --projector for the same tower")
    return list(changes.values())


def touches_primary(config: InternVLChatConfig, change: TowerChange) -> bool:
    """Whether a change is about the primary tower (bare form, or a kind the primary reads and no extra tower)."""
    primary_kinds = set(encoder_class(config.vision_config).media_kinds(config.vision_config))
    return change.kind is None or (change.kind in primary_kinds and change.kind not in config.vision_towers)


def apply_tower_changes(config: InternVLChatConfig, changes: list[TowerChange], *,
                        downsample_ratio: float | None = None) -> tuple[InternVLChatConfig, dict, set]:
    """The config with ``changes`` applied; the new encoders built (``{tower: encoder}``, ``None`` = primary, so
    weights a factory loaded are not lost); and the towers whose projector is new (its encoder or itself changed).
    Untouched towers keep their config."""
    fields = config.to_dict()
    towers = {k: dict(t, vision_config=config.vision_towers[k]["vision_config"]) for k, t in
              fields.pop("vision_towers").items()}
    fields["vision_config"] = config.vision_config
    built: dict[str | None, object] = {}
    new_projectors: set = set()
    for c in changes:
        to_primary = touches_primary(config, c)
        encoder = create_vision_model(c.encoder, **c.overrides) if c.encoder else None
        if encoder is not None and c.kind is not None and c.kind not in encoder_class(encoder.config).media_kinds(
                encoder.config):
            raise ConfigError(f"--vision_model {c.kind}={c.encoder}: {c.encoder!r} reads "
                              f"{list(encoder_class(encoder.config).media_kinds(encoder.config))}, not {c.kind!r}")
        if to_primary:
            if encoder is not None:
                fields["vision_config"] = encoder.config
                built[None] = encoder
                size = getattr(encoder.config, "image_size", None)
                fields["force_image_size"] = size if isinstance(size, int) else None
            if c.projector:
                fields["projector"], fields["projector_config"] = c.projector, dict(c.projector_config or {})
            if encoder is not None or c.projector:
                new_projectors.add(None)
            continue
        tower = towers.get(c.kind)
        if tower is None:
            if encoder is None:
                raise ConfigError(f"--projector {c.kind}=...: the model has no {c.kind!r} tower; add one with "
                                 f"--vision_model {c.kind}=NAME")
            tower = {"projector": "mlp1", "projector_config": {}}
        if encoder is not None:
            tower["vision_config"] = encoder.config
            built[c.kind] = encoder
        if c.projector:
            tower["projector"], tower["projector_config"] = c.projector, dict(c.projector_config or {})
        towers[c.kind] = tower
        new_projectors.add(c.kind)
    if downsample_ratio is not None and abs(float(downsample_ratio) - float(config.downsample_ratio)) > 1e-9:
        fields["downsample_ratio"] = downsample_ratio
        new_projectors.update([None, *towers])
    fields["vision_towers"] = towers
    for key in ("model_type", "architectures", "transformers_version"):
        fields.pop(key, None)
    fields["llm_config"] = config.llm_config
    return InternVLChatConfig(**fields), built, new_projectors




def compose_towers(model, changes: list[TowerChange], *, downsample_ratio: float | None = None):
    """A new ``InternVLChatModel`` with ``changes`` applied around ``model``: its LLM, and every encoder and
    projector the changes leave alone, are reused with their weights; new parts come from their factories."""
    from internvl.model.internvl_chat.modeling_internvl_chat import InternVLChatModel

    config, built, new_projectors = apply_tower_changes(model.config, changes, downsample_ratio=downsample_ratio)
    old_encoders = model.vision_encoders()
    towers = {kind: built.get(kind, old_encoders.get(kind)) for kind in config.vision_towers}
    new = InternVLChatModel(config, vision_model=built.get(None, model.vision_model),
                            language_model=model.language_model, towers=towers).float()
    for tower, projector in model.projectors().items():
        if tower in new_projectors or (tower is not None and tower not in new.vision_towers):
            continue
        if tower is None:
            new.mlp1 = projector
        else:
            new.vision_towers[tower].mlp1 = projector
    new.img_context_token_id = model.img_context_token_id
    return new


__all__ = ["TowerChange", "apply_tower_changes", "compose_towers", "parse_tower_flags", "touches_primary"]
