"""Checkpoint I/O for ``InternVLChatModel``: the three layouts an InternVL user meets, one loader.

1. Original OpenGVLab (``model_type: internvl_chat``): keys ``vision_model.*`` (InternViT's own names: fused
   ``attn.qkv``, ``ls1`` ...), ``mlp1.*``, ``language_model.*``; InternLM2 LLMs as ``tok_embeddings``/``wqkv``.
2. transformers-native ``-hf`` (``model_type: internvl``, ``InternVLForConditionalGeneration``): keys
   ``vision_tower.*``/``multi_modal_projector.*``/``language_model.model.*`` on disk (legacy) or
   ``model.vision_tower.*``/.../``lm_head.*`` (in-memory names).
3. Ours: layout 1 (a plugin encoder keeps its own key names under ``vision_model.``); a checkpoint saved while a
   backbone is LoRA-wrapped keeps peft's in-memory names (``use_backbone_lora`` in its config re-wraps on load).

In memory the vision weights of ``intern_vit`` use transformers' names (``vision_model.vit.*``); the encoder's
``state_dict_to_disk``/``state_dict_from_disk`` translate. Files are written atomically (tmp + rename).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from internvl.errors import InputError
from internvl.fileio import atomic_write_text
from internvl.model.llm import internlm2_state_to_llama, is_internlm2_state

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


class CheckpointError(InputError, ValueError):
    """A checkpoint directory we cannot read or map; the message names the file."""


# ---------------------------------------------------------------------------------------------- raw files
def read_config(path: str) -> dict:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file}: not found (is {path!r} a model directory?)")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file}: invalid JSON ({exc})") from exc


def read_tokenizer(path: str, **kwargs):
    """The checkpoint's tokenizer (no remote code); ``CheckpointError`` naming the folder if it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot load the tokenizer ({_first_line(exc)})") from exc


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as exc:  # SafetensorError, OSError, ...: a truncated or corrupt file, named
        raise CheckpointError(f"{file}: cannot read the weights ({type(exc).__name__}: {exc}); the file is "
                              f"truncated or corrupt") from exc


def read_weights(path: str) -> dict[str, torch.Tensor]:
    root = Path(path)
    if (root / WEIGHTS).is_file():
        return _load_safetensors(root / WEIGHTS)
    if (root / WEIGHTS_INDEX).is_file():
        try:
            index = json.loads((root / WEIGHTS_INDEX).read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{root / WEIGHTS_INDEX}: not a weight index ({exc})") from exc
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_safetensors(root / shard))
        return state
    if (root / "pytorch_model.bin").is_file():
        try:
            return torch.load(str(root / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{root / 'pytorch_model.bin'}: cannot read the weights ({exc})") from exc
    raise CheckpointError(f"{root}: no {WEIGHTS}, {WEIGHTS_INDEX} or pytorch_model.bin")


def _atomic_save(tensors: dict[str, torch.Tensor], file: Path, metadata: dict | None = None) -> None:
    tmp = file.with_name(file.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata or {"format": "pt"})
    os.replace(tmp, file)


# ---------------------------------------------------------------------------------------------- -hf layout
_HF_LEGACY = [(r"^vision_tower\.", "model.vision_tower."), (r"^multi_modal_projector\.", "model.multi_modal_projector."),
              (r"^language_model\.model\.", "model.language_model."), (r"^language_model\.lm_head\.", "lm_head.")]
_HF_TO_OURS = [(r"^model\.vision_tower\.", "vision_model.vit."),
               (r"^model\.multi_modal_projector\.layer_norm\.", "mlp1.0."),
               (r"^model\.multi_modal_projector\.linear_1\.", "mlp1.1."),
               (r"^model\.multi_modal_projector\.linear_2\.", "mlp1.3."),
               (r"^model\.language_model\.", "language_model.model."), (r"^lm_head\.", "language_model.lm_head.")]
_OURS_TO_HF = [(r"^vision_model\.vit\.", "model.vision_tower."),
               (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
               (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
               (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
               (r"^language_model\.model\.", "model.language_model."), (r"^language_model\.lm_head\.", "lm_head.")]


def _rename(state: dict, rules) -> dict:
    out = {}
    for key, val in state.items():
        for pat, rep in rules:
            key, n = re.subn(pat, rep, key)
            if n:
                break
        out[key] = val
    return out


def hf_state_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers-native keys (legacy on-disk or in-memory) -> our in-memory keys."""
    return _rename(_rename(state, _HF_LEGACY), _HF_TO_OURS)


def ours_state_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our in-memory keys -> ``InternVLForConditionalGeneration`` in-memory keys."""
    return _rename(state, _OURS_TO_HF)


def config_from_hf(cfg: dict) -> dict:
    """An ``InternVLConfig`` dict as the ``InternVLChatConfig`` kwargs that compute the same model."""
    vision = dict(cfg["vision_config"])
    vision["model_type"] = "internvl_vision"
    size = vision.get("image_size", [448, 448])
    size = size[0] if isinstance(size, (list, tuple)) else size
    if cfg.get("vision_feature_select_strategy", "default") != "default":
        raise CheckpointError("config.json: vision_feature_select_strategy "
                              f"{cfg['vision_feature_select_strategy']!r} is not InternVL's (CLS dropped)")
    if cfg.get("projector_hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"config.json: projector_hidden_act {cfg['projector_hidden_act']!r} is not gelu")
    return dict(vision_config=vision, llm_config=cfg["text_config"], select_layer=cfg.get("vision_feature_layer", -1),
                force_image_size=size, downsample_ratio=cfg.get("downsample_ratio", 0.5), template="internvl2_5",
                ps_version="v2", dynamic_image_size=True, use_thumbnail=True, max_dynamic_patch=12)


# ---------------------------------------------------------------------------------------------- our layout
def _split(state: dict, prefix: str) -> tuple[dict, dict]:
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return inside, rest


def _encoder_prefixes(model) -> dict[str, object]:
    """Key prefix -> unwrapped encoder, for the primary tower (``vision_model.``) and each extra tower."""
    out = {}
    for tower, enc in model.vision_encoders(unwrap=True).items():
        prefix = "vision_model." if tower is None else f"vision_towers.{tower}.vision_model."
        out[prefix] = enc
    return out


def _is_peft_key(key: str) -> bool:
    return key.startswith("base_model.model.")


def _map_encoders(model, state: dict[str, torch.Tensor], convert) -> dict[str, torch.Tensor]:
    """Apply each encoder's ``state_dict_to_disk``/``state_dict_from_disk`` to its own keys."""
    rest = dict(state)
    out: dict[str, torch.Tensor] = {}
    for prefix, encoder in _encoder_prefixes(model).items():
        inside, rest = _split(rest, prefix)
        if inside and not any(_is_peft_key(k) for k in inside):
            inside = convert(encoder, inside)
        out.update({prefix + k: v for k, v in inside.items()})
    out.update(rest)
    return out


def state_from_disk(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """On-disk keys (any of our layouts) -> in-memory keys. In-memory keys pass through unchanged."""
    state = _map_encoders(model, state, lambda enc, st: enc.state_dict_from_disk(st))
    llm, rest = _split(state, "language_model.")
    if llm and not any(_is_peft_key(k) for k in llm) and is_internlm2_state(llm):
        llm = internlm2_state_to_llama(llm, model.config.llm_config)
    out = {f"language_model.{k}": v for k, v in llm.items()}
    out.update(rest)
    return out


def state_to_disk(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _map_encoders(model, state, lambda enc, st: enc.state_dict_to_disk(st))


def save_model(model, path: str, state_dict: dict | None = None, max_shard_bytes: int = 5 * 2 ** 30, **_) -> None:
    """Write ``config.json`` + safetensors (sharded above ``max_shard_bytes``), each file atomically."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    state = dict(state_dict if state_dict is not None else model.state_dict())
    llm = model.language_model
    head, emb = llm.get_output_embeddings(), llm.get_input_embeddings()
    # the same Parameter object, not the same storage: under ZeRO-3 every partitioned weight is an empty tensor at
    # address 0, which would make an untied head look tied (and leave it out of the file)
    tied = head is not None and head.weight is emb.weight
    if tied:  # one storage, written once; loading re-ties when the head key is absent
        state = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_to_disk(model, state).items()}
    total = sum(v.numel() * v.element_size() for v in state.values())
    if total <= max_shard_bytes:
        _atomic_save(state, root / WEIGHTS)
    else:
        shards, current, size = [], {}, 0
        for key, val in state.items():
            nbytes = val.numel() * val.element_size()
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[key] = val
            size += nbytes
        shards.append(current)
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, root / name)
            weight_map.update({k: name for k in shard})
        atomic_write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2),
                           root / WEIGHTS_INDEX)
    cfg = model.config.to_dict()
    cfg["llm_config"]["tie_word_embeddings"] = bool(tied)
    atomic_write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n", root / "config.json")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def build_config(config_class, kwargs: dict, path: str):
    """The model config from a checkpoint's fields; ``CheckpointError`` naming its ``config.json`` otherwise."""
    try:
        return config_class(**kwargs)
    except Exception as exc:  # re-raised naming the file (transformers raises several validation types)
        raise CheckpointError(f"{Path(path) / 'config.json'}: cannot build the model config: "
                              f"{_first_line(exc)}") from exc


def read_model_config(config_class, path: str):
    """An ``internvl_chat`` checkpoint's config (what ``check_data`` needs), errors naming the file."""
    raw = read_config(path)
    if raw.get("model_type") != "internvl_chat":
        raise CheckpointError(f"{Path(path) / 'config.json'}: model_type {raw.get('model_type')!r} is not "
                              f"'internvl_chat'")
    return build_config(config_class, {k: v for k, v in raw.items() if k not in ("auto_map", "transformers_version")},
                        path)


def load_model(cls, path: str, dtype=None, device=None, **overrides):
    """Build the model a checkpoint describes and load its weights (strict: every key must match)."""
    from accelerate import init_empty_weights

    raw = read_config(path)
    model_type = raw.get("model_type")
    if model_type not in ("internvl_chat", "internvl"):
        raise CheckpointError(f"{Path(path) / 'config.json'}: model_type {model_type!r} is not an InternVL checkpoint "
                              "we can map (expected 'internvl_chat' (original) or 'internvl' (-hf))")
    state = read_weights(path)
    if model_type == "internvl_chat":
        kwargs = {k: v for k, v in raw.items() if k not in ("auto_map", "transformers_version")}
    else:
        kwargs = config_from_hf(raw)
        state = hf_state_to_ours(state)
    kwargs.update(overrides)
    config = build_config(cls.config_class, kwargs, path)
    head_saved = any(k.endswith("lm_head.weight") or k == "language_model.output.weight" for k in state)
    config.llm_config.tie_word_embeddings = not head_saved
    lora_llm, lora_vit = config.use_llm_lora, config.use_backbone_lora
    config.use_llm_lora = config.use_backbone_lora = 0
    with init_empty_weights():
        model = cls(config)
    if lora_vit:
        model.wrap_backbone_lora(r=lora_vit)
    if lora_llm:
        model.wrap_llm_lora(r=lora_llm)
    # clone: safetensors' mmap'd tensors can sit at unaligned offsets, which under assign=True sends some kernels
    # down another code path (logits then differ in the last bits from the saved model's)
    state = {k: v.clone() for k, v in state_from_disk(model, state).items()}
    expected = set(model.state_dict())
    if not head_saved:
        expected = {k for k in expected if not k.endswith("lm_head.weight")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config: missing {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''}")
    try:
        torch.nn.Module.load_state_dict(model, state, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not match the config: {exc}") from exc
    if not head_saved:
        model.language_model.get_output_embeddings().weight = model.language_model.get_input_embeddings().weight
    if dtype not in (None, "auto"):
        model = model.to(dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype))
    elif dtype is None:
        model = model.float()
    if device is not None and device != "auto":
        model = model.to(device)
    elif device == "auto" and torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model
