"""Evaluation tasks parsed from generated text: ``neuro_classification`` and ``neuro_regression``.

``neuro_classification`` (study-level labels: lesion yes/no, hemisphere, sex, diagnosis): the class set comes
from the task option ``classes``, else the sample's ``classes``/``options`` field; without one, the normalised
answer text must match exactly. The prediction is parsed to the class whose name (or an alias from
``synonyms``, e.g. ``{"female": ["F"]}``) occurs first as a whole word (longest name wins at the same
position); none -> ``"<unparsed>"``, counted wrong. Score fields: ``ref_label``, ``pred_label``, ``correct``,
``parsed`` (the raw texts stay the evaluator's). Metrics (sklearn): accuracy, balanced accuracy, macro-F1, the
confusion matrix (PNG) and, when samples carry per-class ``scores`` (``{"class": probability}``), AUROC
(binary, or one-vs-rest macro).

``neuro_regression`` (e.g. brain age from T1): the first number in the prediction (an optional ``scale``
divides it); score fields ``ref_value``, ``pred_value``, ``abs_error``, ``parsed``; metrics MAE, RMSE,
Pearson r and Spearman rho (scipy) over the parsed samples, plus the number unparsed (reported, never dropped
silently) and a scatter plot.
"""
from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np

from internvl.evaluation.base import EvalTask, register_task

UNPARSED = "<unparsed>"
_NUM = re.compile(r"[-+]?\d+(?:[.,]\d+)?")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", str(text).strip().lower())


def _reference(sample: dict) -> str:
    ref = sample.get("reference", sample.get("answer"))
    if ref is None:
        raise ValueError(f"sample {sample.get('id', '?')} has no reference answer")
    return str(ref)


class _Parser:
    def __init__(self, classes, synonyms=None):
        self.names: list[tuple[str, str]] = []
        for c in classes:
            self.names.append((_norm(c), str(c)))
            for alias in (synonyms or {}).get(c, []):
                self.names.append((_norm(alias), str(c)))

    def __call__(self, text: str) -> str:
        t = _norm(text)
        best = None
        for name, label in self.names:
            m = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", t)
            if m and (best is None or (m.start(), -len(name)) < best[0]):
                best = ((m.start(), -len(name)), label)
        return best[1] if best else UNPARSED


@register_task("neuro_classification")
class TextClassificationTask(EvalTask):
    name = "neuro_classification"

    def _classes(self, sample: dict) -> list[str]:
        return list(self.options.get("classes") or sample.get("classes") or sample.get("options") or [])

    def score(self, prediction: str, sample: dict) -> dict:
        ref = _reference(sample)
        classes = self._classes(sample)
        synonyms = self.options.get("synonyms") or sample.get("synonyms")
        if classes:
            parser = _Parser(classes, synonyms)
            ref_label, pred_label = parser(ref), parser(prediction)
            if ref_label == UNPARSED:
                raise ValueError(f"sample {sample.get('id', '?')}: reference {ref!r} names none of {classes}")
        else:  # no class list: exact normalised match of the answer text
            ref_label, pred_label = _norm(ref), _norm(prediction) or UNPARSED
        rec = {"id": sample.get("id"), "ref_label": ref_label, "pred_label": pred_label,
               "correct": pred_label == ref_label, "parsed": pred_label != UNPARSED}
        if isinstance(sample.get("scores"), dict):
            rec["scores"] = {str(k): float(v) for k, v in sample["scores"].items()}
        return rec

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        from sklearn.metrics import confusion_matrix

        if not records:
            return {"n": 0}
        y_true = [r["ref_label"] for r in records]
        y_pred = [r["pred_label"] for r in records]
        labels = sorted(set(y_true))
        with warnings.catch_warnings():  # "<unparsed>" predictions are not a true class; counted in n_unparsed
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            out = self._metrics(y_true, y_pred, labels)
        out["n"], out["n_unparsed"] = len(records), sum(not r["parsed"] for r in records)
        out["auroc"] = _auroc(records, labels)
        cm_labels = labels + ([UNPARSED] if out["n_unparsed"] else [])
        cm = confusion_matrix(y_true, y_pred, labels=cm_labels)
        out["confusion_matrix"] = {"labels": cm_labels, "matrix": cm.tolist()}
        out["plots"] = [_plot_confusion(cm, cm_labels, os.path.join(out_dir, f"{self.name}_confusion.png"))]
        return out

    @staticmethod
    def _metrics(y_true, y_pred, labels) -> dict:
        from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

        return {"accuracy": float(accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
                "classes": labels}


def _auroc(records: list[dict], labels: list[str]):
    from sklearn.metrics import roc_auc_score

    if not all("scores" in r for r in records) or len(labels) < 2:
        return None
    missing = {lab for r in records for lab in labels if lab not in r["scores"]}
    if missing:
        raise ValueError(f"AUROC: scores lack class(es) {sorted(missing)}")
    y = np.array([labels.index(r["ref_label"]) for r in records])
    s = np.array([[r["scores"][lab] for lab in labels] for r in records], dtype=float)
    if len(labels) == 2:
        return float(roc_auc_score(y, s[:, 1]))
    s = s / s.sum(axis=1, keepdims=True)
    return float(roc_auc_score(y, s, multi_class="ovr", average="macro", labels=list(range(len(labels)))))


def _plot_confusion(cm, labels, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(labels), 1.0 + 0.6 * len(labels)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_number(text: str) -> float | None:
    m = _NUM.search(str(text))
    return float(m.group(0).replace(",", ".")) if m else None


@register_task("neuro_regression")
class TextRegressionTask(EvalTask):
    name = "neuro_regression"

    def score(self, prediction: str, sample: dict) -> dict:
        ref = parse_number(_reference(sample))
        if ref is None:
            raise ValueError(f"sample {sample.get('id', '?')}: reference {_reference(sample)!r} holds no number")
        pred = parse_number(prediction)
        scale = float(self.options.get("scale", 1.0))
        rec = {"id": sample.get("id"), "ref_value": ref / scale, "pred_value": None if pred is None else pred / scale,
               "parsed": pred is not None}
        rec["abs_error"] = None if pred is None else abs(rec["pred_value"] - rec["ref_value"])
        return rec

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        from scipy.stats import pearsonr, spearmanr

        ok = [r for r in records if r["parsed"]]
        out = {"n": len(records), "n_unparsed": len(records) - len(ok)}
        if not ok:
            return out
        y = np.array([r["ref_value"] for r in ok])
        p = np.array([r["pred_value"] for r in ok])
        out["mae"] = float(np.mean(np.abs(p - y)))
        out["rmse"] = float(math.sqrt(np.mean((p - y) ** 2)))
        const = len(ok) < 2 or np.ptp(y) == 0 or np.ptp(p) == 0
        out["pearson_r"] = None if const else float(pearsonr(y, p)[0])
        out["spearman_rho"] = None if const else float(spearmanr(y, p)[0])
        out["plots"] = [_plot_scatter(y, p, os.path.join(out_dir, f"{self.name}_scatter.png"))]
        return out


def _plot_scatter(y, p, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(y, p, s=12)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("reference")
    ax.set_ylabel("prediction")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
