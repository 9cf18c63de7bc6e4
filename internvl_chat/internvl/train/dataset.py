"""Supervised fine-tuning data: one JSONL annotation file -> tokenised samples with their media items.

Row types (InternVL's, research note §2.2), mixed freely in one file:

* pure text: ``{"conversations": [...]}``; the sample carries one dummy item
  (``config.vision_encoder_class.dummy_input``) with ``image_flags`` 0 and no ``<IMG_CONTEXT>`` token, so the
  vision path still runs (ZeRO-3/DDP never hang on text-only batches).
* media: ``{"<kind>": ref or [ref, ...], "conversations": [...]}`` where ``<kind>`` is any key a registered media
  reader claims (``image`` in the core; plugins add theirs). The dataset never names a kind: it asks
  ``internvl.media.reader_for_key`` for each row key. One media key per row. Each reference fills one
  placeholder (the reader's, e.g. ``<image>``; its aliases are accepted) in the user turns, in order; a row with
  exactly one reference and no placeholder gets ``"<image>\\n"`` prepended to its first user turn (InternVL).
  With several references a reader may share a budget over them (``load_many``; images split
  ``max_dynamic_patch`` as InternVL does). A placeholder becomes ``sum(token_count(config, item))`` context tokens
  over its items. The row's kind must be one of ``config.vision_config.input_kinds``.
* a first ``{"from": "system"}`` turn replaces the template's system prompt; grounding text passes through.

Per sample: ``input_ids``, ``labels``, ``attention_mask``, ``position_ids`` (1-D, unpadded), ``pixel_values``
(list of item tensors), ``image_flags`` (LongTensor, 1 real / 0 dummy), ``sample_ref`` (``"file.jsonl:17"``),
``num_trained``.

Bad data (``DataError``, see ``internvl.train.errors``) raises naming ``file:line`` by default. With
``skip_bad_samples`` (True = 1%, or a fraction in (0, 1)) a bad sample is logged with ``file:line`` and counted,
and the dataset returns the next good sample in index order instead (deterministic: index ``i`` is always
replaced by the first good one of ``i+1, i+2, ...``; the replacement is seen once more that epoch). The budget
is ``floor(fraction * distinct lines the dataset uses)`` distinct bad lines, counted across DataLoader workers
of one process through shared memory (each DDP rank counts its own); one more raises ``SkipBudgetExceeded``.
``TemplateError`` (template/tokenizer mismatch) is never skipped.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from internvl.media import MEDIA_READERS, MediaError, reader_for_key, resolve_ref, token_count
from internvl.train.constants import IMAGE_PLACEHOLDER
from internvl.train.errors import (BAD_ROW, INCOMPATIBLE_KIND, MISSING_FILE, PLACEHOLDER_MISMATCH,
                                   UNREADABLE_MEDIA, DataError, SkipBudgetExceeded)
from internvl.train.jsonl import JsonlIndex
from internvl.train.meta import DatasetSpec, load_meta, select_lines
from internvl.train.preprocess import USER_ROLES, check_template, preprocess

logger = logging.getLogger(__name__)

# row keys that are never media (skips a registry lookup); any other key is offered to the media registry
NON_MEDIA_KEYS = frozenset({"id", "conversations", "width", "height", "width_list", "height_list", "length",
                            "source", "task", "meta", "answer", "question", "question_id"})
# InternVL media keys the core has no reader for; a row using one is an error, never silently text-only
UNSUPPORTED_MEDIA_KEYS = ("video",)
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


def all_placeholders() -> set[str]:
    """Every placeholder a registered media reader fills (for checking rows without media)."""
    out = {IMAGE_PLACEHOLDER}
    for _, cls in MEDIA_READERS.items():
        out.add(cls.placeholder)
        out.update(cls.placeholder_aliases)
    return out


class SupervisedDataset(Dataset):
    """One meta-JSON entry: a lazily read JSONL file of conversations with media (see the module docstring)."""

    def __init__(self, spec: DatasetSpec, tokenizer, config, *, template_name: str | None = None,
                 max_seq_length: int = 8192, data_options: dict[str, Any] | None = None, is_train: bool = True,
                 skip_bad_samples: bool | float = False, seed: int = 0):
        """
        Args:
            spec: the dataset's meta entry (``internvl.train.meta.load_meta``).
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
        self.reader_options = {**(data_options or {}), **spec.options}
        self.is_train = is_train
        try:
            self.index = JsonlIndex(spec.annotation)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"dataset {spec.name!r}: annotation {spec.annotation} not found "
                                    f"(meta {spec.meta_path})") from exc
        self.line_index = select_lines(len(self.index), spec.repeat_time, seed, spec.name)
        check_template(self.template_name, tokenizer, sample_ref=f"dataset {spec.name!r} ({spec.annotation})")
        self._readers: dict[str, Any] = {}
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
        if not self.skip_fraction:
            return self.build(self.line_index[i])
        n = len(self)
        for step in range(n):
            line = self.line_index[(i + step) % n]
            try:
                return self.build(line)
            except DataError as err:
                self._record_bad(line, err)
        raise SkipBudgetExceeded(f"dataset {self.spec.name!r}: no good sample left ({self.spec.annotation})")

    @property
    def bad_count(self) -> int:
        """Distinct bad lines met so far (0 when skipping is off: the first one raised)."""
        return self._bad_count.value if self.skip_fraction else 0

    def _record_bad(self, line: int, err: DataError) -> None:
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
    def reader(self, key: str):
        kind = MEDIA_READERS.resolve(key)
        if kind not in self._readers:
            self._readers[kind] = reader_for_key(key)(self.config, self.reader_options)
        return self._readers[kind]

    def build(self, line: int) -> dict[str, Any]:
        """The sample of annotation row ``line`` (an index into the JSONL's non-blank lines)."""
        ref = self.index.ref(line)
        return self.build_from_row(self.index.read(line), ref)

    def build_from_row(self, row: dict[str, Any], ref: str) -> dict[str, Any]:
        convs = row.get("conversations")
        if not isinstance(convs, list) or not convs:
            raise DataError(ref, BAD_ROW, "row has no non-empty 'conversations' list")
        convs = [dict(t) if isinstance(t, dict) else t for t in convs]
        media = self._media_key(row, ref)
        if media is None:
            return self._text_sample(convs, ref)
        key, refs = media
        reader = self.reader(key)
        self._check_kind(key, ref)
        placeholder = _normalise_placeholders(convs, reader)
        n_found = _count_placeholders(convs, placeholder)
        if n_found == 0 and len(refs) == 1:
            first = next((t for t in convs if isinstance(t, dict) and t.get("from") in USER_ROLES), None)
            if first is not None and isinstance(first.get("value"), str):
                first["value"] = placeholder + "\n" + first["value"]
                n_found = 1
        if n_found != len(refs):
            raise DataError(ref, PLACEHOLDER_MISMATCH, f"{n_found} {placeholder!r} placeholder(s) in the user "
                                                       f"turns but {len(refs)} {key!r} reference(s)")
        items_per_ref = self._load(reader, refs, ref)
        counts = [sum(token_count(self.config, it) for it in items) for items in items_per_ref]
        out = preprocess(self.template_name, convs, self.tokenizer, counts, sample_ref=ref,
                         max_length=self.max_seq_length, placeholder=placeholder)
        items = [it for items in items_per_ref for it in items]
        return _finish(out, items, torch.ones(len(items), dtype=torch.long), ref)

    def _text_sample(self, convs: list, ref: str) -> dict[str, Any]:
        for ph in sorted(all_placeholders()):
            n = _count_placeholders(convs, ph)
            if n:
                raise DataError(ref, PLACEHOLDER_MISMATCH, f"{n} {ph!r} placeholder(s) but the row has no media")
        out = preprocess(self.template_name, convs, self.tokenizer, [], sample_ref=ref,
                         max_length=self.max_seq_length)
        dummy = self.config.vision_encoder_class.dummy_input(self.config.vision_config)
        return _finish(out, [dummy], torch.zeros(1, dtype=torch.long), ref)

    def _media_key(self, row: dict[str, Any], ref: str) -> tuple[str, list] | None:
        found = []
        for key, value in row.items():
            if key in NON_MEDIA_KEYS or value is None or (isinstance(value, list) and not value):
                continue
            if reader_for_key(key) is not None:
                found.append((key, value if isinstance(value, list) else [value]))
            elif key in UNSUPPORTED_MEDIA_KEYS:
                raise DataError(ref, BAD_ROW, f"row has {key!r} media but no media reader is registered for "
                                              f"{key!r} (known kinds: {', '.join(MEDIA_READERS.names())})")
        if len(found) > 1:
            raise DataError(ref, BAD_ROW, f"one media kind per row; this row has {[k for k, _ in found]}")
        return found[0] if found else None

    def _check_kind(self, key: str, ref: str) -> None:
        vcfg = self.config.vision_config
        kinds = list(getattr(vcfg, "input_kinds", None) or ["image"])
        if key not in kinds and MEDIA_READERS.resolve(key) not in kinds:
            raise DataError(ref, INCOMPATIBLE_KIND,
                            f"row has {key!r} media but the vision encoder "
                            f"{getattr(vcfg, 'encoder_name', type(vcfg).__name__)!r} reads {kinds}")

    def _load(self, reader, refs: list, ref: str) -> list[list[torch.Tensor]]:
        if reader.is_file:
            refs = [resolve_ref(r, self.spec.root) for r in refs]
            for r in refs:
                if isinstance(r, str) and "://" not in r and not os.path.exists(r):
                    raise DataError(ref, MISSING_FILE, f"{r}: file not found")
        augment = self.is_train and self.spec.data_augment
        try:
            load_many = getattr(reader, "load_many", None)
            per_ref = (load_many(refs, is_train=augment) if load_many is not None
                       else [reader.load(r, is_train=augment) for r in refs])
        except MediaError as exc:
            reason = MISSING_FILE if isinstance(exc.__cause__, FileNotFoundError) else UNREADABLE_MEDIA
            raise DataError(ref, reason, str(exc)) from exc
        for r, items in zip(refs, per_ref):
            if not items:
                raise DataError(ref, UNREADABLE_MEDIA, f"{r}: the {reader.kind!r} reader returned no item")
        return per_ref


def _normalise_placeholders(convs: list, reader) -> str:
    """Rewrite the reader's placeholder aliases to its main placeholder in user turns; return the placeholder."""
    for turn in convs:
        if isinstance(turn, dict) and isinstance(turn.get("value"), str):
            for alias in reader.placeholder_aliases:
                turn["value"] = turn["value"].replace(alias, reader.placeholder)
    return reader.placeholder


def _count_placeholders(convs: list, placeholder: str) -> int:
    return sum(t["value"].count(placeholder) for t in convs
               if isinstance(t, dict) and t.get("from") in USER_ROLES and isinstance(t.get("value"), str))


def _finish(out: dict[str, Any], items: list[torch.Tensor], flags: torch.Tensor, ref: str) -> dict[str, Any]:
    n = out["input_ids"].shape[0]
    return {"input_ids": out["input_ids"], "labels": out["labels"], "attention_mask": out["attention_mask"],
            "position_ids": torch.arange(n, dtype=torch.long), "pixel_values": items, "image_flags": flags,
            "sample_ref": ref, "num_trained": out["num_trained"]}


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
