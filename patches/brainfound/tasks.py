"""Evaluation tasks of the Brainfound plugin: ``brainfound_mcq`` and ``brainfound_report``.

``brainfound_report`` (Brainfound's released downstream task, report generation from a scan): the generated
report is scored against the reference with corpus / sentence BLEU-4 and ROUGE-L from the core's metric code and
METEOR (nltk, exact + stem matching; see ``report_eval``); aggregated as means, plus corpus BLEU-4, and a histogram
of the per-report scores. Select it with ``"task": "brainfound_report"`` in a meta entry or row (the demo's
stage-3 report rows do), or ``--task brainfound_report`` in ``eval/custom_eval.py``.

``brainfound_mcq``: the core ``mcq`` task for Brainfound's inline option lists.

Brainfound's mcq.jsonl writes the options on one line, ``"...如何？A: 有明显异常密度影 B: 没有明显异常密度影 C: ..."``,
which the core's option reader (one ``A. text`` per line) does not see, so such rows would be scored as open QA.
This task reads the inline list (letters A, B, C, ... in order, each followed by ``:``, ``：`` or ``.``) into
the row's ``options`` when the row has none, then scores and aggregates exactly as ``mcq`` does (same fields,
metrics and confusion plot). Select it with ``"task": "brainfound_mcq"`` in a meta entry or row, or
``--task brainfound_mcq``.
"""
from __future__ import annotations

import os
import re
import string

from internvl.evaluation import metrics
from internvl.evaluation.base import EvalTask, register_task
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


@register_task("brainfound_report", aliases=("report_generation",))
class BrainfoundReportTask(EvalTask):
    name = "brainfound_report"
    summary_keys = ("bleu4_corpus", "rouge_l", "meteor")
    SCORES = ("bleu4", "rouge_l", "meteor")

    def score(self, prediction: str, sample: dict) -> dict:
        from patches.brainfound.report_eval import meteor

        refs = sample.get("reference")
        if refs is None or (not isinstance(refs, str) and not list(refs)):
            raise ValueError("brainfound_report sample has no reference report")
        prediction = prediction or ""
        return {"bleu4": metrics.sentence_bleu4(prediction, refs), "rouge_l": metrics.rouge_l(prediction, refs),
                "meteor": meteor(prediction, refs)}

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        out = {"n": len(records), **{k: metrics.mean(r[k] for r in records) for k in self.SCORES}}
        out["bleu4_corpus"] = metrics.corpus_bleu4([r.get("prediction") or "" for r in records],
                                                   [r["reference"] for r in records]) if records else None
        if records:
            out["plots"] = [self._histogram_png(records, os.path.join(out_dir, "brainfound_report_scores.png"))]
        return out

    def _histogram_png(self, records: list[dict], path: str) -> str:
        from internvl.evaluation.plots import new_figure, save_figure

        fig, axes = new_figure(1, len(self.SCORES), figsize=(4 * len(self.SCORES), 3))
        for ax, key in zip(axes, self.SCORES):
            values = [r[key] for r in records]
            ax.hist(values, bins=10, range=(0, 1), color="tab:green")
            ax.set_title(f"{key}: mean {metrics.mean(values):.3f} (n={len(values)})")
            ax.set_xlabel(key)
            ax.set_ylabel("reports")
        return save_figure(fig, path)
