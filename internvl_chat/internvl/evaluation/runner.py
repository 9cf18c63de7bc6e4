"""The reusable evaluation loop: test rows -> media through the training readers -> batched generation -> scores.

``evaluate(model_dir, data, out)`` is what ``eval/custom_eval.py`` calls; the pieces are importable on their own
(``read_samples``, ``MediaLoader``, ``generate_predictions``, ``score_records``, ``aggregate``).

Test data: a JSONL file (dataset name = file stem, media ``root`` = ``--root`` or the file's folder) or an
InternVL meta JSON (``{"name": {"root", "annotation", "task"?, <reader options>?}}``; ``repeat_time``,
``data_augment`` and ``length`` are training settings and ignored here). Rows are the training format:
``conversations`` whose last ``gpt`` turn is the reference (an ``answer`` field wins when present) and whose
last ``human`` turn is the question; earlier turns are passed as chat history. InternVL's VQA test format
(``question`` + ``answer`` fields, no conversations) is read too.

Task of a row (first that is set): the row's ``task`` field > the meta entry's ``task`` > ``--task`` > ``mcq``
when the row has an ``options`` field or ``A. ...`` option lines in its question, else ``open_qa``. Tasks are
looked up by name only (``internvl.evaluation.base.EVAL_TASKS``); plugins add theirs (``--plugins``).

Media, by the training dataset's rules (``internvl.train.dataset``): the one row key that a registered media
reader claims (``internvl.media.reader_for_key``) is loaded by that reader with ``is_train=False``, the model
config and the data options (``max_dynamic_patch`` from ``--max-num``, overridden by the meta entry's keys; the
reader falls back to the model config's tiling settings). A reader's own placeholder is rewritten to
``<image>`` for ``chat``; a row with one reference and no placeholder gets ``<image>\\n`` in front of its first
question. A ``MediaError`` skips the row under the ``max_skip`` budget (recorded in
``skipped``); past the budget it raises.

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
from dataclasses import dataclass, field
from typing import Any, Iterable

from internvl.evaluation import metrics
from internvl.evaluation.base import EVAL_TASKS, create_task

logger = logging.getLogger(__name__)

DEFAULT_PLACEHOLDER = "<image>"
SCHEMA_VERSION = 1


@dataclass
class Sample:
    """One test row, ready to generate for."""

    uid: str                       # "<dataset>:<line>", unique within a run
    dataset: str
    source: str                    # annotation file
    line: int                      # 1-based line in ``source``
    row: dict
    task: str
    question: str
    reference: Any
    history: list[tuple[str, str]] = field(default_factory=list)
    root: str | None = None
    options: dict = field(default_factory=dict)  # reader options (meta entry overrides)
    system: str | None = None      # a row's own system prompt (replaces the template's, as in training)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


# ---------------------------------------------------------------------------------------------- reading test sets
def read_samples(data: str, *, task: str | None = None, root: str | None = None,
                 limit: int | None = None) -> list[Sample]:
    """Samples of a JSONL file or a meta JSON; ``limit`` keeps the first N rows of each dataset."""
    if data.endswith(".json"):
        from internvl.train.meta import load_meta

        samples = []
        for spec in load_meta(data):  # same validation and path resolution as training
            samples += _read_jsonl(spec.annotation, spec.name, spec.root, spec.task, task, spec.options, limit)
        return samples
    name = os.path.splitext(os.path.basename(data))[0]
    return _read_jsonl(data, name, root if root is not None else os.path.dirname(os.path.abspath(data)), None,
                       task, {}, limit)


def _read_jsonl(path: str, dataset: str, root: str | None, meta_task: str | None, cli_task: str | None,
                options: dict, limit: int | None) -> list[Sample]:
    from internvl.train.jsonl import JsonlIndex

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: annotation file not found (dataset {dataset!r})")
    index = JsonlIndex(path)
    samples = []
    for i in range(len(index) if limit is None else min(limit, len(index))):
        row = index.read(i)  # DataError naming path:line on a malformed line
        line_no = int(index.linenos[i])
        question, history, reference, system = split_row(row, index.ref(i))
        name = row.get("task") or meta_task or cli_task or default_task(row, question)
        samples.append(Sample(uid=f"{dataset}:{line_no}", dataset=dataset, source=path, line=line_no, row=row,
                              task=name, question=question, reference=reference, history=history, root=root,
                              options=dict(options), system=system))
    return samples


def split_row(row: dict, where: str) -> tuple[str, list[tuple[str, str]], Any, str | None]:
    """(question, history [(q, a)...], reference, system prompt) of a row; ``ValueError`` naming ``where``."""
    conv = row.get("conversations")
    if conv is None:
        if "question" not in row or "answer" not in row:
            raise ValueError(f"{where}: row has neither 'conversations' nor 'question' + 'answer'")
        return str(row["question"]), [], row["answer"], None
    if not isinstance(conv, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
        raise ValueError(f"{where}: 'conversations' must be a list of {{'from', 'value'}} turns")
    system = conv[0]["value"] if conv and conv[0].get("from") == "system" else None
    turns = conv[1:] if system is not None else list(conv)
    reference = None
    if turns and turns[-1].get("from") in ("gpt", "assistant"):
        reference, turns = turns[-1]["value"], turns[:-1]
    reference = row.get("answer", reference)
    if reference is None:
        raise ValueError(f"{where}: no reference answer (no final 'gpt' turn and no 'answer' field)")
    roles = [t.get("from") for t in turns]
    if not turns or len(turns) % 2 == 0 or any(
            r not in (("human", "user") if i % 2 == 0 else ("gpt", "assistant")) for i, r in enumerate(roles)):
        raise ValueError(f"{where}: turns must alternate human/gpt and end with the question (got {roles})")
    history = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns) - 1, 2)]
    return turns[-1]["value"], history, reference, system


def default_task(row: dict, question: str) -> str:
    """``mcq`` when the row lists options (field or ``A. ...`` lines), else ``open_qa``."""
    return "mcq" if row.get("options") or metrics.options_from_question(question) else "open_qa"


# --------------------------------------------------------------------------------------------------- media
class MediaLoader:
    """Reads a sample's media with the registered readers, ``is_train=False``, by the training dataset's rules:
    one media key per row, the encoder must read that kind, one reference without placeholder gets one prepended.

    Reader options: ``options`` (``--max-num``) are the defaults, a meta entry's keys override them (as the
    finetune's data options and the meta entry do in training); the reader falls back to the model config.
    """

    def __init__(self, config, options: dict | None = None):
        self.config = config
        self.options = dict(options or {})
        self._readers: dict[tuple, Any] = {}

    def media_key(self, sample: Sample) -> str | None:
        from internvl.media import MEDIA_READERS, reader_for_key
        from internvl.train.dataset import NON_MEDIA_KEYS, UNSUPPORTED_MEDIA_KEYS

        found = []
        for key, value in sample.row.items():
            if key in NON_MEDIA_KEYS or value is None or value == "" or value == []:
                continue
            if reader_for_key(key) is not None:
                found.append(key)
            elif key in UNSUPPORTED_MEDIA_KEYS:
                raise ValueError(f"{sample.where}: no media reader is registered for {key!r}")
        if len(found) > 1:
            raise ValueError(f"{sample.where}: one media kind per row; this row has {found}")
        if found:
            kinds = list(getattr(self.config.vision_config, "input_kinds", None) or ["image"])
            if found[0] not in kinds and MEDIA_READERS.resolve(found[0]) not in kinds:
                raise ValueError(f"{sample.where}: row has {found[0]!r} media but the model's vision encoder "
                                 f"reads {kinds}")
        return found[0] if found else None

    def reader(self, key: str, sample_options: dict):
        from internvl.media import reader_for_key

        opts = {**self.options, **sample_options}
        cache_key = (key, json.dumps(opts, sort_keys=True, default=str))
        if cache_key not in self._readers:
            self._readers[cache_key] = reader_for_key(key)(self.config, opts)
        return self._readers[cache_key]

    def load(self, sample: Sample) -> tuple[list, list[int], str, list[tuple[str, str]]]:
        """(items, items per reference, question, history) with placeholders rewritten to ``<image>``."""
        from internvl.media import resolve_ref

        question, history = sample.question, list(sample.history)
        key = self.media_key(sample)
        if key is None:
            return [], [], question, history
        reader = self.reader(key, sample.options)
        value = sample.row[key]
        refs = list(value) if isinstance(value, (list, tuple)) else [value]
        if type(reader).is_file:
            refs = [resolve_ref(r, sample.root) for r in refs]
        loaded = reader.load_many(refs, is_train=False) if hasattr(reader, "load_many") else \
            [reader.load(r, is_train=False) for r in refs]
        items = [t for ref_items in loaded for t in ref_items]
        per_ref = [len(ref_items) for ref_items in loaded]
        if 0 in per_ref:
            raise ValueError(f"{sample.where}: the {key!r} reader returned no item for {refs[per_ref.index(0)]}")
        for ph in (type(reader).placeholder, *type(reader).placeholder_aliases):
            if ph and ph != DEFAULT_PLACEHOLDER:
                question = question.replace(ph, DEFAULT_PLACEHOLDER)
                history = [(q.replace(ph, DEFAULT_PLACEHOLDER), a) for q, a in history]
        n_ph = question.count(DEFAULT_PLACEHOLDER) + sum(q.count(DEFAULT_PLACEHOLDER) for q, _ in history)
        if n_ph == 0 and len(refs) == 1:  # InternVL: one image without placeholder goes in front of turn one
            if history:
                history[0] = (DEFAULT_PLACEHOLDER + "\n" + history[0][0], history[0][1])
            else:
                question = DEFAULT_PLACEHOLDER + "\n" + question
        elif n_ph != len(refs):
            raise ValueError(f"{sample.where}: {n_ph} media placeholders for {len(refs)} media references")
        return items, per_ref, question, history


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


def _to_model(items: list, device, dtype):
    import torch

    if not items:
        return None
    items = [t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in items]
    if all(t.shape == items[0].shape for t in items):
        return torch.stack(items)
    return items


def generate_predictions(model, tokenizer, samples: list[Sample], loader: MediaLoader, gen_cfg: dict, *,
                         batch_size: int = 8, max_skip: int = 0, on_prediction=None,
                         skipped: list | None = None, progress: bool = True) -> dict[str, str]:
    """uid -> prediction text. ``on_prediction(uid, text)`` is called as each one is ready (for resume files)."""
    import torch
    from tqdm import tqdm

    from internvl.media import MediaError

    skipped = skipped if skipped is not None else []
    device = next(model.parameters()).device
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    out: dict[str, str] = {}
    bar = tqdm(total=len(samples), desc="eval", unit="sample", disable=not progress, dynamic_ncols=True)
    pending: list[tuple[Sample, list, list[int], str]] = []

    def flush():
        if not pending:
            return
        items = [t for _, its, _, _ in pending for t in its]
        with torch.inference_mode():
            answers = model.batch_chat(tokenizer, _to_model(items, device, dtype), [q for *_, q in pending],
                                       dict(gen_cfg), num_patches_list=[n for _, _, nums, _ in pending for n in nums],
                                       image_counts=[len(nums) for _, _, nums, _ in pending])
        for (s, *_), answer in zip(pending, answers):
            _emit(s, answer)
        pending.clear()

    def _emit(s: Sample, answer: str):
        out[s.uid] = answer
        if on_prediction is not None:
            on_prediction(s.uid, answer)
        bar.update(1)

    for s in samples:
        try:
            items, per_ref, question, history = loader.load(s)
        except MediaError as exc:
            skipped.append({"uid": s.uid, "dataset": s.dataset, "source": s.source, "line": s.line,
                            "id": s.row.get("id"), "error": str(exc)})
            logger.warning("skipping %s: %s (%d skipped, budget %d)", s.where, exc, len(skipped), max_skip)
            if len(skipped) > max_skip:
                bar.close()
                raise RuntimeError(f"{len(skipped)} rows with unreadable media, more than --max-skip {max_skip}; "
                                   f"last: {s.where}: {exc}") from exc
            bar.update(1)
            continue
        if history or s.system is not None:  # batch_chat has neither: these go one by one through chat
            _emit(s, _chat_one(model, tokenizer, _to_model(items, device, dtype), question, gen_cfg, history,
                               per_ref, s.system))
            continue
        pending.append((s, items, per_ref, question))
        if len(pending) >= batch_size:
            flush()
    flush()
    bar.close()
    return out


def _chat_one(model, tokenizer, pixel_values, question, gen_cfg, history, per_ref, system):
    import torch

    saved = model.system_message
    if system is not None:
        model.system_message = system
    try:
        with torch.inference_mode():
            return model.chat(tokenizer, pixel_values, question, dict(gen_cfg), history=history or None,
                              num_patches_list=per_ref if per_ref else None)
    finally:
        model.system_message = saved


# ---------------------------------------------------------------------------------------------- scoring
def score_records(samples: list[Sample], predictions: dict[str, str]) -> list[dict]:
    """One record per predicted sample: identity, prompt, reference, prediction and the task's score fields."""
    tasks: dict[str, Any] = {}
    records = []
    for s in samples:
        if s.uid not in predictions:
            continue
        task = tasks.get(s.task) or tasks.setdefault(s.task, create_task(s.task))
        sample = {**s.row, "question": s.question, "reference": s.reference, "dataset": s.dataset}
        try:
            fields = task.score(predictions[s.uid], sample)
        except Exception as exc:  # a bad test row (not a bad prediction): name it and stop
            raise ValueError(f"{s.where}: task {s.task!r} cannot score this row: {exc}") from exc
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
    with open(data, encoding="utf-8") as f:
        return [data] + [e["annotation"] for e in json.load(f).values()]


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
    from transformers import AutoTokenizer

    from internvl.model.internvl_chat import InternVLChatModel

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    model = InternVLChatModel.from_pretrained(model_dir)
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def evaluate(model_dir: str, data: str, out: str, *, task: str | None = None, root: str | None = None,
             batch_size: int = 8, max_new_tokens: int = 64, temperature: float = 0.0, limit: int | None = None,
             max_num: int | None = None, max_skip: int = 0, device: str = "auto", dtype: str = "auto",
             seed: int = 0, resume: bool = True, progress: bool = True, model=None, tokenizer=None) -> dict:
    """Generate, score, aggregate and write ``out`` (results.json); returns the results dict."""
    import torch

    t0 = time.time()
    samples = read_samples(data, task=task, root=root, limit=limit)
    for name in sorted({s.task for s in samples}):
        EVAL_TASKS.get(name)  # unknown task names fail here, before any generation
    if model is None or tokenizer is None:
        model, tokenizer = load_model(model_dir, device, dtype)
    options = {"max_dynamic_patch": int(max_num)} if max_num else {}
    gen_cfg = generation_config(max_new_tokens, temperature)
    key = {"model": fingerprint(model_files(model_dir)), "data": fingerprint(data_files(data)), "root": root,
           "generation": gen_cfg, "options": options, "seed": seed, "dtype": str(next(model.parameters()).dtype)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    cache = PredictionCache(out + ".partial.jsonl", key, resume=resume)
    todo = [s for s in samples if s.uid not in cache.done]
    torch.manual_seed(seed)
    skipped: list[dict] = []
    t_gen = time.time()
    generate_predictions(model, tokenizer, todo, MediaLoader(model.config, options), gen_cfg,
                         batch_size=batch_size, max_skip=max_skip, on_prediction=cache.add, skipped=skipped,
                         progress=progress)
    gen_seconds = time.time() - t_gen
    records = score_records(samples, cache.done)
    out_dir = os.path.dirname(os.path.abspath(out))
    plots_dir = os.path.join(out_dir, os.path.splitext(os.path.basename(out))[0] + "_plots")
    results = {
        "schema_version": SCHEMA_VERSION,
        "model": os.path.abspath(model_dir),
        "data": os.path.abspath(data),
        "settings": {"task": task, "root": root, "batch_size": batch_size, "limit": limit, "max_num": max_num,
                     "max_skip": max_skip, "seed": seed, "device": str(next(model.parameters()).device),
                     "dtype": str(next(model.parameters()).dtype)},
        "generation": gen_cfg,
        "summary": {"n_rows": len(samples), "n_scored": len(records), "n_skipped": len(skipped),
                    "n_resumed": len(samples) - len(todo), "generation_seconds": round(gen_seconds, 3),
                    "total_seconds": None},
        "metrics": aggregate(records, plots_dir, out_dir),
        "samples": records,
        "skipped": skipped,
    }
    results["summary"]["total_seconds"] = round(time.time() - t0, 3)
    write_json_atomic(results, out)
    os.remove(cache.path)
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
