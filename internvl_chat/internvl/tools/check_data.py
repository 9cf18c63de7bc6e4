"""Validate every row of a meta JSON's datasets before training: ``python -m internvl.tools.check_data``.

Each row goes through exactly what training does (the row processor through ``SupervisedDataset.build``: parse,
resolve and open the media, match placeholders, count tokens per tower, tokenise with the template, fit
``max_seq_length``), without augmentation and without ``repeat_time`` (every line once). The vision side is the
one training will have: ``--model``'s config with the finetune's flags applied (``--vision_model [KIND=]NAME``,
``--vision_overrides``, ``--projector``, ``--projector_config``, each repeatable), so a volume, slide or
``meditk`` dataset is checked before any checkpoint with that encoder exists.

Prints a summary table per dataset (rows, ok, bad by reason, tokens min/mean/max, media items, rows whose text max_seq_length cuts) and the first
``--show`` bad rows, one line each: ``file:line [reason] message``. Exit status: 0 when every row is good, 1 when
any row (or a dataset's annotation file) is bad, 2 when the meta JSON, the model folder, a flag or the template
is bad (one ``error: ...`` line).

    python -m internvl.tools.check_data shell/data/my_meta.json --model pretrained/InternVL-tiny \\
        --max_seq_length 4096 --max_dynamic_patch 6 [--vision_model volume=brain3d_vit_tiny]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from internvl.registry import add_plugins_argument, import_from_args
from internvl.errors import MISSING_ANNOTATION, DataError, run_cli


@dataclass
class DatasetReport:
    """What ``check_dataset`` found in one dataset."""

    name: str
    annotation: str
    rows: int = 0
    ok: int = 0
    bad: Counter = field(default_factory=Counter)
    tokens: list = field(default_factory=list)
    media_items: int = 0
    truncated: int = 0
    errors: list = field(default_factory=list)  # [(sample_ref, reason, message)]

    @property
    def n_bad(self) -> int:
        return sum(self.bad.values())


def check_dataset(spec, tokenizer, config, *, template_name=None, max_seq_length=8192, data_options=None,
                  progress: bool = True) -> DatasetReport:
    """Build every row of one dataset; count good rows' tokens/items and bad rows by reason."""
    from internvl.train.dataset import SupervisedDataset

    report = DatasetReport(spec.name, spec.annotation)
    try:
        ds = SupervisedDataset(spec, tokenizer, config, template_name=template_name, max_seq_length=max_seq_length,
                               data_options=data_options, is_train=False)
    except FileNotFoundError as exc:
        report.bad[MISSING_ANNOTATION] += 1
        report.errors.append((spec.annotation, MISSING_ANNOTATION, str(exc)))
        return report
    report.rows = len(ds.index)
    for line in tqdm(range(report.rows), desc=f"check {spec.name}", unit="row", disable=not progress):
        try:
            sample = ds.build(line)
        except DataError as err:
            report.bad[err.reason] += 1
            report.errors.append((err.sample_ref, err.reason, err.message))
            continue
        report.ok += 1
        report.truncated += int(sample["truncated"])
        report.tokens.append(int(sample["input_ids"].numel()))
        report.media_items += len(sample["pixel_values"])
    return report


def format_table(reports: list[DatasetReport]) -> str:
    """The per-dataset summary as an aligned text table."""
    head = ["dataset", "rows", "ok", "bad", "bad by reason", "truncated", "tokens min/mean/max", "media items"]
    rows = []
    for r in reports:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(r.bad.items())) or "-"
        toks = (f"{min(r.tokens)}/{sum(r.tokens) / len(r.tokens):.1f}/{max(r.tokens)}" if r.tokens else "-")
        rows.append([r.name, str(r.rows), str(r.ok), str(r.n_bad), reasons, str(r.truncated), toks,
                     str(r.media_items)])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m internvl.tools.check_data", description=__doc__.split("\n")[0])
    p.add_argument("meta_path", help="meta JSON ({name: {root, annotation, ...}})")
    p.add_argument("--model", required=True, help="model directory (tokenizer + config.json)")
    p.add_argument("--max_seq_length", type=int, default=8192)
    p.add_argument("--template", default=None, help="conversation template (default: config.template)")
    p.add_argument("--dynamic_image_size", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--use_thumbnail", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--min_dynamic_patch", type=int, default=None)
    p.add_argument("--max_dynamic_patch", type=int, default=None)
    p.add_argument("--normalize_type", default=None, choices=["imagenet", "clip", "siglip"])
    for flag, what in (("--vision_model", "[KIND=]NAME: the encoder of the tower reading KIND (bare: the primary)"),
                       ("--vision_overrides", "[KIND=]JSON: config overrides of that encoder"),
                       ("--projector", "[KIND=]NAME: that tower's projector"),
                       ("--projector_config", "[KIND=]JSON: that projector's options")):
        p.add_argument(flag, action="append", default=[], help=what + " (repeatable; as in finetune)")
    p.add_argument("--show", type=int, default=20, help="list the first N bad rows (default 20)")
    p.add_argument("--no_progress", action="store_true")
    add_plugins_argument(p)
    return p


def load_config(args):
    """The model config training would have: ``--model``'s, with the finetune's vision flags applied."""
    from internvl.model.checkpoint import read_model_config
    from internvl.model.internvl_chat.configuration_internvl_chat import InternVLChatConfig
    from internvl.model.towers import apply_tower_changes, parse_tower_flags

    config = read_model_config(InternVLChatConfig, args.model)
    changes = parse_tower_flags(args.vision_model, args.vision_overrides, args.projector, args.projector_config)
    if changes:
        config = apply_tower_changes(config, changes)[0]
    fields = {k: getattr(args, k) for k in ("dynamic_image_size", "use_thumbnail", "min_dynamic_patch",
                                            "max_dynamic_patch") if getattr(args, k) is not None}
    for key, value in fields.items():  # as finetune writes the data flags into the config
        setattr(config, key, value)
    return config


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import_from_args(args)
    from internvl.data.meta import load_meta
    from internvl.model.checkpoint import read_tokenizer

    tokenizer = read_tokenizer(args.model)
    config = load_config(args)
    specs = load_meta(args.meta_path)
    options = {"normalize_type": args.normalize_type} if args.normalize_type else {}
    reports = [check_dataset(spec, tokenizer, config, template_name=args.template, max_seq_length=args.max_seq_length,
                             data_options=options, progress=not args.no_progress) for spec in specs]
    print(format_table(reports))
    errors = [e for r in reports for e in r.errors]
    if errors:
        print(f"\n{len(errors)} bad row(s); first {min(args.show, len(errors))}:")
        for ref, reason, msg in errors[:args.show]:
            print(f"{ref} [{reason}] {msg}")
        return 1
    print(f"\nall {sum(r.rows for r in reports)} rows OK")
    return 0


def main(argv=None) -> int:
    """The command line under the error policy: one ``error:`` line and exit status 2 for bad input."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
