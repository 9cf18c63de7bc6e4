"""Test sets for evaluation: rows of a JSONL / meta JSON -> ``Sample``s, and their media through the training readers.

Test data: a JSONL file (dataset name = file stem, media ``root`` = ``--root`` or the file's folder) or an
InternVL meta JSON read by ``internvl.data.meta.load_meta`` (same validation and path resolution as training;
``repeat_time`` and ``data_augment`` are training settings and ignored here; ``task`` and reader options are
used). Rows are the training format: ``conversations`` whose last ``gpt`` turn is the reference (an ``answer``
field wins when present) and whose last ``human`` turn is the question; earlier turns are passed as chat
history and a first ``system`` turn replaces the template's system prompt. InternVL's VQA test format
(``question`` + ``answer`` fields, no conversations) is read too.

Task of a row (first that is set): the row's ``task`` field > the meta entry's ``task`` > ``--task`` > ``mcq``
when the row has an ``options`` field or ``A. ...`` option lines in its question, else ``open_qa``.

Media and prompts go through the one row processor (``internvl.data.processor.RowProcessor.prompt_inputs``),
exactly as training reads them (``is_train=False``; data options from ``--max-num``, overridden by the meta
entry's keys, falling back to the model config). Malformed rows raise ``DataError`` naming ``file:line``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from internvl.data.jsonl import JsonlIndex
from internvl.data.meta import load_meta
from internvl.data.processor import split_row
from internvl.evaluation import metrics


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


def place_boxes(samples: list[Sample], processor) -> None:
    """Rows with ``boxes`` in source coordinates: their ``<box>name</box>`` references (question, history, reference)
    become the placed 0-1000 tokens (``RowProcessor.place_boxes``: the readers' geometry, so a model config is
    needed; scoring saved predictions without a model cannot place them and names the row instead)."""
    for s in samples:
        if s.row.get("boxes"):
            placed = processor.place_boxes(s.row, s.where, root=s.root, dataset_options=s.options)
            s.row = {k: v for k, v in placed.items() if k != "boxes"}  # placed once: prompts must not place again
            s.question, s.history, s.reference, s.system = split_row(s.row, s.where, True)


def default_task(row: dict, question: str) -> str:
    """``mcq`` when the row lists options (field or ``A. ...`` lines), else ``open_qa``."""
    return "mcq" if row.get("options") or metrics.options_from_question(question) else "open_qa"
