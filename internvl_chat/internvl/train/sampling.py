"""Which training samples are drawn: ``--use_data_resampling`` and the length estimates of ``group_by_length``.

``TrainDataset`` wraps the ``ConcatDataset`` that ``build_datasets`` returns.

* Without resampling it is the concatenation itself (the Trainer's sampler shuffles it).
* With ``--use_data_resampling`` (InternVL's ``WeightedConcatDataset``): as many draws as there are samples, each
  picking dataset *d* with probability proportional to ``sqrt(len(d))`` and then one of its samples uniformly,
  with replacement. Large datasets are thus down-weighted relative to their size. The draws come from a
  generator seeded with ``seed``, so every rank and every resumed run sees the same index map.

``estimated_lengths()`` gives ``group_by_length`` a token length per sample from the annotation rows only (no
media is loaded): ``RowProcessor.estimate_length``, i.e. the row's ``length`` field when present, else its text's
tokens plus, per media reference, the most context tokens its reader can yield (for images InternVL's
``num_image_token * (max_dynamic_patch + use_thumbnail)``). A row that cannot be parsed counts as length 0 here;
reading it for training reports it properly.
"""
from __future__ import annotations

import bisect
import logging

import torch
from torch.utils.data import ConcatDataset, Dataset
from tqdm import tqdm


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

    def locate(self, i: int):
        """``(SupervisedDataset, annotation line)`` of sample ``i``."""
        j = self.index_map[i] if self.index_map is not None else i
        d = bisect.bisect_right(self.concat.cumulative_sizes, j)
        ds = self.concat.datasets[d]
        local = j - (self.concat.cumulative_sizes[d - 1] if d else 0)
        return ds, ds.line_index[local]

    def estimated_lengths(self) -> list[int]:
        per_sample: list[int] = []
        for ds in self.concat.datasets:
            per_sample.extend(_dataset_lengths(ds))
        if self.index_map is None:
            return per_sample
        return [per_sample[j] for j in self.index_map]


def _dataset_lengths(ds) -> list[int]:
    per_line = {line: ds.estimated_length(line)
                for line in tqdm(sorted(set(ds.line_index)), desc=f"lengths {ds.spec.name}", leave=False)}
    return [per_line[line] for line in ds.line_index]


__all__ = ["TrainDataset"]
