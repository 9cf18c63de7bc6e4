"""Which training samples are drawn: ``--use_data_resampling`` and the length estimates of ``group_by_length``.

``TrainDataset`` wraps the ``ConcatDataset`` that ``build_datasets`` returns.

* Without resampling it is the concatenation itself (the Trainer's sampler shuffles it).
* With ``--use_data_resampling`` (InternVL's ``WeightedConcatDataset``): as many draws as there are samples, each
  picking dataset *d* with probability proportional to ``sqrt(len(d))`` and then one of its samples uniformly,
  with replacement. Large datasets are thus down-weighted relative to their size. The draws come from a
  generator seeded with ``seed``, so every rank and every resumed run sees the same index map.

``estimated_lengths()`` gives ``group_by_length`` a token length per sample from the annotation rows only (no
media is loaded): the row's ``length`` field when present, else the tokenised conversation text plus
``num_image_token * (max_dynamic_patch + use_thumbnail)`` per media reference (InternVL's estimate; token counts
are cached by text length, as InternVL does). A row that cannot be parsed counts as length 0 here; reading it
for training reports it properly.
"""
from __future__ import annotations

import logging

import torch
from torch.utils.data import ConcatDataset, Dataset
from tqdm import tqdm

from internvl.media import reader_for_key
from internvl.train.dataset import NON_MEDIA_KEYS
from internvl.train.errors import DataError

logger = logging.getLogger(__name__)


class TrainDataset(Dataset):
    def __init__(self, concat: ConcatDataset, *, resample: bool = False, seed: int = 0):
        self.concat = concat
        self.index_map: list[int] | None = None
        if resample:
            sizes = torch.tensor([len(d) for d in concat.datasets], dtype=torch.float64)
            probs = sizes.sqrt() / sizes.sqrt().sum()
            gen = torch.Generator().manual_seed(seed)
            total = int(sizes.sum())
            which = torch.multinomial(probs, total, replacement=True, generator=gen)
            offsets = [0] + list(concat.cumulative_sizes[:-1])
            self.index_map = [offsets[d] + int(torch.randint(int(sizes[d]), (1,), generator=gen))
                              for d in which.tolist()]
            shares = torch.bincount(which, minlength=len(sizes)).tolist()
            for ds, share in zip(concat.datasets, shares):
                logger.info("data resampling: %r drawn %d times (%d samples)", getattr(ds.spec, "name", "?"),
                            share, len(ds))

    def __len__(self) -> int:
        return len(self.concat)

    def __getitem__(self, i: int):
        return self.concat[self.index_map[i] if self.index_map is not None else i]

    def estimated_lengths(self) -> list[int]:
        per_sample: list[int] = []
        for ds in self.concat.datasets:
            per_sample.extend(_dataset_lengths(ds))
        if self.index_map is None:
            return per_sample
        return [per_sample[j] for j in self.index_map]


def _dataset_lengths(ds) -> list[int]:
    tokenizer, config = ds.tokenizer, ds.config
    opts = ds.reader_options
    per_image = int(getattr(config, "num_image_token", 0)) * (
        int(opts.get("max_dynamic_patch", 1) if opts.get("dynamic_image_size") else 1)
        + int(bool(opts.get("use_thumbnail")) and bool(opts.get("dynamic_image_size"))))
    cache: dict[int, int] = {}
    line_lengths: dict[int, int] = {}
    for line in tqdm(sorted(set(ds.line_index)), desc=f"lengths {ds.spec.name}", leave=False):
        try:
            row = ds.index.read(line)
        except DataError:
            line_lengths[line] = 0
            continue
        if isinstance(row.get("length"), int):
            line_lengths[line] = row["length"]
            continue
        convs = row.get("conversations") or []
        text = "\n".join(t.get("value", "") for t in convs if isinstance(t, dict) and isinstance(t.get("value"), str))
        if len(text) not in cache:
            cache[len(text)] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        n_media = sum(len(v) if isinstance(v, list) else 1 for k, v in row.items()
                      if k not in NON_MEDIA_KEYS and v and reader_for_key(k) is not None)
        line_lengths[line] = cache[len(text)] + per_image * n_media
    return [line_lengths[line] for line in ds.line_index]


__all__ = ["TrainDataset"]
