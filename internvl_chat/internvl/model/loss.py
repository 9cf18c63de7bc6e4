"""The causal-LM loss of ``InternVLChatModel.forward``, with InternVL's per-token loss weights.

Targets are the labels shifted by one within each row (a packed row's samples start with a ``-100`` label, set by
the collator, so no sample is trained to predict the next sample's first token). Only positions with a target enter
the loss; cross-entropy in fp32.

* From the final hidden states and the LM head (``lm_head=``, what a training step uses): the head is applied only
  at the positions that have a target, so no logits are made for prompt, padding or image tokens (the full
  ``[B, T, vocab]`` logits of a padded batch are most of a step's memory on a large vocabulary). Same loss and
  gradients as from full logits.
* From full logits (``lm_head=None``): the same reduction over the same positions.
* No ``loss_weight`` (``--loss_reduction token``): the sum over trained tokens divided by ``num_items_in_batch``
  (the Trainer's count over all accumulated micro-batches and ranks) or, without it, by this batch's trained
  tokens: transformers' own reduction.
* ``loss_weight`` (``sample``/``square``; the collator gives every trained token of a sample with ``n`` trained
  tokens the weight ``1/n`` or ``1/sqrt(n)``, as InternVL's ``len2weight``): ``sum(w * ce) / sum(w)`` over the
  micro-batch; with ``loss_reduction_all_gather`` the denominator is averaged over the ranks first (InternVL's
  ``--loss_reduction_all_gather``), so every rank divides by the same number.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from internvl.constants import IGNORE_INDEX


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """``labels[:, t + 1]`` at position t, ``-100`` at the last position (the logits are used unshifted, so no copy
    of them is made)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy ``[B, T]`` of predicting the next label (0 where it is ignored, and at the last
    position)."""
    targets = shifted_targets(labels).to(logits.device)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                         ignore_index=IGNORE_INDEX, reduction="none")
    return ce.view(targets.shape)


def causal_lm_loss(states: torch.Tensor, labels: torch.Tensor, *,
                   lm_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   loss_weight: torch.Tensor | None = None, num_items_in_batch=None,
                   all_gather: bool = False) -> torch.Tensor:
    """The loss of ``states``: logits ``[B, T, V]``, or with ``lm_head`` the final hidden states ``[B, T, D]``
    (the head then runs only where there is a target)."""
    targets = shifted_targets(labels).to(states.device)
    trained = targets != IGNORE_INDEX
    rows = states[trained]
    logits = (lm_head(rows) if lm_head is not None else rows).float()
    if loss_weight is None:
        if num_items_in_batch is None:
            num_items_in_batch = trained.sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(logits.device)
        return F.cross_entropy(logits, targets[trained], reduction="sum") / num_items_in_batch
    ce = F.cross_entropy(logits, targets[trained], reduction="none")
    weight = F.pad(loss_weight[:, 1:], (0, 1)).to(logits.device, torch.float32)
    denom = weight.sum()  # 0 wherever nothing is trained, so the same as over the trained positions
    if all_gather and dist.is_available() and dist.is_initialized():
        denom = denom.detach().clone()
        dist.all_reduce(denom)
        denom = denom / dist.get_world_size()
    return (ce * weight[trained]).sum() / denom.clamp_min(torch.finfo(torch.float32).tiny)


__all__ = ["causal_lm_loss", "shifted_targets", "token_losses"]
