"""Test sets for evaluation: rows of a JSONL / meta JSON -> ``Sample``s, and their media through the training readers.

Test data: a JSONL file (dataset name = file stem, media ``root`` = ``--root`` or the file's folder) or an
InternVL meta JSON read by ``internvl.train.meta.load_meta`` (same validation and path resolution as training;
``repeat_time`` and ``data_augment`` are training settings and ignored here; ``task`` and reader options are
used). Rows are the training format: ``conversations`` whose last ``gpt`` turn is the reference (an ``answer``
field wins when present) and whose last ``human`` turn is the question; earlier turns are passed as chat
history and a first ``system`` turn replaces the template's system prompt. InternVL's VQA test format
(``question`` + ``answer`` fields, no conversations) is read too.

Task of a row (first that is set): the row's ``task`` field > the meta entry's ``task`` > ``--task`` > ``mcq``
when the row has an ``options`` field or ``A. ...`` option lines in its question, else ``open_qa``.

Media, by the training dataset's rules (``internvl.train.dataset``): the one row key that a registered media
reader claims (``internvl.media.reader_for_key``) is loaded by that reader with ``is_train=False``, the model
config and the data options (``max_dynamic_patch`` from ``--max-num``, overridden by the meta entry's keys; the
reader falls back to the model config's tiling settings). A reader's own placeholder is rewritten to
``<image>`` for ``chat``; a row with one reference and no placeholder gets ``<image>\\n`` in front of its first
question. Readers raise ``MediaError`` for unreadable media (the runner's skip budget applies); malformed rows
raise ``ValueError`` naming ``file:line``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from internvl.evaluation import metrics

DEFAULT_PLACEHOLDER = "<image>"


@dataclass
class Sample:
    """One test row, ready to generate for."""

    uid: str                       # "<dataset>:<line>", unique within a run
    dataset: str
    source: str                    # annotation file
    line: int                      # 1-based line in ``source``
    row: dict
    task: str
    question: str
    reference: Any
    history: list[tuple[str, str]] = field(default_factory=list)
    root: str | None = None
    options: dict = field(default_factory=dict)  # reader options (meta entry overrides)
    system: str | None = None      # a row's own system prompt (replaces the template's, as in training)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


# ---------------------------------------------------------------------------------------------- reading test sets
def read_samples(data: str, *, task: str | None = None, root: str | None = None,
                 limit: int | None = None, require_reference: bool = True) -> list[Sample]:
    """Samples of a JSONL file or a meta JSON; ``limit`` keeps the first N rows of each dataset.
    ``require_reference=False`` accepts question-only rows (inference)."""
    if data.endswith(".json"):
        from internvl.train.meta import load_meta

        samples = []
        for spec in load_meta(data):  # same validation and path resolution as training
            samples += _read_jsonl(spec.annotation, spec.name, spec.root, spec.task, task, spec.options, limit,
                                   require_reference)
        return samples
    name = os.path.splitext(os.path.basename(data))[0]
    return _read_jsonl(data, name, root if root is not None else os.path.dirname(os.path.abspath(data)), None,
                       task, {}, limit, require_reference)


def _read_jsonl(path: str, dataset: str, root: str | None, meta_task: str | None, cli_task: str | None,
                options: dict, limit: int | None, require_reference: bool = True) -> list[Sample]:
    from internvl.train.jsonl import JsonlIndex

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: annotation file not found (dataset {dataset!r})")
    index = JsonlIndex(path)
    samples = []
    for i in range(len(index) if limit is None else min(limit, len(index))):
        row = index.read(i)  # DataError naming path:line on a malformed line
        line_no = int(index.linenos[i])
        question, history, reference, system = split_row(row, index.ref(i), require_reference)
        name = row.get("task") or meta_task or cli_task or default_task(row, question)
        samples.append(Sample(uid=f"{dataset}:{line_no}", dataset=dataset, source=path, line=line_no, row=row,
                              task=name, question=question, reference=reference, history=history, root=root,
                              options=dict(options), system=system))
    return samples


def split_row(row: dict, where: str, require_reference: bool = True) -> tuple[str, list[tuple[str, str]], Any, str | None]:
    """(question, history [(q, a)...], reference, system prompt) of a row; ``ValueError`` naming ``where``."""
    conv = row.get("conversations")
    if conv is None:
        if "question" not in row or ("answer" not in row and require_reference):
            raise ValueError(f"{where}: row has neither 'conversations' nor 'question' + 'answer'")
        return str(row["question"]), [], row.get("answer"), None
    if not isinstance(conv, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
        raise ValueError(f"{where}: 'conversations' must be a list of {{'from', 'value'}} turns")
    system = conv[0]["value"] if conv and conv[0].get("from") == "system" else None
    turns = conv[1:] if system is not None else list(conv)
    reference = None
    if turns and turns[-1].get("from") in ("gpt", "assistant"):
        reference, turns = turns[-1]["value"], turns[:-1]
    reference = row.get("answer", reference)
    if reference is None and require_reference:
        raise ValueError(f"{where}: no reference answer (no final 'gpt' turn and no 'answer' field)")
    roles = [t.get("from") for t in turns]
    if not turns or len(turns) % 2 == 0 or any(
            r not in (("human", "user") if i % 2 == 0 else ("gpt", "assistant")) for i, r in enumerate(roles)):
        raise ValueError(f"{where}: turns must alternate human/gpt and end with the question (got {roles})")
    history = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns) - 1, 2)]
    return turns[-1]["value"], history, reference, system


def default_task(row: dict, question: str) -> str:
    """``mcq`` when the row lists options (field or ``A. ...`` lines), else ``open_qa``."""
    return "mcq" if row.get("options") or metrics.options_from_question(question) else "open_qa"


# --------------------------------------------------------------------------------------------------- media
class MediaLoader:
    """Reads a sample's media with the registered readers, ``is_train=False``, by the training dataset's rules:
    one media key per row, the encoder must read that kind, one reference without placeholder gets one prepended.

    Reader options: ``options`` (``--max-num``) are the defaults, a meta entry's keys override them (as the
    finetune's data options and the meta entry do in training); the reader falls back to the model config.
    """

    def __init__(self, config, options: dict | None = None):
        self.config = config
        self.options = dict(options or {})
        self._readers: dict[tuple, Any] = {}

    def media_key(self, sample: Sample) -> str | None:
        from internvl.media import MEDIA_READERS, reader_for_key
        from internvl.train.dataset import NON_MEDIA_KEYS, UNSUPPORTED_MEDIA_KEYS

        found = []
        for key, value in sample.row.items():
            if key in NON_MEDIA_KEYS or value is None or value == "" or value == []:
                continue
            if reader_for_key(key) is not None:
                found.append(key)
            elif key in UNSUPPORTED_MEDIA_KEYS:
                raise ValueError(f"{sample.where}: no media reader is registered for {key!r}")
        if len(found) > 1:
            raise ValueError(f"{sample.where}: one media kind per row; this row has {found}")
        if found:
            kinds = list(getattr(self.config.vision_config, "input_kinds", None) or ["image"])
            if found[0] not in kinds and MEDIA_READERS.resolve(found[0]) not in kinds:
                raise ValueError(f"{sample.where}: row has {found[0]!r} media but the model's vision encoder "
                                 f"reads {kinds}")
        return found[0] if found else None

    def reader(self, key: str, sample_options: dict):
        from internvl.media import reader_for_key

        opts = {**self.options, **sample_options}
        cache_key = (key, json.dumps(opts, sort_keys=True, default=str))
        if cache_key not in self._readers:
            self._readers[cache_key] = reader_for_key(key)(self.config, opts)
        return self._readers[cache_key]

    def load(self, sample: Sample) -> tuple[list, list[int], str, list[tuple[str, str]]]:
        """(items, items per reference, question, history) with placeholders rewritten to ``<image>``."""
        from internvl.media import resolve_ref

        question, history = sample.question, list(sample.history)
        key = self.media_key(sample)
        if key is None:
            return [], [], question, history
        reader = self.reader(key, sample.options)
        value = sample.row[key]
        refs = list(value) if isinstance(value, (list, tuple)) else [value]
        if type(reader).is_file:
            refs = [resolve_ref(r, sample.root) for r in refs]
        loaded = reader.load_many(refs, is_train=False) if hasattr(reader, "load_many") else \
            [reader.load(r, is_train=False) for r in refs]
        items = [t for ref_items in loaded for t in ref_items]
        per_ref = [len(ref_items) for ref_items in loaded]
        if 0 in per_ref:
            raise ValueError(f"{sample.where}: the {key!r} reader returned no item for {refs[per_ref.index(0)]}")
        for ph in (type(reader).placeholder, *type(reader).placeholder_aliases):
            if ph and ph != DEFAULT_PLACEHOLDER:
                question = question.replace(ph, DEFAULT_PLACEHOLDER)
                history = [(q.replace(ph, DEFAULT_PLACEHOLDER), a) for q, a in history]
        n_ph = question.count(DEFAULT_PLACEHOLDER) + sum(q.count(DEFAULT_PLACEHOLDER) for q, _ in history)
        if n_ph == 0 and len(refs) == 1:  # InternVL: one image without placeholder goes in front of turn one
            if history:
                history[0] = (DEFAULT_PLACEHOLDER + "\n" + history[0][0], history[0][1])
            else:
                question = DEFAULT_PLACEHOLDER + "\n" + question
        elif n_ph != len(refs):
            raise ValueError(f"{sample.where}: {n_ph} media placeholders for {len(refs)} media references")
        return items, per_ref, question, history
