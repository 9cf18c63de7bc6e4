"""Brainfound's own command-line flags, mapped onto our stage configs; and the error handling of every stage CLI.

Brainfound launches stage 2 and zero-shot classification as

    python -m torch.distributed.launch --nproc_per_node=4 pretrain.py --exp_name NAME --epochs 50 --model v5 \\
        --sentence_shuffle false --validation true --valid_save_image_freq 100 --tie_text_encoder_decoder false \\
        --momentum 0.996 --lr 1e-6 --resume PATH --valid_freq 1 --batch_size 3 --train_print_freq 100

and the same flags for ``zero_shot_cls.py``. Here those scripts are the modules ``patches.brainfound.pretrain``
and ``patches.brainfound.zero_shot_cls``; ``torchrun`` (or ``accelerate launch``) replaces the deprecated
launcher, which still works (its ``--local-rank`` / ``--local_rank`` argument is accepted; ranks come from the
environment). Each flag sets one entry of the stage-2 YAML config (``pretrain_clip.DEFAULTS``):

=============================  ===============================================================================
``--model``                    the base config: ``v5`` / ``full`` = ``configs/clip.yaml`` (Brainfound's
                               published full-size model), ``tiny`` = ``configs/tiny_clip.yaml``; ``--config``
                               names another YAML instead
``--exp_name``                 ``train.output_dir`` = ``<--output_root, default work_dirs/brainfound>/<name>``
``--epochs``                   ``train.epochs`` (replaces ``train.max_steps``)
``--batch_size``               ``train.batch_size`` (per process)
``--lr``                       ``train.lr`` and ``train.text_lr`` (Brainfound has one learning rate)
``--momentum``                 ``clip.momentum``
``--tie_text_encoder_decoder`` ``clip.tie_text_encoder_decoder``
``--sentence_shuffle``         ``data.sentence_shuffle``
``--validation``               ``eval.validation``
``--valid_freq``               ``eval.valid_freq`` (epochs)
``--valid_save_image_freq``    ``eval.valid_save_image_freq`` (every N-th validation scan gets a PNG)
``--train_print_freq``         ``train.log_steps``
``--resume PATH``              a weights file (read weights-only) or one of our checkpoint dirs; see the stages
=============================  ===============================================================================

Booleans are ``true`` / ``false`` (also ``1``/``0``, ``yes``/``no``). Flags not given leave the YAML value;
``--set key=value`` (applied last) still overrides anything.

``run_cli(main)``: runs a stage's ``main`` so that bad input ends with one line ``error: <message>`` on stderr
and exit status 2 (the message names the file and line where there is one), not a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from patches.brainfound.train_utils import CONFIG_DIR, add_launcher_args, apply_sets, load_config

EXIT_BAD_INPUT = 2
MODELS = {"v5": "clip.yaml", "full": "clip.yaml", "tiny": "tiny_clip.yaml"}

# flag -> (config section, key[, second key]) ; value already typed by argparse
FLAG_TO_CONFIG = {
    "epochs": [("train", "epochs")],
    "batch_size": [("train", "batch_size")],
    "lr": [("train", "lr"), ("train", "text_lr")],
    "momentum": [("clip", "momentum")],
    "tie_text_encoder_decoder": [("clip", "tie_text_encoder_decoder")],
    "sentence_shuffle": [("data", "sentence_shuffle")],
    "validation": [("eval", "validation")],
    "valid_freq": [("eval", "valid_freq")],
    "valid_save_image_freq": [("eval", "valid_save_image_freq")],
    "train_print_freq": [("train", "log_steps")],
}


def str2bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("true", "1", "yes", "y"):
        return True
    if low in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def brainfound_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--exp_name", default="stage2", help="run name: output in <output_root>/<exp_name>")
    p.add_argument("--output_root", default="work_dirs/brainfound")
    p.add_argument("--model", default="v5", choices=sorted(MODELS), help="v5/full: configs/clip.yaml; tiny")
    p.add_argument("--config", default=None, help="base YAML instead of the --model one")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--tie_text_encoder_decoder", type=str2bool, metavar="true|false")
    p.add_argument("--sentence_shuffle", type=str2bool, metavar="true|false")
    p.add_argument("--validation", type=str2bool, metavar="true|false")
    p.add_argument("--valid_freq", type=int)
    p.add_argument("--valid_save_image_freq", type=int)
    p.add_argument("--train_print_freq", type=int)
    p.add_argument("--resume", default=None, help="weights file (weights-only) or checkpoint dir; default: auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="YAML override, applied last")
    add_launcher_args(p)
    return p


def parse(argv: list[str] | None, description: str) -> tuple[argparse.Namespace, dict]:
    """Brainfound flags -> (args, merged stage-2 config)."""
    from patches.brainfound.pretrain_clip import DEFAULTS

    args = brainfound_parser(description).parse_args(argv)
    cfg = load_config(args.config or str(CONFIG_DIR / MODELS[args.model]), [], DEFAULTS)
    for flag, targets in FLAG_TO_CONFIG.items():
        value = getattr(args, flag)
        if value is None:
            continue
        for section, key in targets:
            cfg[section][key] = value
    cfg["train"]["output_dir"] = str(Path(args.output_root) / args.exp_name)
    apply_sets(cfg, args.set)
    return args, cfg


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run ``main``; expected failures (bad config, data, files) become ``error: ...`` and exit status 2."""
    from internvl.media.base import MediaError

    try:
        main(argv)
    except (ValueError, OSError, MediaError, KeyError) as exc:
        if isinstance(exc, OSError) and exc.filename:
            msg = f"{exc.filename}: {exc.strerror}"
        else:
            msg = (exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)).strip() or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
