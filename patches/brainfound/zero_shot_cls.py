"""Brainfound's ``zero_shot_cls.py`` with its own flags: ``python -m patches.brainfound.zero_shot_cls ...``.

Takes the stage-2 flags (``brainfound_cli``; training-only ones are accepted and have no effect here). The model:

* ``--resume DIR``: a finished stage-2 output dir (``vision_encoder/``, ``text_model/``, ``clip_heads``...);
* ``--resume FILE``: a weights file (``.safetensors``, or ``torch.load(weights_only=True)`` of a Brainfound-style
  ``{"model": state_dict}`` / plain state dict): the ``--model`` config is built and the matching tensors loaded;
* no ``--resume``: the export of ``<output_root>/<exp_name>``.

Scans and classes: ``eval.test_jsonl`` (rows with ``label``), ``eval.classes``, ``eval.templates`` of the config
(``--set eval.test_jsonl=...`` to change). Writes ``metrics.json``, ``predictions.csv`` and ``roc.png`` to
``<output_root>/<exp_name>/zero_shot`` (see ``zero_shot.evaluate``). Bad input: ``error: ...``, exit status 2.
"""
from __future__ import annotations

import json
from pathlib import Path

from patches.brainfound.brainfound_cli import parse, run_cli


def _model(args, cfg: dict, out: Path):
    from patches.brainfound.train_utils import is_weights_file, load_weights_into, read_weights_only
    from patches.brainfound.zero_shot import load_clip

    if args.resume and is_weights_file(args.resume):
        from patches.brainfound.pretrain_clip import build_model
        from patches.brainfound.train_utils import make_accelerator

        model, tok = build_model(cfg, out, True, make_accelerator("no"))
        load_weights_into(model, read_weights_only(args.resume), args.resume)
        return model.eval(), tok
    return load_clip(args.resume or out)


def main(argv: list[str] | None = None) -> dict:
    from patches.brainfound.zero_shot import evaluate

    args, cfg = parse(argv, "Brainfound zero-shot classification with Brainfound's flags")
    ev = cfg["eval"]
    if not ev.get("test_jsonl") or not ev.get("classes"):
        raise ValueError("zero-shot needs eval.test_jsonl and eval.classes in the config (or --set them)")
    out = Path(cfg["train"]["output_dir"])
    model, tok = _model(args, cfg, out)
    classes = ev["classes"] if isinstance(ev["classes"], list) else str(ev["classes"]).split(",")
    res = evaluate(model, tok, str(Path(ev["test_jsonl"]).resolve()), classes, ev.get("templates"), out / "zero_shot")
    print(json.dumps({k: res[k] for k in ("n", "accuracy", "mean_class_accuracy", "mean_auroc")}))
    return res


if __name__ == "__main__":
    run_cli(main)
