"""Batching samples of ``SupervisedDataset`` for ``InternVLChatModel.forward``.

* ``input_ids`` are padded with the tokenizer's pad id (InternVL pads with 0, a real token for Qwen2, and then
  derives the mask from ``!= 0``; we do not), ``labels`` with -100, ``attention_mask`` with 0, ``position_ids``
  with 0. Right padding for training (``padding_side="left"`` for generation).
* Media items are grouped by kind: ``pixel_values = {kind: items}`` where a kind's items (sample 0's first) are
  a ``Tensor [N, *shape]`` when they share one shape, else a ``list`` of N tensors; ``item_kinds`` lists every
  item's kind in prompt order over the batch, so the model scatters the towers' features in that order. A batch
  without media has ``pixel_values = {}`` (the model runs its towers on dummy items while training).
* ``sample_ref`` strings are kept under ``sample_refs`` only with ``return_refs=True`` (the model's ``forward``
  does not take them).
* ``packed=True`` (``--use_packed_ds``; samples are packs from ``internvl.train.packing``): the packs of the batch
  are concatenated into ONE row without padding; ``cu_seq_lens_q/k`` (int32 cumulative sample lengths, starting at
  0) and ``max_length_q/k`` tell the model where samples start. ``attention_mask`` is all ones (it only counts
  tokens; the model attends within samples).
* ``loss_reduction`` ``sample``/``square``: ``loss_weight`` per position (``internvl.train.packing.loss_weights``,
  per sample), packed or not, so both optimise the same loss. ``token`` adds nothing (transformers' reduction).
  ``loss_reduction_all_gather=True`` adds that flag for the model (``internvl.model.loss``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from internvl.constants import IGNORE_INDEX

LOSS_REDUCTIONS = ("token", "sample", "square")


def token_weight(n_trained: int, reduction: str) -> float:
    """Weight of each trained token of a sample with ``n_trained`` of them (InternVL's ``len2weight``)."""
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    if n_trained <= 0 or reduction == "token":
        return 1.0
    return 1.0 / n_trained if reduction == "sample" else 1.0 / math.sqrt(n_trained)


def loss_weights(labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-position weights of one sample's ``labels`` (0 where nothing is trained). Position 0 is never a
    target (targets are the labels shifted by one), so it is not counted."""
    trained = labels != IGNORE_INDEX
    trained[:1] = False
    return trained.float() * token_weight(int(trained.sum()), reduction)


def stack_items(items: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """``Tensor [N, *shape]`` if every item has one shape, else the list itself."""
    if items and all(it.shape == items[0].shape for it in items):
        return torch.stack(list(items))
    return list(items)


def _pad(seqs: list[torch.Tensor], value: int, length: int, left: bool) -> torch.Tensor:
    out = torch.full((len(seqs), length), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if left:
            out[i, length - len(s):] = s
        else:
            out[i, :len(s)] = s
    return out


class DataCollator:
    """Pads and concatenates samples (see the module docstring). Picklable, so DataLoader workers can use it."""

    def __init__(self, pad_token_id: int, *, padding_side: str = "right", pad_to_multiple_of: int | None = None,
                 return_refs: bool = False, packed: bool = False, loss_reduction: str = "token",
                 loss_reduction_all_gather: bool = False):
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token id; set tokenizer.pad_token (e.g. to <|endoftext|>)")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_refs = return_refs
        self.packed = packed
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be token, sample or square, got {loss_reduction!r}")
        self.loss_reduction = loss_reduction
        self.loss_reduction_all_gather = loss_reduction_all_gather

    def _padded_text(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(s["input_ids"]) for s in samples)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = (length + m - 1) // m * m
        left = self.padding_side == "left"
        batch: dict[str, Any] = {
            "input_ids": _pad([s["input_ids"] for s in samples], self.pad_token_id, length, left),
            "labels": _pad([s["labels"] for s in samples], IGNORE_INDEX, length, left),
            "attention_mask": _pad([s["attention_mask"] for s in samples], 0, length, left),
            "position_ids": _pad([s["position_ids"] for s in samples], 0, length, left),
        }
        if self.loss_reduction != "token":
            weights = [loss_weights(s["labels"], self.loss_reduction) for s in samples]
            batch["loss_weight"] = _pad(weights, 0, length, left)
        return batch

    def _packed_text(self, packs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        seq_lens = [n for p in packs for n in p["seq_lens"]]
        labels = torch.cat([p["labels"] for p in packs])
        cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(seq_lens, dtype=torch.int32), 0)
        longest = max(seq_lens)
        batch: dict[str, Any] = {
            "input_ids": torch.cat([p["input_ids"] for p in packs]).unsqueeze(0),
            "labels": labels.unsqueeze(0),
            "attention_mask": torch.ones(1, int(cu[-1]), dtype=torch.long),
            "position_ids": torch.cat([p["position_ids"] for p in packs]).unsqueeze(0),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
        }
        if self.loss_reduction != "token":
            bounds = cu.tolist()
            batch["loss_weight"] = torch.cat([loss_weights(labels[a:b], self.loss_reduction)
                                              for a, b in zip(bounds[:-1], bounds[1:])]).unsqueeze(0)
        return batch

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> "DataCollator":
        return cls(tokenizer.pad_token_id, **kwargs)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        for s in samples:
            if s is None:
                raise ValueError("a sample is None; SupervisedDataset never returns None (bad data raises or is "
                                 "replaced under skip_bad_samples)")
        if self.packed:
            batch = self._packed_text(samples)
        else:
            batch = self._padded_text(samples)
        if self.loss_reduction_all_gather and "loss_weight" in batch:
            batch["loss_reduction_all_gather"] = True
        items = [it for s in samples for it in s["pixel_values"]]
        kinds = [k for s in samples for k in s["item_kinds"]]
        if len(kinds) != len(items):
            raise ValueError(f"{len(items)} media items but {len(kinds)} item_kinds")
        batch["pixel_values"] = {kind: stack_items([it for it, k in zip(items, kinds) if k == kind])
                                 for kind in dict.fromkeys(kinds)}
        batch["item_kinds"] = kinds
        if self.return_refs:
            batch["sample_refs"] = [s.get("sample_ref") for s in samples]
        return batch


def collate(samples: Sequence[dict[str, Any]], pad_token_id: int, **kwargs) -> dict[str, Any]:
    """Functional form of ``DataCollator(pad_token_id, **kwargs)(samples)``."""
    return DataCollator(pad_token_id, **kwargs)(samples)


__all__ = ["DataCollator", "LOSS_REDUCTIONS", "collate", "loss_weights", "stack_items", "token_weight"]
