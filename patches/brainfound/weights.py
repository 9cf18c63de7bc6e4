"""Weight sources for ``brainfound_unet`` and the atomic safetensors writer of the Brainfound stages.

``resolve_source(path)`` recognises:

* a saved encoder (``save_pretrained`` dir: ``config.json`` naming ``brainfound_unet`` + ``model.safetensors``),
  what stage 2 exports as ``<out>/vision_encoder``;
* a diffusers UNet dir (``config.json`` with ``_class_name: UNet2DConditionModel`` +
  ``diffusion_pytorch_model.safetensors``, optional ``modality_embedding.safetensors``), what stage 1 exports as
  ``<out>/unet``;
* a stage output dir holding one of those (``vision_encoder/`` preferred over ``unet/``);
* a state-dict file: ``.safetensors``, or ``.pt/.pth/.bin/.pkl/.ckpt`` read with ``torch.load(weights_only=True)``
  (e.g. Brainfound's own ``ddpm.pkl``). Key prefixes such as ``vision_encoder_q.`` / ``model.model.`` /
  ``module.`` are stripped by matching key suffixes against the UNet's own names.

``load_into(model, src)`` requires every encoder-path UNet weight; a missing one is an error naming the file. The
feature head and modality embedding may be absent (they are then kept as initialised, and the log says so); the
UNet's mid/up path in a source is ignored when the encoder is ``down_path_only`` (counted in the log).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

ENCODER_WEIGHTS = "model.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
MODALITY_FILE = "modality_embedding.safetensors"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
_UP_PATH = {"mid_block", "up_blocks", "conv_out", "conv_norm_out"}
_META = {"model_type", "transformers_version", "architectures", "encoder_name", "_name_or_path", "dtype",
         "torch_dtype", "_attn_implementation_autoset", "output_attentions", "output_hidden_states", "return_dict",
         "use_return_dict", "_commit_hash"}


@dataclass
class WeightSource:
    kind: str  # "encoder" | "diffusers" | "file"
    path: Path
    config_dict: dict[str, Any] = field(default_factory=dict)


def resolve_source(path: str | os.PathLike) -> WeightSource:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"brainfound_unet pretrained_path {p}: no such file or directory")
    if p.is_file():
        if p.suffix != ".safetensors" and p.suffix not in _TORCH_SUFFIXES:
            raise ValueError(f"{p}: unsupported weight file type (want .safetensors or {', '.join(_TORCH_SUFFIXES)})")
        return WeightSource("file", p)
    cfg_path = p / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        if (cfg.get("encoder_name") or cfg.get("model_type")) == "brainfound_unet" and (p / ENCODER_WEIGHTS).is_file():
            return WeightSource("encoder", p, {k: v for k, v in cfg.items() if k not in _META})
        if cfg.get("_class_name") == "UNet2DConditionModel" and (p / DIFFUSERS_WEIGHTS).is_file():
            return WeightSource("diffusers", p, _encoder_fields_from_diffusers(p, cfg))
    for sub in ("vision_encoder", "unet"):
        if (p / sub).is_dir():
            return resolve_source(p / sub)
    raise ValueError(f"{p}: not a brainfound_unet encoder dir, a diffusers UNet dir, or a stage output dir "
                     f"(expected config.json + {ENCODER_WEIGHTS} or {DIFFUSERS_WEIGHTS}, or vision_encoder/ or unet/)")


def _encoder_fields_from_diffusers(path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """``brainfound_unet`` config fields a stage-1 UNet dir determines (architecture, modality names/prompts)."""
    if cfg.get("encoder_hid_dim_type") != "text_proj":
        raise ValueError(f"{path}: UNet encoder_hid_dim_type is {cfg.get('encoder_hid_dim_type')!r}, "
                         f"brainfound_unet needs 'text_proj'")
    out = {"image_size": cfg["sample_size"], "in_channels": cfg["in_channels"],
           "block_out_channels": cfg["block_out_channels"], "layers_per_block": cfg["layers_per_block"],
           "down_block_types": cfg["down_block_types"], "up_block_types": cfg["up_block_types"],
           "norm_num_groups": cfg["norm_num_groups"], "cross_attention_dim": cfg["cross_attention_dim"],
           "attention_head_dim": cfg["attention_head_dim"], "encoder_hid_dim": cfg["encoder_hid_dim"]}
    if (path / MODALITY_FILE).is_file():
        from safetensors import safe_open

        with safe_open(str(path / MODALITY_FILE), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "modalities" in meta:
            out["modalities"] = json.loads(meta["modalities"])
        if "prompts" in meta:
            out["modality_prompts"] = json.loads(meta["prompts"])
    return out


def read_state_dict(src: WeightSource) -> dict[str, torch.Tensor]:
    """Raw tensors of a source, keyed as the encoder's own ``state_dict`` where the layout is known."""
    if src.kind == "encoder":
        return load_file(str(src.path / ENCODER_WEIGHTS))
    if src.kind == "diffusers":
        state = {f"unet.{k}": v for k, v in load_file(str(src.path / DIFFUSERS_WEIGHTS)).items()}
        if (src.path / MODALITY_FILE).is_file():
            state["modality_embedding"] = load_file(str(src.path / MODALITY_FILE))["modality_embedding"]
        return state
    if src.path.suffix == ".safetensors":
        return load_file(str(src.path))
    obj = torch.load(src.path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{src.path}: not a state dict of tensors")
    return obj


def _map_key(key: str, targets: set[str]) -> str | None:
    if key in targets:
        return key
    parts = key.split(".")
    for i in range(len(parts)):
        rest = ".".join(parts[i:])
        for cand in (rest, f"unet.{rest}"):
            if cand in targets:
                return cand
    return None


def load_into(model: torch.nn.Module, src: WeightSource) -> dict[str, int]:
    """Load ``src`` into a ``BrainfoundUNetEncoder``; returns counts (loaded, fresh_head, ignored_up, unmatched)."""
    own = model.state_dict()
    targets = set(own)
    raw = read_state_dict(src)
    mapped: dict[str, torch.Tensor] = {}
    up_ignored, unmatched = 0, []
    for key, value in raw.items():
        dest = _map_key(key, targets)
        if dest is None:
            if any(part in _UP_PATH for part in key.split(".")):
                up_ignored += 1
            else:
                unmatched.append(key)
            continue
        if tuple(value.shape) != tuple(own[dest].shape):
            raise ValueError(f"{src.path}: weight {key!r} has shape {tuple(value.shape)}, the encoder's {dest!r} "
                             f"has {tuple(own[dest].shape)}; does the config (preset/overrides) match the source?")
        mapped[dest] = value
    missing_unet = sorted(k for k in targets if k.startswith("unet.") and k not in mapped)
    if missing_unet:
        raise ValueError(f"{src.path}: {len(missing_unet)} UNet weights missing, e.g. {missing_unet[:5]}")
    model.load_state_dict(mapped, strict=False)
    fresh = sorted(k for k in targets if not k.startswith("unet.") and k not in mapped)
    if fresh:
        logger.info("brainfound_unet: %d tensors not in %s kept as initialised: %s", len(fresh), src.path,
                    ", ".join(fresh[:8]))
    if up_ignored:
        logger.info("brainfound_unet: ignored %d mid/up-path UNet tensors from %s (encoder is down-path only)",
                    up_ignored, src.path)
    if unmatched:
        logger.warning("brainfound_unet: %d tensors in %s match no encoder weight and were not used, e.g. %s",
                       len(unmatched), src.path, unmatched[:5])
    return {"loaded": len(mapped), "fresh": len(fresh), "ignored_up": up_ignored, "unmatched": len(unmatched)}


# --------------------------------------------------------------------------------------------- atomic writes
# (text files and folders: the core's ``internvl.fileio``; one safetensors file: here, as the core keeps its own
# writer private)
def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
