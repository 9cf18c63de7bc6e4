"""The self-contained HTML evaluation report written next to results.json (``--html``, on by default).

One file, images embedded as base64 PNG, no script and no network: it opens offline and can be mailed. For each
dataset and task: every aggregate metric with its 95 % bootstrap interval over rows (mean-type metrics, see
``bootstrap``), the chance level when the task states one, metrics that were not computed with the reason, the
plots the task wrote (confusion matrices, KM curves, score histograms ...), and the worst and best rows by the
task's first per-row metric, each with a thumbnail of its media (drawn by the registered viewer of its kind,
``internvl.serve.viewers``), the question, the reference and the answer.

``write_report(results, path, samples=None)``: ``samples`` (``testset.Sample`` list) give the media of each row;
without them the examples have no thumbnail. ``page(title, body_html)`` is the shared page frame (``compare``).
"""
from __future__ import annotations

import base64
import io
import os
from typing import Any

from internvl.evaluation import bootstrap

N_EXAMPLES = 3
THUMB = 160

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:19px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
h3{font-size:16px;margin-top:20px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top;font-size:14px}th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777}.nc{color:#a15c00}img.plot{max-width:560px;border:1px solid #eee;margin:4px}
img.thumb{max-width:160px;max-height:160px}.good{color:#0a7d28}.bad{color:#b3261e}pre{white-space:pre-wrap;margin:0}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title><style>{{ style }}</style></head>
<body><h1>{{ title }}</h1>{{ body }}</body></html>"""

_BODY = """
<table>
<tr><th>model</th><td>{{ r.model or ("predictions: " ~ r.predictions) }}</td></tr><tr><th>data</th><td>{{ r.data }}</td></tr>
<tr><th>generation</th><td>{{ r.generation }}</td></tr>
<tr><th>rows</th><td>{{ s.n_rows }} ({{ s.n_scored }} scored, {{ s.n_skipped }} skipped)</td></tr>
{% if status %}<tr><th>report metrics</th><td>{% for k, v in status.items() %}<div>{{ k }}: {{ v }}</div>{% endfor %}</td></tr>{% endif %}
</table>
{% for ds in datasets %}<h2 id="ds-{{ ds.name }}">dataset {{ ds.name }}</h2>
{% for t in ds.tasks %}<h3 id="task-{{ ds.name }}-{{ t.name }}">task {{ t.name }} (n = {{ t.n }})</h3>
<table class="metrics"><tr><th>metric</th><th>value</th><th>95% CI (bootstrap over rows)</th></tr>
{% for m in t.metrics %}<tr class="metric" data-metric="{{ m.name }}"><td>{{ m.name }}</td>
<td class="num">{{ m.value }}</td><td class="num">{{ m.ci }}</td></tr>{% endfor %}
{% for name, why in t.not_computed.items() %}<tr class="metric" data-metric="{{ name }}"><td>{{ name }}</td>
<td class="nc" colspan="2">{{ why }}</td></tr>{% endfor %}
</table>
{% for p in t.plots %}<figure><img class="plot" alt="{{ p.name }}" src="data:image/png;base64,{{ p.b64 }}">
<figcaption class="muted">{{ p.name }}</figcaption></figure>{% endfor %}
{% for p in t.missing_plots %}<p class="nc">plot {{ p }} not found</p>{% endfor %}
{% if t.examples %}<table class="examples"><tr><th></th><th>{{ t.key }}</th><th>media</th><th>question</th>
<th>reference</th><th>answer</th></tr>
{% for e in t.examples %}<tr><td class="{{ e.cls }}">{{ e.which }}</td><td class="num">{{ e.score }}</td>
<td>{% if e.thumb %}<img class="thumb" alt="media" src="data:image/png;base64,{{ e.thumb }}">{% else %}<span class="muted">{{ e.media_note }}</span>{% endif %}</td>
<td><pre>{{ e.question }}</pre><div class="muted">{{ e.where }}</div></td><td><pre>{{ e.reference }}</pre></td>
<td><pre>{{ e.prediction }}</pre></td></tr>{% endfor %}</table>{% endif %}
{% endfor %}{% endfor %}
"""


def _env():
    import jinja2

    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def page(title: str, body_html: str) -> str:
    """The report's page frame around already-escaped ``body_html``."""
    from markupsafe import Markup

    return _env().from_string(_PAGE).render(title=title, style=Markup(_STYLE), body=Markup(body_html))


def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"
    return str(v)


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def media_of(sample) -> tuple[str, str] | None:
    """(kind, resolved path) of the first media reference of a sample, or ``None``."""
    from internvl.media import reader_for_key, resolve_ref
    from internvl.data.processor import NON_MEDIA_KEYS

    for key, value in sample.row.items():
        if key in NON_MEDIA_KEYS or value in (None, "", []) or reader_for_key(key) is None:
            continue
        ref = value[0] if isinstance(value, (list, tuple)) else value
        ref = resolve_ref(ref, sample.root)
        if isinstance(ref, dict):
            ref = ref.get("path")
        return (key, ref) if isinstance(ref, str) else None
    return None


def thumbnail(kind: str, path: str) -> tuple[str | None, str]:
    """(base64 PNG or None, note) through the viewer registered for ``kind``."""
    from internvl.media import MEDIA_READERS
    from internvl.serve.viewers import VIEWERS, ViewerError

    kind = MEDIA_READERS.resolve(kind)
    if kind not in VIEWERS:
        return None, f"no viewer for {kind!r}"
    try:
        return png_b64(VIEWERS.get(kind)().thumbnail(path, THUMB)), ""
    except ViewerError as exc:
        return None, f"no thumbnail: {exc}"
    except Exception as exc:  # a viewer bug must not cost the report: the cell says what failed
        return None, f"no thumbnail: {type(exc).__name__}: {exc}"


def _task_view(ds: str, name: str, agg: dict, records: list[dict], out_dir: str, media: dict,
               declared: dict | None) -> dict:
    cis = bootstrap.task_intervals(name, agg, records, declared=declared)
    rows = []
    for key, value in agg.items():
        if key in ("plots", "not_computed") or isinstance(value, (dict, list)):
            if isinstance(value, dict) and key != "not_computed":
                rows.append({"name": key, "value": ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()), "ci": ""})
            continue
        ci = cis.get(key)
        text = f"[{ci['low']:.4f}, {ci['high']:.4f}]" if ci and ci["low"] is not None else ""
        rows.append({"name": key, "value": fmt(value), "ci": text})
    plots, missing = [], []
    for rel in agg.get("plots", []):
        path = os.path.join(out_dir, rel)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                plots.append({"name": rel, "b64": base64.b64encode(f.read()).decode("ascii")})
        else:
            missing.append(rel)
    return {"name": name, "n": agg.get("n", len(records)), "metrics": rows, "not_computed": agg.get("not_computed", {}),
            "plots": plots, "missing_plots": missing, **_examples(name, agg, records, media, declared)}


def _examples(name: str, agg: dict, records: list[dict], media: dict, declared: dict | None) -> dict:
    fields = bootstrap.row_metric_fields(name, agg, records, declared)
    if not fields or not records:
        return {"examples": [], "key": ""}
    key, field = next(iter(fields.items()))
    order = sorted(range(len(records)), key=lambda i: (bootstrap.row_values([records[i]], field)[0], i))
    k = min(N_EXAMPLES, len(records) // 2) or 1
    picks = [("worst", "bad", i) for i in order[:k]] + [("best", "good", i) for i in reversed(order[-k:])]
    out = []
    for which, cls, i in picks:
        r = records[i]
        thumb, note = None, "no media"
        if r["uid"] in media:
            thumb, note = thumbnail(*media[r["uid"]])
        out.append({"which": which, "cls": cls, "score": fmt(r.get(field)), "thumb": thumb, "media_note": note,
                    "question": r.get("question", ""), "reference": r.get("reference", ""),
                    "prediction": r.get("prediction", ""), "where": f"{r.get('source')}:{r.get('line')}"})
    return {"examples": out, "key": field}


def render_report(results: dict, out_dir: str, samples: list | None = None) -> str:
    """The report HTML for a results dict whose plot paths are relative to ``out_dir``."""
    media = {}
    for s in samples or []:
        found = media_of(s)
        if found:
            media[s.uid] = found
    records = results.get("samples", [])
    datasets = []
    for ds, tasks in results["metrics"]["by_dataset"].items():
        views = []
        for name, agg in tasks.items():
            group = [r for r in records if r["task"] == name and r["dataset"] == ds]
            views.append(_task_view(ds, name, agg, group, out_dir, media, results.get("row_metrics", {}).get(name)))
        datasets.append({"name": ds, "tasks": views})
    body = _env().from_string(_BODY).render(r=results, s=results["summary"], datasets=datasets,
                                            status=results.get("report_metrics", {}))
    source = results.get("model") or results.get("predictions") or "?"  # saved-predictions runs have no model
    title = f"Evaluation: {os.path.basename(source.rstrip('/'))} on {os.path.basename(results['data'])}"
    from markupsafe import Markup

    return page(title, Markup(body))


def write_report(results: dict, path: str, samples: list | None = None) -> str:
    """Render and write the report atomically; returns ``path``."""
    from internvl.fileio import atomic_write_text

    html = render_report(results, os.path.dirname(os.path.abspath(path)), samples)
    atomic_write_text(html, path)
    return path
