"""The two core evaluation tasks: ``mcq`` (multiple choice) and ``open_qa`` (short free-text answers).

Both follow ``internvl.evaluation.base.EvalTask``. ``sample`` is the test row plus ``question`` (the prompt the
model saw) and ``reference`` (the ``answer`` field, else the last ``gpt`` turn).

``mcq``: options come from the row's ``options`` field (list, or dict letter -> text) or the ``A. text`` lines of
the question; the reference and the prediction are both read with ``metrics.parse_choice``. A prediction naming
no option (or several) is recorded with ``pred_letter = None`` and counts as wrong. Metrics: ``accuracy``,
``chance`` (mean of 1/num_options: the accuracy of guessing), ``accuracy_parsed``, ``n_unparsed``,
``unparsed_rate``, ``pred_counts`` (letter bias shows here), ``p_value_vs_chance`` (one-sided binomial test, when
every sample has the same number of options) and a confusion-matrix PNG.

``open_qa``: per sample ``exact_match`` and ``token_f1`` (SQuAD normalisation), ``bleu4`` (sentence BLEU-4),
``rouge_l`` (F-measure); a ``reference`` list means several acceptable answers (best one counts). Aggregates:
means, plus ``bleu4_corpus`` (nltk corpus BLEU-4 over all samples) and a histogram PNG of F1 / ROUGE-L.
"""
from __future__ import annotations

import os
from collections import Counter

from internvl.evaluation import metrics
from internvl.evaluation.base import EvalTask, register_task

NO_ANSWER = "none"


@register_task("mcq", aliases=("multiple_choice",))
class MultipleChoiceTask(EvalTask):
    name = "mcq"
    summary_keys = ("accuracy", "chance", "unparsed_rate")
    row_metrics = {"accuracy": "correct"}

    def score(self, prediction: str, sample: dict) -> dict:
        options = metrics.option_map(sample)
        if len(options) < 2:
            raise ValueError("mcq sample has no options: give an 'options' field or 'A. ...' lines in the question")
        reference = sample.get("reference")
        ref = metrics.parse_choice(reference if isinstance(reference, str) else str(reference), options)
        if ref is None:
            raise ValueError(f"mcq reference {reference!r} names none of the options {sorted(options)}")
        pred = metrics.parse_choice(prediction, options)
        return {"pred_letter": pred, "ref_letter": ref, "correct": pred == ref, "num_options": len(options),
                "chance": 1.0 / len(options)}

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        n = len(records)
        correct = sum(bool(r["correct"]) for r in records)
        unparsed = sum(r["pred_letter"] is None for r in records)
        out = {
            "n": n,
            "accuracy": correct / n if n else None,
            "chance": metrics.mean(r["chance"] for r in records),
            "accuracy_parsed": correct / (n - unparsed) if n > unparsed else None,
            "n_unparsed": unparsed,
            "unparsed_rate": unparsed / n if n else None,
            "pred_counts": dict(sorted(Counter(r["pred_letter"] or NO_ANSWER for r in records).items())),
            "p_value_vs_chance": _binomial_p(correct, records),
        }
        if n:
            out["plots"] = [self._confusion_png(records, os.path.join(out_dir, "mcq_confusion.png"))]
        return out

    @staticmethod
    def _confusion_png(records: list[dict], path: str) -> str:
        """Counts of (reference letter, predicted letter or "none"), annotated heat map."""
        from sklearn.metrics import confusion_matrix

        from internvl.evaluation.plots import new_figure, save_figure

        refs = sorted({r["ref_letter"] for r in records})
        cols = sorted(set(refs) | {r["pred_letter"] for r in records if r["pred_letter"]}) + [NO_ANSWER]
        matrix = confusion_matrix([r["ref_letter"] for r in records],
                                  [r["pred_letter"] or NO_ANSWER for r in records], labels=cols)[:len(refs)]
        fig, ax = new_figure(figsize=(1.2 + 0.6 * len(cols), 1.0 + 0.6 * len(refs)))
        ax.imshow(matrix, cmap="Blues")
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(refs)), refs)
        acc = sum(bool(r["correct"]) for r in records) / len(records)
        ax.set_title(f"mcq: accuracy {acc:.3f} (n={len(records)})")
        ax.set_ylabel("reference")
        ax.set_xlabel("prediction")
        return save_figure(fig, path)


def _binomial_p(correct: int, records: list[dict]) -> float | None:
    """One-sided P(accuracy >= observed | guessing), when all samples share one number of options."""
    sizes = {r["num_options"] for r in records}
    if not records or len(sizes) != 1:
        return None
    from scipy.stats import binomtest

    return float(binomtest(correct, len(records), 1.0 / sizes.pop(), alternative="greater").pvalue)


@register_task("open_qa", aliases=("open",))
class OpenQATask(EvalTask):
    name = "open_qa"
    summary_keys = ("exact_match", "token_f1", "bleu4_corpus", "rouge_l")
    row_metrics = {"exact_match": "exact_match", "token_f1": "token_f1", "bleu4": "bleu4", "rouge_l": "rouge_l",
                   "meteor": "meteor", "bertscore": "bertscore", "radgraph": "radgraph", "ratescore": "ratescore",
                   "green": "green"}
    free_text = True

    def score(self, prediction: str, sample: dict) -> dict:
        refs = sample.get("reference")
        if refs is None or (not isinstance(refs, str) and not list(refs)):
            raise ValueError("open_qa sample has no reference answer")
        prediction = prediction or ""
        return {"exact_match": metrics.exact_match(prediction, refs), "token_f1": metrics.token_f1(prediction, refs),
                "bleu4": metrics.sentence_bleu4(prediction, refs), "rouge_l": metrics.rouge_l(prediction, refs)}

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        out = {"n": len(records)}
        for key in ("exact_match", "token_f1", "bleu4", "rouge_l"):
            out[key] = metrics.mean(r[key] for r in records)
        out["bleu4_corpus"] = metrics.corpus_bleu4([r.get("prediction") or "" for r in records],
                                                   [r["reference"] for r in records]) if records else None
        if records:
            out["plots"] = [self._histogram_png(records, os.path.join(out_dir, "open_qa_scores.png"))]
        return out

    @staticmethod
    def _histogram_png(records: list[dict], path: str) -> str:
        from internvl.evaluation.plots import new_figure, save_figure

        fig, axes = new_figure(1, 2, figsize=(8, 3))
        for ax, key in zip(axes, ("token_f1", "rouge_l")):
            values = [r[key] for r in records]
            ax.hist(values, bins=10, range=(0, 1), color="tab:blue")
            ax.set_title(f"{key}: mean {metrics.mean(values):.3f} (n={len(values)})")
            ax.set_xlabel(key)
            ax.set_ylabel("samples")
        return save_figure(fig, path)
