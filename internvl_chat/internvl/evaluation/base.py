"""Evaluation tasks, registered by name like encoders, so plugins add theirs without editing the evaluator.

A test row (JSONL, same format as training) carries the reference answer in its last ``gpt`` turn (or an
``answer`` field) and may name its task in a ``task`` field; a meta-JSON entry may set ``task`` for a whole
dataset, and ``eval/custom_eval.py --task`` applies to rows that name none (``internvl.evaluation.testset``).

Contract (``EvalTask``):

* ``name``: the registry name.
* ``score(prediction, sample) -> dict``: per-sample record fields (parsed answer, correctness, ...). ``sample`` is
  the test row (with ``reference`` filled in, ``where`` = ``file:line`` and ``media_root`` for relative media
  paths). Must not raise on unparseable model output: record it as such. A bad test row raises an
  ``InputError`` naming ``sample["where"]`` (other exceptions are wrapped with the row's ``file:line``).
* ``aggregate(records, out_dir) -> dict``: the task's metrics over the records it scored; may write plots
  (PNG) into ``out_dir`` and return their paths under a ``"plots"`` key.
* ``row_metrics``: ``{aggregate key: per-row record field}`` for the metrics that are a mean over rows (they get
  bootstrap intervals in the HTML report and paired tests in ``compare``; ``evaluation.bootstrap``). Empty: the
  evaluator infers them (a row field whose mean equals the aggregate of the same name, ``correct`` for accuracy).
* ``free_text``: the answers are free text (reports, open questions): ``--metrics`` (METEOR, BERTScore, clinical
  metrics; ``evaluation.report_metrics``) score these rows.
"""
from __future__ import annotations

from typing import Any

from internvl.registry import Registry

EVAL_TASKS = Registry("eval task")


def register_task(name: str, *, aliases=()):
    """Decorator: register an ``EvalTask`` subclass under ``name``."""
    return EVAL_TASKS.register(name, aliases=aliases)


def list_tasks() -> list[str]:
    return EVAL_TASKS.names()


def create_task(name: str, **options: Any) -> "EvalTask":
    return EVAL_TASKS.get(name)(**options)


class EvalTask:
    name: str = ""
    row_metrics: dict[str, str] = {}
    free_text: bool = False

    def __init__(self, **options: Any):
        self.options = options

    def score(self, prediction: str, sample: dict) -> dict:
        raise NotImplementedError

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        raise NotImplementedError
