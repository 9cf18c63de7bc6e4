"""Evaluate an InternVL checkpoint on a custom test set: generate, score per task, write results.json.

    python eval/custom_eval.py --model DIR --data TEST.jsonl|META.json --out results.json \\
        [--task NAME] [--batch-size 8] [--max-new-tokens 64] [--temperature 0] [--limit N] [--plugins MOD]

Rows use the training format (see ``internvl.evaluation.runner``). The task of a row is its ``task`` field, else
the meta entry's ``task``, else ``--task``, else ``mcq`` when the row has options (an ``options`` field or
``A. ...`` lines in the question) and ``open_qa`` otherwise. Tasks come from the registry by name
(``--list-tasks`` shows them); plugins add theirs (entry points, ``$INTERNVL_PLUGINS``, ``--plugins``).

results.json (``schema_version`` 1)::

    model, data, settings{...}, generation{max_new_tokens, min_new_tokens, num_beams, do_sample[, temperature]}
    summary{n_rows, n_scored, n_skipped, n_resumed, generation_seconds, total_seconds}
    metrics{by_task{TASK: {n, ...task metrics, plots[...]}}, by_dataset{DATASET: {TASK: {...}}}}
    samples[{uid, id, dataset, source, line, task, question, reference, prediction, ...task score fields}]
    skipped[{uid, dataset, source, line, id, error}]

Plots (PNG) go to ``<out stem>_plots/`` next to results.json; their paths in results.json are relative to it.
An interrupted run resumes from ``<out>.partial.jsonl`` (same model, data and generation settings).
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
    add_plugins_argument(p)
    return p


def print_table(rows: list[list[str]], header=("dataset", "task", "n", "metrics")) -> None:
    widths = [max(len(str(r[i])) for r in [list(header), *rows]) for i in range(len(header))]
    for r in [list(header), ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("internvl").setLevel(logging.INFO)
    import_from_args(args)
    from internvl.evaluation import list_tasks
    from internvl.evaluation.runner import evaluate, summary_rows

    if args.list_tasks:
        print("\n".join(list_tasks()))
        return 0
    if not args.model or not args.data:
        build_parser().error("--model and --data are required")
    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            build_parser().error(f"{flag} must be >= 1")
    if not os.path.isdir(args.model):
        build_parser().error(f"--model {args.model}: not a folder")
    if not os.path.isfile(args.data):
        build_parser().error(f"--data {args.data}: file not found")
    results = evaluate(args.model, args.data, args.out, task=args.task, root=args.root, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, limit=args.limit,
                       max_num=args.max_num, max_skip=args.max_skip, device=args.device, dtype=args.dtype,
                       seed=args.seed, resume=not args.no_resume, progress=not args.no_progress)
    s = results["summary"]
    print(f"\n{s['n_scored']} scored, {s['n_skipped']} skipped, {s['n_resumed']} resumed "
          f"in {s['total_seconds']:.1f}s -> {args.out}")
    print_table(summary_rows(results))
    return 0


def main(argv=None) -> int:
    """The command line under the error policy: one ``error:`` line and exit status 2 for bad input."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
