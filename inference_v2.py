"""Chat with an InternVL checkpoint from the command line: one question (streamed), or a JSONL of questions.

    python inference_v2.py --model DIR --image a.png [--image b.png] --question "What is shown?"
    python inference_v2.py --model DIR --media volume=scan.nii.gz --question "Is there a lesion?"
    python inference_v2.py --model DIR --jsonl questions.jsonl > answers.jsonl

Media: ``--image PATH`` (repeatable) is the core ``image`` kind; ``--media KIND=PATH`` (repeatable) reads any kind a
plugin registered (``wsi``, ``features``, ``volume``, ...) through the same reader training uses. Without
``<image>`` placeholders in the question one is put in front per media reference; with them, their count must
match; with several media kinds (``--image A --media volume=B``) each reference goes to the tower that reads its
kind, through the same row processor training uses. ``--temperature 0`` (the default) is greedy. A JSONL line holds ``question`` (or ``conversations``) and
media keys (``image``, ``volume``, ...; relative paths resolve against the JSONL's folder); one JSON answer per
line is written to stdout (or ``--out``). Bad input (missing/unreadable media, placeholder count, a checkpoint
we cannot map) prints one ``error:`` line naming the file and exits with status 2 (``internvl.errors.run_cli``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from internvl.errors import ConfigError, run_cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="InternVL-Med inference")
    p.add_argument("--model", required=True, help="checkpoint folder (original, -hf, or ours)")
    p.add_argument("--image", action="append", default=[], help="image file; repeatable")
    p.add_argument("--media", action="append", default=[], metavar="KIND=PATH",
                   help="media of a plugin kind (wsi, features, volume, ...); repeatable")
    p.add_argument("--question", help="the question (single-question mode)")
    p.add_argument("--jsonl", help="batch mode: one JSON question per line")
    p.add_argument("--out", help="batch mode: write answers here instead of stdout")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--max-num", type=int, default=None, help="max tiles per image (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-stream", action="store_true", help="print the answer at the end instead of streaming")
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE", help="import an out-of-tree plugin")
    args = p.parse_args(argv)
    if bool(args.question) == bool(args.jsonl):
        p.error("give exactly one of --question or --jsonl")
    return args


def media_refs(args) -> list[tuple[str, str]]:
    refs = [("image", path) for path in args.image]
    for spec in args.media:
        kind, sep, path = spec.partition("=")
        if not sep or not kind or not path:
            raise ConfigError(f"--media {spec!r}: expected KIND=PATH")
        from internvl.media import MEDIA_READERS, list_media_kinds

        if kind not in MEDIA_READERS:  # a misspelt kind would otherwise be a text-only question
            raise ConfigError(f"--media {spec!r}: no media reader for {kind!r} (known: {', '.join(list_media_kinds())})")
        refs.append((kind, path))
    return refs


def single(args, model, tokenizer, processor) -> None:
    from transformers import TextStreamer

    from internvl.evaluation.runner import generation_config, media_inputs

    row: dict = {}
    for kind, path in media_refs(args):
        row.setdefault(kind, []).append(os.path.abspath(path))
    n_refs = sum(len(v) for v in row.values())
    question = args.question
    if n_refs > 1 and "<image>" not in question:  # one placeholder per reference, in --image/--media order
        question = "<image>\n" * n_refs + question
    row["question"] = question
    inputs = processor.prompt_inputs(row, "<command line>")
    gen = generation_config(args.max_new_tokens, args.temperature)
    if not args.no_stream:
        gen["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    dtype = next(model.parameters()).dtype
    answer = model.generate_text(tokenizer, [inputs.input_ids], gen,
                                 pixel_values=media_inputs(inputs.items, inputs.item_kinds, model.device, dtype),
                                 item_kinds=inputs.item_kinds or None)[0]
    if args.no_stream:
        print(answer)


def batch(args, model, tokenizer, processor) -> None:
    from internvl.evaluation.runner import generate_predictions, generation_config
    from internvl.evaluation.testset import read_samples

    samples = read_samples(args.jsonl, task="open_qa", require_reference=False)
    answers = generate_predictions(model, tokenizer, samples, processor,
                                   generation_config(args.max_new_tokens, args.temperature),
                                   batch_size=args.batch_size)
    out = open(args.out, "w") if args.out else sys.stdout
    try:
        for s in samples:
            out.write(json.dumps({"id": s.row.get("id", s.uid), "question": s.question,
                                  "answer": answers[s.uid]}, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()


def run(argv=None) -> int:
    args = parse_args(argv)
    from internvl.data.processor import RowProcessor
    from internvl.evaluation.runner import load_model
    from internvl.registry import load_plugins

    load_plugins(args.plugins)
    model, tokenizer = load_model(args.model, device=args.device)
    options = {} if args.max_num is None else {"max_dynamic_patch": args.max_num}
    processor = RowProcessor(model.config, tokenizer, options=options)
    (single if args.question else batch)(args, model, tokenizer, processor)
    return 0


def main(argv=None) -> int:
    """The command line under the error policy: one ``error:`` line and exit status 2 for bad input."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
