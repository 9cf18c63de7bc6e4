"""Scoring saved predictions: a JSONL of ``{"id": ..., "answer": ...}`` scored like a model-in-the-loop run.

``python eval/custom_eval.py --data META_OR_JSONL --predictions answers.jsonl --out results.json`` reads the test
set exactly as ``evaluate`` does (``testset.read_samples``: same tasks, references, datasets), matches each test
row to one prediction and goes through the same scoring, aggregation, plots, HTML report and results schema
(``runner.score_records`` / ``runner.write_results``). No model is loaded; the media are not read for scoring.

Matching key of a test row: its ``id`` field (compared as text, so ``7`` and ``"7"`` match), else the runner's uid
``<dataset>:<line>`` (what ``inference_v2.py --jsonl`` writes for rows without an id). Each predictions line is a
JSON object with ``id`` and a string ``answer`` (``prediction`` is accepted as the same field); other fields are
ignored. Every mismatch is a ``PredictionsError`` (an ``InputError``: one ``error:`` line, exit status 2):

* a malformed line, a missing ``id`` / ``answer``, a non-string answer: ``answers.jsonl:LINE``;
* an id that names no test row, or the same id twice: ``answers.jsonl:LINE`` (and the first line for duplicates);
* two test rows with the same id (the predictions cannot be told apart): both ``file:line``;
* a test row with no prediction: the predictions file and the row's ``file:line`` (with the count), unless
  ``allow_missing``; then those rows are not scored and are listed in ``missing`` with ``summary.n_missing``.

The results differ from a model run only in the header: ``model`` is ``null``, ``predictions`` is the file,
``generation`` is ``null`` and ``settings`` holds what applies (task, root, allow_missing).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable

from internvl.errors import InputError
from internvl.evaluation.runner import score_records, write_results
from internvl.evaluation.testset import Sample, read_samples


class PredictionsError(InputError, ValueError):
    """A predictions file that does not match its test set (the message names ``file:line``)."""


def sample_key(sample: Sample) -> str:
    """The id a prediction uses for ``sample``: the row's ``id`` as text, else the runner's uid."""
    rid = sample.row.get("id")
    return sample.uid if rid is None else str(rid)


def read_predictions(path: str) -> list[tuple[int, str, str]]:
    """``(line, id, answer)`` of each non-blank line of ``path``; ``PredictionsError`` naming the line if bad."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PredictionsError(f"{path}:{line_no}: not a JSON line ({exc.msg})") from exc
            if not isinstance(obj, dict) or obj.get("id") is None:
                raise PredictionsError(f"{path}:{line_no}: expected a JSON object with an 'id' and an 'answer'")
            answer = obj.get("answer", obj.get("prediction"))
            if not isinstance(answer, str):
                raise PredictionsError(f"{path}:{line_no}: 'answer' must be a string, got {type(answer).__name__}")
            out.append((line_no, str(obj["id"]), answer))
    return out


def match_predictions(samples: Iterable[Sample], predictions: list[tuple[int, str, str]], path: str,
                      allow_missing: bool = False) -> tuple[dict[str, str], list[Sample]]:
    """``({uid: answer}, [samples without a prediction])``; raises ``PredictionsError`` on any mismatch."""
    by_key: dict[str, Sample] = {}
    for s in samples:
        key = sample_key(s)
        if key in by_key:
            raise PredictionsError(f"{s.where}: test row id {key!r} also used by {by_key[key].where}; "
                                   f"predictions in {path} cannot be matched to rows by id")
        by_key[key] = s
    answers: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_no, key, answer in predictions:
        if key in first_line:
            raise PredictionsError(f"{path}:{line_no}: duplicate prediction for id {key!r} "
                                   f"(first at line {first_line[key]})")
        if key not in by_key:
            raise PredictionsError(f"{path}:{line_no}: id {key!r} names no test row")
        first_line[key] = line_no
        answers[by_key[key].uid] = answer
    missing = [s for s in by_key.values() if s.uid not in answers]
    if missing and not allow_missing:
        raise PredictionsError(f"{path}: no prediction for {len(missing)} test row(s), first {missing[0].where} "
                               f"(id {sample_key(missing[0])!r}); --allow-missing scores the others")
    return answers, missing


def score_predictions(data: str, predictions_path: str, out: str, *, task: str | None = None,
                      root: str | None = None, allow_missing: bool = False, report_metrics: Iterable[str] = (),
                      metric_options=None, html: bool = True) -> dict:
    """Score ``predictions_path`` against the test set ``data``; writes ``out`` (+ HTML) like ``evaluate``."""
    t0 = time.time()
    if not os.path.isfile(predictions_path):
        raise FileNotFoundError(f"{predictions_path}: predictions file not found")
    samples = read_samples(data, task=task, root=root)
    score_records(samples, {s.uid: "" for s in samples})  # unknown tasks, unscorable rows: fail first
    answers, missing = match_predictions(samples, read_predictions(predictions_path), predictions_path,
                                         allow_missing)
    records = score_records(samples, answers)
    header = {"model": None, "predictions": os.path.abspath(predictions_path), "data": os.path.abspath(data),
              "settings": {"task": task, "root": root, "allow_missing": allow_missing}, "generation": None}
    summary = {"n_rows": len(samples), "n_scored": len(records), "n_skipped": 0, "n_resumed": 0,
               "n_missing": len(missing), "generation_seconds": 0.0}
    missing_rows = [{"uid": s.uid, "id": s.row.get("id"), "dataset": s.dataset, "source": s.source,
                     "line": s.line} for s in missing]
    return write_results(records, samples, [], out, header, summary, t0=t0, report_metrics=report_metrics,
                         metric_options=metric_options, html=html, extra={"missing": missing_rows})
