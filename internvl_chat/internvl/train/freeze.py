"""What trains: InternVL's freeze / LoRA flags applied to an ``InternVLChatModel``, and a per-module count.

Order (InternVL's, with its lm_head bug fixed):

1. ``--freeze_backbone``: vision encoder ``requires_grad=False`` (it stays in train mode, as in InternVL, so
   stochastic depth still acts); ``--freeze_llm``: the LLM is frozen and put in eval mode; ``--freeze_mlp``.
2. LoRA (``--use_backbone_lora r`` / ``--use_llm_lora r``) through the model's ``wrap_*_lora`` (peft, alpha 2r,
   dropout 0.05, InternVL's target modules per LLM family). peft freezes the wrapped module's base weights.
3. ``--unfreeze_lm_head``: ``requires_grad=True`` on the lm_head *weight* after wrapping (InternVL sets it on the
   module object, which does nothing). With LoRA the head stays a plain trainable parameter inside the peft
   model, so it is saved under peft's names and kept by ``merge_lora``. If the head is tied to the input
   embeddings, both train (they are one tensor); this is logged.
4. ``--unfreeze_vit_layers N``: vision layers ``[N:]`` train again (negative N: the last |N|), in every tower;
   the layer list is what each encoder declares (``VisionEncoder.layer_list``).

The vision flags apply to every tower of a model with several (``--freeze_backbone`` freezes every encoder,
``--freeze_mlp`` every projector, backbone LoRA wraps every encoder).
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from torch import nn

logger = logging.getLogger(__name__)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for param in module.parameters():
        param.requires_grad = flag


def _base(module: nn.Module) -> nn.Module:
    """The model inside a peft wrapper (or the module itself)."""
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def lm_head(model: nn.Module) -> nn.Module:
    head = _base(model.language_model).get_output_embeddings()
    if head is None:
        raise ValueError("the language model has no output embeddings (lm_head) to unfreeze")
    return head


def vision_layers(vision_model: nn.Module) -> nn.ModuleList:
    """The encoder's declared block list (``VisionEncoder.layer_list``), also inside a peft wrapper."""
    return _base(vision_model).layer_list()


def configure_trainable(model: nn.Module, model_args) -> None:
    """Apply the freeze/LoRA/unfreeze flags of ``ModelArguments`` to ``model`` in InternVL's order."""
    if model_args.freeze_backbone:
        for encoder in model.vision_encoders().values():
            set_requires_grad(encoder, False)
    if model_args.freeze_llm:
        model.language_model = model.language_model.eval()
        set_requires_grad(model.language_model, False)
    if model_args.freeze_mlp:
        for projector in model.projectors().values():
            set_requires_grad(projector, False)

    if model_args.use_backbone_lora:
        model.wrap_backbone_lora(r=model_args.use_backbone_lora, lora_alpha=2 * model_args.use_backbone_lora)
    if model_args.use_llm_lora:
        model.wrap_llm_lora(r=model_args.use_llm_lora, lora_alpha=2 * model_args.use_llm_lora)

    if model_args.unfreeze_lm_head:
        head = lm_head(model)
        head.weight.requires_grad = True
        embeddings = _base(model.language_model).get_input_embeddings()
        if embeddings is not None and embeddings.weight is head.weight:
            logger.warning("--unfreeze_lm_head: lm_head is tied to the input embeddings; both train")

    n = model_args.unfreeze_vit_layers
    if n:
        for tower, encoder in model.vision_encoders().items():
            layers = vision_layers(encoder)
            chosen = list(layers)[n:]
            for layer in chosen:
                set_requires_grad(layer, True)
            logger.info("--unfreeze_vit_layers %d: training %d of %d layers of %s", n, len(chosen), len(layers),
                        "the primary encoder" if tower is None else f"the {tower!r} encoder")


def trainable_summary(model: nn.Module) -> "OrderedDict[str, tuple[int, int]]":
    """``{part: (trainable, total)}`` for vision_model, mlp1, each extra tower, language_model and its lm_head (a
    subset)."""
    out: OrderedDict[str, tuple[int, int]] = OrderedDict()
    parts = [("vision_model", model.vision_model), ("mlp1", model.mlp1)]
    parts += [(f"vision_towers.{kind}", tower) for kind, tower in model.vision_towers.items()]
    parts.append(("language_model", model.language_model))
    for name, module in parts:
        params = list(module.parameters())
        out[name] = (sum(_numel(p) for p in params if p.requires_grad), sum(_numel(p) for p in params))
    head = lm_head(model).weight
    out["lm_head"] = (_numel(head) if head.requires_grad else 0, _numel(head))
    return out


def _numel(param) -> int:
    """Parameter count, also for ZeRO-3 partitioned parameters (whose local tensor is empty)."""
    return int(getattr(param, "ds_numel", param.numel()))


def format_summary(summary) -> str:
    rows = [f"  {name:<15} {t:>14,d} / {n:>14,d} trainable" for name, (t, n) in summary.items()]
    return "trainable parameters:\n" + "\n".join(rows)


__all__ = ["configure_trainable", "format_summary", "lm_head", "set_requires_grad", "trainable_summary",
           "vision_layers"]
