"""Report-generation metrics from the field's packages, computed per row on free-text tasks (``--metrics``).

===============  ==========================================  ==============================================
name             package                                     what it needs locally
===============  ==========================================  ==============================================
``meteor``       ``nltk.translate.meteor_score``             nltk's ``corpora/wordnet`` on ``nltk.data.path``
``bertscore``    ``bert_score.BERTScorer`` (F1 per row)      ``--bertscore-model``: a folder, or a hub id in
                                                             the local hub cache (default ``roberta-large``)
``radgraph``     ``radeval`` (F1RadGraph, radgraph-xl)       the radgraph-xl model in radgraph's cache folder
``ratescore``    ``radeval`` (RaTEScore)                     its NER and BioLORD models in the hub cache
``green``        ``radeval`` (GREEN, ``trust_remote_code``)  GREEN-radllama2-7b in the hub cache, and the
                                                             explicit opt-in ``--allow-remote-code-green``
===============  ==========================================  ==============================================

Nothing is downloaded: hub models are looked up with ``local_files_only`` and radeval runs with
``HF_HUB_OFFLINE=1``. A metric that cannot run is reported as ``"not computed: <model> not found at <where>"``
(or the missing package / opt-in), never as 0 and never as a crash. ``radeval`` is the optional extra
``pip install -e '.[report-metrics]'``. Defaults stay fast: no metric here runs unless asked for.

Rows: the records of tasks that declare ``free_text = True`` (``open_qa`` in the core); a metric adds one
field of the same name to each of those records, and ``add_aggregates`` puts its mean into the task's metrics
(by task and by dataset) or the reason into ``not_computed``.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

from internvl.evaluation import metrics as text_metrics

logger = logging.getLogger(__name__)

REPORT_METRICS = ("meteor", "bertscore", "radgraph", "ratescore", "green")
RADEVAL_EXTRA = "pip install -e '.[report-metrics]'"
DEFAULT_BERTSCORE_MODEL = "roberta-large"
RATESCORE_MODELS = ("Angelakeke/RaTE-NER-Deberta", "FremyCompany/BioLORD-2023-C")
GREEN_MODEL = "StanfordAIMI/GREEN-radllama2-7b"


class NotComputed(Exception):
    """The metric cannot run here; the message (``not computed: ...``) says why and where it looked."""


@dataclass
class ReportMetricOptions:
    bertscore_model: str = DEFAULT_BERTSCORE_MODEL
    bertscore_layers: int | None = None   # default: bert-score's table for known names, else the last layer
    allow_remote_code_green: bool = False
    device: str = "cpu"
    batch_size: int = 16


def parse_metric_names(text: str | None) -> list[str]:
    """``"meteor,bertscore"`` -> names; ``ValueError`` naming the unknown ones."""
    names = [n.strip().lower() for n in (text or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in REPORT_METRICS]
    if unknown:
        raise ValueError(f"unknown report metric(s) {unknown}; choose from {', '.join(REPORT_METRICS)}")
    return list(dict.fromkeys(names))


def free_text_records(records: list[dict]) -> list[dict]:
    from internvl.evaluation.base import EVAL_TASKS

    return [r for r in records if r["task"] in EVAL_TASKS and getattr(EVAL_TASKS.get(r["task"]), "free_text", False)]


def compute(records: list[dict], names: list[str], options: ReportMetricOptions | None = None) -> dict[str, str]:
    """Add each metric's per-row value to the free-text records; returns ``{name: "computed ..." | "not computed: ..."}``."""
    options = options or ReportMetricOptions()
    rows = free_text_records(records)
    status = {}
    if not names:
        return status
    preds = [r.get("prediction") or "" for r in rows]
    refs = [[r["reference"]] if isinstance(r["reference"], str) else [str(x) for x in r["reference"]] for r in rows]
    for name in names:
        if not rows:
            status[name] = "not computed: no free-text rows (tasks with free_text, e.g. open_qa)"
            continue
        try:
            values, how = _SCORERS[name](preds, refs, options)
        except NotComputed as exc:
            status[name] = str(exc)
            logger.warning("%s %s", name, exc)
            continue
        if len(values) != len(rows):
            raise RuntimeError(f"{name}: {len(values)} scores for {len(rows)} rows")
        for r, v in zip(rows, values):
            r[name] = float(v)
        status[name] = f"computed ({how})"
    return status


def add_aggregates(metric_tree: dict, records: list[dict], status: dict[str, str]) -> None:
    """Means of the computed metrics (or the reason) into ``metrics.by_task`` and ``metrics.by_dataset``."""
    groups = [(metric_tree["by_task"], lambda r: True)]
    for ds, tasks in metric_tree["by_dataset"].items():
        if tasks is not metric_tree["by_task"]:
            groups.append((tasks, lambda r, ds=ds: r["dataset"] == ds))
    free = free_text_records(records)
    for tasks, keep in groups:
        for task, agg in tasks.items():
            rows = [r for r in free if r["task"] == task and keep(r)]
            if not rows:
                continue
            for name, state in status.items():
                if state.startswith("computed"):
                    agg[name] = text_metrics.mean(r[name] for r in rows)
                else:
                    agg.setdefault("not_computed", {})[name] = state


# ---------------------------------------------------------------------------------------------- the scorers
def _meteor(preds, refs, options):
    import nltk
    from nltk.corpus import wordnet
    from nltk.translate.meteor_score import meteor_score

    try:
        wordnet.ensure_loaded()
    except LookupError:
        raise NotComputed(f"not computed: wordnet not found at {list(nltk.data.path)} (nltk's corpora/wordnet; "
                          f"put it in one of these folders or set NLTK_DATA)") from None
    tok = text_metrics.bleu_tokens
    return [meteor_score([tok(x) for x in ref], tok(p)) for p, ref in zip(preds, refs)], "nltk meteor_score"


def hub_snapshot(repo_id: str) -> str:
    """The local folder of a hub model in the cache, or ``NotComputed`` naming the cache folder."""
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not in the cache (LocalEntryNotFoundError and relatives)
        raise NotComputed(f"not computed: {repo_id} not found at {constants.HF_HUB_CACHE} (hub cache)") from None


def _local_model(name_or_path: str) -> str:
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.isabs(name_or_path) or name_or_path.startswith(".") or name_or_path.count("/") > 1:
        raise NotComputed(f"not computed: {name_or_path} not found at {os.path.abspath(name_or_path)}")
    return hub_snapshot(name_or_path)


def _bertscore(preds, refs, options):
    from bert_score import BERTScorer
    from bert_score.utils import model2layers
    from transformers import AutoConfig

    path = _local_model(options.bertscore_model)
    layers = options.bertscore_layers or model2layers.get(options.bertscore_model) or \
        AutoConfig.from_pretrained(path).num_hidden_layers
    with _offline():
        scorer = BERTScorer(model_type=path, num_layers=int(layers), batch_size=options.batch_size,
                            device=options.device)
        _, _, f1 = scorer.score(preds, refs)
    return f1.tolist(), f"bert-score F1, {options.bertscore_model}, layer {layers}"


def _radeval(metric: str, key: str) -> Callable:
    def run(preds, refs, options):
        try:
            import radeval  # noqa: F401
        except ImportError:
            raise NotComputed(f"not computed: radeval is not installed ({RADEVAL_EXTRA})") from None
        _check_radeval_models(metric, options)
        from radeval import RadEval

        with _offline():
            try:
                scores = RadEval(metrics=[metric], per_sample=True, show_progress=False)([r[0] for r in refs], preds)
            except Exception as exc:  # a model file radeval wants but we did not know of: report, do not crash
                raise NotComputed(f"not computed: radeval {metric} failed offline: {str(exc).splitlines()[0]}") \
                    from exc
        return scores[key], f"radeval {metric}"

    return run


def _check_radeval_models(metric: str, options: ReportMetricOptions) -> None:
    if metric == "radgraph":
        from radeval.metrics.radgraph._vendor.core import CACHE_DIR

        folder = os.path.join(CACHE_DIR, "radgraph-xl")
        if not os.path.isdir(folder) or not os.listdir(folder):
            raise NotComputed(f"not computed: radgraph-xl not found at {folder}")
    elif metric == "ratescore":
        for repo in RATESCORE_MODELS:
            hub_snapshot(repo)
    elif metric == "green":
        if not options.allow_remote_code_green:
            raise NotComputed("not computed: GREEN runs its model's own code (trust_remote_code); "
                              "pass --allow-remote-code-green to allow it")
        hub_snapshot(GREEN_MODEL)


@contextlib.contextmanager
def _offline():
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_SCORERS = {"meteor": _meteor, "bertscore": _bertscore, "radgraph": _radeval("radgraph", "radgraph_partial"),
            "ratescore": _radeval("ratescore", "ratescore"), "green": _radeval("green", "green")}
