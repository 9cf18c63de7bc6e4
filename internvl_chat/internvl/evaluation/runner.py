"""The reusable evaluation loop: samples -> batched generation -> per-task scores -> results.json.

``evaluate(model_dir, data, out)`` is what ``eval/custom_eval.py`` calls; the pieces are importable on their own
(``internvl.evaluation.testset.read_samples``, ``generate_predictions``, ``score_records``, ``aggregate``). How
rows become samples and how their task is chosen: ``testset``; how a row becomes a prompt with its media: the
row processor (``internvl.data.processor``), the same one training uses.

Generation: ``model.generate_text`` over ``batch_size`` prompts at a time (greedy unless ``temperature > 0``),
history and a row's own system prompt included in its prompt. Tasks are looked up by name only
(``internvl.evaluation.base.EVAL_TASKS``); plugins add theirs (``--plugins``). Every row is scored once with an
empty prediction before any generation, so a row its task cannot score (an MCQ without options, ...) fails at
once, naming ``file:line``. A row whose media are missing or unreadable is skipped under the ``max_skip`` budget
(recorded in ``skipped``); past the budget it raises.

Resume: predictions stream to ``<out>.partial.jsonl`` under a key made of the model files, the data files and
the generation settings; a rerun with the same key generates only what is missing. ``results.json`` is written
atomically and the partial file removed at the end. See ``eval/custom_eval.py`` for the results schema.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any, Iterable

from internvl.data.collate import stack_items
from internvl.data.processor import RowProcessor
from internvl.errors import BAD_ROW, MISSING_FILE, UNREADABLE_MEDIA, DataError, InputError, SkipBudgetExceeded
from internvl.evaluation.base import EVAL_TASKS, create_task
from internvl.evaluation.testset import Sample, place_boxes, read_samples

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

__all__ = ["Sample", "aggregate", "evaluate", "generate_predictions", "load_model", "read_samples",
           "score_records", "summary_rows"]


# ---------------------------------------------------------------------------------------------- generation
def generation_config(max_new_tokens: int = 64, temperature: float = 0.0, eos_token_id=None) -> dict:
    """Greedy unless ``temperature > 0`` (then sampling); at least one new token, as InternVL's eval scripts."""
    cfg = {"max_new_tokens": int(max_new_tokens), "min_new_tokens": 1, "num_beams": 1,
           "do_sample": temperature > 0}
    if temperature > 0:
        cfg["temperature"] = float(temperature)
    if eos_token_id is not None:
        cfg["eos_token_id"] = eos_token_id
    return cfg


def media_inputs(items: list, kinds: list[str], device, dtype) -> dict | None:
    """Items grouped by kind on the model's device and dtype (as the training collator groups them)."""
    if not items:
        return None
    moved = [t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in items]
    return {kind: stack_items([t for t, k in zip(moved, kinds) if k == kind]) for kind in dict.fromkeys(kinds)}


def generate_predictions(model, tokenizer, samples: list[Sample], processor: RowProcessor, gen_cfg: dict, *,
                         batch_size: int = 8, max_skip: int = 0, on_prediction=None,
                         skipped: list | None = None, progress: bool = True) -> dict[str, str]:
    """uid -> prediction text. ``on_prediction(uid, text)`` is called as each one is ready (for resume files)."""
    import torch
    from tqdm import tqdm

    skipped = skipped if skipped is not None else []
    device = next(model.parameters()).device
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    out: dict[str, str] = {}
    bar = tqdm(total=len(samples), desc="eval", unit="sample", disable=not progress, dynamic_ncols=True)
    pending: list[tuple[Sample, Any]] = []

    def flush():
        if not pending:
            return
        items = [t for _, p in pending for t in p.items]
        kinds = [k for _, p in pending for k in p.item_kinds]
        with torch.inference_mode():
            answers = model.generate_text(tokenizer, [p.input_ids for _, p in pending], dict(gen_cfg),
                                          pixel_values=media_inputs(items, kinds, device, dtype),
                                          item_kinds=kinds or None)
        for (s, _), answer in zip(pending, answers):
            out[s.uid] = answer
            if on_prediction is not None:
                on_prediction(s.uid, answer)
            bar.update(1)
        pending.clear()

    for s in samples:
        try:
            inputs = processor.prompt_inputs(s.row, s.where, root=s.root, dataset_options=s.options)
        except DataError as exc:
            if exc.reason not in (MISSING_FILE, UNREADABLE_MEDIA):
                bar.close()
                raise
            skipped.append({"uid": s.uid, "dataset": s.dataset, "source": s.source, "line": s.line,
                            "id": s.row.get("id"), "error": str(exc)})
            logger.warning("skipping %s (%d skipped, budget %d)", exc, len(skipped), max_skip)
            if len(skipped) > max_skip:
                bar.close()
                raise SkipBudgetExceeded(f"{len(skipped)} rows with unreadable media, more than --max-skip "
                                         f"{max_skip}; last: {exc}") from exc
            bar.update(1)
            continue
        pending.append((s, inputs))
        if len(pending) >= batch_size:
            flush()
    flush()
    bar.close()
    return out


# ---------------------------------------------------------------------------------------------- scoring
def score_records(samples: list[Sample], predictions: dict[str, str]) -> list[dict]:
    """One record per predicted sample: identity, prompt, reference, prediction and the task's score fields."""
    tasks: dict[str, Any] = {}
    records = []
    for s in samples:
        if s.uid not in predictions:
            continue
        task = tasks.get(s.task) or tasks.setdefault(s.task, create_task(s.task))
        sample = {**s.row, "question": s.question, "reference": s.reference, "dataset": s.dataset,
                  "where": s.where, "media_root": s.root}
        try:
            fields = task.score(predictions[s.uid], sample)
        except InputError:  # a task's own named error already names the row (``sample["where"]``)
            raise
        except Exception as exc:  # a bad test row (not a bad prediction): name it and stop
            raise DataError(s.where, BAD_ROW, f"task {s.task!r} cannot score this row "
                                              f"(prediction {predictions[s.uid][:80]!r}): {exc}") from exc
        records.append({"uid": s.uid, "id": s.row.get("id"), "dataset": s.dataset, "source": s.source,
                        "line": s.line, "task": s.task, "question": s.question, "reference": s.reference,
                        "prediction": predictions[s.uid], **fields})
    return records


def aggregate(records: list[dict], plots_dir: str, rel_to: str) -> dict:
    """``{"by_task": {task: metrics}, "by_dataset": {dataset: {task: metrics}}}``; plot paths relative to ``rel_to``."""
    def run(group: list[dict], folder: str) -> dict:
        task = create_task(group[0]["task"])
        result = task.aggregate(group, folder)
        if "plots" in result:
            result["plots"] = [os.path.relpath(p, rel_to) for p in result["plots"]]
        return result

    by_task = {t: run(g, os.path.join(plots_dir, "all", t)) for t, g in _group(records, "task").items()}
    datasets = _group(records, "dataset")
    by_dataset = {}
    for ds, group in datasets.items():
        if len(datasets) == 1:
            by_dataset[ds] = by_task
        else:
            by_dataset[ds] = {t: run(g, os.path.join(plots_dir, ds, t)) for t, g in _group(group, "task").items()}
    return {"by_task": by_task, "by_dataset": by_dataset}


def row_metrics_of(by_task: dict, records: list[dict]) -> dict[str, dict[str, str]]:
    """``{task: {metric: per-row field}}`` of the mean-type metrics (``bootstrap``), recorded for ``compare``."""
    from internvl.evaluation.bootstrap import row_metric_fields

    groups = _group(records, "task")
    return {t: row_metric_fields(t, agg, groups.get(t, [])) for t, agg in by_task.items()}


def _group(records: Iterable[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r[key], []).append(r)
    return groups


# ---------------------------------------------------------------------------------------------- resume + writing
def fingerprint(paths: Iterable[str]) -> list:
    """(path, size, mtime) of each file, for cache keys."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.abspath(p), st.st_size, int(st.st_mtime_ns)])
    return out


def model_files(model_dir: str) -> list[str]:
    return sorted(os.path.join(model_dir, f) for f in os.listdir(model_dir)
                  if f.endswith((".json", ".safetensors", ".model", ".txt")))


def data_files(data: str) -> list[str]:
    if not data.endswith(".json"):
        return [data]
    from internvl.data.meta import load_meta

    return [data] + [spec.annotation for spec in load_meta(data)]


class PredictionCache:
    """Append-only ``<out>.partial.jsonl``: a header line with the run key, then ``{"uid", "prediction"}`` lines."""

    def __init__(self, path: str, key: dict, resume: bool = True):
        self.path, self.key = path, key
        self.done: dict[str, str] = {}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        self.digest = digest
        if resume and os.path.exists(path):
            self._read(path)
        if not self.done:
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"key_sha256": digest, "key": key}, default=str) + "\n")

    def _read(self, path: str) -> None:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = {}
        if header.get("key_sha256") != self.digest:
            logger.warning("%s was written for another model/data/settings: starting over", path)
            return
        body = [ln for ln in lines[1:] if ln.strip()]
        for i, ln in enumerate(body):
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError as exc:
                if i == len(body) - 1:  # the line being written when the last run stopped
                    logger.warning("%s: ignoring an incomplete last line", path)
                    break
                raise ValueError(f"{path}:{i + 2}: corrupt prediction line ({exc}); delete the file") from exc
            self.done[rec["uid"]] = rec["prediction"]
        if self.done:
            with open(path, "w", encoding="utf-8") as f:  # rewrite without the torn line
                f.write(json.dumps({"key_sha256": self.digest, "key": self.key}, default=str) + "\n")
                for uid, pred in self.done.items():
                    f.write(json.dumps({"uid": uid, "prediction": pred}, ensure_ascii=False) + "\n")
            logger.info("resuming: %d predictions from %s", len(self.done), path)

    def add(self, uid: str, prediction: str) -> None:
        self.done[uid] = prediction
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"uid": uid, "prediction": prediction}, ensure_ascii=False) + "\n")


def write_json_atomic(obj: Any, path: str) -> None:
    from internvl.fileio import atomic_write_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(json.dumps(obj, indent=2, default=str), path)


# ---------------------------------------------------------------------------------------------- model + top level
def load_model(model_dir: str, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer) from an InternVL checkpoint folder; no remote code."""
    import torch

    from internvl.model.internvl_chat import InternVLChatModel

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    from internvl.model.checkpoint import read_tokenizer

    model = InternVLChatModel.from_pretrained(model_dir)
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    tokenizer = read_tokenizer(model_dir)
    return model, tokenizer


def evaluate(model_dir: str, data: str, out: str, *, task: str | None = None, root: str | None = None,
             batch_size: int = 8, max_new_tokens: int = 64, temperature: float = 0.0, limit: int | None = None,
             max_num: int | None = None, max_skip: int = 0, device: str = "auto", dtype: str = "auto",
             seed: int = 0, resume: bool = True, progress: bool = True, model=None, tokenizer=None,
             report_metrics: Iterable[str] = (), metric_options=None, html: bool = True) -> dict:
    """Generate, score, aggregate and write ``out`` (results.json) and, with ``html``, ``<out stem>.html``
    (``html_report``); ``report_metrics`` names extra text metrics (``report_metrics.REPORT_METRICS``)."""
    import torch

    t0 = time.time()
    samples = read_samples(data, task=task, root=root, limit=limit)
    # unknown tasks, unscorable rows: fail before loading the model (rows whose boxes need placing: after it)
    score_records([s for s in samples if not s.row.get("boxes")], {s.uid: "" for s in samples})
    if model is None or tokenizer is None:
        model, tokenizer = load_model(model_dir, device, dtype)
    options = {"max_dynamic_patch": int(max_num)} if max_num else {}
    processor = RowProcessor(model.config, tokenizer, options=options)
    place_boxes(samples, processor)
    score_records(samples, {s.uid: "" for s in samples})
    gen_cfg = generation_config(max_new_tokens, temperature)
    key = {"model": fingerprint(model_files(model_dir)), "data": fingerprint(data_files(data)), "root": root,
           "generation": gen_cfg, "options": options, "seed": seed, "dtype": str(next(model.parameters()).dtype)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    cache = PredictionCache(out + ".partial.jsonl", key, resume=resume)
    todo = [s for s in samples if s.uid not in cache.done]
    torch.manual_seed(seed)
    skipped: list[dict] = []
    t_gen = time.time()
    generate_predictions(model, tokenizer, todo, processor, gen_cfg,
                         batch_size=batch_size, max_skip=max_skip, on_prediction=cache.add, skipped=skipped,
                         progress=progress)
    gen_seconds = time.time() - t_gen
    records = score_records(samples, cache.done)
    header = {"model": os.path.abspath(model_dir), "data": os.path.abspath(data),
              "settings": {"task": task, "root": root, "batch_size": batch_size, "limit": limit, "max_num": max_num,
                           "max_skip": max_skip, "seed": seed, "device": str(next(model.parameters()).device),
                           "dtype": str(next(model.parameters()).dtype)},
              "generation": gen_cfg}
    summary = {"n_rows": len(samples), "n_scored": len(records), "n_skipped": len(skipped),
               "n_resumed": len(samples) - len(todo), "generation_seconds": round(gen_seconds, 3)}
    results = write_results(records, samples, skipped, out, header, summary, t0=t0, report_metrics=report_metrics,
                            metric_options=metric_options, html=html)
    os.remove(cache.path)
    return results


def write_results(records: list[dict], samples: list[Sample], skipped: list[dict], out: str, header: dict,
                  summary: dict, *, t0: float, report_metrics: Iterable[str] = (), metric_options=None,
                  html: bool = True, extra: dict | None = None) -> dict:
    """Aggregate scored ``records`` into the results schema, write ``out`` atomically and the HTML report.
    Shared by the model-in-the-loop run (``evaluate``) and saved-predictions scoring (``evaluation.predictions``);
    ``header`` holds the run-specific keys (model or predictions, data, settings, generation); ``extra`` keys are
    added after ``skipped``."""
    from internvl.evaluation import report_metrics as extra_metrics

    metric_status = extra_metrics.compute(records, list(report_metrics), metric_options)
    out_dir = os.path.dirname(os.path.abspath(out))
    plots_dir = os.path.join(out_dir, os.path.splitext(os.path.basename(out))[0] + "_plots")
    results = {
        "schema_version": SCHEMA_VERSION,
        **header,
        "summary": {**summary, "total_seconds": None},
        "metrics": aggregate(records, plots_dir, out_dir),
        "samples": records,
        "skipped": skipped,
        **(extra or {}),
    }
    if metric_status:
        extra_metrics.add_aggregates(results["metrics"], records, metric_status)
        results["report_metrics"] = metric_status
    results["row_metrics"] = row_metrics_of(results["metrics"]["by_task"], records)
    html_path = os.path.splitext(out)[0] + ".html"
    if html:
        results["html"] = os.path.basename(html_path)
    results["summary"]["total_seconds"] = round(time.time() - t0, 3)
    write_json_atomic(results, out)
    if html:
        from internvl.evaluation.html_report import write_report

        write_report(results, html_path, samples)
    return results


def summary_rows(results: dict) -> list[list[str]]:
    """Table rows (dataset, task, n, metrics...) for printing."""
    rows = []
    for ds, tasks in results["metrics"]["by_dataset"].items():
        for name, m in tasks.items():
            keys = getattr(EVAL_TASKS.get(name), "summary_keys", None) or \
                [k for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"][:4]
            cells = [f"{k}={m[k]:.4f}" if isinstance(m.get(k), float) else f"{k}={m.get(k)}" for k in keys]
            rows.append([ds, name, str(m.get("n", "")), "  ".join(cells)])
    return rows
