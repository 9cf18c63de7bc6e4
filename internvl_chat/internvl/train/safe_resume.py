"""Resuming never unpickles code: DeepSpeed's checkpoint files are read weights-only.

transformers reads its own resume files (optimizer, scheduler, RNG states) with ``torch.load(weights_only=True)``,
but DeepSpeed reads ``mp_rank_*_model_states.pt`` and its ZeRO optimizer shards with ``weights_only=False``: any
``checkpoint-N`` placed in ``OUTPUT_DIR`` would run code on the next launch. ``use_weights_only_deepspeed_loads``
makes DeepSpeed's checkpoint engine load weights-only, allowing just the plain data classes DeepSpeed itself
stores (loss scaler, ZeRO stage enum, fragment addresses). A file that needs anything else is refused with a
``CheckpointError`` naming it. ``--trust_checkpoint_pickles True`` restores DeepSpeed's own unrestricted loading,
for checkpoints the user made and trusts.
"""
from __future__ import annotations

import importlib
import logging
import pickle

import torch

from internvl.errors import ConfigError
from internvl.model.checkpoint import CheckpointError

logger = logging.getLogger(__name__)

# (module, name) of the classes DeepSpeed's own checkpoints hold (seen in ZeRO-1/2/3 checkpoints, fp32 and fp16)
DEEPSPEED_CHECKPOINT_CLASSES = (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                                ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                                ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                                ("deepspeed.utils.tensor_fragment", "fragment_address"))


def deepspeed_safe_classes() -> list[type]:
    out = []
    for module, name in DEEPSPEED_CHECKPOINT_CLASSES:
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: that class is not stored either
            continue
    return out


def load_weights_only(path: str, map_location=None):
    """``torch.load`` of a DeepSpeed checkpoint file, weights-only with DeepSpeed's data classes allowed."""
    try:
        with torch.serialization.safe_globals(deepspeed_safe_classes()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused to unpickle it ({first}); a checkpoint holding code is never loaded. "
                              f"If you made this checkpoint yourself and trust it, pass "
                              f"--trust_checkpoint_pickles True") from exc


def use_weights_only_deepspeed_loads(trust_pickles: bool = False, deepspeed_config=None) -> None:
    """Route DeepSpeed's checkpoint reads through ``load_weights_only`` (unless the user trusts the pickles).

    DeepSpeed's universal-checkpoint loading (``checkpoint.load_universal``) calls ``torch.load`` itself, past the
    engine: it is refused unless the pickles are trusted."""
    import json

    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    cfg = deepspeed_config
    if isinstance(cfg, str):
        with open(cfg, encoding="utf-8") as fh:
            cfg = json.load(fh)
    if isinstance(cfg, dict) and (cfg.get("checkpoint") or {}).get("load_universal") and not trust_pickles:
        raise ConfigError("DeepSpeed config sets checkpoint.load_universal, whose loader unpickles without "
                          "restriction; pass --trust_checkpoint_pickles True for a universal checkpoint you made")
    if trust_pickles:
        logger.warning("--trust_checkpoint_pickles: DeepSpeed checkpoint files are unpickled without restriction")
        return

    def load(self, path: str, map_location=None):
        return load_weights_only(path, map_location)

    TorchCheckpointEngine.load = load


__all__ = ["DEEPSPEED_CHECKPOINT_CLASSES", "load_weights_only", "use_weights_only_deepspeed_loads"]
