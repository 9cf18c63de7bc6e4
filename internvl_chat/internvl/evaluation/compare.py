"""Compare evaluation runs: per dataset, task and mean-type metric, the difference B - A with a paired bootstrap
95 % interval and a sign-flip permutation p-value (``bootstrap.paired_difference``), in the terminal and as HTML.

``compare_runs([A.json, B.json, ...])``: the first file is the baseline; each later run is paired with it on the
rows both scored (same ``uid`` = dataset and line, same question and reference; rows whose question or
reference differ are an error: the runs did not use the same test set). Metrics are the aggregate keys that are
a mean of a per-row field in both runs (accuracy <- ``correct``, exact match, token F1, METEOR ...).
"""
from __future__ import annotations

import json
import os

from internvl.errors import InputError
from internvl.evaluation import bootstrap


class CompareError(InputError, ValueError):
    """Runs that cannot be compared (unreadable file, different test rows); the message names the file."""


def load_results(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except OSError as exc:
        raise CompareError(f"{path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
    if not isinstance(results, dict) or "samples" not in results or "metrics" not in results:
        raise CompareError(f"{path}: not a custom_eval results file (no 'samples' / 'metrics')")
    return results


def compare_pair(a: dict, b: dict, a_name: str, b_name: str, seed: int = 0) -> list[dict]:
    """Rows ``{dataset, task, metric, n, a, b, diff, low, high, p_value, n_only_a, n_only_b}``."""
    rows_a = {r["uid"]: r for r in a["samples"]}
    rows_b = {r["uid"]: r for r in b["samples"]}
    for uid in rows_a.keys() & rows_b.keys():
        ra, rb = rows_a[uid], rows_b[uid]
        if (ra.get("question"), ra.get("reference")) != (rb.get("question"), rb.get("reference")):
            raise CompareError(f"{b_name}: row {uid} ({rb.get('source')}:{rb.get('line')}) has another question or "
                               f"reference than in {a_name}: the runs used different test sets")
    out = []
    for ds, tasks in b["metrics"]["by_dataset"].items():
        for task, agg_b in tasks.items():
            agg_a = a["metrics"]["by_dataset"].get(ds, {}).get(task)
            if agg_a is None:
                continue
            in_a = [r for r in a["samples"] if r["dataset"] == ds and r["task"] == task]
            in_b = [r for r in b["samples"] if r["dataset"] == ds and r["task"] == task]
            fields_a = bootstrap.row_metric_fields(task, agg_a, in_a, a.get("row_metrics", {}).get(task))
            fields_b = bootstrap.row_metric_fields(task, agg_b, in_b, b.get("row_metrics", {}).get(task))
            shared = sorted({r["uid"] for r in in_a} & {r["uid"] for r in in_b})
            pa = [rows_a[u] for u in shared]
            pb = [rows_b[u] for u in shared]
            for metric, field in fields_b.items():
                if fields_a.get(metric) != field:
                    continue
                res = bootstrap.paired_difference(bootstrap.row_values(pa, field), bootstrap.row_values(pb, field),
                                                  seed=seed) if shared else {}
                out.append({"dataset": ds, "task": task, "metric": metric, "field": field, "n": len(shared),
                            "a": res.get("a"), "b": res.get("b"), "diff": res.get("diff"), "low": res.get("low"),
                            "high": res.get("high"), "p_value": res.get("p_value"),
                            "n_only_a": len(in_a) - len(shared), "n_only_b": len(in_b) - len(shared)})
    return out


def compare_runs(paths: list[str], seed: int = 0) -> dict:
    if len(paths) < 2:
        raise CompareError("compare needs at least two results files (baseline first)")
    runs = [load_results(p) for p in paths]
    return {"baseline": paths[0], "runs": paths,
            "comparisons": [{"a": paths[0], "b": p, "rows": compare_pair(runs[0], r, paths[0], p, seed)}
                            for p, r in zip(paths[1:], runs[1:])]}


def _num(v, fmt="{:+.4f}") -> str:
    return "" if v is None else fmt.format(v)


def table_rows(comparison: dict) -> list[list[str]]:
    return [[r["dataset"], r["task"], r["metric"], str(r["n"]), _num(r["a"], "{:.4f}"), _num(r["b"], "{:.4f}"),
             _num(r["diff"]), f"[{_num(r['low'])}, {_num(r['high'])}]" if r["low"] is not None else "",
             _num(r["p_value"], "{:.4g}")] for r in comparison["rows"]]


HEADER = ("dataset", "task", "metric", "n", "A", "B", "B - A", "95% CI", "p")


def format_table(comparison: dict) -> str:
    rows = [list(HEADER), *table_rows(comparison)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [f"A = {comparison['a']}", f"B = {comparison['b']}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_html(result: dict, path: str) -> str:
    import jinja2
    from markupsafe import Markup

    from internvl.evaluation.html_report import page
    from internvl.fileio import atomic_write_text

    body = jinja2.Environment(autoescape=True).from_string(
        "<p>Paired over the rows both runs scored; B - A with a paired bootstrap 95% interval and a two-sided "
        "sign-flip permutation p-value.</p>"
        "{% for c in comps %}<h2>A = {{ c.a }}<br>B = {{ c.b }}</h2><table class='compare'><tr>"
        "{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr>{% for row in c.table %}<tr>"
        "{% for cell in row %}<td{% if loop.index > 3 %} class='num'{% endif %}>{{ cell }}</td>{% endfor %}</tr>"
        "{% endfor %}</table>{% endfor %}"
    ).render(header=HEADER, comps=[{**c, "table": table_rows(c)} for c in result["comparisons"]])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(page("Run comparison", Markup(body)), path)
    return path
