"""Evaluate an InternVL checkpoint on a custom test set: generate, score per task, write results.json.

    python eval/custom_eval.py --model DIR --data TEST.jsonl|META.json --out results.json \\
        [--task NAME] [--batch-size 8] [--max-new-tokens 64] [--temperature 0] [--limit N] [--plugins MOD]
        [--metrics meteor,bertscore,radgraph,ratescore,green] [--no-html]
    python eval/custom_eval.py --data TEST.jsonl|META.json --predictions answers.jsonl --out results.json \
        [--allow-missing] [--task NAME] [--metrics ...] [--no-html]
    python eval/custom_eval.py compare RUN_A.json RUN_B.json [RUN_C.json ...] [--html compare.html]

Rows use the training format (see ``internvl.evaluation.runner``). The task of a row is its ``task`` field, else
the meta entry's ``task``, else ``--task``, else ``mcq`` when the row has options (an ``options`` field or
``A. ...`` lines in the question) and ``open_qa`` otherwise. Tasks come from the registry by name
(``--list-tasks`` shows them); plugins add theirs (entry points, ``$INTERNVL_PLUGINS``, ``--plugins``). The box
tasks ``grounding`` (IoU accuracy) and ``detection`` (precision/recall, mAP) read ``<ref>..</ref><box>[[..]]</box>``
answers in the grammar of ``internvl.grounding`` (``internvl.evaluation.tasks_grounding``).

results.json (``schema_version`` 1)::

    model, data, settings{...}, generation{max_new_tokens, min_new_tokens, num_beams, do_sample[, temperature]}
    summary{n_rows, n_scored, n_skipped, n_resumed, generation_seconds, total_seconds}
    metrics{by_task{TASK: {n, ...task metrics, plots[...], not_computed{...}}}, by_dataset{DATASET: {TASK: {...}}}}
    row_metrics{TASK: {METRIC: per-row field}}   (the metrics that are means over rows: intervals, compare)
    report_metrics{NAME: "computed (...)" | "not computed: ..."}   (with --metrics)
    html: "<out stem>.html"                       (unless --no-html)
    samples[{uid, id, dataset, source, line, task, question, reference, prediction, ...task score fields}]
    skipped[{uid, dataset, source, line, id, error}]

Plots (PNG) go to ``<out stem>_plots/`` next to results.json; their paths in results.json are relative to it.
``<out stem>.html`` is the self-contained report (metrics with bootstrap intervals, chance, plots, worst and best
examples with thumbnails; ``internvl.evaluation.html_report``); ``--no-html`` skips it. ``--metrics`` adds report
metrics on free-text rows (``internvl.evaluation.report_metrics``): their per-row values go into ``samples`` and
their means into the task metrics, or ``not_computed: {name: reason}`` when a package or model is missing
(``report_metrics`` in results.json lists the status of each).

``compare``: the first results file is the baseline; for each later one, per dataset/task/metric the difference
with a paired bootstrap 95% interval and a sign-flip permutation p-value over the rows both runs scored
(``internvl.evaluation.compare``); a terminal table, and an HTML page (``--html``, default
``<last run stem>_compare.html``; ``--no-html`` skips it). Exit code 2 for unreadable or mismatched files.
An interrupted run resumes from ``<out>.partial.jsonl`` (same model, data and generation settings).

``--predictions``: score saved answers (``{"id", "answer"}`` lines, what ``inference_v2.py --jsonl`` writes) with
the same tasks, plots, report and schema, without a model (``internvl.evaluation.predictions``: rows matched by
their ``id``, else ``<dataset>:<line>``; unknown or duplicate ids and rows without a prediction are errors naming
the line; ``--allow-missing`` scores the rest and counts them in ``summary.n_missing`` / ``missing``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from internvl.errors import run_cli
from internvl.registry import add_plugins_argument, import_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="InternVL checkpoint folder (config.json, model.safetensors, tokenizer)")
    p.add_argument("--data", help="test JSONL or meta JSON")
    p.add_argument("--predictions", metavar="ANSWERS.jsonl",
                   help="score these saved answers ({'id', 'answer'} per line) instead of running --model")
    p.add_argument("--allow-missing", action="store_true",
                   help="with --predictions: test rows without a prediction are counted, not an error")
    p.add_argument("--out", default="results.json", help="results file (default: results.json)")
    p.add_argument("--task", default=None, help="task for rows that name none (row and meta 'task' come first)")
    p.add_argument("--root", default=None, help="media root for a JSONL (default: the JSONL's folder)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--limit", type=int, default=None, help="first N rows of each dataset")
    p.add_argument("--max-num", type=int, default=None,
                   help="max tiles per image (default: the model config's; a meta entry's max_dynamic_patch wins)")
    p.add_argument("--max-skip", type=int, default=0, help="rows with unreadable media to skip before failing")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore <out>.partial.jsonl from an earlier run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list-tasks", action="store_true", help="print the registered task names and exit")
    p.add_argument("--metrics", default="", metavar="NAMES",
                   help="comma-separated report metrics for free-text rows: meteor, bertscore, radgraph, ratescore, "
                        "green (default: none; the fast exact match / F1 / BLEU / ROUGE always run). Models are "
                        "never downloaded: one not found locally is reported as not computed")
    p.add_argument("--bertscore-model", default="roberta-large",
                   help="BERTScore model: a local folder or a hub id already in the hub cache (default roberta-large)")
    p.add_argument("--bertscore-layers", type=int, default=None,
                   help="BERTScore layer (default: bert-score's choice for known models, else the last layer)")
    p.add_argument("--allow-remote-code-green", action="store_true",
                   help="allow GREEN: its model loads with trust_remote_code, i.e. runs Python code shipped with the "
                        "model repository; off by default")
    p.add_argument("--html", dest="html", action="store_true", default=True,
                   help="write the HTML report <out stem>.html next to the results (default)")
    p.add_argument("--no-html", dest="html", action="store_false", help="do not write the HTML report")
    add_plugins_argument(p)
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="custom_eval.py compare",
                                description="paired comparison of evaluation runs (the first is the baseline)")
    p.add_argument("runs", nargs="+", metavar="RESULTS.json")
    p.add_argument("--html", default=None, help="HTML output (default: <last run stem>_compare.html)")
    p.add_argument("--no-html", action="store_true")
    p.add_argument("--json", default=None, help="also write the comparison as JSON here")
    p.add_argument("--seed", type=int, default=0)
    return p


def compare_main(argv: list[str]) -> int:
    args = compare_parser().parse_args(argv)
    from internvl.evaluation.compare import compare_runs, format_table, write_html

    result = compare_runs(args.runs, seed=args.seed)  # a CompareError is one error line (run_cli)
    for comp in result["comparisons"]:
        print(format_table(comp))
        print()
    if args.json:
        from internvl.evaluation.runner import write_json_atomic  # imports the model side (torch): only here

        write_json_atomic(result, args.json)
    if not args.no_html:
        path = args.html or os.path.splitext(args.runs[-1])[0] + "_compare.html"
        print(f"html: {write_html(result, path)}")
    return 0


def print_table(rows: list[list[str]], header=("dataset", "task", "n", "metrics")) -> None:
    widths = [max(len(str(r[i])) for r in [list(header), *rows]) for i in range(len(header))]
    for r in [list(header), ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "compare":
        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("internvl").setLevel(logging.INFO)
    import_from_args(args)
    from internvl.evaluation import list_tasks  # light: the task registry, no torch

    if args.list_tasks:
        print("\n".join(list_tasks()))
        return 0
    if not args.data or bool(args.model) == bool(args.predictions):
        build_parser().error("--data and exactly one of --model or --predictions are required")
    if args.predictions and args.limit is not None:
        build_parser().error("--limit applies to model runs; score a predictions file against the whole test set")
    if args.allow_missing and not args.predictions:
        build_parser().error("--allow-missing applies to --predictions")
    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            build_parser().error(f"{flag} must be >= 1")
    if args.model and not os.path.isdir(args.model):
        build_parser().error(f"--model {args.model}: not a folder")
    if not os.path.isfile(args.data):
        build_parser().error(f"--data {args.data}: file not found")
    from internvl.evaluation.report_metrics import ReportMetricOptions, parse_metric_names
    from internvl.evaluation.runner import evaluate, summary_rows  # torch, transformers: only once args are valid

    try:
        names = parse_metric_names(args.metrics)
    except ValueError as exc:
        build_parser().error(f"--metrics: {exc}")
    options = ReportMetricOptions(bertscore_model=args.bertscore_model, bertscore_layers=args.bertscore_layers,
                                  allow_remote_code_green=args.allow_remote_code_green)
    if args.predictions:
        from internvl.evaluation.predictions import score_predictions

        results = score_predictions(args.data, args.predictions, args.out, task=args.task, root=args.root,
                                    allow_missing=args.allow_missing, report_metrics=names,
                                    metric_options=options, html=args.html)
    else:
        results = evaluate(args.model, args.data, args.out, task=args.task, root=args.root,
                           batch_size=args.batch_size,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, limit=args.limit,
                           max_num=args.max_num, max_skip=args.max_skip, device=args.device, dtype=args.dtype,
                           seed=args.seed, resume=not args.no_resume, progress=not args.no_progress,
                           report_metrics=names, metric_options=options, html=args.html)
    s = results["summary"]
    missing = f", {s['n_missing']} without a prediction" if "n_missing" in s else ""
    print(f"\n{s['n_scored']} scored, {s['n_skipped']} skipped{missing}, {s['n_resumed']} resumed "
          f"in {s['total_seconds']:.1f}s -> {args.out}")
    print_table(summary_rows(results))
    for name, state in results.get("report_metrics", {}).items():
        print(f"{name}: {state}")
    if args.html:
        print(f"html: {os.path.splitext(args.out)[0]}.html")
    return 0


def main(argv=None) -> int:
    """The command line under the error policy: one ``error:`` line and exit status 2 for bad input."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
