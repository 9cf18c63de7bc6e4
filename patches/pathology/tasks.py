"""Evaluation tasks for slide reports: ``tumour_grade``, ``survival`` and both at once (``pathology_report``).

Test rows carry the truth as fields: ``grade`` (int; else it is parsed from the reference answer),
``survival_months`` and ``event`` (1 = death observed, 0 = censored; a ``censorship`` field, 1 = censored, is
accepted instead). The model's report is parsed with ``report.py``.

* ``tumour_grade``: accuracy, balanced accuracy, macro-F1 (sklearn) over every row, an unparseable answer counting
  as wrong (it appears as its own "unparsed" column in the confusion matrix PNG); quadratic-weighted kappa over the
  parsed rows.
* ``survival``: Harrell's concordance index of the stated risk group (high > intermediate > low) against
  (months, event) with lifelines. lifelines' ``concordance_index`` expects a *survival-time-like* score (higher =
  longer), so the risk is negated; ``c_index`` here is oriented so that 1.0 = risk ordered perfectly, 0.5 = chance.
  Rows without a parseable risk are excluded and counted (``survival_n_unparsed``). Also: the same C-index for the
  reference reports (the ceiling the labels allow), Kaplan-Meier curves per predicted risk group (PNG) and the
  multivariate log-rank p-value between those groups.
"""
from __future__ import annotations

import os

import numpy as np

from internvl.evaluation.base import EvalTask, register_task
from patches.pathology.report import parse_grade, parse_risk


def c_index(months, risk, events) -> float:
    """Harrell's C for a risk score (higher = worse), through lifelines (which wants higher = longer survival)."""
    from lifelines.utils import concordance_index

    return float(concordance_index(np.asarray(months, float), -np.asarray(risk, float), np.asarray(events, bool)))


def _quiet(metric, *args, **kwargs):
    """sklearn warns that "unparsed" (-1) is a predicted class absent from y_true: intended, it counts as wrong."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return metric(*args, **kwargs)


def _event(sample: dict) -> int:
    if "event" in sample:
        return int(sample["event"])
    if "censorship" in sample:
        return 1 - int(sample["censorship"])
    raise KeyError(f"test row {sample.get('id', '?')}: needs 'event' (1 = observed) or 'censorship' (1 = censored)")


def _plot_path(out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, name)


@register_task("tumour_grade", aliases=("grade",))
class TumourGradeTask(EvalTask):
    name = "tumour_grade"

    def score(self, prediction: str, sample: dict) -> dict:
        truth = sample.get("grade")
        truth = int(truth) if truth is not None else parse_grade(sample.get("reference", ""))
        if truth is None:
            raise ValueError(f"test row {sample.get('id', '?')}: no 'grade' field and no grade in the reference")
        pred = parse_grade(prediction)
        return {"grade_true": truth, "grade_pred": pred, "grade_correct": pred == truth}

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        from sklearn.metrics import (accuracy_score, balanced_accuracy_score, cohen_kappa_score, confusion_matrix,
                                     f1_score)

        rows = [r for r in records if r.get("grade_true") is not None]
        if not rows:
            return {"grade_n": 0}
        y_true = np.array([r["grade_true"] for r in rows])
        y_pred = np.array([r["grade_pred"] if r["grade_pred"] is not None else -1 for r in rows])
        labels = sorted(set(y_true.tolist()) | set(y_pred[y_pred >= 0].tolist()))
        parsed = y_pred >= 0
        out = {
            "grade_n": int(len(rows)), "grade_n_unparsed": int((~parsed).sum()),
            "grade_accuracy": float(accuracy_score(y_true, y_pred)),
            "grade_balanced_accuracy": float(_quiet(balanced_accuracy_score, y_true, y_pred)),
            "grade_macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "grade_qwk": (float(cohen_kappa_score(y_true[parsed], y_pred[parsed], weights="quadratic"))
                          if parsed.sum() > 1 and len(set(y_true[parsed]) | set(y_pred[parsed])) > 1 else None),
            "grade_chance_accuracy": float(np.bincount(y_true).max() / len(y_true)),
        }
        cm_labels = labels + ([-1] if (~parsed).any() else [])
        cm = confusion_matrix(y_true, y_pred, labels=cm_labels)
        out["grade_labels"] = [f"G{g}" if g > 0 else "unparsed" for g in cm_labels]
        out["grade_confusion_matrix"] = cm.tolist()
        out["plots"] = [self._plot(cm, out["grade_labels"], out, out_dir)]
        return out

    @staticmethod
    def _plot(cm, names, metrics, out_dir) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.metrics import ConfusionMatrixDisplay

        fig, ax = plt.subplots(figsize=(4.5, 4))
        ConfusionMatrixDisplay(cm, display_labels=names).plot(ax=ax, colorbar=False, cmap="Blues")
        ax.set_ylabel("true grade")
        ax.set_xlabel("grade in generated report")
        ax.set_title(f"tumour grade: acc {metrics['grade_accuracy']:.2f}, "
                     f"bal. acc {metrics['grade_balanced_accuracy']:.2f} (n={metrics['grade_n']})", fontsize=9)
        path = _plot_path(out_dir, "tumour_grade_confusion.png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


@register_task("survival", aliases=("survival_risk",))
class SurvivalTask(EvalTask):
    name = "survival"

    def score(self, prediction: str, sample: dict) -> dict:
        if "survival_months" not in sample:
            raise KeyError(f"test row {sample.get('id', '?')}: needs 'survival_months'")
        pred, ref = parse_risk(prediction), parse_risk(sample.get("reference", ""))
        return {"months": float(sample["survival_months"]), "event": _event(sample),
                "risk_group": pred[0] if pred else None, "risk": pred[1] if pred else None,
                "reference_risk": ref[1] if ref else None}

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        rows = [r for r in records if "months" in r]
        parsed = [r for r in rows if r.get("risk") is not None]
        out = {"survival_n": len(rows), "survival_n_unparsed": len(rows) - len(parsed),
               "survival_n_events": int(sum(r["event"] for r in rows))}
        if len(parsed) < 2 or not any(r["event"] for r in parsed):
            out["c_index"] = None
            return out
        months = [r["months"] for r in parsed]
        events = [r["event"] for r in parsed]
        out["c_index"] = c_index(months, [r["risk"] for r in parsed], events)
        with_ref = [r for r in rows if r.get("reference_risk") is not None]
        if len(with_ref) > 1 and any(r["event"] for r in with_ref):
            out["c_index_reference"] = c_index([r["months"] for r in with_ref], [r["reference_risk"] for r in with_ref],
                                               [r["event"] for r in with_ref])
        groups = [r["risk_group"] for r in parsed]
        out["risk_group_counts"] = {g: groups.count(g) for g in ("low", "intermediate", "high") if g in groups}
        if len(set(groups)) > 1:
            from lifelines.statistics import multivariate_logrank_test

            out["logrank_p"] = float(multivariate_logrank_test(months, groups, events).p_value)
        else:
            out["logrank_p"] = None
        out["plots"] = [self._plot(months, events, groups, out, out_dir)]
        return out

    @staticmethod
    def _plot(months, events, groups, metrics, out_dir) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from lifelines import KaplanMeierFitter

        months, events, groups = np.asarray(months), np.asarray(events, bool), np.asarray(groups)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        colours = {"low": "tab:green", "intermediate": "tab:orange", "high": "tab:red"}
        for group in ("low", "intermediate", "high"):
            sel = groups == group
            if sel.any():
                KaplanMeierFitter(label=f"{group} risk (n={int(sel.sum())})").fit(
                    months[sel], events[sel]).plot_survival_function(ax=ax, ci_show=False, color=colours[group])
        p = metrics.get("logrank_p")
        ax.set_title(f"Kaplan-Meier by predicted risk group: C-index {metrics['c_index']:.3f}"
                     + (f", log-rank p={p:.2g}" if p is not None else ""), fontsize=9)
        ax.set_xlabel("months")
        ax.set_ylabel("survival probability")
        path = _plot_path(out_dir, "survival_km_by_risk_group.png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


@register_task("pathology_report", aliases=("slide_report",))
class PathologyReportTask(EvalTask):
    """Grade and survival scored on the same generated report."""

    name = "pathology_report"
    free_text = True  # --metrics (METEOR, BERTScore, clinical metrics) also score the report text

    def __init__(self, **options):
        super().__init__(**options)
        self.parts = (TumourGradeTask(**options), SurvivalTask(**options))

    def score(self, prediction: str, sample: dict) -> dict:
        record = {}
        for part in self.parts:
            record.update(part.score(prediction, sample))
        return record

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        out, plots = {}, []
        for part in self.parts:
            metrics = part.aggregate(records, out_dir)
            plots += metrics.pop("plots", [])
            out.update(metrics)
        out["plots"] = plots
        return out
