"""Load a pretrained backbone (a JEPA or classification checkpoint of ``patches.neuro.train``) into a neuro encoder.

Why: the VLM fine-tune builds its encoder from a config (``--vision_model neurovfm_tokens_tiny --vision_overrides
'{"pretrained": "exp/models/last.ckpt", "remove_prefix": "student_encoder."}'``); the encoder's constructor calls
``load_backbone`` when ``config.pretrained`` is set, so the core needs no new hook. The training checkpoints keep
the backbone under a prefix (``student_encoder.`` / ``teacher_encoder.`` in pretraining, ``backbone.`` in
classification); ``remove_prefix`` selects it and strips it, as NeuroVFM's ``load_backbone.remove_prefix`` does.

Strict: after the prefix is removed, the file's keys must be exactly the encoder's keys (except the encoder's own
study-pooling ``mil.*`` head, which no backbone checkpoint holds and which the VLM fine-tune trains), with equal
shapes. Anything else is a ``PretrainedLoadError`` naming the file and the keys. Files are read with safetensors
only (never unpickled); a ``.pt``/``.pth`` pickle is refused.
"""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

# encoder parts that a backbone checkpoint never holds (trained in the VLM fine-tune)
VLM_ONLY_PREFIXES = ("mil.",)


class PretrainedLoadError(ValueError):
    """A pretrained backbone file that cannot be loaded strictly (message names the file)."""


def read_backbone_state(path: str, remove_prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of ``path`` (safetensors) under ``remove_prefix``, with the prefix removed."""
    if not os.path.isfile(path):
        raise PretrainedLoadError(f"{path}: pretrained backbone file not found")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise PretrainedLoadError(f"{path}: not a safetensors file ({exc}); pickled .pt/.pth checkpoints are not "
                                  f"loaded (convert them with safetensors.torch.save_file)") from exc
    if remove_prefix:
        state = {k[len(remove_prefix):]: v for k, v in state.items() if k.startswith(remove_prefix)}
        if not state:
            raise PretrainedLoadError(f"{path}: no tensor key starts with remove_prefix={remove_prefix!r}")
    return state


def load_backbone(model: torch.nn.Module, path: str, remove_prefix: str = "") -> None:
    """Copy the backbone weights of ``path`` into ``model`` in place, strictly (see the module docstring)."""
    if any(p.is_meta for p in model.parameters()):
        return  # built empty by from_pretrained: its own checkpoint fills the weights
    state = read_backbone_state(path, remove_prefix)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(VLM_ONLY_PREFIXES)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else "",
                 f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}" if unexpected else "",
                 f"shape mismatch {shapes[:4]}" if shapes else ""]
        raise PretrainedLoadError(f"{path}: backbone keys do not match the encoder {type(model).__name__} "
                                  f"(remove_prefix={remove_prefix!r}): " + "; ".join(p for p in parts if p))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(v.dtype))
