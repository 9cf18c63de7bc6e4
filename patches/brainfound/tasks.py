"""Evaluation task ``brainfound_mcq``: the core ``mcq`` task for Brainfound's inline option lists.

Brainfound's mcq.jsonl writes the options on one line, ``"...如何？A: 有明显异常密度影 B: 没有明显异常密度影 C: ..."``,
which the core's option reader (one ``A. text`` per line) does not see, so such rows would be scored as open QA.
This task reads the inline list (letters A, B, C, ... in order, each followed by ``:``, ``：`` or ``.``) into
the row's ``options`` when the row has none, then scores and aggregates exactly as ``mcq`` does (same fields,
metrics and confusion plot). Select it with ``"task": "brainfound_mcq"`` in a meta entry or row, or
``--task brainfound_mcq``.
"""
from __future__ import annotations

import re
import string

from internvl.evaluation import metrics
from internvl.evaluation.base import register_task
from internvl.evaluation.tasks_core import MultipleChoiceTask

_MARK = re.compile(r"(?<![A-Za-z0-9])([A-Z])\s*[:：.]\s*")


def inline_options(question: str) -> dict[str, str]:
    """``{"A": text, ...}`` from the last run of inline markers A:, B:, ... (at least two), else ``{}``."""
    marks = [m for m in _MARK.finditer(question or "")]
    best: list = []
    run: list = []
    for m in marks:
        if m.group(1) == "A":
            run = [m]
        elif run and m.group(1) == string.ascii_uppercase[len(run)]:
            run.append(m)
        else:
            continue
        if len(run) >= 2:
            best = list(run)
    if not best:
        return {}
    out = {}
    for i, m in enumerate(best):
        end = best[i + 1].start() if i + 1 < len(best) else len(question)
        text = question[m.end():end].strip().rstrip("。.;；,，")
        if not text:
            return {}
        out[m.group(1)] = text
    return out


@register_task("brainfound_mcq")
class BrainfoundMCQTask(MultipleChoiceTask):
    name = "brainfound_mcq"

    def score(self, prediction: str, sample: dict) -> dict:
        if not sample.get("options") and not metrics.options_from_question(sample.get("question", "")):
            found = inline_options(sample.get("question", ""))
            if found:
                sample = {**sample, "options": found}
        return super().score(prediction, sample)
