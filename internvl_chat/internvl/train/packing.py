"""Packed training data (``--use_packed_ds``): whole samples back to back in rows of at most ``--max_packed_tokens``
tokens and ``--num_images_expected`` vision items, planned ahead.

Why planned: InternVL's packed dataset is an ``IterableDataset`` that fills greedy buffers as it reads, so it has
no length (``--max_steps`` is required), epochs are not defined, and resuming replays the stream. Here every
sample's exact size is known before any pixel is decoded (``RowProcessor.sample_size``: the tokenised text plus
each item's ``<IMG_CONTEXT>`` count, item shapes from the readers' ``item_shapes_many``), so the packs are planned
once per run and seed with best-fit decreasing (``plan_packs``). ``PackedDataset`` is then an ordinary map-style
dataset of packs: it has a length, the Trainer's sampler shuffles the packs each epoch, and a resumed run skips
exactly the batches it had seen. Every rank plans the same packs (the plan depends only on the data, the tokenizer,
the config and the seed). Sizing is the cost (tokenising every row: about 0.8 ms a row on one CPU core), so under
``torch.distributed`` each rank sizes every world-th sample and the sizes (or the errors) are all-gathered; every
rank then raises, counts skips and plans from the same full list, as one process would.

Rules:

* A sample is never split, so no ``<IMG_CONTEXT>`` run is ever cut. Samples are separated by their boundaries
  (``seq_lens``); position ids restart at 0 per sample; the first label of every sample is ``-100`` (no sample
  learns to predict the next one's first token). The collator (``DataCollator(packed=True)``) concatenates the
  packs of a micro-batch into one row and passes ``cu_seq_lens`` to the model (``internvl.model.varlen_attention``).
* A sample longer than ``--max_packed_tokens`` (after ``--max_seq_length`` truncation) or with more items than
  ``--num_images_expected`` is a ``DataError`` naming ``file:line`` (reason ``too_long``), or, with
  ``--skip_bad_samples``, a counted skip under that dataset's budget, like any other bad sample. So is a row that
  cannot be parsed or whose media cannot be sized while planning.
* A sample that fails to build when its pack is read (unreadable pixels) raises, or under ``--skip_bad_samples`` is
  left out of its pack (counted): packs only ever shrink, never exceed the budget. A pack left with no sample is
  replaced by the next pack (logged), as an unpacked dataset moves on to the next line.
* ``--max_buffer_size`` (InternVL: how many partial buffers its greedy packer keeps) is accepted for launch-script
  compatibility; the planner sees the whole dataset at once, so it has no effect here.
* ``--loss_reduction``: ``token`` (every trained token weighs the same), ``sample`` (each sample's tokens weigh
  ``1/n``, n its trained tokens) or ``square`` (``1/sqrt(n)``), InternVL's ``len2weight``; the collator writes the
  weights (``internvl.data.collate.loss_weights``), also for unpacked batches, so packed and unpacked training optimise the same loss.
"""
from __future__ import annotations

import bisect
import logging
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from internvl.constants import IGNORE_INDEX
from internvl.errors import TOO_LONG, DataError

logger = logging.getLogger(__name__)


def plan_packs(sizes: list[tuple[int, int]], max_tokens: int, max_items: int) -> list[list[int]]:
    """Best-fit decreasing: sample indices grouped into packs of at most ``max_tokens`` tokens and ``max_items``
    items. ``sizes[i] = (tokens, items)``; every size must fit on its own. Deterministic: ties keep index order;
    each pack lists its samples in index order."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][0], -sizes[i][1], i))
    packs: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, pack id), sorted
    free_items: list[int] = []
    for i in order:
        tokens, items = sizes[i]
        if tokens > max_tokens or items > max_items:
            raise ValueError(f"sample {i} ({tokens} tokens, {items} items) does not fit in a pack")
        pos = bisect.bisect_left(room, (tokens, -1))
        while pos < len(room) and free_items[room[pos][1]] < items:
            pos += 1
        if pos == len(room):
            packs.append([i])
            free_items.append(max_items - items)
            bisect.insort(room, (max_tokens - tokens, len(packs) - 1))
            continue
        free, pack = room.pop(pos)
        packs[pack].append(i)
        free_items[pack] -= items
        bisect.insort(room, (free - tokens, pack))
    return [sorted(p) for p in packs]


class PackedDataset(Dataset):
    """Packs of ``TrainDataset`` samples (module docstring). ``self.packs[p]`` lists the sample indices of pack p."""

    def __init__(self, train_dataset, *, max_packed_tokens: int, num_images_expected: int,
                 shard: tuple[int, int] | None = None, gather=None):
        """``shard`` = ``(rank, world)`` and ``gather`` (a list of every rank's result from this rank's) default to
        ``torch.distributed`` when it is initialised: each rank sizes every ``world``-th sample, the sizes are
        gathered, and every rank plans from the same full list."""
        if max_packed_tokens <= 0 or num_images_expected < 0:
            raise ValueError("max_packed_tokens must be > 0 and num_images_expected >= 0")
        self.train_dataset = train_dataset
        self.max_packed_tokens = max_packed_tokens
        self.num_images_expected = num_images_expected
        rank, world = shard or _rank_and_world()
        gather = gather or _all_gather
        n = len(train_dataset)
        mine = {i: self._size(i) for i in tqdm(range(rank, n, world), desc="planning packs", leave=False,
                                               disable=rank != 0)}
        every = {}
        for part in (gather(mine) if world > 1 else [mine]):
            every.update(part)
        sizes, kept = [], []
        for i in range(n):  # in sample order on every rank: the same errors, skips (counted once) and plan
            size = every[i]
            if isinstance(size, DataError):
                ds, line = train_dataset.locate(i)
                if not ds.skip_fraction:
                    raise size
                ds.record_bad(line, size)
                continue
            sizes.append(size)
            kept.append(i)
        if not kept:
            raise DataError("packed dataset", TOO_LONG, "no sample fits a pack")
        self.sizes = dict(zip(kept, sizes))
        self.packs = [[kept[j] for j in pack] for pack in plan_packs(sizes, max_packed_tokens, num_images_expected)]
        tokens = sum(t for t, _ in sizes)
        logger.info("packed %d samples (%d tokens, sized by %d process(es)) into %d packs of <= %d tokens / %d items: "
                    "%.1f%% of the pack budget filled", len(kept), tokens, world, len(self.packs), max_packed_tokens,
                    num_images_expected, 100.0 * tokens / (len(self.packs) * max_packed_tokens))

    def _size(self, i: int) -> tuple[int, int] | DataError:
        """Sample ``i``'s ``(tokens, items)``, or the ``DataError`` it is (raised or counted by the caller)."""
        ds, line = self.train_dataset.locate(i)
        try:
            tokens, items = ds.sample_size(line)
        except DataError as err:
            return _portable(err)
        if tokens > self.max_packed_tokens or items > self.num_images_expected:
            return DataError(ds.sample_ref_of_line(line), TOO_LONG,
                             f"sample of {tokens} tokens and {items} vision items does not fit a pack of "
                             f"--max_packed_tokens {self.max_packed_tokens} / --num_images_expected "
                             f"{self.num_images_expected}")
        return tokens, items

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, p: int) -> dict[str, Any]:
        for step in range(len(self.packs)):  # a pack whose every sample was skipped: the next pack, as unpacked
            q = (p + step) % len(self.packs)  # data moves on to the next line
            samples = []
            for i in self.packs[q]:
                ds, line = self.train_dataset.locate(i)
                try:
                    samples.append(ds.sample_at_line(line))
                except DataError as err:
                    if not ds.skip_fraction:
                        raise
                    ds.record_bad(line, err)
            if samples:
                return merge_samples(samples)
            logger.warning("pack %d: every sample was skipped (counted above); reading pack %d instead", q,
                           (q + 1) % len(self.packs))
        raise DataError("packed dataset", TOO_LONG, "every sample of every pack was skipped")

    def estimated_lengths(self) -> list[int]:
        return [sum(self.sizes[i][0] for i in pack) for pack in self.packs]


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(obj) -> list:
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _portable(err: DataError) -> DataError:
    """The same error as a plain ``DataError`` (any subclass's extra state dropped), so it pickles across ranks with
    its reference, reason and message."""
    return DataError(err.sample_ref, err.reason, err.message)


def merge_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples back to back: ids/labels concatenated (each sample's first label ``-100``), position ids restarting,
    items and kinds in order, ``seq_lens`` the boundaries."""
    labels = []
    for s in samples:
        lab = s["labels"].clone()
        lab[:1] = IGNORE_INDEX
        labels.append(lab)
    return {"input_ids": torch.cat([s["input_ids"] for s in samples]), "labels": torch.cat(labels),
            "attention_mask": torch.cat([s["attention_mask"] for s in samples]),
            "position_ids": torch.cat([torch.arange(len(s["input_ids"]), dtype=torch.long) for s in samples]),
            "pixel_values": [it for s in samples for it in s["pixel_values"]],
            "item_kinds": [k for s in samples for k in s["item_kinds"]],
            "seq_lens": [len(s["input_ids"]) for s in samples],
            "sample_ref": ",".join(s["sample_ref"] for s in samples),
            "num_trained": sum(int(s["num_trained"]) for s in samples), "truncated": False}


__all__ = ["PackedDataset", "merge_samples", "plan_packs"]
