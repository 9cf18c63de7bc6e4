"""Give a checkpoint more (or other) vision towers and save it: ``python -m internvl.tools.compose_towers``.

    python -m internvl.tools.compose_towers pretrained/InternVL-tiny work_dirs/tiny_image_volume \\
        --plugins patches.neuro --vision_model volume=brain3d_vit_tiny --projector volume=spatial_pool_mlp

Takes the finetune's vision flags (``--vision_model [KIND=]NAME``, ``--vision_overrides``, ``--projector``,
``--projector_config``, each repeatable; ``internvl.model.towers``); everything they do not touch keeps its
weights, new parts start from their factories. The result (with the source's tokenizer files) is an ordinary
checkpoint: evaluate it untrained, or fine-tune it without vision flags. Bad input: one ``error:`` line, exit 2.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from internvl.errors import ConfigError, run_cli
from internvl.registry import add_plugins_argument, import_from_args

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "generation_config.json")


def run(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m internvl.tools.compose_towers", description=__doc__.split("\n")[0])
    p.add_argument("src", help="InternVL checkpoint folder")
    p.add_argument("dst", help="output folder")
    for flag in ("--vision_model", "--vision_overrides", "--projector", "--projector_config"):
        p.add_argument(flag, action="append", default=[], help="[KIND=]value, repeatable (as in finetune)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new parts' initialisation")
    add_plugins_argument(p)
    args = p.parse_args(argv)
    import_from_args(args)
    import torch

    from internvl.model.internvl_chat import InternVLChatModel
    from internvl.model.towers import compose_towers, parse_tower_flags

    changes = parse_tower_flags(args.vision_model, args.vision_overrides, args.projector, args.projector_config)
    if not changes:
        raise ConfigError("nothing to do: give --vision_model and/or --projector")
    model = InternVLChatModel.from_pretrained(args.src)
    torch.manual_seed(args.seed)
    new = compose_towers(model, changes)
    new.save_pretrained(args.dst)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(args.src, name)):
            shutil.copy2(os.path.join(args.src, name), os.path.join(args.dst, name))
    kinds = ", ".join(f"{k}: {('primary' if t is None else 'tower ' + t)}" for k, t in new.config.tower_kinds().items())
    print(f"saved {args.dst} ({kinds})")
    return 0


def main(argv=None) -> int:
    """The command line under the error policy: one ``error:`` line and exit status 2 for bad input."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
