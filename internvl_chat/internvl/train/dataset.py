"""Supervised fine-tuning data: one meta-JSON entry's JSONL file -> tokenised samples with their media items.

Rows become samples through ``internvl.data.processor.RowProcessor`` (the one row -> tokens path, shared with
evaluation and chat; see there for media keys, placeholders, towers and counts). A text-only row carries no item:
the model runs every tower on a dummy item itself while training, so ZeRO-3/DDP never hang on text-only batches.

Per sample: ``input_ids``, ``labels``, ``attention_mask``, ``position_ids`` (1-D, unpadded), ``pixel_values``
(list of item tensors, prompt order), ``item_kinds`` (each item's media kind), ``sample_ref`` (``"file.jsonl:17"``),
``num_trained``.

Bad data (``DataError``, see ``internvl.errors``) raises naming ``file:line`` by default. With
``skip_bad_samples`` (True = 1%, or a fraction in (0, 1)) a bad sample is logged with ``file:line`` and counted,
and the dataset returns the next good sample in index order instead (deterministic: index ``i`` is always
replaced by the first good one of ``i+1, i+2, ...``; the replacement is seen once more that epoch). The budget
is ``floor(fraction * distinct lines the dataset uses)`` distinct bad lines, counted across DataLoader workers
of one process through shared memory (each DDP rank counts its own); one more raises ``SkipBudgetExceeded``.
``TemplateError`` (template/tokenizer mismatch) is never skipped. A sample whose text is cut at ``max_seq_length``
is logged with ``file:line`` and counted (``truncated_count``); it still trains.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from internvl.data.jsonl import JsonlIndex
from internvl.data.meta import DatasetSpec, load_meta, select_lines
from internvl.data.processor import RowProcessor
from internvl.errors import DataError, SkipBudgetExceeded
from internvl.prompt import check_template

logger = logging.getLogger(__name__)

DEFAULT_SKIP_FRACTION = 0.01


def skip_fraction(skip_bad_samples: bool | float | None) -> float:
    """``False``/``None``/0 -> 0 (raise on the first bad sample); ``True`` -> 1%; a float in (0, 1) as is."""
    if skip_bad_samples is None or skip_bad_samples is False:
        return 0.0
    if skip_bad_samples is True:
        return DEFAULT_SKIP_FRACTION
    frac = float(skip_bad_samples)
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"skip_bad_samples must be a fraction in [0, 1), got {skip_bad_samples!r}")
    return frac


class SupervisedDataset(Dataset):
    """One meta-JSON entry: a lazily read JSONL file of conversations with media (see the module docstring)."""

    def __init__(self, spec: DatasetSpec, tokenizer, config, *, template_name: str | None = None,
                 max_seq_length: int = 8192, data_options: dict[str, Any] | None = None, is_train: bool = True,
                 skip_bad_samples: bool | float = False, seed: int = 0):
        """
        Args:
            spec: the dataset's meta entry (``internvl.data.meta.load_meta``).
            tokenizer: tokenizer with the template's tokens and InternVL's special tokens.
            config: the ``InternVLChatConfig`` (tile size, encoder, projector, token counts).
            template_name: conversation template; default ``config.template``.
            max_seq_length: tokens per sample; longer text is truncated, image spans never (``DataError``).
            data_options: media-reader options (``dynamic_image_size``, ``use_thumbnail``, ``min_dynamic_patch``,
                ``max_dynamic_patch``, ``normalize_type``, ...); the meta entry's extra keys override them.
            is_train: augment media of datasets whose meta says ``data_augment``.
            skip_bad_samples: the bad-data budget (module docstring).
            seed: seed of the ``repeat_time`` subset draw.
        """
        self.spec = spec
        self.tokenizer = tokenizer
        self.config = config
        self.template_name = template_name or getattr(config, "template", None)
        if not self.template_name:
            raise ValueError("no conversation template: pass template_name or set config.template")
        self.max_seq_length = max_seq_length
        self.processor = RowProcessor(config, tokenizer, template=self.template_name, options=data_options,
                                      max_seq_length=max_seq_length)
        self.is_train = is_train
        try:
            self.index = JsonlIndex(spec.annotation)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"dataset {spec.name!r}: annotation {spec.annotation} not found "
                                    f"(meta {spec.meta_path})") from exc
        self.line_index = select_lines(len(self.index), spec.repeat_time, seed, spec.name)
        check_template(self.template_name, tokenizer, sample_ref=f"dataset {spec.name!r} ({spec.annotation})")
        self._truncated = mp.Value("l", 0)  # shared with DataLoader workers
        self.skip_fraction = skip_fraction(skip_bad_samples)
        self.bad_budget = int(self.skip_fraction * len(set(self.line_index)))
        if self.skip_fraction:
            self._bad_lines = mp.Array("b", max(len(self.index), 1))  # shared with DataLoader workers
            self._bad_count = mp.Value("l", 0)

    def __len__(self) -> int:
        return len(self.line_index)

    def sample_ref(self, i: int) -> str:
        return self.index.ref(self.line_index[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._note_truncated(self._get(i))

    def sample_at_line(self, line: int) -> dict[str, Any]:
        """The sample of annotation row ``line`` (raises ``DataError``; packing handles skips itself)."""
        return self._note_truncated(self.build(line))

    def _note_truncated(self, sample: dict[str, Any]) -> dict[str, Any]:
        if sample["truncated"]:
            with self._truncated.get_lock():
                self._truncated.value += 1
                count = self._truncated.value
            logger.warning("%s: text truncated to max_seq_length %d (%d truncated sample(s) so far in dataset %r)",
                           sample["sample_ref"], self.max_seq_length, count, self.spec.name)
        return sample

    @property
    def truncated_count(self) -> int:
        """Samples built so far whose text was cut at ``max_seq_length`` (across DataLoader workers)."""
        return self._truncated.value

    def _get(self, i: int) -> dict[str, Any]:
        if not self.skip_fraction:
            return self.build(self.line_index[i])
        n = len(self)
        for step in range(n):
            line = self.line_index[(i + step) % n]
            try:
                return self.build(line)
            except DataError as err:
                self.record_bad(line, err)
        raise SkipBudgetExceeded(f"dataset {self.spec.name!r}: no good sample left ({self.spec.annotation})")

    @property
    def bad_count(self) -> int:
        """Distinct bad lines met so far (0 when skipping is off: the first one raised)."""
        return self._bad_count.value if self.skip_fraction else 0

    def record_bad(self, line: int, err: DataError) -> None:
        """Count bad line ``line`` against the skip budget (logged); ``SkipBudgetExceeded`` past it."""
        with self._bad_lines.get_lock():
            if not self._bad_lines[line]:
                self._bad_lines[line] = 1
                self._bad_count.value += 1
            count = self._bad_count.value
        if count > self.bad_budget:
            raise SkipBudgetExceeded(
                f"dataset {self.spec.name!r}: {count} bad samples exceed the skip budget of {self.bad_budget} "
                f"({self.skip_fraction:.2%} of {len(set(self.line_index))} lines); last: {err}") from err
        logger.warning("skipping bad sample %s (%s) [%d of %d allowed in dataset %r]", err, err.reason, count,
                       self.bad_budget, self.spec.name)

    # ----------------------------------------------------------------------------------------------- building
    def build(self, line: int) -> dict[str, Any]:
        """The sample of annotation row ``line`` (an index into the JSONL's non-blank lines)."""
        ref = self.index.ref(line)
        return self.build_from_row(self.index.read(line), ref)

    def build_from_row(self, row: dict[str, Any], ref: str) -> dict[str, Any]:
        return self.processor.training_sample(row, ref, root=self.spec.root, dataset_options=self.spec.options,
                                              augment=self.is_train and self.spec.data_augment)

    def sample_ref_of_line(self, line: int) -> str:
        return self.index.ref(line)

    def sample_size(self, line: int) -> tuple[int, int]:
        """``(tokens, items)`` of row ``line``'s training sample without decoding media (packing plans with it)."""
        return self.processor.sample_size(self.index.read(line), self.index.ref(line), root=self.spec.root,
                                          dataset_options=self.spec.options)

    def estimated_length(self, line: int) -> int:
        """Tokens of row ``line`` without reading its media (0 for a row that cannot be parsed: training reports
        it properly when it reads it)."""
        try:
            return self.processor.estimate_length(self.index.read(line), self.index.ref(line))
        except DataError:
            return 0


def build_datasets(meta_path: str, tokenizer, config, *, template_name: str | None = None,
                   max_seq_length: int = 8192, data_options: dict[str, Any] | None = None, is_train: bool = True,
                   skip_bad_samples: bool | float = False, seed: int = 0) -> ConcatDataset:
    """Every dataset of a meta JSON, concatenated in file order (keyword arguments as ``SupervisedDataset``)."""
    datasets = []
    for spec in load_meta(meta_path):
        ds = SupervisedDataset(spec, tokenizer, config, template_name=template_name, max_seq_length=max_seq_length,
                               data_options=data_options, is_train=is_train, skip_bad_samples=skip_bad_samples,
                               seed=seed)
        logger.info("dataset %r: %d lines, %d samples (repeat_time %s)", spec.name, len(ds.index), len(ds),
                    spec.repeat_time)
        datasets.append(ds)
    return ConcatDataset(datasets)


__all__ = ["DEFAULT_SKIP_FRACTION", "SupervisedDataset", "build_datasets", "skip_fraction"]
