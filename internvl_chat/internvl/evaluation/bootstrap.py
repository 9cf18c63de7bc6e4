"""Uncertainty for evaluation metrics: bootstrap confidence intervals over rows, paired tests between two runs.

Only metrics that are a mean over rows are resampled (accuracy = mean of ``correct``, exact match, token F1,
sentence BLEU, ROUGE-L, METEOR, BERTScore F1, ...). Which aggregate key is the mean of which per-row field comes
from the task's ``row_metrics`` (``EvalTask``) and, for tasks that declare none, from the records themselves: a
numeric per-row field whose mean equals the aggregate value of the same name (``correct`` for ``accuracy``).
Corpus-level numbers (corpus BLEU, C-index) get no interval here. The evaluator records the mapping it used in
results.json (``row_metrics: {task: {metric: field}}``), so comparing runs needs neither the task registry nor
the plugins.

The statistics are scipy's: ``scipy.stats.bootstrap`` (percentile intervals: BCa is undefined on constant
data, which a perfect model produces) for one run, and for two runs on the same rows
``scipy.stats.bootstrap(paired=True)`` for the interval of the difference plus ``scipy.stats.permutation_test``
(``permutation_type="samples"``: the sign-flip test for paired data) for the two-sided p-value.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

N_RESAMPLES = 2000
P_RESAMPLES = 9999  # sign flips for the p-value (exact when 2**n is smaller); resolution 1 / (P_RESAMPLES + 1)
CONFIDENCE = 0.95
_ALIASES = {"accuracy": "correct"}


def row_metric_fields(task_name: str, aggregate: dict, records: list[dict], declared: dict | None = None) -> dict[str, str]:
    """``{aggregate key: per-row field}`` for the mean-type metrics of one task's records. ``declared`` (what a
    results file recorded under ``row_metrics``) wins; else the registered task's ``row_metrics`` (plugins are
    not imported for this); else inference."""
    from internvl.evaluation.base import EVAL_TASKS

    if declared is None and task_name in EVAL_TASKS:
        declared = getattr(EVAL_TASKS.get(task_name), "row_metrics", None)
    out = {}
    for key, value in aggregate.items():
        if not _is_number(value) or key == "n":
            continue
        if declared:  # the task says which metrics are row means: only those
            field = declared.get(key)
        else:
            field = next((c for c in (key, _ALIASES.get(key)) if c and _mean_matches(records, c, value)), None)
        if field is not None and row_values(records, field) is not None:
            out[key] = field
    return out


def _mean_matches(records: list[dict], field: str, value: float) -> bool:
    vals = row_values(records, field)
    return vals is not None and abs(float(np.mean(vals)) - float(value)) <= 1e-9


def row_values(records: list[dict], field: str) -> np.ndarray | None:
    """The field as floats for every record (bools count 0/1), or ``None`` when a record lacks it."""
    vals = []
    for r in records:
        v = r.get(field)
        if isinstance(v, bool):
            v = float(v)
        if not _is_number(v):
            return None
        vals.append(float(v))
    return np.asarray(vals, dtype=float) if vals else None


def mean_ci(values: Iterable[float], *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
            seed: int = 0) -> dict:
    """``{"mean", "low", "high", "n"}``; the interval is ``None`` for fewer than two rows."""
    from scipy.stats import bootstrap

    x = np.asarray(list(values), dtype=float)
    out = {"mean": float(x.mean()) if len(x) else None, "low": None, "high": None, "n": int(len(x))}
    if len(x) < 2:
        return out
    if np.all(x == x[0]):
        out["low"] = out["high"] = float(x[0])
        return out
    res = bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=True)
    out["low"], out["high"] = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return out


def paired_difference(a: Iterable[float], b: Iterable[float], *, n_resamples: int = N_RESAMPLES,
                      confidence: float = CONFIDENCE, seed: int = 0) -> dict:
    """Mean of ``b - a`` over paired rows, its paired-bootstrap interval and the sign-flip permutation p-value."""
    from scipy.stats import bootstrap

    a, b = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired rows differ in number: {len(a)} vs {len(b)}")
    d = b - a
    out = {"a": float(a.mean()) if len(a) else None, "b": float(b.mean()) if len(b) else None,
           "diff": float(d.mean()) if len(d) else None, "low": None, "high": None, "p_value": None, "n": int(len(d))}
    if len(d) < 2:
        return out
    if np.all(d == d[0]):
        out["low"] = out["high"] = float(d[0])  # no resample can differ
        out["p_value"] = 1.0 if d[0] == 0 else _sign_flip_p(a, b, seed)
        return out

    def mean_diff(x, y, axis=-1):
        return np.mean(y - x, axis=axis)

    rng = np.random.default_rng(seed)
    ci = bootstrap((a, b), mean_diff, paired=True, n_resamples=n_resamples, confidence_level=confidence,
                   method="percentile", random_state=rng, vectorized=True)
    out["low"], out["high"] = float(ci.confidence_interval.low), float(ci.confidence_interval.high)
    out["p_value"] = _sign_flip_p(a, b, seed)
    return out


def _sign_flip_p(a: np.ndarray, b: np.ndarray, seed: int) -> float:
    from scipy.stats import permutation_test

    def mean_diff(x, y, axis=-1):
        return np.mean(y - x, axis=axis)

    res = permutation_test((a, b), mean_diff, permutation_type="samples", n_resamples=P_RESAMPLES,
                           alternative="two-sided", random_state=np.random.default_rng(seed), vectorized=True)
    return float(res.pvalue)


def task_intervals(task_name: str, aggregate: dict, records: list[dict], seed: int = 0,
                   declared: dict | None = None) -> dict[str, dict]:
    """``{metric: mean_ci(...) + {"field"}}`` for every mean-type metric of one task's records."""
    out = {}
    for key, field in row_metric_fields(task_name, aggregate, records, declared).items():
        out[key] = {**mean_ci(row_values(records, field), seed=seed), "field": field}
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
